//! The graveyard: where an unlinked file that is still open waits for its
//! last close, so that the backing filesystem never sees an unlink of an
//! open file (ntfs-3g/libfuse would rename it to `.fuse_hidden*`, NFS to
//! `.nfsXXXX`).
//!
//! Layout: `SOURCE/.casafs-graveyard/<host>.<pid>.<start>/<n>`, on the same
//! filesystem as the tree so burying is a rename. Each mount owns one
//! subdirectory, so several hosts or daemons sharing a tree never touch each
//! other's entries. A daemon holds an flock on its subdirectory for as long
//! as it lives; a subdirectory of this host that nobody holds is a stopped
//! daemon's and is emptied at the next mount. (A pid alone would not do:
//! after a reboot the pid of a crashed daemon often belongs to another
//! process.) The subdirectory is made under a `.new.` name (no host name
//! has a dot here, so none can be taken for one) and gets its
//! real one only once locked, so a mount starting next door never takes a
//! daemon that is starting for a stopped one.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::hosts::NEW_PREFIX;
use crate::inode::Inode;
use crate::sys::{self, Res};

pub const GRAVEYARD_DIR: &str = ".casafs-graveyard";
pub const GRAVEYARD_CNAME: &CStr = c".casafs-graveyard";

pub struct Graveyard {
    /// This mount's own subdirectory.
    pub dir: Arc<Inode>,
    pub name: String,
    /// This daemon's host identity.
    pub host: String,
    /// How long another host's daemon counts as alive after its lease.
    pub lease: Duration,
    counter: AtomicU64,
    /// Holds the flock that tells other daemons this one is alive; its
    /// modification time is this daemon's lease.
    lock: OwnedFd,
}

/// Whether a daemon of this host still holds `fd`'s directory. Where the
/// filesystem has no locks, falls back to whether `pid` lives.
fn held_by_a_daemon(fd: &OwnedFd, pid: i32) -> bool {
    if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return false;
    }
    sys::last_errno() == sys::Errno::EAGAIN || pid_alive(pid)
}

fn pid_alive(pid: i32) -> bool {
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

pub use crate::tree::{list_dir, remove_tree_at};

/// Empties and removes the graveyards left by dead daemons in the
/// graveyard base directory: of this host (`host`) when no daemon holds
/// them, of another host only once its daemon neither holds its lock nor
/// renewed its lease for `lease` (`now`: this daemon's lease, just
/// renewed). Returns the number of entries removed.
fn clean_stale(base: &OwnedFd, host: &str, now: Option<i128>, lease: Duration) -> u64 {
    let mut cleaned = 0;
    for entry in list_dir(base).unwrap_or_default() {
        let s = String::from_utf8_lossy(entry.to_bytes()).into_owned();
        let Some((starting, h, pid)) = crate::hosts::parse_daemon(&s) else {
            continue;
        };
        let ours = h == host;
        if !ours && crate::hosts::other_alive(base, &entry, now, lease) {
            continue;
        }
        if starting {
            // Still empty: a daemon that died while starting left it,
            // or one is starting right now (and its pid lives).
            if !ours || !pid_alive(pid) {
                let _ = sys::unlink_at(base.as_raw_fd(), &entry, libc::AT_REMOVEDIR);
            }
            continue;
        }
        if let Ok(fd) = sys::open_at(
            base.as_raw_fd(),
            &entry,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        ) {
            if ours && held_by_a_daemon(&fd, pid) {
                continue;
            }
            let names = list_dir(&fd).unwrap_or_default();
            // ntfs-3g's own: a grave still open when it was removed (the
            // dead daemon's clients can hold one through the kernel) is
            // hidden there, and ntfs-3g removes it at its last close.
            for n in names
                .iter()
                .filter(|n| !n.to_bytes().starts_with(b".fuse_hidden"))
            {
                let freed = remove_tree_at(fd.as_raw_fd(), n).unwrap_or(0);
                tracing::info!(
                    "graveyard: removed {}/{}/{} left by a stopped daemon{} ({freed} bytes)",
                    GRAVEYARD_DIR,
                    s,
                    n.to_string_lossy(),
                    if ours { "" } else { " of another host" }
                );
                cleaned += 1;
            }
            // Only the directory judged dead: the name may stand for
            // another one by now.
            let judged = sys::fstat(fd.as_raw_fd()).map(|st| (st.st_dev, st.st_ino));
            let named = sys::stat_at(base.as_raw_fd(), &entry).map(|st| (st.st_dev, st.st_ino));
            if judged.is_ok() && judged == named {
                let _ = sys::unlink_at(base.as_raw_fd(), &entry, libc::AT_REMOVEDIR);
            }
        }
    }
    cleaned
}

impl Graveyard {
    /// Creates this mount's graveyard below the source root and empties the
    /// ones left by dead daemons of this host. Returns the graveyard and
    /// the number of stale entries removed.
    pub fn open(root_fd: RawFd, host: &str, lease: Duration) -> Res<(Graveyard, u64)> {
        Self::open_between(root_fd, host, lease, &|| {})
    }

    /// `open`, with `meanwhile` run between finding the base directory and
    /// making this mount's graveyard in it (where a test plays the daemon
    /// that stops).
    fn open_between(
        root_fd: RawFd,
        host: &str,
        lease: Duration,
        meanwhile: &dyn Fn(),
    ) -> Res<(Graveyard, u64)> {
        // A daemon that stops removes the base directory once it holds no
        // graveyard (`close`): one stopping while this one starts (a
        // remount, another host) can take it away between our steps.
        let mut tries = 0;
        loop {
            match Self::open_once(root_fd, host, lease, meanwhile) {
                Err(sys::Errno::ENOENT) if tries < 20 => tries += 1,
                r => return r,
            }
        }
    }

    fn open_once(
        root_fd: RawFd,
        host: &str,
        lease: Duration,
        meanwhile: &dyn Fn(),
    ) -> Res<(Graveyard, u64)> {
        match sys::mkdir_at(root_fd, GRAVEYARD_CNAME, 0o700) {
            Ok(()) | Err(sys::Errno::EEXIST) => {}
            Err(e) => return Err(e),
        }
        let base = sys::open_at(
            root_fd,
            GRAVEYARD_CNAME,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        // Only casafs may reach into it: a directory a user made under
        // that name before casafs ever ran is not casafs's graveyard.
        match crate::areas::secure(base.as_raw_fd()) {
            Ok(None) => {}
            Ok(Some(note)) => tracing::warn!("graveyard {GRAVEYARD_DIR}: {note}"),
            Err(e) => {
                tracing::error!("graveyard {GRAVEYARD_DIR}: {}", e.0);
                return Err(sys::Errno::EPERM);
            }
        }
        meanwhile();
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!("{host}.{}.{start:x}", std::process::id());
        let cname = CString::new(name.clone()).map_err(|_| sys::Errno::EINVAL)?;
        let new = CString::new(format!("{NEW_PREFIX}{name}")).map_err(|_| sys::Errno::EINVAL)?;
        sys::mkdir_at(base.as_raw_fd(), &new, 0o700)?;
        let lock = sys::open_at(
            base.as_raw_fd(),
            &new,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        // Writable by everyone, so that an unlink buries as the caller
        // (`bury`); reachable by nobody but casafs, through its descriptor,
        // since the base directory lets only root in.
        match sys::fchmod(lock.as_raw_fd(), 0o733) {
            Ok(()) | Err(sys::Errno::EPERM) => {}
            Err(e) => return Err(e),
        }
        // Where the filesystem has no locks (NFS has none on a directory),
        // the pid check stands in on this host and the lease on others.
        // Another daemon may be probing it this instant: once more then.
        for tries in 0.. {
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let e = sys::last_errno();
            if e != sys::Errno::EAGAIN || tries == 50 {
                tracing::debug!("graveyard: no flock here ({e:?})");
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        sys::rename_unique(base.as_raw_fd(), &new, base.as_raw_fd(), &cname)?;
        // Only now, with a lease of its own to measure others' against.
        let now = crate::hosts::renew(lock.as_raw_fd());
        let cleaned = clean_stale(&base, host, now, lease);
        let fd = sys::open_at(
            base.as_raw_fd(),
            &cname,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        let st = sys::fstat(fd.as_raw_fd())?;
        let dir = Inode::new_held(crate::inode::GRAVEYARD_ID, fd, &st, true);
        Ok((
            Graveyard {
                dir,
                name,
                host: host.to_string(),
                lease,
                counter: AtomicU64::new(0),
                lock,
            },
            cleaned,
        ))
    }

    /// Moves `name` in `parent` into the graveyard; returns its grave name.
    /// Done as the caller who unlinks: its own directory is writable by
    /// everyone (`open`), so the backing checks what it checks of an unlink
    /// there (sticky directories, ACLs) and nothing else.
    pub fn bury(&self, parent: RawFd, name: &CStr) -> Res<CString> {
        let gdir = self.dir.dir_fd()?;
        loop {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            let gname = CString::new(format!("{n:x}")).map_err(|_| sys::Errno::EINVAL)?;
            match sys::rename_unique(parent, name, gdir.as_raw_fd(), &gname) {
                Ok(()) => return Ok(gname),
                Err(sys::Errno::EEXIST) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Bytes this mount's graveyard holds now.
    pub fn bytes(&self) -> u64 {
        crate::creds::as_root(|| self.bytes_now())
    }

    fn bytes_now(&self) -> u64 {
        let Ok(d) = self.dir.dir_fd() else {
            return 0;
        };
        let Ok(fd) = sys::open_at(d.as_raw_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
        else {
            return 0;
        };
        // Two names of one file (hard links both unlinked) hold it once.
        let mut seen = std::collections::HashSet::new();
        list_dir(&fd)
            .unwrap_or_default()
            .iter()
            .filter_map(|n| sys::stat_at(fd.as_raw_fd(), n).ok())
            .filter(|st| seen.insert(st.st_ino))
            .map(|st| st.st_size as u64)
            .sum()
    }

    /// Deletes buried names for good (after their last close), as root:
    /// names in the graveyard are casafs's alone.
    pub fn release(&self, names: &[CString]) {
        let Ok(gdir) = self.dir.dir_fd() else {
            return;
        };
        crate::creds::as_root(|| {
            for n in names {
                if let Err(e) = sys::unlink_at(gdir.as_raw_fd(), n, 0) {
                    tracing::warn!("graveyard: cannot remove {}: {e:?}", n.to_string_lossy());
                }
            }
        })
    }

    /// Renews this daemon's lease (see `hosts`).
    pub fn renew_lease(&self) {
        crate::creds::as_root(|| crate::hosts::renew(self.lock.as_raw_fd()));
    }

    /// Whether a daemon of `host` (another host's identity) is alive: any
    /// of its graveyards is held or has a lease younger than `lease`.
    pub fn host_alive(&self, root_fd: RawFd, host: &str) -> bool {
        crate::creds::as_root(|| {
            let Ok(base) = sys::open_at(
                root_fd,
                GRAVEYARD_CNAME,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            ) else {
                return false;
            };
            let now = crate::hosts::renew(self.lock.as_raw_fd());
            list_dir(&base).unwrap_or_default().iter().any(|n| {
                let s = String::from_utf8_lossy(n.to_bytes());
                crate::hosts::parse_daemon(&s).is_some_and(|(_, h, _)| h == host)
                    && crate::hosts::other_alive(&base, n, now, self.lease)
            })
        })
    }

    /// Empties and removes this mount's graveyard (clean shutdown).
    pub fn close(&self, root_fd: RawFd) {
        crate::creds::as_root(|| self.close_now(root_fd))
    }

    fn close_now(&self, root_fd: RawFd) {
        if let Ok(base) = sys::open_at(
            root_fd,
            GRAVEYARD_CNAME,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        ) && let Ok(c) = CString::new(self.name.clone())
        {
            let _ = remove_tree_at(base.as_raw_fd(), &c);
            // Once more for those left by dead daemons: one that could not
            // be emptied at start (a grave still open) may be now.
            let now = crate::hosts::renew(self.lock.as_raw_fd());
            clean_stale(&base, &self.host, now, self.lease);
            // The base directory goes too when no other mount uses it.
            drop(base);
            let _ = sys::unlink_at(root_fd, GRAVEYARD_CNAME, libc::AT_REMOVEDIR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daemon starting while another one stops (which removes the base
    /// directory when it is empty) still gets its graveyard.
    #[test]
    fn a_graveyard_opens_while_another_daemon_removes_the_base() {
        let base =
            std::env::temp_dir().join(format!("casafs-graveyard-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let c = CString::new(base.as_os_str().as_encoded_bytes()).unwrap();
        let root = sys::open_at(libc::AT_FDCWD, &c, libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
        // A daemon that stops removes the base, now empty, just after this
        // one found it.
        let removed = std::sync::atomic::AtomicBool::new(false);
        let stopping = || {
            if !removed.swap(true, Ordering::Relaxed) {
                sys::unlink_at(root.as_raw_fd(), GRAVEYARD_CNAME, libc::AT_REMOVEDIR).unwrap();
            }
        };
        let opened =
            Graveyard::open_between(root.as_raw_fd(), "h", Duration::from_secs(300), &stopping);
        assert!(removed.load(Ordering::Relaxed));
        let (g, _) = opened.unwrap();
        g.close(root.as_raw_fd());
        let _ = std::fs::remove_dir_all(&base);
    }

    /// The graveyard on its own, over a plain directory: a buried file
    /// leaves its directory at once, is counted until released, and a
    /// clean close leaves nothing behind.
    #[test]
    fn a_buried_file_is_counted_until_released_and_close_leaves_nothing() {
        let base = std::env::temp_dir().join(format!("casafs-graveyard-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("open.ms"), b"12345").unwrap();
        let c = CString::new(base.as_os_str().as_encoded_bytes()).unwrap();
        let root = sys::open_at(libc::AT_FDCWD, &c, libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
        let (g, cleaned) =
            Graveyard::open(root.as_raw_fd(), "h", Duration::from_secs(300)).unwrap();
        assert_eq!(cleaned, 0);

        let grave = g.bury(root.as_raw_fd(), c"open.ms").unwrap();
        assert!(!base.join("open.ms").exists());
        assert_eq!(g.bytes(), 5);
        g.release(&[grave]);
        assert_eq!(g.bytes(), 0);

        g.close(root.as_raw_fd());
        let left: Vec<_> = std::fs::read_dir(&base)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let _ = std::fs::remove_dir_all(&base);
    }

    /// Another host's graveyard is left alone while its daemon holds its
    /// lock or renewed its lease, and emptied once both lapsed.
    #[test]
    fn another_hosts_graveyard_goes_only_once_its_lock_and_lease_lapsed() {
        let dir = sys::TestDir::new("gy-hosts");
        let gy = dir.0.join(GRAVEYARD_DIR);
        for d in ["b.99.0", "c.98.0"] {
            std::fs::create_dir_all(gy.join(d)).unwrap();
            std::fs::write(gy.join(d).join("0"), b"open elsewhere").unwrap();
        }
        let root = dir.open("", libc::O_RDONLY | libc::O_DIRECTORY);
        // c's daemon is alive and holds its lock.
        let cpath = CString::new(gy.join("c.98.0").as_os_str().as_encoded_bytes()).unwrap();
        let clock = sys::open_at(
            libc::AT_FDCWD,
            &cpath,
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .unwrap();
        assert_eq!(
            unsafe { libc::flock(clock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
            0
        );
        let lease = Duration::from_secs(1);
        let (g, cleaned) = Graveyard::open(root.as_raw_fd(), "a", lease).unwrap();
        assert_eq!(cleaned, 0, "fresh leases");
        assert!(g.host_alive(root.as_raw_fd(), "b") && g.host_alive(root.as_raw_fd(), "c"));
        g.close(root.as_raw_fd());
        assert!(gy.join("b.99.0/0").exists());
        std::thread::sleep(Duration::from_millis(1200));
        let (g, cleaned) = Graveyard::open(root.as_raw_fd(), "a", lease).unwrap();
        assert_eq!(cleaned, 1, "b lapsed");
        assert!(!gy.join("b.99.0").exists());
        assert!(gy.join("c.98.0/0").exists(), "c holds its lock");
        assert!(!g.host_alive(root.as_raw_fd(), "b"));
        assert!(g.host_alive(root.as_raw_fd(), "c"));
        g.close(root.as_raw_fd());
        drop(clock);
    }
}
