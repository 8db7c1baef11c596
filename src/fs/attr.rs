//! Attributes: getattr, setattr, readlink, statfs, access.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use fuser::TimeOrNow;

use super::CasaFs;
use crate::inode::{Anchor, Inode};
use crate::sys::{self, Errno, Res};

impl CasaFs {
    /// The attributes of `ino`, and the inode (for how long they may be
    /// kept).
    pub(super) fn do_getattr(&self, ino: u64, fh: Option<u64>) -> Res<(libc::stat, Arc<Inode>)> {
        if let Some(fh) = fh
            && let Ok(h) = self.handles.get(fh)
            && let Ok(fd) = h.fd()
        {
            return Ok((sys::fstat(fd)?, h.inode.clone()));
        }
        let inode = self.inodes.get(ino)?;
        Ok((inode.stat()?, inode))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn do_setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<u64>,
    ) -> Res<(libc::stat, Arc<Inode>)> {
        let inode = self.inodes.get(ino)?;
        let handle = fh.and_then(|fh| self.handles.get(fh).ok());
        let hfd = handle.as_ref().and_then(|h| h.fd().ok());
        let is_lnk = inode.fmt == libc::S_IFLNK;
        let apply = |anchor: &Anchor| -> Res<()> {
            if uid.is_some() || gid.is_some() {
                let u = uid.unwrap_or(u32::MAX);
                let g = gid.unwrap_or(u32::MAX);
                match anchor {
                    Anchor::Fd(fd) => {
                        sys::chown_at(fd.as_raw_fd(), c"", u, g, libc::AT_EMPTY_PATH)?
                    }
                    Anchor::At(d, n) => {
                        sys::chown_at(d.as_raw_fd(), n, u, g, libc::AT_SYMLINK_NOFOLLOW)?
                    }
                }
            }
            if let Some(m) = mode {
                if is_lnk {
                    return Err(Errno::EOPNOTSUPP);
                }
                match (hfd, anchor) {
                    (Some(fd), _) => sys::fchmod(fd, m & 0o7777)?,
                    (None, Anchor::Fd(fd)) => sys::chmod_fd(fd.as_raw_fd(), m & 0o7777)?,
                    (None, Anchor::At(d, n)) => {
                        self.verify(&inode, anchor)?;
                        sys::chmod_at(d.as_raw_fd(), n, m & 0o7777)?
                    }
                }
            }
            if let Some(sz) = size {
                match hfd {
                    Some(fd)
                        if handle
                            .as_ref()
                            .is_some_and(|h| !h.passthrough || writable(fd)) =>
                    {
                        match sys::ftruncate(fd, sz) {
                            Ok(()) => {}
                            // A read-only handle (open O_RDONLY then ftruncate
                            // is refused by the kernel before us; this is the
                            // truncate(2)-with-an-open-handle case).
                            Err(Errno::EBADF) | Err(Errno::EINVAL) => {
                                let f = anchor.open(libc::O_WRONLY)?;
                                sys::ftruncate(f.as_raw_fd(), sz)?
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    _ => {
                        let f = anchor.open(libc::O_WRONLY)?;
                        let st = sys::fstat(f.as_raw_fd())?;
                        if !inode.same(&st) {
                            return Err(Errno::ENOENT);
                        }
                        sys::ftruncate(f.as_raw_fd(), sz)?
                    }
                }
            }
            if atime.is_some() || mtime.is_some() {
                let times = [timespec(atime), timespec(mtime)];
                match (hfd, anchor) {
                    (Some(fd), _) if !is_lnk => sys::futimens(fd, &times)?,
                    (_, Anchor::At(d, n)) => {
                        sys::utimens_at(d.as_raw_fd(), n, &times, libc::AT_SYMLINK_NOFOLLOW)?
                    }
                    (_, Anchor::Fd(fd)) => {
                        if is_lnk {
                            return Err(Errno::EOPNOTSUPP);
                        }
                        sys::utimens_at(libc::AT_FDCWD, &sys::proc_path(fd.as_raw_fd()), &times, 0)?
                    }
                }
            }
            Ok(())
        };
        inode.on_object(apply)?;
        // Each change above went through the backing filesystem, whose
        // reply refreshed its cache: no fresh stat (on ntfs-3g one more
        // round trip per chmod, chown, utimes, truncate). A request that
        // changed nothing gets a fresh one.
        let changed = uid.is_some()
            || gid.is_some()
            || mode.is_some()
            || size.is_some()
            || atime.is_some()
            || mtime.is_some();
        let st = match (hfd, changed) {
            (Some(fd), true) => sys::fstat_cached(fd),
            (Some(fd), false) => sys::fstat(fd),
            (None, true) => inode.stat_cached(),
            (None, false) => inode.stat(),
        }?;
        Ok((st, inode))
    }

    /// Confirms a by-name anchor still names this inode.
    pub(super) fn verify(&self, inode: &Inode, anchor: &Anchor) -> Res<()> {
        let st = anchor.stat()?;
        if inode.same(&st) {
            Ok(())
        } else {
            Err(Errno::ENOENT)
        }
    }

    pub(super) fn do_readlink(&self, ino: u64) -> Res<Vec<u8>> {
        let inode = self.inodes.get(ino)?;
        match inode.anchor()? {
            Anchor::At(d, n) => sys::readlink_at(d.as_raw_fd(), &n),
            Anchor::Fd(fd) => sys::readlink_at(fd.as_raw_fd(), c""),
        }
    }

    pub(super) fn do_statfs(&self) -> Res<libc::statvfs> {
        let fd = self.root_fd()?;
        sys::fstatvfs(fd.as_raw_fd())
    }

    pub(super) fn do_access(&self, ino: u64, mask: i32) -> Res<()> {
        let inode = self.inodes.get(ino)?;
        let st = inode.stat()?;
        if mask & libc::X_OK != 0
            && st.st_mode & libc::S_IFMT != libc::S_IFDIR
            && st.st_mode & 0o111 == 0
        {
            return Err(Errno::EACCES);
        }
        Ok(())
    }
}

/// `st` of `name` in `dir`, or, where its link count may lag behind (the
/// cached count after a hard link made through casafs; see
/// `Inode::linked`), the backing's own.
pub(super) fn fresh_links(v: &Inode, dir: RawFd, name: &CStr, st: libc::stat) -> Res<libc::stat> {
    if st.st_nlink <= 1 && v.linked.load(Relaxed) {
        sys::stat_fresh_at(dir, name)
    } else {
        Ok(st)
    }
}

pub(super) fn writable(fd: RawFd) -> bool {
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    fl >= 0 && fl & libc::O_ACCMODE != libc::O_RDONLY
}

pub(super) fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => libc::timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as i64,
            },
            Err(e) => {
                let d = e.duration();
                // Wrapping: 2^63 seconds before the epoch is i64::MIN,
                // whose negation does not fit until it wraps back.
                let mut secs = (d.as_secs() as i64).wrapping_neg();
                let mut nsec = -(d.subsec_nanos() as i64);
                if nsec < 0 {
                    secs = secs.wrapping_sub(1);
                    nsec += 1_000_000_000;
                }
                libc::timespec {
                    tv_sec: secs,
                    tv_nsec: nsec,
                }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn the_earliest_times_there_are_reach_the_backing_unchanged() {
        let earliest = UNIX_EPOCH - Duration::from_secs(1 << 63);
        for (t, secs, nsec) in [
            (earliest, i64::MIN, 0),
            (earliest + Duration::from_nanos(1), i64::MIN, 1),
            (UNIX_EPOCH - Duration::from_nanos(1), -1, 999_999_999),
        ] {
            let ts = timespec(Some(TimeOrNow::SpecificTime(t)));
            assert_eq!((ts.tv_sec, ts.tv_nsec), (secs, nsec));
        }
    }
}
