//! The secrets compartment's byte formats (docs/secrets.md, docs/format.md): the sealed
//! archive a secrets snapshot holds, and the compartment's config record.
//!
//! A sealed archive is `magic "CAIRNsc1" | salt (32) | frame...`, each frame
//! `length u32 | nonce | ciphertext | tag` holding up to 1 MiB of a tar stream, sealed with
//! AES-256-GCM under a key derived from the compartment key and the salt, nonce = frame
//! counter, associated data `"cairn secrets frame" | counter u64 | last u8`. The last frame
//! is marked, so a cut-off archive is detected. Fuzzed by
//! `fuzz/fuzz_targets/secrets_archive.rs`.

use crate::crypto::{counter_nonce, MasterKey, SealKey};
use crate::format::layout::SECRETS_ARCHIVE_MAGIC as STREAM_MAGIC;
use std::io::{Read, Write};

pub(crate) const FRAME: usize = 1 << 20;
const FRAME_AAD: &[u8] = b"cairn secrets frame";
const STREAM_KEY_CONTEXT: &str = "cairn 2026-11-29 secrets stream key v1";
/// `secrets/config`, sealed under the repository key: which key the compartment's slots
/// must hold.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct CompartmentConfig {
    pub version: u32,
    /// BLAKE3 of the compartment key: slots holding any other key are refused.
    pub fingerprint: String,
    pub created: jiff::Timestamp,
}

/// The fingerprint `secrets/config` records of the compartment key.
pub fn fingerprint(key: &MasterKey) -> String {
    hex::encode(blake3::derive_key("cairn 2026-11-29 secrets key fingerprint v1", &key.to_bytes()[..]))
}

fn stream_key(key: &MasterKey, salt: &[u8; 32]) -> SealKey {
    let mut material = zeroize::Zeroizing::new([0u8; 96]);
    material[..64].copy_from_slice(&key.to_bytes()[..]);
    material[64..].copy_from_slice(salt);
    SealKey::new(&zeroize::Zeroizing::new(blake3::derive_key(STREAM_KEY_CONTEXT, &*material)))
}

fn frame_aad(counter: u64, last: bool) -> Vec<u8> {
    let mut aad = FRAME_AAD.to_vec();
    aad.extend_from_slice(&counter.to_le_bytes());
    aad.push(last as u8);
    aad
}

/// Open a whole sealed archive held in memory: the tar stream inside, or why not.
/// Fuzzed by `fuzz/fuzz_targets/secrets_archive.rs`.
pub fn unseal(key: &MasterKey, sealed: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut reader = OpenReader::new(key, sealed)?;
    let mut out = Vec::new();
    reader.read_to_end(&mut out)?;
    if !reader.done {
        return Err(damaged("ends before its last frame"));
    }
    Ok(out)
}

/// Seals what is written into frames and hands each sealed frame on.
pub(crate) struct SealWriter<F: FnMut(Vec<u8>) -> std::io::Result<()>> {
    key: SealKey,
    counter: u64,
    buf: Vec<u8>,
    out: F,
}

impl<F: FnMut(Vec<u8>) -> std::io::Result<()>> SealWriter<F> {
    pub(crate) fn new(key: &MasterKey, mut out: F) -> std::io::Result<Self> {
        let salt: [u8; 32] = crate::crypto::random_bytes();
        let mut head = STREAM_MAGIC.to_vec();
        head.extend_from_slice(&salt);
        out(head)?;
        Ok(SealWriter { key: stream_key(key, &salt), counter: 0, buf: Vec::with_capacity(FRAME), out })
    }

    fn emit(&mut self, last: bool) -> std::io::Result<()> {
        let mut frame = Vec::with_capacity(self.buf.len() + 64);
        frame.extend_from_slice(&[0; 4]);
        self.key.seal_into(counter_nonce(self.counter), &frame_aad(self.counter, last), &self.buf, &mut frame);
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_le_bytes());
        self.counter += 1;
        self.buf.clear();
        (self.out)(frame)
    }

    pub(crate) fn finish(mut self) -> std::io::Result<()> {
        self.emit(true)
    }
}

impl<F: FnMut(Vec<u8>) -> std::io::Result<()>> Write for SealWriter<F> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(FRAME - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == FRAME {
            self.emit(false)?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Opens a sealed archive read from `inner`, frame by frame.
pub(crate) struct OpenReader<R: Read> {
    inner: R,
    key: SealKey,
    counter: u64,
    plain: Vec<u8>,
    pos: usize,
    /// The marked last frame was read.
    pub(crate) done: bool,
}

fn damaged(what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("sealed secrets archive: {what}"))
}

impl<R: Read> OpenReader<R> {
    pub(crate) fn new(key: &MasterKey, mut inner: R) -> std::io::Result<Self> {
        let mut head = [0u8; 40];
        inner.read_exact(&mut head).map_err(|_| damaged("shorter than its header"))?;
        if &head[..8] != STREAM_MAGIC {
            return Err(damaged("bad magic"));
        }
        let salt: [u8; 32] = head[8..].try_into().unwrap();
        Ok(OpenReader { inner, key: stream_key(key, &salt), counter: 0, plain: Vec::new(), pos: 0, done: false })
    }

    fn next_frame(&mut self) -> std::io::Result<()> {
        let mut len = [0u8; 4];
        self.inner.read_exact(&mut len).map_err(|_| damaged(format!("cut off before frame {}", self.counter)))?;
        let len = u32::from_le_bytes(len) as usize;
        if len > FRAME + 64 {
            return Err(damaged(format!("frame {} claims {len} bytes", self.counter)));
        }
        let mut sealed = vec![0u8; len];
        self.inner.read_exact(&mut sealed).map_err(|_| damaged(format!("frame {} is cut off", self.counter)))?;
        for last in [false, true] {
            if let Ok(plain) = self.key.open(&frame_aad(self.counter, last), &sealed) {
                self.plain = plain;
                self.pos = 0;
                self.done = last;
                self.counter += 1;
                return Ok(());
            }
        }
        Err(damaged(format!("frame {} does not authenticate (wrong key or tampered data)", self.counter)))
    }
}

impl<R: Read> Read for OpenReader<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.next_frame()?;
        }
        let n = out.len().min(self.plain.len() - self.pos);
        out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::random()
    }

    fn seal(key: &MasterKey, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = SealWriter::new(key, |f| {
            out.extend(f);
            Ok(())
        })
        .unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap();
        out
    }

    fn open(key: &MasterKey, sealed: &[u8]) -> std::io::Result<Vec<u8>> {
        unseal(key, sealed)
    }

    #[test]
    fn sealed_archives_round_trip_and_detect_cuts_and_tampering() {
        let k = key();
        let data: Vec<u8> = (0..(3 * FRAME + 17)).map(|i| (i * 7) as u8).collect();
        let sealed = seal(&k, &data);
        assert_eq!(open(&k, &sealed).unwrap(), data);
        assert!(open(&key(), &sealed).is_err(), "another key must not open it");
        // Cut at a frame boundary: the last frame is missing.
        let first = 40 + 4 + u32::from_le_bytes(sealed[40..44].try_into().unwrap()) as usize;
        assert!(open(&k, &sealed[..first]).is_err());
        let mut tampered = sealed.clone();
        tampered[first + 100] ^= 1;
        assert!(open(&k, &tampered).is_err());
        assert_eq!(open(&k, &seal(&k, b"")).unwrap(), b"");
    }
}
