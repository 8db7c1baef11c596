//! Removal and deferred unlink: an unlinked file that is still open is
//! buried in the graveyard (where the backing would leave `.fuse_hidden*`
//! debris) and its grave freed once the last handle and the kernel let go.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use parking_lot::MutexGuard;

use super::CasaFs;
use super::attr::fresh_links;
use crate::creds::{self};
use crate::inode::{Inode, OpenState, ROOT_ID};
use crate::sys::{self, Errno, Res, cname};

/// The largest file (in 512-byte blocks on the backing: 256 KiB) whose
/// blocks the backing frees when the kernel lets go of it rather than in
/// the unlink itself.
const FREED_AT_FORGET_BLOCKS: i64 = 512;

impl CasaFs {
    /// Whether an open file's last name on device `dev` goes to the
    /// graveyard rather than to unlink(2). Only the graveyard's own
    /// filesystem can take it (burying is a rename): an area on another
    /// filesystem unlinks as that filesystem does.
    pub(super) fn defers_unlink(&self, dev: u64) -> bool {
        self.defer_unlink && dev == self.graveyard.dir.dev
    }

    /// Moves the open file `v`, known as `name` in `dir`, into the
    /// graveyard until its last close, and returns its grave name. Called
    /// with `v`'s open state locked and its handles counted: a last close
    /// on another thread must either come before (nothing to bury) or find
    /// the grave to remove.
    pub(super) fn bury(
        &self,
        v: &Arc<Inode>,
        open: &mut OpenState,
        dir: &Arc<Inode>,
        name: &CStr,
    ) -> Res<CString> {
        let dfd = dir.dir_fd()?;
        let g = self.graveyard.bury(dfd.as_raw_fd(), name)?;
        open.buried.push(g.clone());
        // Follow the object into the graveyard only if this was the name we
        // reach it by; another hard link stays a better way to reach it
        // after the last close.
        if v.parent_name()
            .is_some_and(|(p, n)| p.same_as(dir) && n.as_c_str() == name)
        {
            v.set_loc(self.graveyard.dir.clone(), g.clone());
        }
        self.stats.deferred_pending.fetch_add(1, Relaxed);
        Ok(g)
    }

    /// Logs an open file that the graveyard could not take: `doing` (an
    /// unlink or a replace) happens in place, as the backing does it.
    pub(super) fn graveyard_refused(&self, dir: &Arc<Inode>, name: &CStr, e: Errno, doing: &str) {
        tracing::warn!(
            "cannot move open file {}/{} to the graveyard ({}); {doing} it in place",
            self.inodes.rel_path(dir),
            name.to_string_lossy(),
            std::io::Error::from_raw_os_error(e.code())
        );
    }

    /// Undoes `bury` (under the same lock) when what it was done for
    /// failed: the file gets its name back, or, if the name was taken
    /// meanwhile, stays in the graveyard to go at its last close as if
    /// unlinked.
    pub(super) fn unbury(
        &self,
        v: &Arc<Inode>,
        open: &mut OpenState,
        grave: &CStr,
        dir: &Arc<Inode>,
        name: &CStr,
    ) {
        // As root: a grave may be another user's file (a shared directory),
        // which the caller could not take out of the graveyard; the name
        // is only taken back if it is still free.
        let back = self.graveyard.dir.dir_fd().and_then(|gfd| {
            let dfd = dir.dir_fd()?;
            creds::as_root(|| sys::rename_noreplace(gfd.as_raw_fd(), grave, dfd.as_raw_fd(), name))
        });
        if let Err(e) = back {
            tracing::warn!(
                "cannot give {}/{} its name back from the graveyard ({}); it goes at its last close",
                self.inodes.rel_path(dir),
                name.to_string_lossy(),
                std::io::Error::from_raw_os_error(e.code())
            );
            return;
        }
        open.buried.retain(|g| g.as_c_str() != grave);
        if v.parent_name()
            .is_some_and(|(p, n)| p.same_as(&self.graveyard.dir) && n.as_c_str() == grave)
        {
            v.set_loc(dir.clone(), name.to_owned());
        }
        self.stats.deferred_pending.fetch_sub(1, Relaxed);
    }

    /// Removes a non-directory name. An object still open through casafs is
    /// moved to the graveyard instead (when the backing filesystem would
    /// leave debris), or pinned so its handles and attributes keep working.
    pub(super) fn remove_file(&self, dir: &Arc<Inode>, name: &CStr) -> Res<()> {
        let dfd = dir.dir_fd()?;
        // Which object it is, from the backing's cache: on ntfs-3g a fresh
        // stat is one more round trip per unlink. Its link count is as
        // fresh as ntfs-3g's own cache, as with any stat there, except
        // after a link made through casafs: ntfs-3g caches per name, and
        // the other names' counts lag behind. Where an unlinked object can
        // be held (`holds_unlinked`), it is looked at through a descriptor
        // of it, which then pins it if the kernel still holds it once the
        // name is gone (no second open by name). Only there: on a FUSE
        // backing a descriptor of a removed name keeps nothing.
        let (st, fd) = if self.holds_unlinked.contains(&dir.dev) {
            let fd = sys::open_at(dfd.as_raw_fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
            (sys::fstat_cached(fd.as_raw_fd())?, Some(Arc::new(fd)))
        } else {
            (sys::stat_cached_at(dfd.as_raw_fd(), name)?, None)
        };
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(Errno::EISDIR);
        }
        let nodeid = self.inodes.nodeid_for(st.st_dev, st.st_ino);
        let victim = self.inodes.get(nodeid).ok().filter(|i| i.same(&st));
        if let Some(v) = victim {
            let st = fresh_links(&v, dfd.as_raw_fd(), name, st)?;
            // Held until the name is gone: an open on another thread either
            // counts its handle before (and the file is buried or pinned)
            // or finds the name gone, never opens a file being unlinked.
            let mut open = v.open.lock();
            let defers = self.defers_unlink(st.st_dev);
            if open.handles > 0 || (defers && v.may_be_mapped(&open)) {
                if defers {
                    match self.bury(&v, &mut open, dir, name) {
                        Ok(_) if open.handles == 0 => {
                            self.free_graves_unless_mapped(&v, open);
                            return Ok(());
                        }
                        Ok(_) => return Ok(()),
                        // Unlinked as the backing does it rather than not at
                        // all: the graveyard cannot take it (another mount
                        // of the same filesystem inside the tree, or the
                        // graveyard gone).
                        Err(e) => self.graveyard_refused(dir, name, e, "unlinking"),
                    }
                }
                let _ = fd.map_or_else(|| v.pin(), |fd| v.pin_with(fd));
                sys::unlink_at(dfd.as_raw_fd(), name, 0)?;
                self.stats.direct_unlinks_open.fetch_add(1, Relaxed);
                return Ok(());
            }
            let held = v.lookups.load(Relaxed) > 0;
            if st.st_nlink <= 1 {
                // The kernel holds the object until its forget, and may ask
                // about it until then: where the backing keeps an unlinked
                // object for a descriptor, it stays reachable by the one
                // taken here, as it would natively. The backing then frees
                // a small file at that forget, not inside this unlink: the
                // caller does not wait for it, and its number is not reused
                // while the kernel may still show it. A large file's space
                // is freed at once, as natively, and so is every file while
                // many wait for their forget.
                if let Some(fd) = fd
                    && held
                    && st.st_blocks <= FREED_AT_FORGET_BLOCKS
                    && self.holds_unlinked.contains(&st.st_dev)
                {
                    let _ = v.pin_until_forget(fd);
                }
                sys::unlink_at(dfd.as_raw_fd(), name, 0)?;
                v.mark_dead();
                return Ok(());
            }
            // Its other names live on, but the kernel knows it by this one:
            // keep it reachable whatever name survives, while the kernel
            // holds it.
            if held {
                let _ = fd.map_or_else(|| v.pin(), |fd| v.pin_with(fd));
            }
        }
        sys::unlink_at(dfd.as_raw_fd(), name, 0)
    }

    pub(super) fn do_unlink(&self, parent: u64, name: &OsStr) -> Res<()> {
        let p = self.inodes.get(parent)?;
        let name = cname(name)?;
        if parent == ROOT_ID && super::is_reserved_root_name(&name) {
            return Err(Errno::EPERM);
        }
        let loc = self.locate(&p, &name)?;
        if loc.redirect.is_some() {
            // A name in an area is casafs's: the kernel has checked what
            // the caller may do to the original name.
            creds::as_root(|| self.remove_file(&loc.dir, &loc.name))?;
            self.routing.redirects.remove(&p, &name);
        } else {
            self.remove_file(&loc.dir, &loc.name)?;
        }
        Ok(())
    }

    pub(super) fn do_rmdir(&self, parent: u64, name: &OsStr) -> Res<()> {
        let p = self.inodes.get(parent)?;
        let name = cname(name)?;
        if parent == ROOT_ID && super::is_reserved_root_name(&name) {
            return Err(Errno::EPERM);
        }
        let loc = self.locate(&p, &name)?;
        let dfd = loc.dir.dir_fd()?;
        let remove = || {
            // Only which directory it is: no fresh stat (a round trip on
            // ntfs-3g).
            let st = sys::stat_cached_at(dfd.as_raw_fd(), &loc.name)?;
            // A directory the kernel knows may be a process's working
            // directory: a descriptor of it (one it holds already, else one
            // taken while it still has a name) answers for it once it has
            // none.
            let known = self
                .inodes
                .get(self.inodes.nodeid_for(st.st_dev, st.st_ino))
                .ok()
                .filter(|i| i.same(&st));
            if let Some(i) = &known {
                let _ = i.path_fd();
            }
            if loc.redirect.is_none()
                && !self.may_drop_routed_names(dfd.as_raw_fd(), &loc.name, &st)
            {
                return Err(Errno::ENOTEMPTY);
            }
            sys::unlink_at(dfd.as_raw_fd(), &loc.name, libc::AT_REMOVEDIR).map(|()| (st, known))
        };
        let (st, known) = match loc.redirect {
            Some(_) => creds::as_root(remove)?,
            None => remove()?,
        };
        self.origin_dir_gone(&st);
        // A removed directory's number may come back for a new one.
        if let Some(i) = known {
            i.mark_dead();
        }
        if loc.redirect.is_some() {
            self.routing.redirects.remove(&p, &name);
        }
        Ok(())
    }

    /// Whether the caller may remove directory `name` in `dfd` (with
    /// attributes `st`) with the names routed from it: listings leave them
    /// out, so the backing finds it empty, but they are its entries still,
    /// and only one who may remove entries from it (write and search
    /// permission, and in a sticky directory its ownership) may drop them
    /// with it. Their objects stay in their areas.
    fn may_drop_routed_names(&self, dfd: RawFd, name: &CStr, st: &libc::stat) -> bool {
        if !self.routing.redirects.routes_in(st.st_dev, st.st_ino) {
            return true;
        }
        sys::access_at(dfd, name, libc::W_OK | libc::X_OK).is_ok()
            && (st.st_mode & libc::S_ISVTX == 0 || creds::owns(st.st_uid))
    }

    /// One handle of `inode` less; after its last, what waited for it: the
    /// kernel passthrough, the pin, the graves.
    pub(super) fn handle_closed(&self, inode: &Arc<Inode>) {
        let mut open = inode.open.lock();
        open.handles = open.handles.saturating_sub(1);
        if open.handles > 0 {
            return;
        }
        open.backing = None;
        if open.buried.is_empty() {
            drop(open);
            // A file unlinked while open was pinned to stay reachable. With
            // its last handle gone the pin holds its space only while the
            // kernel still holds the inode (an O_PATH descriptor, as a
            // native deleted file lives on): the kernel's forget drops the
            // inode and the pin with it. Unpinned before that, its number
            // could go to a new file while the kernel still shows the old
            // one under it. (Only a pinned file can be one: every other
            // last close costs no stat.)
            if inode.is_pinned()
                && inode.lookups.load(Relaxed) == 0
                && inode.stat().is_ok_and(|s| s.st_nlink == 0)
            {
                inode.unpin();
            }
            return;
        }
        self.free_graves_unless_mapped(inode, open);
    }

    /// Deletes the graves of `inode` (which has no handle left) unless a
    /// mapping may still hold the file open for the backing, which must
    /// not see the name go while it does: then they wait for the kernel to
    /// let go of the inode (`kernel_let_go`), which it does as soon as
    /// nothing maps an object without names. An object with other names
    /// can stay in the kernel's cache for as long as they are used: its
    /// graves go now (ntfs-3g would hide a grave still mapped inside the
    /// graveyard, out of sight, until the mapping goes).
    pub(super) fn free_graves_unless_mapped(
        &self,
        inode: &Arc<Inode>,
        open: MutexGuard<'_, OpenState>,
    ) {
        if inode.may_be_mapped(&open)
            && !inode
                .stat()
                .is_ok_and(|s| s.st_nlink as usize > open.buried.len())
        {
            return;
        }
        self.free_graves(inode, open);
    }

    /// The kernel let go of `inode`: nothing maps it any more, and graves
    /// kept for a mapping go if no handle is left.
    pub(super) fn kernel_let_go(&self, inode: &Arc<Inode>) {
        if inode.lookups.load(Relaxed) == 0 {
            self.unwatch(inode);
        }
        let mut open = inode.open.lock();
        // Looked up again since (the table's count is not held meanwhile):
        // the kernel holds it after all.
        if inode.lookups.load(Relaxed) > 0 {
            return;
        }
        open.mapped = false;
        if open.handles == 0 && !open.buried.is_empty() {
            self.free_graves(inode, open);
        }
    }

    /// Deletes the graves of `inode`, which nothing holds open any more.
    /// They go while its open state is locked: an open counting its handle
    /// meanwhile then finds the file gone, rather than reopening one that
    /// is being unlinked.
    pub(super) fn free_graves(&self, inode: &Arc<Inode>, mut open: MutexGuard<'_, OpenState>) {
        let buried = std::mem::take(&mut open.buried);
        let st = inode.stat().ok();
        let size = st.map(|s| s.st_size as u64).unwrap_or(0);
        let nlink = st.map(|s| s.st_nlink as usize).unwrap_or(0);
        // Freed once, and only when no other name keeps the data.
        let freed = if nlink > buried.len() {
            // Other names live on (a hard link): keep the inode reachable
            // without holding the graveyard name.
            let _ = inode.pin();
            0
        } else {
            inode.unpin();
            // Its number is free for the next file: the kernel must not
            // take that one for this (see `InodeTable::remember`).
            inode.mark_dead();
            size
        };
        self.graveyard.release(&buried);
        drop(open);
        let n = buried.len() as u64;
        self.stats.deferred_pending.fetch_sub(n, Relaxed);
        self.stats.deferred_completed.fetch_add(n, Relaxed);
        self.stats
            .deferred_completed_bytes
            .fetch_add(freed, Relaxed);
    }
}
