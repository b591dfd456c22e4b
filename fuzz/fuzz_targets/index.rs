//! Decrypted index file plaintext never panics the decoder.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cairn::format::index::IndexFile::decode(data);
});
