//! Large buffers kept for reuse. A buffer above glibc's mmap threshold (256 KiB, see
//! src/main.rs) is mapped fresh on every allocation, and the kernel faults in and zeroes
//! each of its pages on first touch: for 16 MiB packs and 8 MiB restore ranges that cost
//! more than the copies into them. Pipelines hand finished buffers back here instead.

use std::sync::Mutex;

/// At most `keep` spare buffers; beyond that a returned buffer is freed.
pub struct SpareBuffers {
    keep: usize,
    spares: Mutex<Vec<Vec<u8>>>,
}

impl SpareBuffers {
    pub fn new(keep: usize) -> Self {
        SpareBuffers { keep, spares: Mutex::new(Vec::new()) }
    }

    /// A spare buffer (with whatever contents it had), if one is kept.
    pub fn take(&self) -> Option<Vec<u8>> {
        self.spares.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    pub fn give(&self, buffer: Vec<u8>) {
        let mut spares = self.spares.lock().unwrap_or_else(|p| p.into_inner());
        if spares.len() < self.keep {
            spares.push(buffer);
        }
    }

    /// Keep the buffer behind `bytes` if nothing else holds it (a store may still).
    pub fn give_bytes(&self, bytes: bytes::Bytes) {
        if bytes.is_unique() {
            self.give(Vec::from(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_keep_and_only_unshared_bytes() {
        let spares = SpareBuffers::new(1);
        spares.give(vec![1; 10]);
        spares.give(vec![2; 20]);
        assert_eq!(spares.take(), Some(vec![1; 10]));
        assert_eq!(spares.take(), None);
        let shared = bytes::Bytes::from(vec![3; 30]);
        let other = shared.clone();
        spares.give_bytes(shared);
        assert_eq!(spares.take(), None);
        spares.give_bytes(other);
        assert_eq!(spares.take().map(|b| b.len()), Some(30));
    }
}
