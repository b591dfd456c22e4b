//! Key slots and key files: how a password or a file unlocks the master key.
//!
//! A key slot (`keys/<id>`, plaintext JSON) holds Argon2id parameters, a random salt, and
//! the 64-byte master key sealed (AES-256-GCM, random nonce, associated data
//! `"cairn key slot v1"`) under the key Argon2id derives from the password. Any slot opens
//! the repository; slots can be added, listed and removed. A key file holds the master key
//! itself (hex, mode 0600): it opens the repository in milliseconds, for WAL commands and
//! the embedded default repository. Fuzzed by `fuzz/fuzz_targets/key_file.rs`.

use crate::backend::{Backend, WriteMode};
use crate::crypto::{self, derive_password_key, KdfParams, MasterKey, SealKey};
use crate::error::{Error, ErrorKind, Result};
use crate::format::layout as objkeys;
use crate::id::{KeyId, RepoId};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

const SLOT_AAD: &[u8] = b"cairn key slot v1";

/// Where a set of key slots lives and what binds their sealed keys to it: the
/// repository's own slots, or the secrets compartment's (`src/secrets.rs`).
#[derive(Debug, Clone, Copy)]
pub struct SlotPlace {
    pub prefix: &'static str,
    pub aad: &'static [u8],
    pub what: &'static str,
}

pub const REPOSITORY_SLOTS: SlotPlace = SlotPlace { prefix: objkeys::KEYS, aad: SLOT_AAD, what: "key slot" };
pub const SECRETS_SLOTS: SlotPlace =
    SlotPlace { prefix: objkeys::SECRETS_KEYS, aad: b"cairn secrets slot v1", what: "secrets key slot" };
/// The most memory a key slot may ask Argon2id for (4 GiB).
pub const MAX_KDF_MEMORY_KIB: u32 = 4 << 20;

/// Key slots whose Argon2id cost (memory in MiB × passes) is above the limit are skipped
/// when unlocking (`--kdf-cost-limit`): 4 GiB × 2 passes, twenty times the default slot's
/// 64 MiB × 3 and seconds of work, where a planted 4 GiB × 64 slot would take minutes.
pub const DEFAULT_KDF_COST_LIMIT: u64 = 8192;
static KDF_COST_LIMIT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(DEFAULT_KDF_COST_LIMIT);

pub fn set_kdf_cost_limit(mib_passes: u64) {
    KDF_COST_LIMIT.store(mib_passes, std::sync::atomic::Ordering::Relaxed);
}

/// A slot's Argon2id cost: memory in MiB times passes.
pub fn kdf_cost(params: &KdfParams) -> u64 {
    u64::from(params.memory_kib).div_ceil(1024) * u64::from(params.iterations)
}

/// What unlocks the repository.
#[derive(Clone)]
pub enum Secret {
    /// Wiped from memory when dropped.
    Password(zeroize::Zeroizing<String>),
    KeyFile(PathBuf),
}

impl Secret {
    pub fn password(password: impl Into<String>) -> Self {
        Secret::Password(zeroize::Zeroizing::new(password.into()))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySlotFile {
    pub version: u32,
    pub kdf: String,
    pub params: KdfParams,
    pub salt: String,
    pub wrapped: String,
    pub created: jiff::Timestamp,
    pub host: String,
    pub user: String,
}

impl KeySlotFile {
    pub fn parse(name: &str, bytes: &[u8]) -> Result<Self> {
        let slot: KeySlotFile =
            serde_json::from_slice(bytes).map_err(|e| Error::corrupt(format!("key slot {name} is not valid: {e}")))?;
        if slot.version != 1 || slot.kdf != "argon2id" {
            return Err(Error::corrupt(format!(
                "key slot {name} has unsupported version {} or kdf {:?}",
                slot.version, slot.kdf
            )));
        }
        // A slot is read from storage before anything is authenticated: refuse parameters
        // that would make opening the repository exhaust memory or time.
        let p = slot.params;
        if !(8..=MAX_KDF_MEMORY_KIB).contains(&p.memory_kib)
            || !(1..=64).contains(&p.iterations)
            || !(1..=16).contains(&p.parallelism)
        {
            return Err(Error::corrupt(format!(
                "key slot {name} asks for argon2id m={} KiB t={} p={}, beyond the allowed 4 GiB, 64 passes, 16 lanes",
                p.memory_kib, p.iterations, p.parallelism
            )));
        }
        if hex::decode(&slot.salt).is_err() || hex::decode(&slot.wrapped).is_err() {
            return Err(Error::corrupt(format!("key slot {name}: its salt or wrapped key is not hex")));
        }
        Ok(slot)
    }

    /// Unwrap the master key, or `None` if the password does not fit.
    pub fn unwrap_key(&self, password: &[u8]) -> Result<Option<MasterKey>> {
        self.unwrap_key_at(REPOSITORY_SLOTS, password)
    }

    /// Unwrap the key a slot of `place` holds, or `None` if the password does not fit.
    pub fn unwrap_key_at(&self, place: SlotPlace, password: &[u8]) -> Result<Option<MasterKey>> {
        let salt = hex::decode(&self.salt).map_err(|_| Error::corrupt("key slot salt is not hex"))?;
        let wrapped = hex::decode(&self.wrapped).map_err(|_| Error::corrupt("key slot wrapped key is not hex"))?;
        let kek = SealKey::new(&*derive_password_key(password, &salt, self.params)?);
        match kek.open(place.aad, &wrapped) {
            Ok(bytes) => Ok(Some(MasterKey::from_bytes(&zeroize::Zeroizing::new(bytes))?)),
            Err(_) => Ok(None),
        }
    }
}

/// Wrap `key` under `password` in a new key slot.
pub async fn add_slot(backend: &Backend, key: &MasterKey, password: &[u8], params: KdfParams) -> Result<KeyId> {
    add_slot_at(backend, REPOSITORY_SLOTS, key, password, params).await
}

/// Wrap `key` under `password` in a new slot of `place`.
pub async fn add_slot_at(
    backend: &Backend,
    place: SlotPlace,
    key: &MasterKey,
    password: &[u8],
    params: KdfParams,
) -> Result<KeyId> {
    if password.is_empty() {
        return Err(Error::invalid("the password is empty; give a non-empty password"));
    }
    if !(8..=MAX_KDF_MEMORY_KIB).contains(&params.memory_kib) || !(1..=64).contains(&params.iterations) {
        return Err(Error::invalid(format!(
            "argon2id memory {} KiB or passes {} out of range: memory 8 KiB..=4 GiB, passes 1..=64",
            params.memory_kib, params.iterations
        )));
    }
    let salt: [u8; 32] = crypto::random_bytes();
    let kek = SealKey::new(&*derive_password_key(password, &salt, params)?);
    let slot = KeySlotFile {
        version: 1,
        kdf: "argon2id".into(),
        params,
        salt: hex::encode(salt),
        wrapped: hex::encode(kek.seal(crypto::random_bytes(), place.aad, &key.to_bytes()[..])),
        created: jiff::Timestamp::now(),
        host: super::hostname(),
        user: super::username(),
    };
    let id = KeyId::random();
    let json = serde_json::to_vec_pretty(&slot).expect("key slots serialize");
    backend.put(&format!("{}{id}", place.prefix), json.into(), WriteMode::Create).await?;
    Ok(id)
}

/// All readable key slots, by id, and the problems of those that could not be parsed
/// (a damaged or newer-format slot must not lock out the passwords of the others).
pub async fn list_slots(backend: &Backend) -> Result<(Vec<(KeyId, KeySlotFile)>, Vec<String>)> {
    list_slots_at(backend, REPOSITORY_SLOTS).await
}

/// The readable slots of `place`, and the problems of the others.
pub async fn list_slots_at(backend: &Backend, place: SlotPlace) -> Result<(Vec<(KeyId, KeySlotFile)>, Vec<String>)> {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for object in backend.list(place.prefix).await? {
        let name = objkeys::name(&object.key);
        let Ok(id) = KeyId::from_hex(name) else { continue };
        let bytes = backend.get(&object.key).await?;
        match KeySlotFile::parse(&object.key, &bytes) {
            Ok(slot) => out.push((id, slot)),
            Err(e) => skipped.push(e.to_string()),
        }
    }
    out.sort_by_key(|(_, s)| s.created);
    Ok((out, skipped))
}

/// Unlock the master key with a key file or by trying every slot with the password.
pub async fn unlock(backend: &Backend, secret: &Secret) -> Result<(MasterKey, Option<KeyId>)> {
    match secret {
        Secret::KeyFile(path) => Ok((KeyFile::read(path)?.master_key()?, None)),

        Secret::Password(password) => unlock_password_at(backend, REPOSITORY_SLOTS, password).await,
    }
}

/// Try every slot of `place` with the password.
pub async fn unlock_password_at(
    backend: &Backend,
    place: SlotPlace,
    password: &str,
) -> Result<(MasterKey, Option<KeyId>)> {
    let (mut slots, mut skipped) = list_slots_at(backend, place).await?;
    let limit = KDF_COST_LIMIT.load(std::sync::atomic::Ordering::Relaxed);
    // Cheapest first: a costly slot (planted or not) delays only the passwords it holds.
    slots.sort_by_key(|(_, slot)| kdf_cost(&slot.params));
    let mut tried = 0;
    for (id, slot) in &slots {
        let cost = kdf_cost(&slot.params);
        if cost > limit {
            skipped.push(format!(
                "{} {} costs {cost} MiB×passes, above --kdf-cost-limit {limit}; raise it to try this slot",
                place.what,
                id.short()
            ));
            continue;
        }
        tried += 1;
        let slot = slot.clone();
        let password = zeroize::Zeroizing::new(password.to_string());
        let found = tokio::task::spawn_blocking(move || slot.unwrap_key_at(place, password.as_bytes()))
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("key derivation task failed: {e}")))?;
        match found {
            Ok(Some(key)) => return Ok((key, Some(*id))),
            Ok(None) => {}
            // A slot that cannot be used is skipped and named, never fatal.
            Err(e) => skipped.push(format!("{} {}: {}", place.what, id.short(), e.message())),
        }
    }
    let mut message =
        format!("wrong password or no {} matches ({tried} slots tried at {})", place.what, backend.location());
    if !skipped.is_empty() {
        message.push_str(&format!("; {} unreadable slots skipped: {}", skipped.len(), skipped.join("; ")));
    }
    Err(Error::new(ErrorKind::WrongPassword, message))
}

/// An unwrapped master key on local disk (mode 0600).
#[derive(Serialize, Deserialize)]
pub struct KeyFile {
    pub version: u32,
    pub repository: RepoId,
    /// The 64-byte master key, hex.
    pub key: String,
}

/// The key's hex text is wiped when the key file is dropped.
impl Drop for KeyFile {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl KeyFile {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| Error::io("read key file", path, e))?);
        Self::parse(&bytes).map_err(|e| e.context(format!("key file {}", path.display())))
    }

    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let file: KeyFile = serde_json::from_slice(bytes)
            .map_err(|e| Error::new(ErrorKind::WrongPassword, format!("not a cairn key file: {e}")))?;
        if file.version != 1 || file.key.len() != 128 {
            return Err(Error::new(ErrorKind::WrongPassword, "not a cairn key file of version 1"));
        }
        Ok(file)
    }

    pub fn master_key(&self) -> Result<MasterKey> {
        let bytes = zeroize::Zeroizing::new(
            hex::decode(&self.key).map_err(|_| Error::new(ErrorKind::WrongPassword, "key file key is not hex"))?,
        );
        MasterKey::from_bytes(&bytes)
    }

    /// Write a new key file with mode 0600; never overwrites.
    pub fn write_new(&self, path: &Path) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io("create key file", path, e))?;
        let json = serde_json::to_vec_pretty(self).expect("key files serialize");
        file.write_all(&json).and_then(|_| file.sync_all()).map_err(|e| Error::io("write key file", path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = KeySlotFile::parse("k", &bytes);
            if let Ok(file) = KeyFile::parse(&bytes) {
                let _ = file.master_key();
            }
        }
    }

    #[test]
    fn hostile_kdf_parameters_are_refused() {
        let slot = |m: u32, t: u32| {
            format!(
                r#"{{"version":1,"kdf":"argon2id","params":{{"memory_kib":{m},"iterations":{t},"parallelism":1}},"salt":"00","wrapped":"00","created":"2026-01-01T00:00:00Z","host":"h","user":"u"}}"#
            )
        };
        assert!(KeySlotFile::parse("k", slot(65536, 3).as_bytes()).is_ok());
        assert!(KeySlotFile::parse("k", slot(u32::MAX, 3).as_bytes()).is_err());
        assert!(KeySlotFile::parse("k", slot(65536, 1_000_000).as_bytes()).is_err());
    }

    #[test]
    fn key_file_round_trip() {
        let key = MasterKey::random();
        let file = KeyFile { version: 1, repository: RepoId::random(), key: hex::encode(key.to_bytes()) };
        let parsed = KeyFile::parse(&serde_json::to_vec(&file).unwrap()).unwrap();
        assert_eq!(parsed.master_key().unwrap().to_bytes(), key.to_bytes());
    }
}
