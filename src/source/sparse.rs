//! Sparse tar members in GNU tar's PAX formats 0.0, 0.1 and 1.0, expanded to the file
//! they stand for. (The old GNU format, type `S`, is expanded by the tar crate itself.)
//!
//! - 0.0: the map is repeated `GNU.sparse.offset` / `GNU.sparse.numbytes` pairs in the
//!   member's PAX header, the real size `GNU.sparse.size`;
//! - 0.1: the map is one `GNU.sparse.map` of comma-separated offsets and sizes, the real
//!   name `GNU.sparse.name` and size `GNU.sparse.size`;
//! - 1.0 (`GNU.sparse.major=1`, `minor=0`): the map leads the member's data as decimal
//!   numbers, one per line (the count, then offset and size per entry), padded with NULs
//!   to 512 bytes; the real name is `GNU.sparse.name`, the size `GNU.sparse.realsize`.
//!
//! The member's stored data is the map's data segments back to back; everything between
//! them reads as zeros. A map that is out of order, overlaps, runs past the real size or
//! does not account for exactly the stored bytes is an error, never a wrong file.
//! Fuzzed by `fuzz/fuzz_targets/tar_sparse.rs`.

use std::io::{self, Read};

/// More map entries than this is refused (a hostile header must not exhaust memory).
const MAX_ENTRIES: usize = 1 << 20;

/// What a member's PAX header says about it being sparse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sparse {
    /// The member's real name, when the format stores it apart (0.1, 1.0).
    pub name: Option<Vec<u8>>,
    /// The expanded file's size.
    pub size: u64,
    /// Data segments `(offset, length)`; `None` for 1.0, whose map leads the data.
    map: Option<Vec<(u64, u64)>>,
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

fn number(value: &[u8], what: &str) -> io::Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| invalid(format!("sparse member: {what} {:?} is not a number", String::from_utf8_lossy(value))))
}

impl Sparse {
    /// Read the sparse description from a member's PAX records (in order); `None` for a
    /// member that is not sparse.
    pub fn from_pax(records: &[(Vec<u8>, Vec<u8>)]) -> io::Result<Option<Sparse>> {
        let get = |key: &str| records.iter().rev().find(|(k, _)| k == key.as_bytes()).map(|(_, v)| v.as_slice());
        let name = get("GNU.sparse.name").map(<[u8]>::to_vec);
        if let Some(major) = get("GNU.sparse.major") {
            let minor = get("GNU.sparse.minor").map(|m| number(m, "GNU.sparse.minor")).transpose()?.unwrap_or(0);
            if number(major, "GNU.sparse.major")? != 1 || minor != 0 {
                return Err(invalid(format!(
                    "sparse member: format {}.{minor} is not one cairn reads (0.0, 0.1, 1.0)",
                    String::from_utf8_lossy(major)
                )));
            }
            let size = number(
                get("GNU.sparse.realsize").ok_or_else(|| invalid("sparse 1.0 member without GNU.sparse.realsize"))?,
                "GNU.sparse.realsize",
            )?;
            return Ok(Some(Sparse { name, size, map: None }));
        }
        let Some(size) = get("GNU.sparse.size") else { return Ok(None) };
        let size = number(size, "GNU.sparse.size")?;
        let mut numbers = Vec::new();
        if let Some(map) = get("GNU.sparse.map") {
            for part in map.split(|&b| b == b',').filter(|p| !p.is_empty()) {
                numbers.push(number(part, "GNU.sparse.map entry")?);
                if numbers.len() > 2 * MAX_ENTRIES {
                    return Err(invalid("sparse member: the map has too many entries"));
                }
            }
        } else {
            for (key, value) in records {
                if key == b"GNU.sparse.offset" || key == b"GNU.sparse.numbytes" {
                    numbers.push(number(value, "GNU.sparse.offset/numbytes")?);
                    if numbers.len() > 2 * MAX_ENTRIES {
                        return Err(invalid("sparse member: the map has too many entries"));
                    }
                }
            }
        }
        if numbers.len() % 2 != 0 {
            return Err(invalid("sparse member: the map has an offset without a size"));
        }
        let map = numbers.chunks(2).map(|p| (p[0], p[1])).collect();
        Ok(Some(Sparse { name, size, map: Some(map) }))
    }

    /// The expanded file, read from the member's data (`stored` bytes of it).
    pub fn expand<R: Read>(&self, mut data: R, stored: u64) -> io::Result<Expand<R>> {
        let (map, used) = match &self.map {
            Some(map) => (map.clone(), 0),
            None => read_map(&mut data)?,
        };
        let mut end = 0u64;
        let mut total = 0u64;
        for &(offset, length) in &map {
            if offset < end {
                return Err(invalid(format!("sparse member: map entry at {offset} is out of order or overlaps")));
            }
            end = offset.checked_add(length).ok_or_else(|| invalid("sparse member: map entry overflows"))?;
            if end > self.size {
                return Err(invalid(format!("sparse member: map entry ends at {end}, past the size {}", self.size)));
            }
            total += length;
        }
        if used + total != stored {
            return Err(invalid(format!(
                "sparse member: the map accounts for {} bytes but the member stores {stored}",
                used + total
            )));
        }
        Ok(Expand { inner: data, map, segment: 0, at: 0, size: self.size })
    }
}

/// A 1.0 map from the front of the data: returns it and the bytes it took (padded).
fn read_map<R: Read>(data: &mut R) -> io::Result<(Vec<(u64, u64)>, u64)> {
    let mut used = 0u64;
    let mut line = || -> io::Result<u64> {
        let mut digits = Vec::new();
        loop {
            let mut byte = [0u8];
            data.read_exact(&mut byte).map_err(|_| invalid("sparse 1.0 member: its map is cut off"))?;
            used += 1;
            match byte[0] {
                b'\n' => break,
                b'0'..=b'9' if digits.len() < 20 => digits.push(byte[0]),
                _ => return Err(invalid("sparse 1.0 member: its map holds something other than numbers")),
            }
        }
        number(&digits, "map number")
    };
    let count = line()? as usize;
    if count > MAX_ENTRIES {
        return Err(invalid("sparse member: the map has too many entries"));
    }
    let mut map = Vec::with_capacity(count);
    for _ in 0..count {
        let offset = line()?;
        map.push((offset, line()?));
    }
    let pad = used.next_multiple_of(512) - used;
    io::copy(&mut data.by_ref().take(pad), &mut io::sink())?;
    Ok((map, used + pad))
}

/// The expanded file: zeros between the data segments.
pub struct Expand<R> {
    inner: R,
    map: Vec<(u64, u64)>,
    segment: usize,
    at: u64,
    size: u64,
}

impl<R: Read> Read for Expand<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.at >= self.size || buf.is_empty() {
                return Ok(0);
            }
            let (offset, length) = self.map.get(self.segment).copied().unwrap_or((self.size, 0));
            if self.at < offset {
                let n = buf.len().min((offset - self.at).min(usize::MAX as u64) as usize);
                buf[..n].fill(0);
                self.at += n as u64;
                return Ok(n);
            }
            if self.at < offset + length {
                let want = buf.len().min((offset + length - self.at).min(usize::MAX as u64) as usize);
                let n = self.inner.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "sparse member: its data is cut off"));
                }
                self.at += n as u64;
                return Ok(n);
            }
            self.segment += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pax(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn every_format_expands_and_bad_maps_are_refused() {
        let want = [vec![0u8; 10], b"abc".to_vec(), vec![0u8; 5], b"de".to_vec(), vec![0u8; 4]].concat();
        let v00 = pax(&[
            ("GNU.sparse.size", "24"),
            ("GNU.sparse.numblocks", "2"),
            ("GNU.sparse.offset", "10"),
            ("GNU.sparse.numbytes", "3"),
            ("GNU.sparse.offset", "18"),
            ("GNU.sparse.numbytes", "2"),
        ]);
        let v01 = pax(&[("GNU.sparse.size", "24"), ("GNU.sparse.map", "10,3,18,2"), ("GNU.sparse.name", "real")]);
        for records in [v00, v01] {
            let sparse = Sparse::from_pax(&records).unwrap().unwrap();
            let mut out = Vec::new();
            sparse.expand(&b"abcde"[..], 5).unwrap().read_to_end(&mut out).unwrap();
            assert_eq!(out, want);
        }
        let v10 = pax(&[("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"), ("GNU.sparse.realsize", "24")]);
        let sparse = Sparse::from_pax(&v10).unwrap().unwrap();
        let mut data = b"2\n10\n3\n18\n2\n".to_vec();
        data.resize(512, 0);
        data.extend_from_slice(b"abcde");
        let mut out = Vec::new();
        sparse.expand(&data[..], data.len() as u64).unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out, want);
        assert!(Sparse::from_pax(&pax(&[("path", "x")])).unwrap().is_none());
        for bad in ["10,3,11,2", "10,3,23,2", "10,3,18"] {
            let records = pax(&[("GNU.sparse.size", "24"), ("GNU.sparse.map", bad)]);
            let refused = Sparse::from_pax(&records).and_then(|s| s.unwrap().expand(&b"abcde"[..], 5).map(|_| ()));
            assert!(refused.is_err(), "{bad}");
        }
        let records = pax(&[("GNU.sparse.size", "24"), ("GNU.sparse.map", "10,3,18,2")]);
        assert!(Sparse::from_pax(&records).unwrap().unwrap().expand(&b"abcdef"[..], 6).is_err(), "extra data");
    }
}
