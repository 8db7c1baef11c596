//! Namespace operations: lookup, attributes, and everything that adds,
//! moves or removes a name. Creation goes through `new_entry`, which is where
//! routing (§3) happens; removal of a file goes through `remove_file`, which
//! is where deferred unlink (§4) happens.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;

use fuser::TimeOrNow;

use super::CasaFs;
use super::made::Made;
use crate::creds::{self, Caller};
use crate::inode::{Anchor, Inode, OpenState, ROOT_ID};
use crate::redirect::{self, Redirect};
use crate::sys::{self, Errno, Res, cname};

/// Where a name lives in the backing store, after consulting redirects.
pub(super) struct Located {
    pub dir: Arc<Inode>,
    pub name: CString,
    pub redirect: Option<Redirect>,
    /// A routed object's attributes, as casafs found it in its area.
    pub st: Option<libc::stat>,
}

impl CasaFs {
    /// Resolves `name` in `dir` through the redirect table. A redirect whose
    /// object is gone (removed in the target area directly) is dropped.
    pub(super) fn locate(&self, dir: &Arc<Inode>, name: &CStr) -> Res<Located> {
        if let Some(r) = self.redirects.get(dir, name) {
            let area = self.areas.get(r.area).ok_or(Errno::EIO)?;
            let adir = area.dir();
            let afd = adir.dir_fd()?;
            match creds::as_root(|| sys::stat_at(afd.as_raw_fd(), &r.tname)) {
                // Its name in the area now names another object (looked at
                // again: a rename onto the routed name may just have
                // given it this one).
                Ok(st)
                    if st.st_ino != r.ino
                        && sys::keeps_inode_numbers(area.fs_type)
                        && self
                            .redirects
                            .get(dir, name)
                            .is_some_and(|r| r.ino != st.st_ino) =>
                {
                    self.redirects.remove(dir, name);
                }
                Ok(st) => {
                    return Ok(Located {
                        dir: adir.clone(),
                        name: r.tname.clone(),
                        redirect: Some(r),
                        st: Some(st),
                    });
                }
                Err(Errno::ENOENT) => {
                    self.redirects.remove(dir, name);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Located {
            dir: dir.clone(),
            name: name.to_owned(),
            redirect: None,
            st: None,
        })
    }

    pub(super) fn do_lookup(&self, parent: u64, name: &OsStr) -> Res<(Arc<Inode>, libc::stat)> {
        let p = self.inodes.get(parent)?;
        let name = cname(name)?;
        if parent == ROOT_ID && super::is_reserved_root_name(&name) {
            return Err(Errno::ENOENT);
        }
        let loc = self.locate(&p, &name)?;
        let st = match loc.st {
            Some(st) => st,
            None => sys::stat_at(loc.dir.dir_fd()?.as_raw_fd(), &loc.name)?,
        };
        let in_target = loc.dir.in_target || self.is_area_root(&st);
        Ok((
            self.inodes.remember(&loc.dir, &loc.name, &st, in_target),
            st,
        ))
    }

    pub(super) fn do_getattr(&self, ino: u64, fh: Option<u64>) -> Res<libc::stat> {
        if let Some(fh) = fh
            && let Ok(h) = self.handles.get(fh)
            && let Ok(fd) = h.fd()
        {
            return sys::fstat(fd);
        }
        self.inodes.get(ino)?.stat()
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
    ) -> Res<libc::stat> {
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
        match (hfd, changed) {
            (Some(fd), true) => sys::fstat_cached(fd),
            (Some(fd), false) => sys::fstat(fd),
            (None, true) => inode.stat_cached(),
            (None, false) => inode.stat(),
        }
    }

    /// Confirms a by-name anchor still names this inode.
    fn verify(&self, inode: &Inode, anchor: &Anchor) -> Res<()> {
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

    /// Creates a new name: routed into a target area when a rule matches
    /// (falling back to in place when the area is unusable), otherwise in
    /// `p`. `make` does the actual creation given a directory, a name and
    /// the mode to create with, and must fail with EEXIST if the name
    /// exists. `made` says for whom and with what mode; a hard link (None)
    /// keeps its inode's.
    ///
    /// In place the object is made as the caller, so the backing gives it
    /// its owner, group, umask or default ACL and checks what it checks.
    /// In an area casafs makes it as root and hands it over as an in-place
    /// creation would have left it.
    pub(super) fn new_entry<T>(
        &self,
        made: Option<Made>,
        p: &Arc<Inode>,
        name: &CStr,
        is_dir: bool,
        make: &dyn Fn(RawFd, &CStr, u32) -> Res<T>,
    ) -> Res<(Arc<Inode>, libc::stat, T)> {
        if p.nodeid == ROOT_ID && super::is_reserved_root_name(name) {
            return Err(Errno::EPERM);
        }
        if self.locate(p, name)?.redirect.is_some() {
            return Err(Errno::EEXIST);
        }
        let pfd = p.dir_fd()?;
        if let Some(rule) = self.route(p, name, is_dir) {
            // EEXIST is judged against the original directory's view, and
            // so is whether the caller may create there at all.
            match sys::stat_at(pfd.as_raw_fd(), name) {
                Ok(_) => return Err(Errno::EEXIST),
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
            sys::access_at(pfd.as_raw_fd(), c"", libc::W_OK | libc::X_OK)?;
            match self.make_routed(rule, p, pfd.as_raw_fd(), name, is_dir, made, make) {
                Ok(r) => return Ok(r),
                // Only a hard link cannot reach an area on another
                // filesystem; it is made in place, as it would be natively.
                Err(Errno::EXDEV) => {}
                Err(e) => self.failed_open(rule, p, name, e),
            }
        }
        let mode = made.map_or(0, |m| m.in_place_mode());
        let v = make(pfd.as_raw_fd(), name, mode)?;
        let st = match created_stat(pfd.as_raw_fd(), name) {
            Ok(st) => st,
            Err(e) => return Err(undo_create(pfd.as_raw_fd(), name, is_dir, v, e)),
        };
        let in_target = p.in_target || self.is_area_root(&st);
        Ok((self.inodes.remember(p, name, &st, in_target), st, v))
    }

    /// The routed half of `new_entry`: made in the rule's area as root,
    /// then given to the caller with the owner, group, mode and ACLs an
    /// in-place creation in `p` (open as `pfd`) would have given it.
    #[allow(clippy::too_many_arguments)]
    fn make_routed<T>(
        &self,
        rule: usize,
        p: &Arc<Inode>,
        pfd: RawFd,
        name: &CStr,
        is_dir: bool,
        made: Option<Made>,
        make: &dyn Fn(RawFd, &CStr, u32) -> Res<T>,
    ) -> Res<(Arc<Inode>, libc::stat, T)> {
        let setgid = self.setgid_of(pfd)?;
        let owner = made.map(|m| m.owner_in(pfd, setgid, is_dir)).transpose()?;
        creds::as_root(|| {
            let create_mode = owner.as_ref().map_or(0, |o| o.mode & 0o777);
            let (area_idx, tname, v) = self.place(rule, name, &|d, n| make(d, n, create_mode))?;
            let adir = self.areas[area_idx].dir();
            let afd = adir.dir_fd()?;
            let finish = || -> Res<libc::stat> {
                let st = created_stat(afd.as_raw_fd(), &tname)?;
                match &owner {
                    Some(o) => o.hand_over(afd.as_raw_fd(), &tname, st),
                    None => Ok(st),
                }
            };
            let st = match finish() {
                Ok(st) => st,
                Err(e) => return Err(undo_create(afd.as_raw_fd(), &tname, is_dir, v, e)),
            };
            self.record_redirect(p, name, rule, area_idx, &tname, st.st_ino);
            let inode = self.inodes.remember(&adir, &tname, &st, true);
            Ok((inode, st, v))
        })
    }

    /// Counts and logs a routed name that stays in place because the rule's
    /// area is unusable (SPEC §3: the pipeline never fails because of it).
    fn failed_open(&self, rule: usize, p: &Arc<Inode>, name: &CStr, e: Errno) {
        self.stats.rules[rule].fail_open.fetch_add(1, Relaxed);
        tracing::warn!(
            "rule {}: target area {} unusable ({}); {}/{} stays in place",
            self.rule_names[rule],
            self.areas[self.rule_area[rule]].path.display(),
            std::io::Error::from_raw_os_error(e.code()),
            self.inodes.rel_path(p),
            name.to_string_lossy()
        );
    }

    /// Creates the object in the rule's area under the first free candidate
    /// name. Never overwrites: `make` fails with EEXIST on a taken name.
    fn place<T>(
        &self,
        rule: usize,
        name: &CStr,
        make: &dyn Fn(RawFd, &CStr) -> Res<T>,
    ) -> Res<(usize, CString, T)> {
        let area_idx = *self.rule_area.get(rule).ok_or(Errno::EIO)?;
        // The area's path may name another directory by now: made anew
        // after a removal, or after the old one was moved aside (rotated).
        let mut revived = self.revive_area(area_idx);
        'again: loop {
            let area = self.areas.get(area_idx).ok_or(Errno::EIO)?;
            let afd = area.dir().dir_fd()?;
            let _taking = area.place_lock.lock();
            for n in 1..100_000u32 {
                let t = redirect::candidate(name, n);
                match make(afd.as_raw_fd(), &t) {
                    Ok(v) => return Ok((area_idx, t, v)),
                    Err(Errno::EEXIST) => continue,
                    Err(Errno::ENOENT) if !revived && self.revive_area(area_idx) => {
                        revived = true;
                        continue 'again;
                    }
                    Err(e) => return Err(e),
                }
            }
            return Err(Errno::EEXIST);
        }
    }

    fn record_redirect(
        &self,
        p: &Arc<Inode>,
        name: &CStr,
        rule: usize,
        area_idx: usize,
        tname: &CStr,
        ino: u64,
    ) {
        let origin = self.origin_of(p, name);
        let area = &self.areas[area_idx];
        let by = creds::request_caller();
        redirect::tag_origin(area, tname, &origin, Some((by.uid, by.gid)));
        tracing::info!(
            "rule {}: {} -> {}",
            self.rule_names[rule],
            String::from_utf8_lossy(&origin),
            area.path.join(tname.to_string_lossy().as_ref()).display()
        );
        self.redirects.insert(
            p,
            name,
            Redirect {
                area: area_idx,
                rule,
                tname: tname.to_owned(),
                origin,
                created: SystemTime::now(),
                ino,
            },
        );
        self.stats.rules[rule].routed.fetch_add(1, Relaxed);
    }

    /// The path of `name` in `p` relative to the source root, as origins
    /// are recorded.
    fn origin_of(&self, p: &Arc<Inode>, name: &CStr) -> Vec<u8> {
        let mut origin = self.inodes.rel_path_bytes(p);
        if !origin.is_empty() {
            origin.push(b'/');
        }
        origin.extend_from_slice(name.to_bytes());
        origin
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

    /// Whether an open file's last name on device `dev` goes to the
    /// graveyard rather than to unlink(2). Only the graveyard's own
    /// filesystem can take it (burying is a rename): an area on another
    /// filesystem unlinks as that filesystem does.
    fn defers_unlink(&self, dev: u64) -> bool {
        self.defer_unlink && dev == self.graveyard.dir.dev
    }

    /// Moves the open file `v`, known as `name` in `dir`, into the
    /// graveyard until its last close, and returns its grave name. Called
    /// with `v`'s open state locked and its handles counted: a last close
    /// on another thread must either come before (nothing to bury) or find
    /// the grave to remove.
    fn bury(
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
    fn graveyard_refused(&self, dir: &Arc<Inode>, name: &CStr, e: Errno, doing: &str) {
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
    fn unbury(
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
        // the other names' counts lag behind.
        let st = sys::stat_cached_at(dfd.as_raw_fd(), name)?;
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
                let _ = v.pin();
                sys::unlink_at(dfd.as_raw_fd(), name, 0)?;
                self.stats.direct_unlinks_open.fetch_add(1, Relaxed);
                return Ok(());
            }
            if st.st_nlink <= 1 {
                sys::unlink_at(dfd.as_raw_fd(), name, 0)?;
                v.mark_dead();
                return Ok(());
            }
            // Its other names live on, but the kernel knows it by this one:
            // keep it reachable whatever name survives, while the kernel
            // holds it.
            if v.lookups.load(Relaxed) > 0 {
                let _ = v.pin();
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
            self.redirects.remove(&p, &name);
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
            sys::unlink_at(dfd.as_raw_fd(), &loc.name, libc::AT_REMOVEDIR).map(|()| st)
        };
        let st = match loc.redirect {
            Some(_) => creds::as_root(remove)?,
            None => remove()?,
        };
        self.redirects.forget_dir(st.st_dev, st.st_ino);
        // A removed directory's number may come back for a new one.
        if let Ok(i) = self
            .inodes
            .get(self.inodes.nodeid_for(st.st_dev, st.st_ino))
            && i.same(&st)
        {
            i.mark_dead();
        }
        if loc.redirect.is_some() {
            self.redirects.remove(&p, &name);
        }
        Ok(())
    }

    pub(super) fn do_rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Res<()> {
        let mut dir_moved = false;
        self.rename_names(parent, name, newparent, newname, flags, &mut dir_moved)?;
        // Routed objects made beneath a moved directory are reached by
        // their directory wherever it is; their recorded origins follow.
        if dir_moved && !self.redirects.is_empty() {
            let (Ok(p), Ok(np)) = (self.inodes.get(parent), self.inodes.get(newparent)) else {
                return Ok(());
            };
            let (Ok(name), Ok(newname)) = (cname(name), cname(newname)) else {
                return Ok(());
            };
            let from = self.origin_of(&p, &name);
            let to = self.origin_of(&np, &newname);
            let mut moves = vec![(from.clone(), to.clone())];
            if flags & libc::RENAME_EXCHANGE != 0 {
                moves.push((to, from));
            }
            self.redirects.rebase(&moves, &self.areas);
        }
        Ok(())
    }

    /// The rename itself; `dir_moved` tells whether a directory moved.
    ///
    /// It runs as the caller. Where an area is involved, only root may
    /// write there: a rename with a routed name on either side runs as
    /// root (`rename_plain_for`), and so does the move of what a rule routes
    /// into its area (checked afterwards to be the object the caller
    /// renamed). The kernel has checked the caller's rights on both
    /// directories and on what the rename replaces, as they appear in the
    /// mount; what it cannot know is that a directory renamed onto a routed
    /// name moves to another directory, which needs write permission on it:
    /// without it the directory is renamed in place.
    fn rename_names(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        dir_moved: &mut bool,
    ) -> Res<()> {
        let p = self.inodes.get(parent)?;
        let np = self.inodes.get(newparent)?;
        let name = cname(name)?;
        let newname = cname(newname)?;
        for (d, n) in [(parent, &name), (newparent, &newname)] {
            if d == ROOT_ID && super::is_reserved_root_name(n) {
                return Err(Errno::EPERM);
            }
        }
        self.rename_located(&p, &name, &np, &newname, flags, dir_moved)
    }

    fn rename_located(
        &self,
        p: &Arc<Inode>,
        name: &CStr,
        np: &Arc<Inode>,
        newname: &CStr,
        flags: u32,
        dir_moved: &mut bool,
    ) -> Res<()> {
        let (p, np) = (p.clone(), np.clone());
        let (name, newname) = (name.to_owned(), newname.to_owned());
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;

        let src = self.locate(&p, &name)?;
        let sfd = src.dir.dir_fd()?;
        let sst = match src.st {
            Some(st) => st,
            None => sys::stat_at(sfd.as_raw_fd(), &src.name)?,
        };
        let is_dir = sst.st_mode & libc::S_IFMT == libc::S_IFDIR;

        let dst = self.locate(&np, &newname)?;
        // What an exchange brings to the source's name.
        let swapped = match (exchange, dst.st) {
            (false, _) => None,
            (true, Some(st)) => Some(st),
            (true, None) => dst
                .dir
                .dir_fd()
                .and_then(|d| sys::stat_at(d.as_raw_fd(), &dst.name))
                .ok(),
        };
        *dir_moved = is_dir || swapped.is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
        let route = if exchange || dst.redirect.is_some() {
            None
        } else {
            self.route(&np, &newname, is_dir)
        };
        // Same object under a routed name already (rename of a name onto
        // itself, or a hard link): nothing to route. A directory moves
        // into an area only if the caller may write it.
        let route = route
            .filter(|_| src.redirect.is_none() || !Arc::ptr_eq(&p, &np) || name != newname)
            .filter(|_| {
                !is_dir
                    || src.redirect.is_some()
                    || sys::access_at(sfd.as_raw_fd(), &src.name, libc::W_OK).is_ok()
            });

        if let Some(rule) = route {
            let area_idx = self.rule_area[rule];
            let adir = self.areas[area_idx].dir();
            if adir.dev != sst.st_dev {
                match self.settings.cross_device {
                    crate::config::CrossDevice::Exdev => return Err(Errno::EXDEV),
                    crate::config::CrossDevice::InPlace => {
                        return self.rename_plain_for(&src, &sst, &dst, flags);
                    }
                }
            }
            let dfd = dst.dir.dir_fd()?;
            let existing = match sys::stat_at(dfd.as_raw_fd(), &dst.name) {
                Ok(st) => Some(st),
                Err(Errno::ENOENT) => None,
                Err(e) => return Err(e),
            };
            // Whatever the original directory shows under the new name is
            // replaced as by any rename, in place first: the backing judges
            // EEXIST, EISDIR, ENOTEMPTY and the like before anything moves,
            // an open file replaced is buried, and from then on the rename
            // has happened, so a failure to route it after that is no
            // reason to fail it.
            let (from_fd, from_name) = match &existing {
                // Another name of the same object: a rename does nothing.
                Some(est) if (est.st_dev, est.st_ino) == (sst.st_dev, sst.st_ino) => {
                    return if noreplace {
                        Err(Errno::EEXIST)
                    } else {
                        Ok(())
                    };
                }
                Some(_) => {
                    self.rename_plain_for(&src, &sst, &dst, flags)?;
                    if src.redirect.is_some() {
                        self.redirects.remove(&p, &name);
                    }
                    (dfd, &dst.name)
                }
                None => (sfd, &src.name),
            };
            // As root, by the name the caller's directory has for it, then
            // checked: anything swapped in meanwhile goes back.
            let mv = |d: RawFd, n: &CStr| {
                sys::rename_noreplace(from_fd.as_raw_fd(), from_name, d, n)?;
                match sys::stat_at(d, n) {
                    Ok(st) if (st.st_dev, st.st_ino) == (sst.st_dev, sst.st_ino) => Ok(()),
                    _ => {
                        let _ = sys::rename_noreplace(d, n, from_fd.as_raw_fd(), from_name);
                        Err(Errno::ESTALE)
                    }
                }
            };
            match creds::as_root(|| self.place(rule, &newname, &mv)) {
                Ok((_, tname, ())) => {
                    if existing.is_none() && src.redirect.is_some() {
                        self.redirects.remove(&p, &name);
                    }
                    self.record_redirect(&np, &newname, rule, area_idx, &tname, sst.st_ino);
                    self.moved(&sst, &self.areas[area_idx].dir(), &tname);
                    return Ok(());
                }
                Err(e) if existing.is_some() => {
                    self.failed_open(rule, &np, &newname, e);
                    return Ok(());
                }
                Err(Errno::EXDEV)
                    if self.settings.cross_device == crate::config::CrossDevice::Exdev =>
                {
                    return Err(Errno::EXDEV);
                }
                Err(Errno::EXDEV) => {}
                Err(e) => self.failed_open(rule, &np, &newname, e),
            }
        }
        if let Some(moved) = self.replace_routed_in_place(&src, &sst, &dst, &np, &newname, flags) {
            moved?;
            if src.redirect.is_some() {
                self.redirects.remove(&p, &name);
            }
            return Ok(());
        }
        self.rename_plain_for(&src, &sst, &dst, flags)?;
        // What now holds a routed name there, before anything looks.
        if dst.redirect.is_some() {
            self.redirects.set_ino(&np, &newname, sst.st_ino);
        }
        if let (true, Some(_), Some(st)) = (exchange, &src.redirect, swapped) {
            self.redirects.set_ino(&p, &name, st.st_ino);
        }
        if src.redirect.is_some() && !exchange {
            self.redirects.remove(&p, &name);
        }
        // An object that took a routed name's place in an area is that
        // name's object from now on, also after a remount, which finds
        // origins on the objects.
        let arrived = [Some(&dst), exchange.then_some(&src)];
        for r in arrived
            .into_iter()
            .flatten()
            .filter_map(|l| l.redirect.as_ref())
        {
            let by = creds::request_caller();
            redirect::tag_origin(
                &self.areas[r.area],
                &r.tname,
                &r.origin,
                Some((by.uid, by.gid)),
            );
        }
        Ok(())
    }

    /// A rename onto a routed name whose object lives on another
    /// filesystem than the one renamed, with `cross_device=inplace`: the
    /// newcomer takes the name in place, and the routed object goes as the
    /// replaced file of any rename does. None where that does not apply.
    /// The rename comes first, so a failure leaves everything as it was.
    fn replace_routed_in_place(
        &self,
        src: &Located,
        sst: &libc::stat,
        dst: &Located,
        np: &Arc<Inode>,
        newname: &CStr,
        flags: u32,
    ) -> Option<Res<()>> {
        let r = dst.redirect.as_ref()?;
        if flags & libc::RENAME_EXCHANGE != 0
            || self.settings.cross_device != crate::config::CrossDevice::InPlace
            || dst.dir.dev == sst.st_dev
        {
            return None;
        }
        let go = || -> Res<()> {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(Errno::EEXIST);
            }
            let dfd = dst.dir.dir_fd()?;
            let dstat = dst.st.ok_or(Errno::ENOENT)?;
            let dst_is_dir = dstat.st_mode & libc::S_IFMT == libc::S_IFDIR;
            match (sst.st_mode & libc::S_IFMT == libc::S_IFDIR, dst_is_dir) {
                (false, true) => return Err(Errno::EISDIR),
                (true, false) => return Err(Errno::ENOTDIR),
                (true, true) => {
                    // casafs's name in its area, looked into as root.
                    let d = creds::as_root(|| {
                        sys::open_at(
                            dfd.as_raw_fd(),
                            &dst.name,
                            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                            0,
                        )
                    })?;
                    if !crate::graveyard::list_dir(&d)?.is_empty() {
                        return Err(Errno::ENOTEMPTY);
                    }
                }
                (false, false) => {}
            }
            let here = Located {
                dir: np.clone(),
                name: newname.to_owned(),
                redirect: None,
                st: None,
            };
            self.rename_plain_for(src, sst, &here, flags)?;
            self.redirects.remove(np, newname);
            let gone = creds::as_root(|| {
                if dst_is_dir {
                    sys::unlink_at(dfd.as_raw_fd(), &dst.name, libc::AT_REMOVEDIR)
                } else {
                    self.remove_file(&dst.dir, &dst.name)
                }
            });
            if let Err(e) = gone {
                tracing::warn!(
                    "cannot remove {} from area {} after a rename in place replaced it: {}",
                    dst.name.to_string_lossy(),
                    self.areas
                        .get(r.area)
                        .map_or(String::new(), |a| a.path.display().to_string()),
                    std::io::Error::from_raw_os_error(e.code())
                );
            }
            Ok(())
        };
        Some(go())
    }

    /// `rename_plain` as the caller, or as root where either name is in
    /// an area (casafs's own names there).
    fn rename_plain_for(
        &self,
        src: &Located,
        sst: &libc::stat,
        dst: &Located,
        flags: u32,
    ) -> Res<()> {
        if src.redirect.is_some() || dst.redirect.is_some() {
            creds::as_root(|| self.rename_plain(src, sst, dst, flags))
        } else {
            self.rename_plain(src, sst, dst, flags)
        }
    }

    fn rename_plain(&self, src: &Located, sst: &libc::stat, dst: &Located, flags: u32) -> Res<()> {
        let sfd = src.dir.dir_fd()?;
        let dfd = dst.dir.dir_fd()?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let dst_st = match sys::stat_at(dfd.as_raw_fd(), &dst.name) {
            Ok(st) => Some(st),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(e),
        };
        // The file a rename replaces: kept reachable while open or linked
        // elsewhere, and, where the backing would leave debris for an open
        // file losing its last name, buried first (and dug up again should
        // the rename then fail). Everywhere else the rename replaces it
        // atomically, as it would natively.
        let victim = match &dst_st {
            Some(dstat)
                if !exchange
                    && !noreplace
                    && dstat.st_mode & libc::S_IFMT != libc::S_IFDIR
                    && sst.st_mode & libc::S_IFMT != libc::S_IFDIR
                    && (dstat.st_dev, dstat.st_ino) != (sst.st_dev, sst.st_ino) =>
            {
                let nodeid = self.inodes.nodeid_for(dstat.st_dev, dstat.st_ino);
                self.inodes.get(nodeid).ok().filter(|v| v.same(dstat))
            }
            _ => None,
        };
        let dst_st = match (&victim, dst_st) {
            (Some(v), Some(d)) => Some(fresh_links(v, dfd.as_raw_fd(), &dst.name, d)?),
            (_, d) => d,
        };
        // Held until the rename is done or undone: a last close meanwhile
        // must not miss the grave nor find one that is dug up again.
        let mut open_state = victim.as_ref().map(|v| v.open.lock());
        let open = open_state.as_ref().is_some_and(|o| o.handles > 0);
        let mut grave = None;
        let mut pinned_here = false;
        if let (Some(v), Some(o), Some(dstat)) = (&victim, open_state.as_deref_mut(), &dst_st) {
            if (open || v.may_be_mapped(o)) && self.defers_unlink(dstat.st_dev) {
                // The backing's own answer for a rename across filesystems,
                // before anything moves.
                if sst.st_dev != dstat.st_dev {
                    return Err(Errno::EXDEV);
                }
                match self.bury(v, o, &dst.dir, &dst.name) {
                    Ok(g) => grave = Some(g),
                    // Replaced as the backing does it, as in `remove_file`.
                    Err(e) => {
                        self.graveyard_refused(&dst.dir, &dst.name, e, "replacing");
                        pinned_here = !v.is_pinned() && v.pin().is_ok();
                    }
                }
            } else if (open || (dstat.st_nlink > 1 && v.lookups.load(Relaxed) > 0))
                && !v.is_pinned()
            {
                pinned_here = v.pin().is_ok();
            }
        }
        if let Err(e) = crate::fault::rename_onto(dst.name.to_bytes()).and_then(|()| {
            sys::rename_at2(
                sfd.as_raw_fd(),
                &src.name,
                dfd.as_raw_fd(),
                &dst.name,
                flags,
            )
        }) {
            if let (Some(v), Some(o), Some(g)) = (&victim, open_state.as_deref_mut(), &grave) {
                self.unbury(v, o, g, &dst.dir, &dst.name);
            }
            if let (Some(v), true) = (&victim, pinned_here) {
                v.unpin();
            }
            return Err(e);
        }
        // Buried only because it may be mapped: as a last close would.
        if let (Some(v), Some(o), Some(_)) = (&victim, open_state.take(), &grave)
            && !open
        {
            self.free_graves_unless_mapped(v, o);
        }
        drop(open_state);
        if let (Some(v), Some(dstat)) = (&victim, &dst_st) {
            if !open && grave.is_none() && dstat.st_nlink <= 1 {
                v.mark_dead();
            } else if open && grave.is_none() {
                self.stats.direct_unlinks_open.fetch_add(1, Relaxed);
            }
        }
        // A directory replaced: its redirects end with it.
        if let Some(dstat) = &dst_st
            && !exchange
            && dstat.st_mode & libc::S_IFMT == libc::S_IFDIR
            && (dstat.st_dev, dstat.st_ino) != (sst.st_dev, sst.st_ino)
        {
            self.redirects.forget_dir(dstat.st_dev, dstat.st_ino);
        }
        self.moved(sst, &dst.dir, &dst.name);
        if exchange && let Some(dstat) = &dst_st {
            self.moved(dstat, &src.dir, &src.name);
        }
        Ok(())
    }

    /// Keeps the inode table's idea of where an object lives current.
    fn moved(&self, st: &libc::stat, dir: &Arc<Inode>, name: &CStr) {
        let nodeid = self.inodes.nodeid_for(st.st_dev, st.st_ino);
        if let Ok(i) = self.inodes.get(nodeid)
            && i.same(st)
        {
            i.set_loc(dir.clone(), name.to_owned());
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
fn fresh_links(v: &Inode, dir: RawFd, name: &CStr, st: libc::stat) -> Res<libc::stat> {
    if st.st_nlink <= 1 && v.linked.load(Relaxed) {
        sys::stat_fresh_at(dir, name)
    } else {
        Ok(st)
    }
}

fn writable(fd: RawFd) -> bool {
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    fl >= 0 && fl & libc::O_ACCMODE != libc::O_RDONLY
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
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
                let mut secs = -(d.as_secs() as i64);
                let mut nsec = -(d.subsec_nanos() as i64);
                if nsec < 0 {
                    secs -= 1;
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

/// A new object's attributes, from the backing's cache: its reply to the
/// create has just filled it (one stat fewer on a FUSE backing).
fn created_stat(dir: RawFd, name: &CStr) -> Res<libc::stat> {
    crate::fault::stat_after_create(name.to_bytes())?;
    sys::stat_cached_at(dir, name)
}

/// A create that fails after the object exists removes it again: the
/// caller gets an error, so the kernel records no change in the directory
/// and a listing it keeps must still match the backing. What `make` gave
/// (an open descriptor of a new file) goes first: a backing like ntfs-3g
/// hides a removed file that is still open instead of removing it.
fn undo_create<T>(dir: RawFd, name: &CStr, is_dir: bool, made: T, e: Errno) -> Errno {
    drop(made);
    let flag = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    let _ = sys::unlink_at(dir, name, flag);
    e
}
