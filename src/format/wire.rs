//! Little-endian, fixed-width encoding helpers shared by the binary formats.
//!
//! [`Reader`] never panics on short or hostile input: every read is bounds-checked and a
//! failure names what was being read and at which byte offset.

use crate::error::{Error, Result};

pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.remaining() < n {
            return Err(Error::corrupt(format!(
                "{} is truncated: needed {n} bytes at offset {}, {} left",
                self.what,
                self.pos,
                self.remaining()
            )));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.bytes(N)?.try_into().unwrap())
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count of records of at least `record_len` bytes each, checked against what is left.
    pub fn count(&mut self, record_len: usize) -> Result<usize> {
        let at = self.pos;
        let n = self.u32()? as usize;
        if n.saturating_mul(record_len) > self.remaining() {
            return Err(Error::corrupt(format!(
                "{} claims {n} records at offset {at} but only {} bytes follow",
                self.what,
                self.remaining()
            )));
        }
        Ok(n)
    }

    pub fn expect_end(&self) -> Result<()> {
        if self.remaining() != 0 {
            return Err(Error::corrupt(format!(
                "{} has {} unexpected trailing bytes at offset {}",
                self.what,
                self.remaining(),
                self.pos
            )));
        }
        Ok(())
    }

    pub fn corrupt(&self, detail: impl std::fmt::Display) -> Error {
        Error::corrupt(format!("{} at offset {}: {detail}", self.what, self.pos))
    }
}

pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
