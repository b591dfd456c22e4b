//! Keys, key derivation and authenticated encryption. Pure and synchronous.
//!
//! A repository has one [`MasterKey`]: 32 bytes of encryption key and 32 bytes of id key.
//! Nothing is ever encrypted under the master encryption key directly: every pack and every
//! object file has a random 16-byte salt, and its key is BLAKE3 `derive_key` of the master
//! encryption key and that salt. A derived key therefore encrypts one pack (a bounded number
//! of blobs) or one object, so AES-GCM's nonce and volume limits never bind. A pack's blob
//! nonces are a keyed PRF of the blob's position under a second key derived from the same
//! salt ([`prf_nonce`], [`MasterKey::pack_nonce_key`]), so stored nonces do not reveal
//! positions; an object's nonce is random; the secrets archive's frames count
//! ([`counter_nonce`]) under a key of their own. Blob ids are BLAKE3 keyed with the id key, so ids reveal nothing about
//! content to someone without the key.
//!
//! Sealed bytes are `nonce (12) | ciphertext | tag (16)`. Any failure to open is the single
//! error "authentication failed: wrong key or tampered data" (see docs/crypto.md).
//! Fuzzed by `fuzz/fuzz_targets/sealed.rs`.

use crate::error::{Error, ErrorKind, Result};
use aes_gcm::aead::{Aead, AeadInOut, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
pub const SALT_LEN: usize = 16;
/// Bytes that sealing adds to a plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

const PACK_KEY_CONTEXT: &str = "cairn 2026-11-22 pack key v1";
const OBJECT_KEY_CONTEXT: &str = "cairn 2026-11-22 object key v1";
const PACK_NONCE_CONTEXT: &str = "cairn 2026-11-22 pack nonce v1";

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::getrandom(&mut out).expect("the operating system's random source failed");
    out
}

/// The repository master key. Never printed, never stored unwrapped except in a key file.
/// Clones share one copy of the bytes (no long-lived duplicates), which is wiped when the
/// last clone is dropped.
#[derive(Clone)]
pub struct MasterKey(std::sync::Arc<KeyMaterial>);

struct KeyMaterial {
    encrypt: [u8; 32],
    id: [u8; 32],
}

impl Drop for KeyMaterial {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.encrypt.zeroize();
        self.id.zeroize();
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    fn new(encrypt: [u8; 32], id: [u8; 32]) -> Self {
        MasterKey(std::sync::Arc::new(KeyMaterial { encrypt, id }))
    }

    pub fn random() -> Self {
        Self::new(random_bytes(), random_bytes())
    }

    /// A new key that shares `other`'s id key: the two repositories name identical
    /// content with identical blob ids (for `init --copy-settings-from`), while their
    /// encryption keys stay independent.
    pub fn random_sharing_ids_with(other: &MasterKey) -> Self {
        Self::new(random_bytes(), other.0.id)
    }

    /// Whether two keys name blobs alike (constant time).
    pub fn same_id_key(&self, other: &MasterKey) -> bool {
        self.0.id.iter().zip(other.0.id.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// The 64 bytes, to wrap in a key slot or write to a key file; wiped when dropped.
    pub fn to_bytes(&self) -> zeroize::Zeroizing<[u8; 64]> {
        let mut out = zeroize::Zeroizing::new([0u8; 64]);
        out[..32].copy_from_slice(&self.0.encrypt);
        out[32..].copy_from_slice(&self.0.id);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != 64 {
            return Err(Error::corrupt("master key material must be 64 bytes"));
        }
        Ok(Self::new(bytes[..32].try_into().unwrap(), bytes[32..].try_into().unwrap()))
    }

    /// The id of a blob: BLAKE3 keyed with the id key over its plaintext.
    pub fn blob_id(&self, plaintext: &[u8]) -> crate::id::BlobId {
        crate::id::BlobId(*blake3::keyed_hash(&self.0.id, plaintext).as_bytes())
    }

    /// The encryption key and `salt`, side by side (wiped when dropped).
    fn material(&self, salt: &[u8; SALT_LEN]) -> zeroize::Zeroizing<[u8; 32 + SALT_LEN]> {
        let mut material = zeroize::Zeroizing::new([0u8; 32 + SALT_LEN]);
        material[..32].copy_from_slice(&self.0.encrypt);
        material[32..].copy_from_slice(salt);
        material
    }

    fn derive(&self, context: &str, salt: &[u8; SALT_LEN]) -> SealKey {
        let key = zeroize::Zeroizing::new(blake3::derive_key(context, &*self.material(salt)));
        SealKey::new(&key)
    }

    /// The key for the blobs and header of the pack with this salt.
    pub fn pack_key(&self, salt: &[u8; SALT_LEN]) -> SealKey {
        self.derive(PACK_KEY_CONTEXT, salt)
    }

    /// The key that turns blob counters of the pack with this salt into nonces.
    pub fn pack_nonce_key(&self, salt: &[u8; SALT_LEN]) -> [u8; 32] {
        blake3::derive_key(PACK_NONCE_CONTEXT, &*self.material(salt))
    }

    /// The key for one object file (config, index, snapshot) with this salt.
    pub fn object_key(&self, salt: &[u8; SALT_LEN]) -> SealKey {
        self.derive(OBJECT_KEY_CONTEXT, salt)
    }
}

/// An AES-256-GCM key ready to seal and open.
pub struct SealKey(Aes256Gcm);

impl SealKey {
    pub fn new(key: &[u8; 32]) -> Self {
        SealKey(Aes256Gcm::new(key.into()))
    }

    /// Encrypt `plaintext`, authenticating `aad` too; returns `nonce | ciphertext | tag`.
    /// The caller guarantees that `nonce` is never reused under this key.
    pub fn seal(&self, nonce: [u8; NONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        out.extend_from_slice(&nonce);
        let ciphertext = self
            .0
            .encrypt(&Nonce::from(nonce), Payload { msg: plaintext, aad })
            .expect("AES-GCM encryption cannot fail for in-memory buffers");
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Seal `plaintext` and append `nonce | ciphertext | tag` to `out`, encrypting in place
    /// in `out`'s buffer (no temporary allocation).
    pub fn seal_into(&self, nonce: [u8; NONCE_LEN], aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .0
            .encrypt_inout_detached(&Nonce::from(nonce), aad, (&mut out[start..]).into())
            .expect("AES-GCM encryption cannot fail for in-memory buffers");
        out.extend_from_slice(&tag);
    }

    /// Decrypt sealed bytes, checking the tag over ciphertext and `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        let mut plain = Vec::new();
        let len = self.open_into(aad, sealed, &mut plain)?.len();
        plain.truncate(len);
        Ok(plain)
    }

    /// [`SealKey::open`] decrypting straight from `sealed` into `buffer`, which grows as
    /// needed and is never shrunk: reused across many blobs it costs no allocation or
    /// copy per blob. Returns the plaintext, a prefix of `buffer`.
    pub fn open_into<'a>(&self, aad: &[u8], sealed: &[u8], buffer: &'a mut Vec<u8>) -> Result<&'a [u8]> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(auth_failed());
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
        let tag: [u8; TAG_LEN] = tag.try_into().expect("split at TAG_LEN");
        if buffer.len() < ciphertext.len() {
            buffer.resize(ciphertext.len(), 0);
        }
        let plain = &mut buffer[..ciphertext.len()];
        let inout = aes_gcm::aead::inout::InOutBuf::new(ciphertext, plain).expect("equal lengths");
        self.0.decrypt_inout_detached(&Nonce::from(nonce), aad, inout, &tag.into()).map_err(|_| auth_failed())?;
        Ok(plain)
    }
}

pub fn auth_failed() -> Error {
    Error::new(ErrorKind::Corrupt, "authentication failed: wrong key or tampered data")
}

/// The nonce for blob number `counter` of a pack: a keyed PRF of the counter, so nonces
/// stored in clear do not reveal where blobs start (a plain counter would). Distinct
/// counters collide with probability about n²/2⁹⁷ for n blobs in one pack.
pub fn prf_nonce(nonce_key: &[u8; 32], counter: u64) -> [u8; NONCE_LEN] {
    let hash = blake3::keyed_hash(nonce_key, &counter.to_le_bytes());
    hash.as_bytes()[..NONCE_LEN].try_into().unwrap()
}

/// A counter nonce: unique per key as long as the counter is.
pub fn counter_nonce(counter: u64) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..8].copy_from_slice(&counter.to_le_bytes());
    nonce
}

/// Argon2id cost parameters, stored in each key slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 4 lanes (RFC 9106's second recommended option): lanes are
    /// computed on all cores, so an attacker pays for the same memory and passes while
    /// unlocking takes half the time on two cores (docs/crypto.md).
    fn default() -> Self {
        KdfParams { memory_kib: 64 * 1024, iterations: 3, parallelism: 4 }
    }
}

/// Derive a 32-byte wrapping key from a password with Argon2id.
pub fn derive_password_key(password: &[u8], salt: &[u8], params: KdfParams) -> Result<zeroize::Zeroizing<[u8; 32]>> {
    let argon_params = argon2::Params::new(params.memory_kib, params.iterations, params.parallelism, Some(32))
        .map_err(|e| Error::invalid(format!("invalid key derivation parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, argon_params.clone());
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    // The working memory in huge pages: faulting 64 MiB in 4 KiB pages costs more than
    // the hashing on virtual machines (crate::buffers::with_huge_capacity).
    let mut memory = crate::buffers::with_huge_capacity(argon_params.block_count());
    memory.resize(argon_params.block_count(), argon2::Block::default());
    argon
        .hash_password_into_with_memory(password, salt, &mut *out, &mut memory)
        .map_err(|e| Error::invalid(format!("key derivation failed: {e}")))?;
    // The working memory holds what the password derives to: wipe it too.
    memory.iter_mut().for_each(|block| *block = argon2::Block::default());
    std::hint::black_box(&memory);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn clones_of_a_key_share_its_one_copy() {
        let key = MasterKey::random();
        let clone = key.clone();
        assert!(std::sync::Arc::ptr_eq(&key.0, &clone.0), "a clone must not copy the key bytes");
        assert_eq!(&key.to_bytes()[..], &clone.to_bytes()[..]);
    }

    proptest! {
        #[test]
        fn seal_open_round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096), aad in proptest::collection::vec(any::<u8>(), 0..64), counter: u64) {
            let key = MasterKey::random().pack_key(&random_bytes());
            let sealed = key.seal(counter_nonce(counter), &aad, &data);
            prop_assert_eq!(sealed.len(), data.len() + SEAL_OVERHEAD);
            let mut appended = b"prefix".to_vec();
            key.seal_into(counter_nonce(counter), &aad, &data, &mut appended);
            prop_assert_eq!(&appended[6..], &sealed[..]);
            prop_assert_eq!(key.open(&aad, &sealed).unwrap(), data);
        }

        #[test]
        fn any_flipped_bit_fails(data in proptest::collection::vec(any::<u8>(), 1..512), bit in 0usize..4096) {
            let key = MasterKey::random().object_key(&random_bytes());
            let mut sealed = key.seal(random_bytes(), b"aad", &data);
            let bit = bit % (sealed.len() * 8);
            sealed[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(key.open(b"aad", &sealed).is_err());
        }
    }

    #[test]
    fn wrong_aad_or_key_fails() {
        let master = MasterKey::random();
        let salt = random_bytes();
        let sealed = master.pack_key(&salt).seal(counter_nonce(1), b"blob-a", b"hello");
        assert!(master.pack_key(&salt).open(b"blob-b", &sealed).is_err());
        assert!(master.object_key(&salt).open(b"blob-a", &sealed).is_err());
        assert!(MasterKey::random().pack_key(&salt).open(b"blob-a", &sealed).is_err());
    }

    #[test]
    fn blob_ids_are_keyed() {
        let a = MasterKey::random();
        let b = MasterKey::random();
        assert_eq!(a.blob_id(b"x"), a.blob_id(b"x"));
        assert_ne!(a.blob_id(b"x"), b.blob_id(b"x"));
    }
}
