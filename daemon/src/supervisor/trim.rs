//! Giving freed memory back: after a large configuration is parsed and applied, glibc keeps the
//! freed heap for later allocations, and the daemon's resident size would stay at its peak.
#![allow(unsafe_code)]

/// Return the heap's free memory to the kernel (`malloc_trim(0)`).
pub fn trim() {
    // SAFETY: malloc_trim only walks glibc's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
