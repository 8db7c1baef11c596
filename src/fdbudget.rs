//! How the daemon's descriptors are shared out. Every open file, cached
//! directory and pinned object costs the daemon one descriptor, and the
//! daemon may be held to the limit it was started with (without
//! `CAP_SYS_RESOURCE` it cannot raise the hard limit): each use gets a
//! share of the limit it actually has, so that no use, and no user, can
//! leave the others without.

use std::sync::OnceLock;

/// The daemon's descriptor limit, read once (after `daemon::raise_nofile`,
/// which runs before anything is served).
fn limit() -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
            usize::try_from(rl.rlim_cur).unwrap_or(usize::MAX)
        } else {
            1024
        }
    })
}

/// Open files and directories of one user (not root's: the operator's).
pub fn handles_per_user() -> usize {
    (limit() / 8).max(16)
}

/// Open files and directories of all users together (not root's): with
/// the cached directories and the pins, at most seven eighths of the
/// limit, the rest left for root and casafs's own work however many users
/// hold their share.
pub fn handles_of_users() -> usize {
    (limit() * 3 / 8).max(handles_per_user())
}

/// Directories whose `O_PATH` descriptor is kept; the others are reopened
/// through their parent.
pub fn cached_dirs() -> usize {
    (limit() / 4).min(16_384)
}

/// Objects kept reachable without a name, in all.
pub fn pins() -> usize {
    (limit() / 4).min(65_536)
}

/// Pins made by the requests of one user (not root's).
pub fn pins_per_user() -> usize {
    pins() / 8
}

/// Pins kept only so that the backing frees a removed file when the kernel
/// lets go of it rather than inside the unlink. They hold space the user
/// freed, for as long as the kernel's forget takes to arrive (longer when
/// the CPUs are saturated): few, and past them a removal frees at once.
pub fn freed_at_forget() -> usize {
    (pins() / 8).min(256)
}
