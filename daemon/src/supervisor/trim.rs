//! Giving freed memory back: after a large configuration is parsed and applied, glibc keeps the
//! freed heap for later allocations, and the daemon's resident size would stay at its peak.
#![allow(unsafe_code)]

/// One malloc arena for every thread. A reload is parsed on a blocking-pool thread, which would
/// otherwise get an arena of its own whose freed memory stays resident (RSS grew 7.5 to 11.6 MB
/// after reloading a 30,000-prefix file to 3,000); the daemon allocates too little for the
/// threads to contend on one.
pub fn one_arena() {
    // SAFETY: mallopt only sets a glibc tunable; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Return the heap's free memory to the kernel (`malloc_trim(0)`).
pub fn trim() {
    // SAFETY: malloc_trim only walks glibc's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
