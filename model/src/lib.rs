//! A model of cairn's removal protocol (docs/format.md §17), checked exhaustively. It
//! is a crate of its own so that it is compiled with optimizations in the test build;
//! cairn's test suite runs it (tests/it/model.rs).
//!
//! The storage is a create-only object store with listings: stored packs, index files,
//! snapshots, the generation chain with its pending candidate sets, writer sessions and
//! tombstones. The actors are one writer (a backup: session, generation read, reuse,
//! upload, watch, index, guard, snapshot, confirm, end), a forget (drops the snapshot
//! whose blob the writer reuses) and two removal runs that interleave with everything and
//! with each other (fence, survey, read, sweep, mark, publish, and the sweep that follows
//! at once when no writer is live). Each step is one storage operation; a remover's
//! judgement of a session as stale may happen at any survey, whatever the real timing,
//! so safety never rests on clocks. A breadth-first search visits every reachable state
//! and checks, in each:
//!
//! * every snapshot whose writer reported success references only blobs that a stored
//!   pack holds;
//! * when every actor is done, every pack an index file lists is stored.
//!
//! Three mutations of the protocol each remove one part of it; the search must find a
//! violation for each (the first is the data loss of issue 16: a remover marks and sweeps
//! a live writer's fresh packs, which the writer then indexes and commits).

#![forbid(unsafe_code)]

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// FxHash: the search hashes every state it meets; SipHash made that the bottleneck.
#[derive(Default)]
struct Fx(u64);

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

const P0: u8 = 1; // the old pack: blob B, referenced by snapshot S0 until the forget
const W1: u8 = 2; // the writer's new pack: blob N (and B if it did not reuse it)
const C: u8 = 4; // the writer's copy of B, if it had to make one
const D: u8 = 8; // the writer's copy of N (out of its own pack W1, if a mark doomed it)
const PACKS: [u8; 4] = [P0, W1, C, D];
const B: u8 = 1;
const N: u8 = 2;
const S0: u8 = 1;
const S1: u8 = 2;

#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Debug)]
pub struct Mutations {
    /// Mark packs newer than a live session (no protection of fresh packs).
    pub mark_fresh: bool,
    /// The writer does not look for its tombstone after writing an index file.
    pub no_index_check: bool,
    /// The writer does not look for its tombstone before and after its snapshot.
    pub no_commit_check: bool,
}

#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Debug)]
struct Set {
    generation: u8,
    packs: u8,
    doomed: u8,
    seen: u8,
    /// Its publication lost the race, and its remover deleted it.
    deleted: bool,
}

#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Debug)]
struct Writer {
    pc: u8,
    /// When its session object was created (the model's clock).
    created: u8,
    /// The generation it read at its start.
    start: u8,
    excluded: u8,
    /// Packs the writer's catalog lists (read at its start, plus its own).
    catalog: u8,
    reused_b: bool,
    w1_b: bool,
    /// Sets (by index) it has dealt with.
    known: u8,
    guarded: u8,
    own_file: u8,
    committed: bool,
}

#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Debug)]
struct Remover {
    pc: u8,
    fence: u8,
    /// The writer's session as surveyed: live, and what it acknowledged (None: nothing).
    live: bool,
    live_start: u8,
    live_acked: Option<u8>,
    /// Pending sets at its fence.
    pending: u8,
    /// The writer's session, if listed again after the packs were (its start).
    writing: Option<u8>,
    seen: u8,
    /// Index files it read: the packs each listed, by file id (0: not read).
    read: [u8; 16],
    catalog: u8,
    stored: u8,
    ready: u8,
    waiting: u8,
    doomed_packs: u8,
    new_set: Option<u8>,
    marked: bool,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct State {
    clock: u8,
    packs: u8,
    created: [u8; 4],
    /// Index files: (id, packs listed).
    index: Vec<(u8, u8)>,
    next_file: u8,
    snapshots: u8,
    generation: u8,
    pending: u8,
    sets: Vec<Set>,
    session: Option<(u8, Option<u8>)>,
    tombstone: bool,
    forgotten: bool,
    writer: Writer,
    removers: [Remover; 2],
}

fn pack_blobs(state: &State, pack: u8) -> u8 {
    match pack {
        P0 => B,
        W1 => N | if state.writer.w1_b { B } else { 0 },
        C => B,
        D => N,
        _ => 0,
    }
}

fn each_pack(mask: u8) -> impl Iterator<Item = u8> {
    PACKS.into_iter().filter(move |p| mask & p != 0)
}

fn pack_slot(pack: u8) -> usize {
    PACKS.iter().position(|p| *p == pack).unwrap()
}

/// Packs among `mask` that hold any of `blobs`.
fn holding(state: &State, mask: u8, blobs: u8) -> u8 {
    each_pack(mask).filter(|p| pack_blobs(state, *p) & blobs != 0).fold(0, |a, p| a | p)
}

fn snapshot_blobs(snapshots: u8) -> u8 {
    (if snapshots & S0 != 0 { B } else { 0 }) | (if snapshots & S1 != 0 { B | N } else { 0 })
}

fn indexed(state: &State) -> u8 {
    state.index.iter().fold(0, |a, (_, m)| a | m)
}

const W_DONE: u8 = 100;
const R_DONE: u8 = 100;

/// Forget what finished actors no longer use, so equivalent states are one.
fn normalize(s: &mut State) {
    for r in s.removers.iter_mut().filter(|r| r.pc == R_DONE) {
        *r = Remover { pc: R_DONE, ..Default::default() };
    }
    if s.writer.pc == W_DONE {
        s.writer = Writer { pc: W_DONE, committed: s.writer.committed, w1_b: s.writer.w1_b, ..Default::default() };
    }
}

/// Every successor of `s`.
fn successors(s: &State, m: Mutations) -> Vec<State> {
    let mut out = Vec::new();
    if !s.forgotten {
        let mut n = s.clone();
        n.forgotten = true;
        n.snapshots &= !S0;
        out.push(n);
    }
    writer_steps(s, m, &mut out);
    for r in 0..2 {
        remover_steps(s, m, r, &mut out);
    }
    out.iter_mut().for_each(normalize);
    out
}

fn fail_writer(n: &mut State) {
    n.writer.pc = 90; // end the session, then done
}

/// The writer's session write (a renewal or acknowledgement, which recreates the object
/// if a remover deleted it): fails if its tombstone exists.
fn write_session(n: &mut State, acked: Option<u8>) -> bool {
    if n.tombstone {
        fail_writer(n);
        return false;
    }
    n.session = Some((n.writer.created, acked));
    true
}

/// Sets the writer must consider at the current generation: published after its start
/// (and by now), or pending at its start.
fn sets_for(s: &State, start: u8, known: u8) -> Vec<usize> {
    (0..s.sets.len())
        .filter(|i| !s.sets[*i].deleted)
        .filter(|i| (s.sets[*i].generation > start && s.sets[*i].generation <= s.generation) || known & (1 << i) != 0)
        .collect()
}

fn writer_steps(s: &State, m: Mutations, out: &mut Vec<State>) {
    let w = s.writer;
    let mut n = s.clone();
    match w.pc {
        0 => {
            // Create the session object (its time is now), before reading the generation.
            n.session = Some((n.clock, None));
            n.writer.created = n.clock;
            n.clock += 1;
            n.writer.pc = 1;
        }
        1 => {
            // Read the generation; exclude pending sets' packs; refresh the catalog.
            n.writer.start = s.generation;
            n.writer.excluded = each_set(s, s.pending).fold(0, |a, set| a | set.packs);
            n.writer.known = s.pending;
            n.writer.catalog = indexed(s);
            n.writer.pc = 2;
        }
        2 => {
            // Acknowledge the generation it started at.
            if write_session(&mut n, Some(s.writer.start)) {
                n.writer.pc = 3;
            }
        }
        3 => {
            // Reuse B if the catalog holds it outside excluded packs; else store it afresh.
            let reusable = holding(s, w.catalog & !w.excluded, B) != 0;
            n.writer.reused_b = reusable;
            n.writer.w1_b = !reusable;
            n.writer.pc = 4;
        }
        4 => {
            n.packs |= W1;
            n.created[pack_slot(W1)] = n.clock;
            n.clock += 1;
            n.writer.catalog |= W1;
            n.writer.pc = 5;
        }
        5 => {
            // Watch: a step it may take or skip (claims happen while data flows).
            let mut skip = s.clone();
            skip.writer.pc = 55;
            out.push(skip);
            if watch(&mut n) {
                n.writer.pc = 55;
            }
        }
        55 => {
            // Write the index file for its pack, then look for its tombstone.
            let id = n.next_file;
            n.next_file += 1;
            n.index.push((id, W1));
            n.writer.own_file = id;
            n.writer.pc = 6;
        }
        6 => {
            if n.tombstone && !m.no_index_check {
                let id = n.writer.own_file;
                n.index.retain(|(i, _)| *i != id);
                fail_writer(&mut n);
            } else {
                n.writer.pc = 7;
            }
        }
        7 => {
            // Guard: alive? then protect against every set since the start.
            if n.tombstone && !m.no_commit_check {
                fail_writer(&mut n);
            } else {
                n.writer.guarded = n.generation;
                if protect(&mut n) && write_session(&mut n, Some(s.generation)) {
                    n.writer.pc = 8;
                }
            }
        }
        8 => {
            n.snapshots |= S1;
            n.writer.pc = 9;
        }
        9 => {
            // Confirm: tombstone, then a generation two or more past the guard.
            let dead = n.tombstone && !m.no_commit_check;
            let ok = !dead && (n.generation <= n.writer.guarded + 1 || protect(&mut n));
            if ok {
                n.writer.committed = true;
                n.writer.pc = 90;
            } else {
                n.snapshots &= !S1;
                n.writer.pc = 90;
            }
        }
        90 => {
            n.session = None;
            n.writer.pc = W_DONE;
        }
        _ => return,
    }
    out.push(n);
}

fn each_set(s: &State, mask: u8) -> impl Iterator<Item = Set> + '_ {
    (0..s.sets.len()).filter(move |i| mask & (1 << i) != 0).map(move |i| s.sets[i])
}

/// The writer's watch: new sets are excluded; doomed blobs it relies on (reused, or in
/// its own marked pack) are copied while a pack still holds them (else it fails); then it
/// acknowledges. False if it failed.
fn watch(n: &mut State) -> bool {
    let generation = n.generation;
    for i in sets_for(n, n.writer.start, n.writer.known) {
        if n.writer.known & (1 << i) != 0 {
            continue;
        }
        let set = n.sets[i];
        n.writer.excluded |= set.packs;
        n.writer.known |= 1 << i;
        let own = if set.packs & W1 != 0 { pack_blobs(n, W1) } else { 0 };
        let relies = (if n.writer.reused_b { B } else { 0 }) | own;
        let outside = each_pack(n.writer.catalog & !set.packs).fold(0, |a, p| a | pack_blobs(n, p));
        let at_risk = set.doomed & relies & !outside;
        if at_risk != 0 && !copy_out(n, at_risk) {
            fail_writer(n);
            return false;
        }
    }
    write_session(n, Some(generation))
}

/// Copy `blobs` (B into C, N into D) while some stored pack the writer knows holds them;
/// the copy is stored and indexed. False if a blob is gone.
fn copy_out(n: &mut State, blobs: u8) -> bool {
    for (blob, copy) in [(B, C), (N, D)] {
        if blobs & blob == 0 {
            continue;
        }
        if holding(n, n.packs & n.writer.catalog, blob) == 0 {
            return false;
        }
        n.packs |= copy;
        n.created[pack_slot(copy)] = n.clock;
        n.clock += 1;
        let id = n.next_file;
        n.next_file += 1;
        n.index.push((id, copy));
        n.writer.catalog |= copy;
    }
    true
}

/// The commit guard's protection: every blob the snapshot needs that a set since the
/// start doomed, with every copy the catalog knows in marked packs, is copied out.
fn protect(n: &mut State) -> bool {
    let sets = sets_for(n, n.writer.start, n.writer.known);
    for i in &sets {
        n.writer.known |= 1 << i;
    }
    let marked = sets.iter().fold(0, |a, i| a | n.sets[*i].packs);
    let doomed = sets.iter().fold(0, |a, i| a | n.sets[*i].doomed);
    let outside = each_pack(n.writer.catalog & !marked).fold(0, |a, p| a | pack_blobs(n, p));
    let at_risk = doomed & snapshot_blobs(S1) & !outside;
    at_risk == 0 || copy_out(n, at_risk)
}

fn remover_steps(s: &State, m: Mutations, r: usize, out: &mut Vec<State>) {
    let me = s.removers[r];
    let mut n = s.clone();
    match me.pc {
        0 => {
            n.removers[r].fence = s.generation;
            n.removers[r].pending = s.pending;
            n.removers[r].pc = 1;
        }
        1 | 20 => {
            // Fence: create the next generation, or lose the race.
            if s.generation != me.fence {
                n.removers[r].pc = R_DONE;
            } else {
                n.generation += 1;
                n.removers[r].fence = n.generation;
                n.removers[r].pc = if me.pc == 1 { 2 } else { 21 };
            }
        }
        2 | 21 => {
            // Survey: the writer's session is judged live or (whatever the time) stale.
            let next = if me.pc == 2 { 3 } else { 22 };
            n.removers[r].pc = next;
            n.removers[r].live = false;
            if let Some((start, acked)) = s.session {
                let mut live = n.clone();
                live.removers[r].live = true;
                live.removers[r].live_start = start;
                live.removers[r].live_acked = acked;
                out.push(live);
                n.tombstone = true;
                n.session = None;
            }
        }
        3 | 22 => {
            n.removers[r].seen = s.snapshots;
            n.removers[r].pc = me.pc + 1;
        }
        4 | 23 => {
            n.removers[r].read = [0; 16];
            for (id, listed) in &s.index {
                n.removers[r].read[*id as usize] = *listed;
            }
            n.removers[r].catalog = indexed(s);
            n.removers[r].pc = me.pc + 1;
        }
        5 | 24 => {
            n.removers[r].stored = s.packs;
            // Damage stops the run: a snapshot it saw needs a blob in no stored pack.
            let needed = snapshot_blobs(me.seen);
            let present = each_pack(me.catalog & s.packs).fold(0, |a, p| a | pack_blobs(s, p));
            if needed & !present != 0 {
                n.removers[r].pc = R_DONE;
            } else {
                // Which pending sets every live writer acknowledged.
                let (mut ready, mut waiting) = (0, 0);
                for i in 0..s.sets.len() {
                    if me.pending & (1 << i) == 0 {
                        continue;
                    }
                    let acked = !me.live || me.live_acked.is_some_and(|a| a >= s.sets[i].generation);
                    if acked {
                        ready |= 1 << i;
                    } else {
                        waiting |= 1 << i;
                    }
                }
                n.removers[r].ready = ready;
                n.removers[r].waiting = waiting;
                n.removers[r].pc = match me.pc {
                    24 if waiting != 0 => R_DONE,
                    24 => 25,
                    _ => 56,
                };
            }
        }
        56 => {
            // List the sessions again: a writer whose packs the listing showed is here.
            n.removers[r].writing = s.session.map(|(start, _)| start);
            n.removers[r].pc = 6;
        }
        6 | 25 => {
            // Sweep: rescue what snapshots the mark did not see need; drop the rest from
            // the index (the files this run read).
            let mut doomed_packs = 0;
            for set in each_set(s, me.ready) {
                let unseen_needs = snapshot_blobs(me.seen & !set.seen) & set.doomed;
                let mut rescue = 0;
                for blob in [B, N] {
                    if unseen_needs & blob != 0 {
                        let copies = holding(s, me.catalog, blob);
                        if copies & !set.packs == 0 {
                            rescue |= copies | holding(s, set.packs & !me.catalog, blob);
                        }
                    }
                }
                doomed_packs |= set.packs & !rescue;
            }
            n.removers[r].doomed_packs = doomed_packs;
            // Rewrite the files it read that list a doomed pack (new file, old deleted);
            // one another remover deleted meanwhile makes it stop (a lost race).
            let mut rewritten = Vec::new();
            for id in (0..16u8).filter(|id| me.read[*id as usize] & doomed_packs != 0) {
                match n.index.iter().position(|(i, _)| *i == id) {
                    None => {
                        n.removers[r].pc = R_DONE;
                        out.push(n);
                        return;
                    }
                    Some(at) => {
                        let kept = n.index[at].1 & !doomed_packs;
                        n.index.remove(at);
                        if kept != 0 {
                            rewritten.push(kept);
                        }
                    }
                }
            }
            for kept in rewritten {
                n.index.push((n.next_file, kept));
                n.next_file += 1;
            }
            n.removers[r].pc = me.pc + 1;
        }
        7 | 26 => {
            n.packs &= !me.doomed_packs;
            n.removers[r].stored &= !me.doomed_packs;
            if me.pc == 26 {
                n.removers[r].pc = 27;
            } else {
                mark(&mut n, m, r);
                n.removers[r].pc = 8;
            }
        }
        8 => {
            // Publish: the next generation with the waiting sets and the new one.
            if s.generation != me.fence {
                if let Some(i) = me.new_set {
                    n.sets[i as usize].deleted = true;
                }
                n.removers[r].pc = R_DONE;
            } else {
                n.generation += 1;
                n.pending = me.waiting | me.new_set.map_or(0, |i| 1 << i);
                n.removers[r].pending = n.pending;
                n.removers[r].fence = n.generation;
                n.removers[r].pc = if me.marked && !me.live && me.writing.is_none() { 20 } else { R_DONE };
            }
        }
        27 => {
            if s.generation == me.fence {
                n.generation += 1;
                n.pending = 0;
            }
            n.removers[r].pc = R_DONE;
        }
        _ => return,
    }
    out.push(n);
}

/// Mark unreferenced packs (home to no blob a seen snapshot needs, or unindexed), not
/// waiting, and unless mutated, older than the oldest live session.
fn mark(n: &mut State, m: Mutations, r: usize) {
    let me = n.removers[r];
    let needed = snapshot_blobs(me.seen);
    let stored = me.stored;
    let mut homes = 0;
    for blob in [B, N] {
        if needed & blob != 0 {
            // The home: the first indexed, stored pack holding it.
            if let Some(home) = each_pack(me.catalog & stored).find(|p| pack_blobs(n, *p) & blob != 0) {
                homes |= home;
            }
        }
    }
    let waiting_packs = each_set(n, me.waiting).fold(0, |a, set| a | set.packs);
    let mut candidates = stored & !homes & !waiting_packs;
    let oldest = [me.live.then_some(me.live_start), me.writing].into_iter().flatten().min();
    if let (Some(oldest), false) = (oldest, m.mark_fresh) {
        for p in PACKS {
            if candidates & p != 0 && n.created[pack_slot(p)] >= oldest {
                candidates &= !p;
            }
        }
    }
    if candidates == 0 {
        n.removers[r].new_set = None;
        n.removers[r].marked = false;
        return;
    }
    let kept = stored & !candidates;
    let kept_blobs = each_pack(kept).fold(0, |a, p| a | pack_blobs(n, p));
    let doomed = each_pack(candidates).fold(0, |a, p| a | pack_blobs(n, p)) & !kept_blobs;
    n.sets.push(Set { generation: me.fence + 1, packs: candidates, doomed, seen: me.seen, deleted: false });
    n.removers[r].new_set = Some((n.sets.len() - 1) as u8);
    n.removers[r].marked = true;
}

fn initial() -> State {
    State {
        clock: 1,
        packs: P0,
        created: [0; 4],
        index: vec![(0, P0)],
        next_file: 1,
        snapshots: S0,
        generation: 0,
        pending: 0,
        sets: Vec::new(),
        session: None,
        tombstone: false,
        forgotten: false,
        writer: Writer::default(),
        removers: [Remover::default(); 2],
    }
}

/// The first violation found, with the number of states visited.
pub fn check(m: Mutations) -> (Option<String>, usize) {
    let mut seen: HashSet<State, BuildHasherDefault<Fx>> = HashSet::default();
    let mut queue = VecDeque::new();
    let start = initial();
    seen.insert(start.clone());
    queue.push_back(start);
    while let Some(s) = queue.pop_front() {
        let stored_blobs = each_pack(s.packs).fold(0, |a, p| a | pack_blobs(&s, p));
        if s.writer.committed && s.snapshots & S1 != 0 && snapshot_blobs(S1) & !stored_blobs != 0 {
            return (Some(format!("a committed snapshot lost a blob: {s:?}")), seen.len());
        }
        let done = s.writer.pc == W_DONE && s.removers.iter().all(|r| r.pc == R_DONE);
        if done && indexed(&s) & !s.packs != 0 {
            return (Some(format!("an index entry for a missing pack: {s:?}")), seen.len());
        }
        for next in successors(&s, m) {
            if seen.insert(next.clone()) {
                queue.push_back(next);
            }
        }
    }
    (None, seen.len())
}
