//! Large buffers kept for reuse. A buffer above glibc's mmap threshold (256 KiB, see
//! src/main.rs) is mapped fresh on every allocation, and the kernel faults in and zeroes
//! each of its pages on first touch: for 16 MiB packs and 8 MiB restore ranges that cost
//! more than the copies into them. Pipelines hand finished buffers back here instead.

use std::sync::Mutex;

/// Below this a buffer may share its mapping with other allocations; advising it would
/// change how the kernel backs memory that is not ours.
const HUGE_PAGE: usize = 2 << 20;

/// An empty vector with room for `capacity` elements, whose memory the kernel is asked to
/// back with transparent huge pages (`MADV_HUGEPAGE`) when it is large enough to have a
/// mapping of its own. Faulting in fresh memory page by page is slow on virtual machines:
/// 64 MiB took 46–228 ms in 4 KiB pages and 7–11 ms in huge pages on the reference
/// machine, where `transparent_hugepage` is `madvise`, Debian's default. Elsewhere the
/// advice is ignored.
pub fn with_huge_capacity<T>(capacity: usize) -> Vec<T> {
    let mut buffer = Vec::with_capacity(capacity);
    advise_huge_pages(&mut buffer);
    buffer
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn advise_huge_pages<T>(buffer: &mut Vec<T>) {
    let bytes = buffer.capacity() * std::mem::size_of::<T>();
    if bytes < 2 * HUGE_PAGE {
        return;
    }
    let start = buffer.as_mut_ptr() as usize;
    let aligned = start.next_multiple_of(4096);
    let end = (start + bytes) & !4095;
    // SAFETY: madvise(MADV_HUGEPAGE) changes only how the kernel backs the pages, never
    // their contents or the validity of the mapping; the range lies within the vector's
    // allocation, which at this size glibc maps on its own (src/main.rs). A failure leaves
    // ordinary pages, so the result is ignored.
    unsafe {
        libc::madvise(aligned as *mut libc::c_void, end - aligned, libc::MADV_HUGEPAGE);
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages<T>(_buffer: &mut Vec<T>) {}

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
