//! Tree blobs and stream nodes never panic their decoders, nor name helpers.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tree) = cairn::format::snapshot::Tree::decode(data) {
        for node in &tree.nodes {
            let _ = node.name_bytes();
            let _ = node.target_bytes();
        }
    }
    let _ = cairn::format::snapshot::decode_node(data);
});
