//! A sealed secrets archive (as the repository stores it) never panics its reader, and
//! nothing that was not sealed under the key opens.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = cairn::crypto::MasterKey::from_bytes(&[7u8; 64]).unwrap();
    let _ = cairn::format::secrets::unseal(&key, data);
});
