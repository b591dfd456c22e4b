//! Sealed object files (config, index, snapshot envelopes) never panic when opened.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = cairn::crypto::MasterKey::from_bytes(&[7u8; 64]).unwrap();
    for magic in [cairn::object::CONFIG_MAGIC, cairn::object::INDEX_MAGIC, cairn::object::SNAPSHOT_MAGIC] {
        let _ = cairn::object::open(&key, magic, "fuzz", data);
    }
});
