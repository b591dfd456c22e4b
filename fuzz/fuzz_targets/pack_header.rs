//! Pack headers and whole packs, as read from storage, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cairn::format::pack::decode_header(data);
    let key = cairn::crypto::MasterKey::from_bytes(&[7u8; 64]).unwrap();
    let _ = cairn::format::pack::read_header(&key, "fuzz", data);
});
