//! Sealed object files (config, index, snapshot envelopes) never panic when opened.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = cairn::crypto::MasterKey::from_bytes(&[7u8; 64]).unwrap();
    for magic in [cairn::format::object::CONFIG_MAGIC, cairn::format::object::INDEX_MAGIC, cairn::format::object::SNAPSHOT_MAGIC] {
        let _ = cairn::format::object::open(&key, magic, "fuzz", data);
    }
});
