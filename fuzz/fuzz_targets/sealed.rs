//! Sealed blobs: opening and decompressing arbitrary bytes never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = cairn::crypto::SealKey::new(&[9u8; 32]);
    let _ = key.open(b"aad", data);
    let raw_len = data.first().map_or(0, |b| usize::from(*b) * 97);
    let _ = cairn::compress::decode(data.to_vec(), raw_len);
});
