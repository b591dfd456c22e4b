//! Snapshot manifests (decrypted JSON) never panic the parser.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<cairn::format::snapshot::SnapshotFile>(data);
});
