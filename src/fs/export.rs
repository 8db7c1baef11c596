//! What the kernel asks of an exportable filesystem (FUSE_EXPORT_SUPPORT):
//! the object of a node id it has forgotten (a lookup of "."), and the
//! parent of a directory (a lookup of ".."). The table of backing handles
//! that makes the first possible is `crate::exports`.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use super::CasaFs;
use crate::creds;
use crate::exports::{self, BackingHandle};
use crate::inode::{Anchor, Inode, ROOT_ID};
use crate::sys::{self, Errno, Res};

impl CasaFs {
    /// The object of `nodeid`, which the kernel may have forgotten: known
    /// still, or opened again by the backing handle kept when the kernel
    /// let go of it. Anything else (a node id casafs never handed out, one
    /// of another filesystem, an object since removed) is ESTALE.
    pub(super) fn lookup_self(&self, nodeid: u64) -> Res<(Arc<Inode>, libc::stat)> {
        if let Ok(i) = self.inodes.get(nodeid) {
            if !i.dead.load(std::sync::atomic::Ordering::Acquire) {
                let st = i.stat()?;
                if i.same(&st) {
                    i.lookups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Ok((i, st));
                }
            }
            return Err(Errno::ESTALE);
        }
        let h = self.exports.get(nodeid).ok_or(Errno::ESTALE)?;
        let root = self.root_fd()?;
        let fd = creds::as_root(|| {
            // open_by_handle_at takes no O_PATH descriptor for its mount.
            let mount = sys::open_at(
                libc::AT_FDCWD,
                &sys::proc_path(root.as_raw_fd()),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NONBLOCK,
                0,
            )?;
            h.open(mount.as_raw_fd())
        })?;
        let st = sys::fstat(fd.as_raw_fd())?;
        // The handle names what it named when kept; the node id must still
        // be that object's (the backing's own generation already turned a
        // reused number away).
        if st.st_dev != self.root.dev || self.inodes.nodeid_for(st.st_dev, st.st_ino) != nodeid {
            return Err(Errno::ESTALE);
        }
        let inode = self.inodes.remember_nameless(fd, &st, false, false);
        Ok((inode, st))
    }

    /// The parent of directory `nodeid`, through its descriptor; the root
    /// is its own parent (the kernel never asks beyond it).
    pub(super) fn lookup_parent(&self, nodeid: u64) -> Res<(Arc<Inode>, libc::stat)> {
        let dir = self.inodes.get(nodeid)?;
        if !dir.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        // The way up from an area's directory or casafs's own leads where
        // the tree does not show (a routed table's backing parent is the
        // area, not the directory it was routed from): no handle of those
        // reconnects.
        if dir.private || dir.in_area {
            return Err(Errno::ESTALE);
        }
        let root = self.inodes.root()?;
        if nodeid == ROOT_ID {
            let st = root.stat()?;
            root.lookups
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok((root, st));
        }
        let dfd = dir.dir_fd()?;
        // casafs's own step, through a descriptor it holds: the kernel asks
        // for the way back up, which is not an access of the caller's. Never
        // into another mount: mounted over itself, the way up from a
        // directory at the top would land on this very mount, whose
        // requests this thread may be the one to serve.
        let up = creds::as_root(|| {
            sys::openat2(
                dfd.as_raw_fd(),
                c"..",
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
                sys::RESOLVE_NO_XDEV,
            )
        });
        let up = match up {
            Err(Errno::EXDEV) if self.settings.source == self.settings.mountpoint => {
                let st = root.stat()?;
                root.lookups
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok((root, st));
            }
            r => r?,
        };
        let st = sys::fstat(up.as_raw_fd())?;
        if root.same(&st) {
            let st = root.stat()?;
            root.lookups
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok((root, st));
        }
        if st.st_dev != self.root.dev || !within_tree(&root, &up, &st)? {
            return Err(Errno::ESTALE);
        }
        Ok((self.inodes.remember_nameless(up, &st, false, false), st))
    }

    /// The kernel let go of `inode`: its backing handle is kept, so that a
    /// file handle of it still finds it. Only objects of the tree's own
    /// filesystem, whose node ids stay theirs across remounts.
    pub(super) fn keep_handle(&self, inode: &Inode) {
        if inode.dead.load(std::sync::atomic::Ordering::Acquire)
            || inode.dev != self.root.dev
            // A number of casafs's making (not the backing's) changes
            // between mounts.
            || inode.nodeid != inode.ino
            || inode.nodeid == ROOT_ID
            || inode.private
            || self.inodes.nodeid_for(inode.dev, inode.ino) != inode.nodeid
        {
            return;
        }
        let h = match inode.anchor() {
            Ok(Anchor::Fd(fd)) => BackingHandle::of(fd.as_raw_fd(), c""),
            Ok(Anchor::At(dir, name)) => BackingHandle::of(dir.as_raw_fd(), &name),
            Err(e) => Err(e),
        };
        if let Ok(h) = h {
            self.exports.keep(inode.nodeid, h);
        }
    }

    /// At unmount: every object the kernel still held gets its handle kept
    /// too, and the table is written for the next mount.
    pub(super) fn save_exports(&self) {
        for inode in self.inodes.all() {
            self.keep_handle(&inode);
        }
        // The next mount of the tree waits for this lock: let go of it once
        // the table is written, whatever happens.
        let _lock = self.exports_lock.lock().take();
        if self.exports.is_empty() {
            return;
        }
        crate::fault::stopping();
        if let Err(e) = exports::save(&self.exports_tree, &self.exports) {
            tracing::warn!(
                "file handles: the table could not be kept for the next mount ({}); handles of forgotten objects will answer ESTALE",
                std::io::Error::from_raw_os_error(e.code())
            );
        }
    }
}

/// Whether the directory `dir` (attributes `st`) is the tree's root or
/// beneath it: the way up reaches the root before the top of its
/// filesystem. A directory moved out of the tree (a handle still finds it
/// on the same disk) has no place in the mount: the way up from it must
/// not lead casafs to show what lies outside the tree, among it the
/// directory holding its own mount point, whose listing would ask this
/// very mount.
fn within_tree(root: &Inode, dir: &std::os::fd::OwnedFd, st: &libc::stat) -> Res<bool> {
    let mut here: Option<std::os::fd::OwnedFd> = None;
    let mut at = *st;
    for _ in 0..crate::tree::MAX_DEPTH {
        if root.same(&at) {
            return Ok(true);
        }
        let fd = here.as_ref().unwrap_or(dir).as_raw_fd();
        let up = creds::as_root(|| {
            sys::openat2(
                fd,
                c"..",
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
                sys::RESOLVE_NO_XDEV,
            )
        });
        let up = match up {
            // The way up lands on a mount point: the tree's root itself
            // when casafs is mounted over it (asked by the number its
            // listing gives `..`, never through the mount), else a
            // directory outside the tree.
            Err(Errno::EXDEV) => {
                return Ok(at.st_dev == root.dev && crate::tree::parent_ino(fd)? == root.ino);
            }
            r => r?,
        };
        let next = sys::fstat(up.as_raw_fd())?;
        if (next.st_dev, next.st_ino) == (at.st_dev, at.st_ino) {
            // The top of the filesystem.
            return Ok(false);
        }
        here = Some(up);
        at = next;
    }
    Ok(false)
}
