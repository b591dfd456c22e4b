//! Key files and key slots from disk or storage never panic their parsers.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = cairn::repo::KeyFile::parse(data) {
        let _ = file.master_key();
    }
    let _ = cairn::repo::KeySlotFile::parse("fuzz", data);
});
