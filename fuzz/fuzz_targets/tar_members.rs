//! The member list of a tar snapshot never panics its decoder.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(records) = cairn::source::tar::MemberRecord::decode_all(data) {
        let mut again = Vec::new();
        for r in &records {
            r.encode(&mut again);
        }
        assert_eq!(cairn::source::tar::MemberRecord::decode_all(&again).unwrap(), records);
    }
    let _ = cairn::source::tar::normalise(data);
});
