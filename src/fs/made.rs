//! What a creation gives the object it makes: owner, group, mode and ACLs.
//! In place the backing decides, since casafs creates as the caller. An
//! object routed into an area is created there by casafs, as root, and
//! must come out as the in-place creation would have left it; this module
//! says how. (What needs a privilege, a device node or a hard link to
//! another's file, the kernel refuses before casafs sees it.)

use std::ffi::CStr;
use std::os::fd::{AsRawFd, RawFd};

use super::acl;
use crate::creds::{self, Caller};
use crate::sys::{self, Errno, Res};

/// A creation asked for by a request.
#[derive(Clone, Copy)]
pub(super) struct Made {
    pub who: Caller,
    /// The mode asked for, with the file type bits where the request has
    /// them (mknod).
    pub mode: u32,
    /// The caller's umask: the kernel leaves it to casafs (FUSE_DONT_MASK)
    /// so that a default ACL can take its place, as it does natively.
    pub umask: u32,
}

/// How a routed object is handed over to its creator.
pub(super) struct Owner {
    uid: u32,
    gid: u32,
    /// Permission and set-ID bits; None for a symlink, which has none.
    pub mode: u32,
    symlink: bool,
    is_dir: bool,
    access_acl: Option<Vec<u8>>,
    default_acl: Option<Vec<u8>>,
}

impl Made {
    /// The mode to create with in place, as the caller: the backing applies
    /// the umask (or the directory's default ACL instead) once this thread
    /// has the caller's umask; where it cannot, casafs applies the umask.
    pub fn in_place_mode(&self) -> u32 {
        if creds::set_umask(self.umask) {
            self.mode
        } else {
            self.mode & !(self.umask & 0o777)
        }
    }

    /// How the object goes to the caller when made for the directory `dir`
    /// (whose group it gets if `setgid`). Decided as the caller, whose
    /// groups count.
    pub fn owner_in(&self, dir: RawFd, setgid: Option<u32>, is_dir: bool) -> Res<Owner> {
        let symlink = self.mode & libc::S_IFMT == libc::S_IFLNK;
        let inherited = match symlink {
            true => None,
            false => match creds::as_root(|| acl::default_of(dir))? {
                None => None,
                Some(d) => {
                    let (m, a) = acl::inherit(&d, self.mode).ok_or(Errno::EIO)?;
                    Some((m, a, d))
                }
            },
        };
        let (mut mode, access_acl, default_acl) = match inherited {
            Some((m, a, d)) => (m & 0o7777, a, is_dir.then_some(d)),
            None => (self.mode & 0o7777 & !(self.umask & 0o777), None, None),
        };
        let gid = setgid.unwrap_or(self.who.gid);
        if is_dir && setgid.is_some() {
            // A directory made in a setgid directory is setgid itself.
            mode |= libc::S_ISGID;
        } else if mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP
            && !creds::in_group(gid)
        {
            // The kernel drops a set-group-ID bit for a group its creator
            // is not in.
            mode &= !libc::S_ISGID;
        }
        Ok(Owner {
            uid: self.who.uid,
            gid,
            mode,
            symlink,
            is_dir,
            access_acl,
            default_acl,
        })
    }
}

impl Owner {
    /// Gives `name` in the area directory `area` (just made by casafs, as
    /// root; the area is writable by root only, so the name is casafs's)
    /// to its creator. Everything goes through one descriptor of the new
    /// object. Returns its attributes.
    pub fn hand_over(&self, area: RawFd, name: &CStr, st: libc::stat) -> Res<libc::stat> {
        let obj = sys::open_at(area, name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let fd = obj.as_raw_fd();
        let now = sys::fstat(fd)?;
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
            return Err(Errno::ENOENT);
        }
        if (now.st_uid, now.st_gid) != (self.uid, self.gid) {
            let chown = || sys::chown_at(fd, c"", self.uid, self.gid, libc::AT_EMPTY_PATH);
            match creds::charging(chown) {
                Ok(()) => {}
                // Filesystems without ownership (ntfs-3g without a user
                // mapping, vfat) refuse chown; the object stays as mapped.
                Err(Errno::EPERM | Errno::EOPNOTSUPP | Errno::ENOSYS) => {}
                Err(e) => return Err(e),
            }
        }
        if !self.symlink {
            // After the chown, which clears set-ID bits.
            let cur = sys::fstat(fd)?;
            if cur.st_mode & 0o7777 != self.mode {
                match sys::chmod_fd(fd, self.mode) {
                    Ok(()) | Err(Errno::EPERM) => {}
                    Err(e) => return Err(e),
                }
            }
            acl::set(fd, acl::ACCESS, self.access_acl.as_deref())?;
            if self.is_dir {
                acl::set(fd, acl::DEFAULT, self.default_acl.as_deref())?;
            }
        }
        sys::fstat(fd)
    }
}
