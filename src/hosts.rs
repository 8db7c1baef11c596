//! Several hosts on one shared tree: this daemon's host identity, and how
//! one daemon tells whether another host's daemon is alive.
//!
//! Every daemon has a subdirectory of its own in the tree's graveyard base
//! (`graveyard.rs`), named `<host>.<pid>.<start>`, which it holds an flock
//! on for its whole life where the filesystem allows one, and whose
//! modification time it renews (its lease) every quarter of `host_lease`,
//! at most every 30 s. Another host's daemon is alive while it holds its
//! lock or its lease is younger than `host_lease`: both must have lapsed
//! before anything of its is touched. The lock is seen across hosts only
//! where the shared filesystem says so (CephFS does; Lustre only with
//! `-o flock`; NFS locks no directory, so there the lease alone decides),
//! and a lease alone could lapse on a host that only stalled. Ages are
//! measured against this daemon's own lease, renewed just before and read
//! past any attribute cache, so the shared filesystem's clock decides and
//! the hosts' clocks need not agree.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::sys;

/// The machine's host name, as a host identity: dots and slashes (which
/// the graveyard's names use as separators) become `_`.
pub fn this_host() -> String {
    let mut buf = [0u8; 256];
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name: String = String::from_utf8_lossy(&buf[..end])
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// A host identity given as an option: letters, digits, `-` and `_`, at
/// most 64 of them (it is part of file names on the shared tree).
pub fn check_name(v: &str) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(v.to_string())
    } else {
        Err(format!(
            "invalid value '{v}' (a host name of at most 64 letters, digits, '-' and '_')"
        ))
    }
}

/// A daemon's subdirectory name in the graveyard base: whether it is
/// still starting (`.new.` prefix), its host and its pid.
pub fn parse_daemon(name: &str) -> Option<(bool, &str, i32)> {
    let (starting, id) = match name.strip_prefix(NEW_PREFIX) {
        Some(id) => (true, id),
        None => (false, name),
    };
    let mut parts = id.rsplitn(3, '.');
    let (_start, pid, host) = (parts.next()?, parts.next()?, parts.next()?);
    Some((starting, host, pid.parse().ok()?))
}

/// Names of graveyard subdirectories not yet locked by the daemon making
/// them.
pub const NEW_PREFIX: &str = ".new.";

/// How often a daemon renews its lease.
pub fn renew_every(lease: Duration) -> Duration {
    (lease / 4).clamp(Duration::from_millis(250), Duration::from_secs(30))
}

/// Renews the lease of the daemon whose subdirectory `own` is (open for
/// reading) and returns its time now, in nanoseconds, as the shared
/// filesystem keeps it.
pub fn renew(own: RawFd) -> Option<i128> {
    let now = [libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_NOW,
    }; 2];
    let _ = crate::sys::futimens(own, &now);
    synced_mtime(own)
}

/// Whether the daemon whose subdirectory is `name` in the graveyard base
/// `base` is alive, judged from another host: it holds its lock, or its
/// lease (the subdirectory's modification time) is younger than `lease`
/// against `now` (this daemon's own, just renewed).
pub fn other_alive(base: &OwnedFd, name: &CStr, now: Option<i128>, lease: Duration) -> bool {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    let Ok(fd) = sys::open_at(base.as_raw_fd(), name, flags, 0) else {
        // Gone meanwhile, or not a directory: nothing of a live daemon.
        return false;
    };
    // A daemon still starting takes its lock any moment: a probe of it
    // could make it fail to (it is judged by its lease alone).
    let starting = name.to_bytes().starts_with(NEW_PREFIX.as_bytes());
    if !starting
        && unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0
        && sys::last_errno() == sys::Errno::EAGAIN
    {
        return true;
    }
    let (Some(now), Some(then)) = (now, synced_mtime(fd.as_raw_fd())) else {
        return true;
    };
    now - then < lease.as_nanos() as i128
}

/// The modification time of `fd` as the filesystem has it now.
fn synced_mtime(fd: RawFd) -> Option<i128> {
    sys::statx_synced(fd, libc::STATX_MTIME).map(|stx| sys::statx_ns(stx.stx_mtime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_checked_and_daemon_names_parsed() {
        assert_eq!(check_name("node-07_a"), Ok("node-07_a".into()));
        for bad in ["", "a.b", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        let me = this_host();
        assert!(check_name(&me).is_ok(), "{me:?}");
        assert_eq!(parse_daemon("h1.42.1a2b"), Some((false, "h1", 42)));
        assert_eq!(parse_daemon(".new.h-2.7.ff"), Some((true, "h-2", 7)));
        assert_eq!(parse_daemon("junk"), None);
    }

    #[test]
    fn a_lapsed_lease_of_an_unlocked_daemon_is_dead_and_a_locked_one_alive() {
        let dir = sys::TestDir::new("hosts");
        std::fs::create_dir_all(dir.0.join("b.1.0")).unwrap();
        std::fs::create_dir_all(dir.0.join("me.2.0")).unwrap();
        let bfd = dir.open("", libc::O_RDONLY | libc::O_DIRECTORY);
        let own = sys::open_at(bfd.as_raw_fd(), c"me.2.0", libc::O_RDONLY, 0).unwrap();
        let lease = Duration::from_secs(2);
        let now = renew(own.as_raw_fd());
        assert!(other_alive(&bfd, c"b.1.0", now, lease), "fresh lease");
        std::thread::sleep(Duration::from_millis(2100));
        let now = renew(own.as_raw_fd());
        assert!(!other_alive(&bfd, c"b.1.0", now, lease), "lapsed, no lock");
        let theirs = sys::open_at(bfd.as_raw_fd(), c"b.1.0", libc::O_RDONLY, 0).unwrap();
        assert_eq!(
            unsafe { libc::flock(theirs.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
            0
        );
        assert!(
            other_alive(&bfd, c"b.1.0", now, lease),
            "lapsed, but locked"
        );
        assert!(!other_alive(&bfd, c"gone.3.0", now, lease));
    }
}
