//! Serialising the end-to-end tests that run apt or dpkg on the test machine itself.
//!
//! What lives here: [`AptLock`], the one lock those tests take. What does not: the
//! tests' repositories and packages, which belong to the test files that use them.

use std::fs::File;
use std::os::unix::io::AsRawFd;

/// The lock file, in the temp dir so that every checkout and every test binary on the
/// machine share it. The name predates this module (it was the playbook tests' own
/// lock) and is kept so that older checkouts still exclude newer ones.
const LOCK_FILE: &str = "dynserv-playbook-apt.lock";

/// Serialises the tests that change the host's apt configuration, run apt-get or
/// install packages with dpkg: apt and dpkg take their own locks and fail at once
/// when they are held, and a test repository must never show up in another test's
/// `apt-get update`.
///
/// Held until dropped; an exclusive `flock(2)` on a file in the temp dir, so a test
/// that crashes releases it with its process.
#[derive(Debug)]
pub struct AptLock {
    /// Holding the locked file holds the lock; closing it releases it.
    _file: File,
}

impl AptLock {
    /// Waits for the lock and takes it; panics when the lock file cannot be opened.
    pub fn acquire() -> AptLock {
        let path = std::env::temp_dir().join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening the apt lock file {}: {e}", path.display()));
        // SAFETY: flock(2) on a descriptor we own; released when the file is closed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
        AptLock { _file: file }
    }
}
