//! The member list of a tar snapshot never panics its decoder, and neither do sparse
//! members: any PAX records (`key=value` lines before a NUL) and any data either expand
//! to exactly the size the records give or fail with an error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Read;

fuzz_target!(|data: &[u8]| {
    if let Ok(records) = cairn::source::tar::MemberRecord::decode_all(data) {
        let mut again = Vec::new();
        for r in &records {
            r.encode(&mut again);
        }
        assert_eq!(cairn::source::tar::MemberRecord::decode_all(&again).unwrap(), records);
    }
    let _ = cairn::source::tar::normalise(data);

    let (head, body) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let records: Vec<(Vec<u8>, Vec<u8>)> = head
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let at = line.iter().position(|&b| b == b'=')?;
            Some((line[..at].to_vec(), line[at + 1..].to_vec()))
        })
        .collect();
    if let Ok(Some(sparse)) = cairn::source::sparse::Sparse::from_pax(&records) {
        // Small sizes only: the expansion is read in full.
        if sparse.size <= 1 << 20 {
            if let Ok(mut expanded) = sparse.expand(body, body.len() as u64) {
                let mut out = Vec::new();
                if expanded.read_to_end(&mut out).is_ok() {
                    assert_eq!(out.len() as u64, sparse.size);
                }
            }
        }
    }
});
