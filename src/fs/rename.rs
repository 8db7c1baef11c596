//! Renames: within the tree, into an area (a routed name), out of one,
//! and onto a routed name, with the rights each side needs.

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::CasaFs;
use super::attr::fresh_links;
use super::entry::Located;
use crate::creds::{self};
use crate::inode::{Inode, ROOT_ID};
use crate::redirect::{self};
use crate::sys::{self, Errno, Res, cname};

impl CasaFs {
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
        if dir_moved && !self.routing.redirects.is_empty() {
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
            self.routing.redirects.rebase(&moves, &self.routing.areas);
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
    pub(super) fn rename_names(
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

    pub(super) fn rename_located(
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
            self.routing.route(&self.live, &np, &newname, is_dir)
        };
        // Same object under a routed name already (rename of a name onto
        // itself, or a hard link): nothing to route. A directory moves
        // into an area only if the caller may write it.
        let route = route
            .filter(|_| src.redirect.is_none() || !Arc::ptr_eq(&p, &np) || name != newname)
            .filter(|_| !is_dir || src.redirect.is_some() || self.may_move_dir(&src).is_ok());

        // A directory that would move between its directory and an area
        // changes its `..`, which needs write permission on it, as a move
        // to another directory does: one the caller may not write takes a
        // routed name in place (as it would natively,
        // `replace_routed_in_place`), and is not exchanged with an area's
        // object at all.
        if exchange && dst.redirect.is_some() && src.redirect.is_none() && is_dir {
            self.may_move_dir(&src)?;
        }
        if let (true, Some(_), None, Some(st)) = (exchange, &src.redirect, &dst.redirect, swapped)
            && st.st_mode & libc::S_IFMT == libc::S_IFDIR
        {
            self.may_move_dir(&dst)?;
        }
        if let Some(rule) = route {
            let area_idx = self.routing.rule_area[rule];
            let adir = self.routing.areas[area_idx].dir();
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
                        self.routing.redirects.remove(&p, &name);
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
                        self.routing.redirects.remove(&p, &name);
                    }
                    self.record_redirect(&np, &newname, rule, area_idx, &tname, sst.st_ino);
                    self.moved(&sst, &self.routing.areas[area_idx].dir(), &tname);
                    self.routed_away(&sst, np.nodeid, &newname);
                    return Ok(());
                }
                Err(e) if existing.is_some() => {
                    self.fail_open(rule, &np, &newname, e);
                    return Ok(());
                }
                Err(Errno::EXDEV)
                    if self.settings.cross_device == crate::config::CrossDevice::Exdev =>
                {
                    return Err(Errno::EXDEV);
                }
                Err(Errno::EXDEV) => {}
                Err(e) => self.fail_open(rule, &np, &newname, e),
            }
        }
        if let Some(moved) = self.replace_routed_in_place(&src, &sst, &dst, &np, &newname, flags) {
            moved?;
            if src.redirect.is_some() {
                self.routing.redirects.remove(&p, &name);
            }
            return Ok(());
        }
        self.rename_plain_for(&src, &sst, &dst, flags)?;
        // What now holds a routed name there, before anything looks.
        if dst.redirect.is_some() {
            self.routing.redirects.set_ino(&np, &newname, sst.st_ino);
        }
        if let (true, Some(_), Some(st)) = (exchange, &src.redirect, swapped) {
            self.routing.redirects.set_ino(&p, &name, st.st_ino);
        }
        if src.redirect.is_some() && !exchange {
            self.routing.redirects.remove(&p, &name);
        }
        // An object that took a routed name's place in an area is that
        // name's object from now on, also after a remount, which finds
        // origins on the objects.
        let arrived = [Some((&dst, &np)), exchange.then_some((&src, &p))];
        for (r, from) in arrived
            .into_iter()
            .flatten()
            .filter_map(|(l, from)| Some((l.redirect.as_ref()?, from)))
        {
            let by = creds::request_caller();
            let dir = from
                .dir_fd()
                .ok()
                .and_then(|d| redirect::DirId::of(d.as_raw_fd()));
            redirect::tag_origin(
                &self.routing.areas[r.area],
                &r.tname,
                &r.origin,
                Some((by.uid, by.gid, self.settings.host.as_str())),
                dir,
            );
        }
        Ok(())
    }

    /// Whether the caller may move the directory `l` names to another
    /// directory (which rewrites its `..`): write permission on it.
    fn may_move_dir(&self, l: &Located) -> Res<()> {
        sys::access_at(l.dir.dir_fd()?.as_raw_fd(), &l.name, libc::W_OK)
    }

    /// A rename onto a routed name whose object lives on another
    /// filesystem than the one renamed, with `cross_device=inplace`, or
    /// of a directory the caller may not move out of its directory: the
    /// newcomer takes the name in place, and the routed object goes as the
    /// replaced file of any rename does. None where that does not apply.
    /// The rename comes first, so a failure leaves everything as it was.
    pub(super) fn replace_routed_in_place(
        &self,
        src: &Located,
        sst: &libc::stat,
        dst: &Located,
        np: &Arc<Inode>,
        newname: &CStr,
        flags: u32,
    ) -> Option<Res<()>> {
        let r = dst.redirect.as_ref()?;
        if flags & libc::RENAME_EXCHANGE != 0 {
            return None;
        }
        let elsewhere = self.settings.cross_device == crate::config::CrossDevice::InPlace
            && dst.dir.dev != sst.st_dev;
        let unwritable_dir = || {
            sst.st_mode & libc::S_IFMT == libc::S_IFDIR
                && src.redirect.is_none()
                && self.may_move_dir(src).is_err()
        };
        if !elsewhere && !unwritable_dir() {
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
                name: std::borrow::Cow::Borrowed(newname),
                redirect: None,
                st: None,
            };
            self.rename_plain_for(src, sst, &here, flags)?;
            self.routing.redirects.remove(np, newname);
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
                    self.routing
                        .areas
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
    pub(super) fn rename_plain_for(
        &self,
        src: &Located,
        sst: &libc::stat,
        dst: &Located,
        flags: u32,
    ) -> Res<()> {
        match (src.redirect.is_some(), dst.redirect.is_some()) {
            (false, false) => self.rename_plain(src, sst, dst, flags),
            (true, true) => creds::as_root(|| self.rename_plain(src, sst, dst, flags)),
            (from_area, _) => {
                self.may_change(if from_area { dst } else { src })?;
                creds::as_root(|| self.rename_plain(src, sst, dst, flags))
            }
        }
    }

    /// The caller's right to what a rename does to the name `l` outside
    /// the areas, when casafs does it as root (the other name is in an
    /// area): the backing does not judge it then, and the kernel judged it
    /// on what it had cached, which a change beneath the mount (another
    /// host, a process in the backing directory) can have made stale.
    /// Judged afresh on the directory's descriptor, as the backing would:
    /// write and search permission on it, and in a sticky directory
    /// ownership of it or of the object there (`EPERM`).
    fn may_change(&self, l: &Located) -> Res<()> {
        let dfd = l.dir.dir_fd()?;
        sys::access_at(dfd.as_raw_fd(), c"", libc::W_OK | libc::X_OK)?;
        let d = sys::fstat(dfd.as_raw_fd())?;
        if d.st_mode & libc::S_ISVTX == 0 {
            return Ok(());
        }
        match sys::stat_at(dfd.as_raw_fd(), &l.name) {
            Ok(o) if !creds::owns(o.st_uid) && !creds::owns(d.st_uid) => Err(Errno::EPERM),
            Ok(_) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(super) fn rename_plain(
        &self,
        src: &Located,
        sst: &libc::stat,
        dst: &Located,
        flags: u32,
    ) -> Res<()> {
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
            self.origin_dir_gone(dstat);
        }
        self.moved(sst, &dst.dir, &dst.name);
        if exchange && let Some(dstat) = &dst_st {
            self.moved(dstat, &src.dir, &src.name);
        }
        Ok(())
    }

    /// Keeps the inode table's idea of where an object lives current.
    pub(super) fn moved(&self, st: &libc::stat, dir: &Arc<Inode>, name: &CStr) {
        let nodeid = self.inodes.nodeid_for(st.st_dev, st.st_ino);
        if let Ok(i) = self.inodes.get(nodeid)
            && i.same(st)
        {
            i.set_loc(dir.clone(), name.to_owned());
        }
    }
}
