//! Megabyte buffers kept for reuse. Output travels in blocks of up to a megabyte (an event
//! frame's payload, which becomes a chunk's text; a message's JSON). An allocator that maps
//! such blocks afresh (glibc above its mmap threshold) has each page of each buffer fault in
//! and be zeroed again: about a quarter of a host's CPU in a stream. A buffer handed back with
//! [`recycle`] serves the next [`take`], whatever the allocator.
//!
//! At most [`KEEP`] bytes wait here, and [`release`] gives them back to the allocator (an idle
//! Jupyter kernel calls it), so what this keeps is small and bounded.

use std::sync::Mutex;

/// What may wait here, in all.
pub const KEEP: usize = 4 << 20;
/// Smaller buffers come from the allocator's heaps, which reuse them anyway.
const MIN: usize = 128 << 10;
/// Capacities are rounded up to this, so that a buffer fits the next one of about its size.
const STEP: usize = 128 << 10;

static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// An empty buffer with room for `n` bytes: a kept one when one is large enough.
pub fn take(n: usize) -> Vec<u8> {
    if n < MIN {
        return Vec::with_capacity(n);
    }
    {
        let mut kept = SPARE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = kept.iter().position(|v| v.capacity() >= n) {
            return kept.swap_remove(i);
        }
    }
    // Rounding costs address space only: pages never written are never resident.
    Vec::with_capacity(n.div_ceil(STEP) * STEP)
}

/// Keep `v`'s memory for a later [`take`], if it is a large buffer and there is room.
pub fn recycle(mut v: Vec<u8>) {
    if v.capacity() < MIN || v.capacity() > KEEP {
        return;
    }
    v.clear();
    let mut kept = SPARE.lock().unwrap_or_else(|e| e.into_inner());
    let held: usize = kept.iter().map(Vec::capacity).sum();
    if held + v.capacity() <= KEEP {
        kept.push(v);
    }
}

/// Give every kept buffer back to the allocator.
pub fn release() {
    let kept = std::mem::take(&mut *SPARE.lock().unwrap_or_else(|e| e.into_inner()));
    drop(kept);
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the pool is shared by the whole process.
    #[test]
    fn large_buffers_are_reused_within_the_budget_and_released() {
        release();
        let mut a = take(1 << 20);
        a.extend_from_slice(&[1; 1 << 20]);
        let ptr = a.as_ptr();
        recycle(a);
        let b = take((1 << 20) - 5);
        assert_eq!(b.as_ptr(), ptr, "the kept buffer serves a request it fits");
        assert!(b.is_empty());
        recycle(b);
        // Small buffers are not kept; the budget caps what is.
        recycle(Vec::with_capacity(1024));
        for _ in 0..8 {
            recycle(Vec::with_capacity(1 << 20));
        }
        let held: usize = SPARE.lock().unwrap().iter().map(Vec::capacity).sum();
        assert!((3 << 20..=KEEP).contains(&held), "held {held}");
        release();
        assert!(SPARE.lock().unwrap().is_empty());
        assert!(take(1 << 20).capacity() >= 1 << 20);
    }
}
