//! The removal protocol's model (the `cairn-protocol-model` crate, model/src/lib.rs),
//! checked exhaustively: the protocol holds in every interleaving of a writer, a forget
//! and two removal runs, and each of three mutations that remove a part of it is caught.

use cairn_protocol_model::{check, Mutations};

#[test]
fn the_removal_protocol_holds_in_every_interleaving() {
    let (violation, states) = check(Mutations::default());
    assert!(violation.is_none(), "{}", violation.unwrap());
    assert!(states > 10_000, "the search covered {states} states");
    eprintln!("removal protocol model: {states} states, no violation");
}

#[test]
fn the_model_finds_each_protocol_step_necessary() {
    for (name, mutation) in [
        ("marking a live writer's fresh packs", Mutations { mark_fresh: true, ..Default::default() }),
        ("no tombstone check after an index write", Mutations { no_index_check: true, ..Default::default() }),
        ("no tombstone check at commit", Mutations { no_commit_check: true, ..Default::default() }),
    ] {
        let (violation, states) = check(mutation);
        assert!(violation.is_some(), "without {name} the model finds no violation ({states} states)");
        eprintln!("without {name}: {}", violation.unwrap().split(':').next().unwrap());
    }
}
