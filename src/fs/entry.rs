//! Names: where a name lives (through the redirect table), lookup, and the
//! operations that add one (mknod, mkdir, symlink, link). Every creation
//! goes through `new_entry` (routing.rs); renames are rename.rs's, removals
//! unlink.rs's.

use std::borrow::Cow;
use std::ffi::{CStr, OsStr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::CasaFs;
use super::made::Made;
use crate::creds::{self, Caller};
use crate::inode::{Inode, ROOT_ID};
use crate::redirect::Redirect;
use crate::sys::{self, Errno, Res, cname};

/// Where a name lives in the backing store, after consulting redirects.
pub(super) struct Located<'a> {
    pub dir: Arc<Inode>,
    /// The name asked for, borrowed, or its name in an area.
    pub name: Cow<'a, CStr>,
    pub redirect: Option<Redirect>,
    /// A routed object's attributes, as casafs found it in its area.
    pub st: Option<libc::stat>,
}

impl CasaFs {
    /// Resolves `name` in `dir` through the redirect table. A redirect whose
    /// object is gone (removed in the target area directly) is dropped.
    pub(super) fn locate<'a>(&self, dir: &Arc<Inode>, name: &'a CStr) -> Res<Located<'a>> {
        if let Some(r) = self.routing.redirects.get(dir, name) {
            let area = self.routing.areas.get(r.area).ok_or(Errno::EIO)?;
            let adir = area.dir();
            let afd = adir.dir_fd()?;
            match creds::as_root(|| sys::stat_at(afd.as_raw_fd(), &r.tname)) {
                // Its name in the area now names another object (looked at
                // again: a rename onto the routed name may just have
                // given it this one).
                Ok(st)
                    if st.st_ino != r.ino
                        && crate::fstype::keeps_inode_numbers(area.fs_type)
                        && self
                            .routing
                            .redirects
                            .get(dir, name)
                            .is_some_and(|r| r.ino != st.st_ino) =>
                {
                    self.routing.redirects.remove(dir, name);
                }
                // Renamed or removed through another host, which recorded
                // its new origin on the object: not this name's any more.
                Ok(_) if self.moved_elsewhere(&afd, &r, dir, name) => {
                    self.routing.redirects.remove(dir, name);
                }
                Ok(st) => {
                    return Ok(Located {
                        dir: adir.clone(),
                        name: Cow::Owned(r.tname.clone()),
                        redirect: Some(r),
                        st: Some(st),
                    });
                }
                Err(Errno::ENOENT) => {
                    self.routing.redirects.remove(dir, name);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Located {
            dir: dir.clone(),
            name: Cow::Borrowed(name),
            redirect: None,
            st: None,
        })
    }

    pub(super) fn do_lookup(&self, parent: u64, name: &OsStr) -> Res<(Arc<Inode>, libc::stat)> {
        // Sent only by the kernel's file-handle code (export.rs).
        match name.as_encoded_bytes() {
            b"." => return self.lookup_self(parent),
            b".." => return self.lookup_parent(parent),
            _ => {}
        }
        let p = self.inodes.get(parent)?;
        let name = cname(name)?;
        if parent == ROOT_ID && super::is_reserved_root_name(&name) {
            return Err(Errno::ENOENT);
        }
        let mut loc = self.locate(&p, &name)?;
        let st = match loc.st {
            Some(st) => st,
            None => match sys::stat_at(loc.dir.dir_fd()?.as_raw_fd(), &loc.name) {
                Ok(st) => st,
                // Another daemon (another host) may have routed it: only
                // a name that is not there costs a look at the rules.
                Err(Errno::ENOENT) => match self.routed_elsewhere(&p, &name)? {
                    Some(found) => {
                        let st = found.st.ok_or(Errno::ENOENT)?;
                        loc = found;
                        st
                    }
                    None => return Err(Errno::ENOENT),
                },
                Err(e) => return Err(e),
            },
        };
        let in_area = loc.dir.in_area || self.routing.is_area_root(&st);
        Ok((self.inodes.remember(&loc.dir, &loc.name, &st, in_area), st))
    }

    pub(super) fn do_mknod(
        &self,
        made: Made,
        parent: u64,
        name: &OsStr,
        rdev: u32,
    ) -> Res<(Arc<Inode>, libc::stat)> {
        let p = self.inodes.get(parent)?;
        let name = cname(name)?;
        let fmt = made.mode & libc::S_IFMT;
        let mk = |d: RawFd, n: &CStr, mode: u32| sys::mknod_at(d, n, fmt | mode, rdev as u64);
        let (i, st, ()) = self.new_entry(Some(made), &p, &name, false, &mk)?;
        Ok((i, st))
    }

    pub(super) fn do_mkdir(
        &self,
        made: Made,
        parent: u64,
        name: &OsStr,
    ) -> Res<(Arc<Inode>, libc::stat)> {
        let p = self.inodes.get(parent)?;
        let name = cname(name)?;
        let made = Made {
            mode: libc::S_IFDIR | (made.mode & 0o7777),
            ..made
        };
        let mk = |d: RawFd, n: &CStr, mode: u32| sys::mkdir_at(d, n, mode & 0o7777);
        let (i, st, ()) = self.new_entry(Some(made), &p, &name, true, &mk)?;
        Ok((i, st))
    }

    pub(super) fn do_symlink(
        &self,
        who: Caller,
        parent: u64,
        name: &OsStr,
        target: &std::path::Path,
    ) -> Res<(Arc<Inode>, libc::stat)> {
        let p = self.inodes.get(parent)?;
        let name = cname(name)?;
        let target = sys::cpath(target)?;
        let mk = |d: RawFd, n: &CStr, _: u32| sys::symlink_at(&target, d, n);
        let made = Made {
            who,
            mode: libc::S_IFLNK | 0o777,
            umask: 0,
        };
        let (i, st, ()) = self.new_entry(Some(made), &p, &name, false, &mk)?;
        Ok((i, st))
    }

    pub(super) fn do_link(
        &self,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
    ) -> Res<(Arc<Inode>, libc::stat)> {
        let inode = self.inodes.get(ino)?;
        let np = self.inodes.get(newparent)?;
        let newname = cname(newname)?;
        // The object itself, by a descriptor checked to be it: a routed link
        // is made as root, and a name could be swapped under it meanwhile.
        let obj = inode.path_fd()?;
        if !inode.same(&sys::fstat(obj.as_raw_fd())?) {
            return Err(Errno::ENOENT);
        }
        // The /proc form: AT_EMPTY_PATH would need a capability.
        let mk = |d: RawFd, n: &CStr, _: u32| {
            let from = sys::proc_path(obj.as_raw_fd());
            sys::link_at(libc::AT_FDCWD, &from, d, n, libc::AT_SYMLINK_FOLLOW)
        };
        inode.linked.store(true, Relaxed);
        let (i, st, ()) = self.new_entry(None, &np, &newname, false, &mk)?;
        Ok((i, st))
    }
}
