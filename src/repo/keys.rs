//! Key slots and key files: how a password or a file unlocks the master key.
//!
//! A key slot (`keys/<id>`, plaintext JSON) holds Argon2id parameters, a random salt, and
//! the 64-byte master key sealed (AES-256-GCM, random nonce, associated data
//! `"cairn key slot v1"`) under the key Argon2id derives from the password. Any slot opens
//! the repository; slots can be added, listed and removed. A key file holds the master key
//! itself (hex, mode 0600): it opens the repository in milliseconds, for WAL commands and
//! the embedded default repository. Fuzzed by `fuzz/fuzz_targets/key_file.rs`.

use crate::backend::{keys as objkeys, Backend, WriteMode};
use crate::crypto::{self, derive_password_key, KdfParams, MasterKey, SealKey};
use crate::error::{Error, ErrorKind, Result};
use crate::id::{KeyId, RepoId};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

const SLOT_AAD: &[u8] = b"cairn key slot v1";

/// What unlocks the repository.
#[derive(Clone)]
pub enum Secret {
    Password(String),
    KeyFile(PathBuf),
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
        let slot: KeySlotFile = serde_json::from_slice(bytes).map_err(|e| Error::corrupt(format!("key slot {name} is not valid: {e}")))?;
        if slot.version != 1 || slot.kdf != "argon2id" {
            return Err(Error::corrupt(format!("key slot {name} has unsupported version {} or kdf {:?}", slot.version, slot.kdf)));
        }
        Ok(slot)
    }

    /// Unwrap the master key, or `None` if the password does not fit.
    pub fn unwrap_key(&self, password: &[u8]) -> Result<Option<MasterKey>> {
        let salt = hex::decode(&self.salt).map_err(|_| Error::corrupt("key slot salt is not hex"))?;
        let wrapped = hex::decode(&self.wrapped).map_err(|_| Error::corrupt("key slot wrapped key is not hex"))?;
        let kek = SealKey::new(&derive_password_key(password, &salt, self.params)?);
        match kek.open(SLOT_AAD, &wrapped) {
            Ok(bytes) => Ok(Some(MasterKey::from_bytes(&bytes)?)),
            Err(_) => Ok(None),
        }
    }
}

/// Wrap `key` under `password` in a new key slot.
pub async fn add_slot(backend: &Backend, key: &MasterKey, password: &[u8], params: KdfParams) -> Result<KeyId> {
    if password.is_empty() {
        return Err(Error::invalid("the password is empty; give a non-empty password"));
    }
    let salt: [u8; 32] = crypto::random_bytes();
    let kek = SealKey::new(&derive_password_key(password, &salt, params)?);
    let slot = KeySlotFile {
        version: 1,
        kdf: "argon2id".into(),
        params,
        salt: hex::encode(salt),
        wrapped: hex::encode(kek.seal(crypto::random_bytes(), SLOT_AAD, &key.to_bytes())),
        created: jiff::Timestamp::now(),
        host: super::hostname(),
        user: super::username(),
    };
    let id = KeyId::random();
    let json = serde_json::to_vec_pretty(&slot).expect("key slots serialize");
    backend.put(&objkeys::key(&id), json.into(), WriteMode::Create).await?;
    Ok(id)
}

/// All key slots, by id.
pub async fn list_slots(backend: &Backend) -> Result<Vec<(KeyId, KeySlotFile)>> {
    let mut out = Vec::new();
    for object in backend.list(objkeys::KEYS).await? {
        let name = objkeys::name(&object.key);
        let Ok(id) = KeyId::from_hex(name) else { continue };
        let bytes = backend.get(&object.key).await?;
        out.push((id, KeySlotFile::parse(&object.key, &bytes)?));
    }
    out.sort_by_key(|(_, s)| s.created);
    Ok(out)
}

/// Unlock the master key with a key file or by trying every slot with the password.
pub async fn unlock(backend: &Backend, secret: &Secret) -> Result<(MasterKey, Option<KeyId>)> {
    match secret {
        Secret::KeyFile(path) => Ok((KeyFile::read(path)?.master_key()?, None)),
        Secret::Password(password) => {
            let slots = list_slots(backend).await?;
            for (id, slot) in &slots {
                let slot = slot.clone();
                let password = password.clone();
                let found = tokio::task::spawn_blocking(move || slot.unwrap_key(password.as_bytes()))
                    .await
                    .map_err(|e| Error::new(ErrorKind::Io, format!("key derivation task failed: {e}")))??;
                if let Some(key) = found {
                    return Ok((key, Some(*id)));
                }
            }
            Err(Error::new(
                ErrorKind::WrongPassword,
                format!("wrong password or no key slot matches ({} slots tried at {})", slots.len(), backend.location()),
            ))
        }
    }
}

/// An unwrapped master key on local disk (mode 0600).
#[derive(Serialize, Deserialize)]
pub struct KeyFile {
    pub version: u32,
    pub repository: RepoId,
    /// The 64-byte master key, hex.
    pub key: String,
}

impl KeyFile {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("read key file", path, e))?;
        Self::parse(&bytes).map_err(|e| e.context(format!("key file {}", path.display())))
    }

    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let file: KeyFile = serde_json::from_slice(bytes).map_err(|e| Error::new(ErrorKind::WrongPassword, format!("not a cairn key file: {e}")))?;
        if file.version != 1 || file.key.len() != 128 {
            return Err(Error::new(ErrorKind::WrongPassword, "not a cairn key file of version 1"));
        }
        Ok(file)
    }

    pub fn master_key(&self) -> Result<MasterKey> {
        let bytes = hex::decode(&self.key).map_err(|_| Error::new(ErrorKind::WrongPassword, "key file key is not hex"))?;
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
