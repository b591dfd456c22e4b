//! Pack files: many sealed blobs followed by a sealed header that lists them.
//!
//! Layout (docs/format.md, "Pack files"):
//!
//! ```text
//! magic "CAIRNpk1" (8) | salt (16) | blob 0 | blob 1 | ... | sealed header | header length u32 LE
//! ```
//!
//! Every blob is `nonce | ciphertext | tag` under the pack key (master key + salt), with the
//! blob id as associated data; its plaintext is a [`crate::compress`] encoding. Nonces are
//! a keyed PRF of the blob's position ([`crypto::prf_nonce`]), so the nonces stored in
//! clear do not mark where blobs start. The header uses the PRF of `u64::MAX` and
//! associated data `magic | salt | "header"`. Because the header is inside the pack, the index can
//! always be rebuilt from the packs alone. A pack's name is the BLAKE3 hash of its bytes,
//! so a retried upload writes the same name and storage corruption is detectable.
//! Fuzzed by `fuzz/fuzz_targets/pack_header.rs`.

use crate::compress;
use crate::crypto::{self, MasterKey, SealKey, SALT_LEN};
use crate::error::{Error, Result};
use crate::format::wire::{put_u32, put_u64, Reader};
use crate::id::{BlobId, PackId};

pub use super::layout::PACK_MAGIC;
const PREFIX_LEN: usize = 8 + SALT_LEN;
const HEADER_VERSION: u8 = 1;
/// No pack is larger than this (packs are at most 256 MiB plus one blob); an entry past it
/// is corrupt. Keeps offset arithmetic far from overflow.
const MAX_OFFSET: u64 = 1 << 40;
/// Encoded length of one header or index entry.
pub const ENTRY_LEN: usize = 1 + 32 + 8 + 4 + 4;

/// What a blob holds. Data and metadata blobs never share a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobKind {
    /// File and stream content.
    Data = 0,
    /// Trees and stream nodes.
    Meta = 1,
}

impl BlobKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Meta),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            BlobKind::Data => "data",
            BlobKind::Meta => "meta",
        }
    }
}

/// Where one blob sits in its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    pub kind: BlobKind,
    pub id: BlobId,
    /// Offset of the sealed blob from the start of the pack.
    pub offset: u64,
    /// Length of the sealed blob.
    pub length: u32,
    /// Length of the blob's data after decompression.
    pub raw_length: u32,
}

impl PackEntry {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.kind as u8);
        out.extend_from_slice(self.id.as_bytes());
        put_u64(out, self.offset);
        put_u32(out, self.length);
        put_u32(out, self.raw_length);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let kind = r.u8()?;
        let kind = BlobKind::from_u8(kind).ok_or_else(|| r.corrupt(format!("unknown blob kind {kind}")))?;
        let id = BlobId(r.array()?);
        let entry = PackEntry { kind, id, offset: r.u64()?, length: r.u32()?, raw_length: r.u32()? };
        if (entry.length as usize) < crypto::SEAL_OVERHEAD + 1
            || entry.offset < PREFIX_LEN as u64
            || entry.offset > MAX_OFFSET
        {
            return Err(r.corrupt(format!(
                "blob {} has impossible offset {} or length {}",
                entry.id.short(),
                entry.offset,
                entry.length
            )));
        }
        Ok(entry)
    }

    pub fn end(&self) -> u64 {
        // Decoded entries have offset <= MAX_OFFSET, so this cannot overflow; saturate anyway.
        self.offset.saturating_add(u64::from(self.length))
    }
}

/// A pack being filled in memory.
pub struct PackWriter {
    key: SealKey,
    nonce_key: [u8; 32],
    salt: [u8; SALT_LEN],
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
}

/// A complete pack, ready to upload under its id.
pub struct FinishedPack {
    pub id: PackId,
    pub salt: [u8; SALT_LEN],
    pub bytes: Vec<u8>,
    pub entries: Vec<PackEntry>,
}

impl PackWriter {
    pub fn new(master: &MasterKey, capacity: usize) -> Self {
        Self::with_buffer(master, Vec::with_capacity(capacity))
    }

    /// A pack filled into `buf`, whose contents are discarded and whose capacity is kept:
    /// recycling finished packs' buffers spares the kernel mapping and zeroing a fresh
    /// 16 MiB for every pack.
    pub fn with_buffer(master: &MasterKey, mut buf: Vec<u8>) -> Self {
        let salt: [u8; SALT_LEN] = crypto::random_bytes();
        buf.clear();
        buf.extend_from_slice(PACK_MAGIC);
        buf.extend_from_slice(&salt);
        PackWriter {
            key: master.pack_key(&salt),
            nonce_key: master.pack_nonce_key(&salt),
            salt,
            buf,
            entries: Vec::new(),
        }
    }

    /// Compress (at `level`, when it helps), seal and append one blob.
    /// Returns the number of bytes the pack grew by.
    pub fn add(&mut self, kind: BlobKind, id: BlobId, data: &[u8], level: i32) -> usize {
        self.add_encoded(kind, id, &compress::encode(data, level), data.len())
    }

    /// Seal and append a blob already encoded by [`compress::encode`] from `raw_len` bytes.
    pub fn add_encoded(&mut self, kind: BlobKind, id: BlobId, plain: &[u8], raw_len: usize) -> usize {
        let nonce = crypto::prf_nonce(&self.nonce_key, self.entries.len() as u64);
        let offset = self.buf.len();
        self.key.seal_into(nonce, id.as_bytes(), plain, &mut self.buf);
        let length = self.buf.len() - offset;
        self.entries.push(PackEntry {
            kind,
            id,
            offset: offset as u64,
            length: length as u32,
            raw_length: raw_len as u32,
        });
        length
    }

    pub fn size(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Append the sealed header and name the pack by the hash of its bytes.
    pub fn finish(mut self) -> FinishedPack {
        let mut header = Vec::with_capacity(5 + self.entries.len() * ENTRY_LEN);
        header.push(HEADER_VERSION);
        put_u32(&mut header, self.entries.len() as u32);
        for entry in &self.entries {
            entry.encode(&mut header);
        }
        let sealed = self.key.seal(crypto::prf_nonce(&self.nonce_key, u64::MAX), &header_aad(&self.salt), &header);
        self.buf.extend_from_slice(&sealed);
        put_u32(&mut self.buf, sealed.len() as u32);
        let id = PackId(*blake3::hash(&self.buf).as_bytes());
        FinishedPack { id, salt: self.salt, bytes: self.buf, entries: self.entries }
    }
}

fn header_aad(salt: &[u8; SALT_LEN]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(PREFIX_LEN + 6);
    aad.extend_from_slice(PACK_MAGIC);
    aad.extend_from_slice(salt);
    aad.extend_from_slice(b"header");
    aad
}

/// Read the salt and the blob list of a whole pack. `name` is used in errors.
pub fn read_header(master: &MasterKey, name: &str, pack: &[u8]) -> Result<([u8; SALT_LEN], Vec<PackEntry>)> {
    let what = |detail: &str| Error::corrupt(format!("pack {name}: {detail}"));
    if pack.len() >= 8 && pack[..7] == PACK_MAGIC[..7] && pack[7] != PACK_MAGIC[7] {
        return Err(crate::format::object::newer_format(&format!("pack {name}"), &pack[..8]));
    }
    if pack.len() < PREFIX_LEN + 4 + crypto::SEAL_OVERHEAD || &pack[..8] != PACK_MAGIC {
        return Err(what("not a cairn pack (bad magic or too short)"));
    }
    let salt: [u8; SALT_LEN] = pack[8..PREFIX_LEN].try_into().unwrap();
    let header_len = u32::from_le_bytes(pack[pack.len() - 4..].try_into().unwrap()) as usize;
    let Some(header_start) = (pack.len() - 4).checked_sub(header_len).filter(|s| *s >= PREFIX_LEN) else {
        return Err(what(&format!("header length {header_len} exceeds the pack size {}", pack.len())));
    };
    let header = master
        .pack_key(&salt)
        .open(&header_aad(&salt), &pack[header_start..pack.len() - 4])
        .map_err(|e| e.context(format!("pack {name} header")))?;
    let entries = decode_header(&header)?;
    if let Some(bad) = entries.iter().find(|e| e.end() > header_start as u64) {
        return Err(what(&format!("blob {} extends past the blob area", bad.id.short())));
    }
    Ok((salt, entries))
}

/// Decode a decrypted pack header.
pub fn decode_header(header: &[u8]) -> Result<Vec<PackEntry>> {
    let mut r = Reader::new(header, "pack header");
    let version = r.u8()?;
    if version != HEADER_VERSION {
        return Err(r.corrupt(format!("unsupported pack header version {version}")));
    }
    let count = r.count(ENTRY_LEN)?;
    let entries = (0..count).map(|_| PackEntry::decode(&mut r)).collect::<Result<Vec<_>>>()?;
    r.expect_end()?;
    Ok(entries)
}

/// Open one sealed blob read from a pack, checking that its content hashes to its id.
pub fn open_blob(master: &MasterKey, key: &SealKey, entry: &PackEntry, sealed: &[u8]) -> Result<Vec<u8>> {
    let plain = key.open(entry.id.as_bytes(), sealed)?;
    let data = compress::decode(plain, entry.raw_length as usize)?;
    verify(master, entry, &data)?;
    Ok(data)
}

/// [`open_blob`] appending the data to `out`, with `scratch` for the decrypted bytes: no
/// allocation per blob once both have grown. On failure `out` is unchanged.
pub fn open_blob_into(
    master: &MasterKey,
    key: &SealKey,
    entry: &PackEntry,
    sealed: &[u8],
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<()> {
    let plain = key.open_into(entry.id.as_bytes(), sealed, scratch)?;
    let start = out.len();
    compress::decode_into(plain, entry.raw_length as usize, out)?;
    verify(master, entry, &out[start..]).inspect_err(|_| out.truncate(start))
}

fn verify(master: &MasterKey, entry: &PackEntry, data: &[u8]) -> Result<()> {
    if master.blob_id(data) != entry.id {
        return Err(Error::corrupt(format!("blob {} does not hash to its id", entry.id)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn pack_round_trip(blobs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 0..20)) {
            let master = MasterKey::random();
            let mut writer = PackWriter::new(&master, 1024);
            for blob in &blobs {
                writer.add(BlobKind::Data, master.blob_id(blob), blob, 3);
            }
            let pack = writer.finish();
            prop_assert_eq!(PackId(*blake3::hash(&pack.bytes).as_bytes()), pack.id);
            let (salt, entries) = read_header(&master, "p", &pack.bytes).unwrap();
            prop_assert_eq!(salt, pack.salt);
            prop_assert_eq!(&entries, &pack.entries);
            let key = master.pack_key(&salt);
            for (entry, blob) in entries.iter().zip(&blobs) {
                let sealed = &pack.bytes[entry.offset as usize..entry.end() as usize];
                prop_assert_eq!(&open_blob(&master, &key, entry, sealed).unwrap(), blob);
            }
        }

        #[test]
        fn header_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_header(&bytes);
        }
    }

    /// Found by `cargo fuzz run index`: an offset near u64::MAX overflowed `end()`.
    #[test]
    fn huge_offsets_are_corrupt_not_a_panic() {
        let mut entry = Vec::new();
        PackEntry { kind: BlobKind::Data, id: BlobId([1; 32]), offset: 24, length: 100, raw_length: 10 }
            .encode(&mut entry);
        entry[33..41].copy_from_slice(&u64::MAX.to_le_bytes());
        let mut header = vec![HEADER_VERSION];
        header.extend_from_slice(&1u32.to_le_bytes());
        header.extend_from_slice(&entry);
        assert!(decode_header(&header).is_err());
        let mut index = vec![1u8];
        index.extend_from_slice(&1u32.to_le_bytes());
        index.extend_from_slice(&[0u8; 48]);
        index.extend_from_slice(&u64::MAX.to_le_bytes());
        index.extend_from_slice(&1u32.to_le_bytes());
        index.extend_from_slice(&entry);
        assert!(crate::format::index::IndexFile::decode(&index).is_err());
    }

    #[test]
    fn stored_nonces_do_not_reveal_blob_positions() {
        let master = MasterKey::random();
        let mut writer = PackWriter::new(&master, 0);
        for i in 0..3u8 {
            writer.add(BlobKind::Data, master.blob_id(&[i]), &[i; 100], 0);
        }
        let pack = writer.finish();
        for (i, entry) in pack.entries.iter().enumerate() {
            let nonce = &pack.bytes[entry.offset as usize..entry.offset as usize + crypto::NONCE_LEN];
            assert_ne!(nonce, crypto::counter_nonce(i as u64), "blob {i} has a guessable nonce");
        }
    }

    #[test]
    fn truncated_or_tampered_packs_fail_cleanly() {
        let master = MasterKey::random();
        let mut writer = PackWriter::new(&master, 0);
        writer.add(BlobKind::Data, master.blob_id(b"abc"), b"abc", 3);
        let pack = writer.finish();
        for cut in 0..pack.bytes.len() {
            assert!(read_header(&master, "p", &pack.bytes[..cut]).is_err());
        }
        let mut tampered = pack.bytes.clone();
        tampered[30] ^= 1;
        let (salt, entries) = read_header(&master, "p", &tampered).unwrap();
        let e = entries[0];
        assert!(
            open_blob(&master, &master.pack_key(&salt), &e, &tampered[e.offset as usize..e.end() as usize]).is_err()
        );
    }
}
