//! Routing: which rule routes a new name, the areas (found again when an
//! operator makes one anew), making a routed object in its area and
//! recording where it came from, and failing open when an area is unusable.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;

use super::CasaFs;
use super::is_reserved_root_name;
use super::made::Made;
use crate::creds::{self};
use crate::inode::{Inode, ROOT_ID};
use crate::live::Live;
use crate::redirect::{self, Redirect};
use crate::redirect::{Area, RedirectTable};
use crate::sys::{self, Errno, Res};

/// What routing keeps: the areas (each as it is now), which area each rule
/// routes to, and where every routed object came from.
pub struct Routing {
    pub(super) areas: Vec<Area>,
    /// Rule index -> area index.
    pub(super) rule_area: Vec<usize>,
    pub(super) rule_names: Vec<String>,
    pub(super) redirects: RedirectTable,
}

impl Routing {
    pub fn new(areas: Vec<Area>, rule_area: Vec<usize>, rule_names: Vec<String>) -> Routing {
        Routing {
            areas,
            rule_area,
            rule_names,
            redirects: RedirectTable::default(),
        }
    }

    /// A target area whose name names another directory than the one in
    /// use, on the same filesystem (the old one was removed, or moved
    /// aside, and the operator made it again): use the new one. It is
    /// looked for by its name in the directory it was found in at start
    /// (`Area::parent`), never by a path, without following symlinks. True
    /// when the area changed to a live directory.
    pub fn revive_area(&self, idx: usize) -> bool {
        crate::creds::as_root(|| self.revive_area_now(idx))
    }

    pub(super) fn revive_area_now(&self, idx: usize) -> bool {
        let Some(area) = self.areas.get(idx) else {
            return false;
        };
        let Some((parent, name)) = &area.parent else {
            return false;
        };
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let Ok(fd) = sys::open_at(parent.as_raw_fd(), name, flags, 0) else {
            return false;
        };
        let Ok(st) = sys::fstat(fd.as_raw_fd()) else {
            return false;
        };
        // Only a directory on the area's own filesystem: anything else under
        // that name (something mounted there, this very mount) is not the
        // area an operator made again.
        let usable = |cur: &Inode| cur.dev == st.st_dev && cur.ino != st.st_ino;
        if st.st_nlink == 0 || !usable(&area.inode.read()) {
            return false;
        }
        // Made anew by an operator, not by a user who found the name free:
        // root's, and open to nobody else.
        if !crate::areas::adoptable(&st) {
            tracing::warn!(
                "target area {} is a new directory that is not root's alone (uid {}, mode {:04o}): not routing to it",
                area.path.display(),
                st.st_uid,
                st.st_mode & 0o7777
            );
            return false;
        }
        let mut cur = area.inode.write();
        if !usable(&cur) {
            return false;
        }
        if let Ok(Some(note)) = crate::areas::secure(fd.as_raw_fd()) {
            tracing::warn!("target area {}: {note}", area.path.display());
        }
        *cur = Inode::new_held(cur.nodeid, fd, &st, true);
        tracing::info!(
            "target area {} is a new directory: routing to it",
            area.path.display()
        );
        true
    }

    /// The area's directory, made anew if an operator replaced it (an area
    /// is looked for again at every routing, too).
    pub fn area_now(&self, idx: usize) -> Option<Arc<OwnedFd>> {
        self.revive_area(idx);
        self.areas.get(idx)?.dir().dir_fd().ok()
    }

    /// Whether `st` is the root of a target area (names below it are never
    /// routed again).
    pub(super) fn is_area_root(&self, st: &libc::stat) -> bool {
        self.is_area(st.st_dev, st.st_ino)
    }

    /// Whether `dir` is an area's directory now. Unlike `in_area`, also
    /// true for an area directory made again after a removal, which was
    /// not known as one when it was created.
    pub(super) fn is_area_dir(&self, dir: &Inode) -> bool {
        self.is_area(dir.dev, dir.ino)
    }

    pub fn is_area(&self, dev: u64, ino: u64) -> bool {
        self.areas.iter().any(|a| {
            let d = a.dir();
            d.dev == dev && d.ino == ino
        })
    }

    /// The rule that routes a new `name` in `dir`, if any. Never inside an
    /// area, judged by where `dir` is now (a directory routed there by a
    /// rename, or moved back out of it, keeps its `in_area` of old).
    pub fn route(&self, live: &Live, dir: &Inode, name: &CStr, is_dir: bool) -> Option<usize> {
        if dir.nodeid == ROOT_ID && is_reserved_root_name(name) {
            return None;
        }
        let rule = live.route(name.to_bytes(), is_dir)?;
        self.routes_in(dir).then_some(rule)
    }

    /// Whether names made in `dir` may be routed: it is in no area.
    pub(super) fn routes_in(&self, dir: &Inode) -> bool {
        if self.is_area_dir(dir) {
            return false;
        }
        let mut up = dir.parent_name();
        // Bounded all the same: a chain of stale parents must not loop.
        for _ in 0..4096 {
            let Some((p, _)) = up else {
                break;
            };
            if self.is_area_dir(&p) {
                return false;
            }
            up = p.parent_name();
        }
        true
    }
}

impl CasaFs {
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
        if self.locate(p, name)?.redirect.is_some() || self.routed_elsewhere(p, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let pfd = p.dir_fd()?;
        if let Some(rule) = self.routing.route(&self.live, p, name, is_dir) {
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
                Err(e) => self.fail_open(rule, p, name, e),
            }
        }
        let mode = made.map_or(0, |m| m.in_place_mode());
        let v = make(pfd.as_raw_fd(), name, mode)?;
        let st = match created_stat(pfd.as_raw_fd(), name) {
            Ok(st) => st,
            Err(e) => return Err(undo_create(pfd.as_raw_fd(), name, is_dir, v, e)),
        };
        let in_area = p.in_area || self.routing.is_area_root(&st);
        Ok((self.inodes.remember(p, name, &st, in_area), st, v))
    }

    /// The routed half of `new_entry`: made in the rule's area as root,
    /// then given to the caller with the owner, group, mode and ACLs an
    /// in-place creation in `p` (open as `pfd`) would have given it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn make_routed<T>(
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
            let adir = self.routing.areas[area_idx].dir();
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
    /// area is unusable (the pipeline never fails because of an area).
    pub(super) fn fail_open(&self, rule: usize, p: &Arc<Inode>, name: &CStr, e: Errno) {
        self.stats.rules[rule].fail_open.fetch_add(1, Relaxed);
        tracing::warn!(
            "rule {}: target area {} unusable ({}); {}/{} stays in place",
            self.routing.rule_names[rule],
            self.routing.areas[self.routing.rule_area[rule]]
                .path
                .display(),
            std::io::Error::from_raw_os_error(e.code()),
            self.inodes.rel_path(p),
            name.to_string_lossy()
        );
    }

    /// Creates the object in the rule's area under a free candidate name
    /// (`redirect::candidate_numbers`). Never overwrites: `make` fails with
    /// EEXIST on a taken name.
    pub(super) fn place<T>(
        &self,
        rule: usize,
        name: &CStr,
        make: &dyn Fn(RawFd, &CStr) -> Res<T>,
    ) -> Res<(usize, CString, T)> {
        let area_idx = *self.routing.rule_area.get(rule).ok_or(Errno::EIO)?;
        // The area's path may name another directory by now: made anew
        // after a removal, or after the old one was moved aside (rotated).
        let mut revived = self.routing.revive_area(area_idx);
        'again: loop {
            let area = self.routing.areas.get(area_idx).ok_or(Errno::EIO)?;
            let afd = area.dir().dir_fd()?;
            let _taking = area.place_lock.lock();
            for n in redirect::candidate_numbers() {
                let t = redirect::candidate(name, n);
                match make(afd.as_raw_fd(), &t) {
                    Ok(v) => return Ok((area_idx, t, v)),
                    Err(Errno::EEXIST) => continue,
                    Err(Errno::ENOENT) if !revived && self.routing.revive_area(area_idx) => {
                        revived = true;
                        continue 'again;
                    }
                    Err(e) => return Err(e),
                }
            }
            return Err(Errno::EEXIST);
        }
    }

    pub(super) fn record_redirect(
        &self,
        p: &Arc<Inode>,
        name: &CStr,
        rule: usize,
        area_idx: usize,
        tname: &CStr,
        ino: u64,
    ) {
        let origin = self.origin_of(p, name);
        let area = &self.routing.areas[area_idx];
        let by = creds::request_caller();
        let host = self.settings.host.as_str();
        let dir = p
            .dir_fd()
            .ok()
            .and_then(|d| redirect::DirId::of(d.as_raw_fd()));
        redirect::tag_origin(area, tname, &origin, Some((by.uid, by.gid, host)), dir);
        tracing::info!(
            "rule {}: {} -> {}",
            self.routing.rule_names[rule],
            String::from_utf8_lossy(&origin),
            area.path.join(tname.to_string_lossy().as_ref()).display()
        );
        self.routing.redirects.insert(
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

    /// A name no redirect of this daemon knows, looked for in the origin
    /// records on the backing: another daemon (another host on a shared
    /// tree) may have routed it. Asked when a lookup found nothing, and
    /// before a name is made; a name no rule routes costs one rule match.
    pub(super) fn routed_elsewhere(
        &self,
        dir: &Arc<Inode>,
        name: &CStr,
    ) -> Res<Option<super::entry::Located<'_>>> {
        if dir.nodeid == ROOT_ID && is_reserved_root_name(name) {
            return Ok(None);
        }
        let rules = self.live.rules_naming(name.to_bytes());
        if rules.is_empty() || !self.routing.routes_in(dir) {
            return Ok(None);
        }
        let dfd = dir.dir_fd()?;
        let origin = self.origin_of(dir, name);
        let here = redirect::DirId::of(dfd.as_raw_fd());
        let mut areas: Vec<(usize, usize)> = rules
            .iter()
            .filter_map(|&rule| Some((*self.routing.rule_area.get(rule)?, rule)))
            .collect();
        areas.dedup_by_key(|(a, _)| *a);
        for (area_idx, rule) in areas {
            let found = creds::as_root(|| {
                let afd = self.routing.area_now(area_idx)?;
                let listing = &self.routing.areas.get(area_idx)?.listing;
                redirect::find_recorded(&afd, listing, name, &origin, here)
            });
            let Some((tname, st, record)) = found else {
                continue;
            };
            // A record shows the object only where the one who routed it
            // could have made it (as restoring one after a restart): an
            // owner can write a `user.*` record, and anyone with root on
            // the backing a `trusted.*` one naming anybody.
            let (uid, _) = record.by;
            let w = || sys::access_at(dfd.as_raw_fd(), c"", libc::W_OK | libc::X_OK).ok();
            if creds::as_user(uid, w).flatten().is_none() {
                continue;
            }
            let created =
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(st.st_ctime.max(0) as u64);
            let r = Redirect {
                area: area_idx,
                rule,
                tname: tname.clone(),
                origin: origin.clone(),
                created,
                ino: st.st_ino,
            };
            self.routing.redirects.insert(dir, name, r.clone());
            return Ok(Some(super::entry::Located {
                dir: self.routing.areas[area_idx].dir(),
                name: std::borrow::Cow::Owned(tname),
                redirect: Some(r),
                st: Some(st),
            }));
        }
        Ok(None)
    }

    /// Whether the routed object of `r` (in the area open as `afd`), the
    /// redirect of `name` in `dir`, now records another origin: another
    /// daemon renamed it. (A directory moved on the way does not count.)
    pub(super) fn moved_elsewhere(
        &self,
        afd: &Arc<OwnedFd>,
        r: &Redirect,
        dir: &Inode,
        name: &CStr,
    ) -> bool {
        creds::as_root(|| redirect::recorded_place(afd, &r.tname)).is_some_and(|(origin, d)| {
            redirect::last_name(&origin) != name.to_bytes()
                || d.is_some_and(|d| d.ino != dir.ino)
                || (d.is_none() && origin != r.origin)
        })
    }

    /// The directory `st` was removed or replaced: its redirects end, and
    /// their objects' records say so, so that no directory made under its
    /// name later, on any host, takes them (where the backing keeps no
    /// birth times, its inode number may come back).
    pub(super) fn origin_dir_gone(&self, st: &libc::stat) {
        for r in self.routing.redirects.forget_dir(st.st_dev, st.st_ino) {
            if let Some(area) = self.routing.areas.get(r.area) {
                redirect::tag_origin(area, &r.tname, &r.origin, None, Some(redirect::DirId::GONE));
            }
        }
    }

    /// The path of `name` in `p` relative to the source root, as origins
    /// are recorded.
    pub(super) fn origin_of(&self, p: &Arc<Inode>, name: &CStr) -> Vec<u8> {
        let mut origin = self.inodes.rel_path_bytes(p);
        if !origin.is_empty() {
            origin.push(b'/');
        }
        origin.extend_from_slice(name.to_bytes());
        origin
    }
}

/// A new object's attributes, from the backing's cache: its reply to the
/// create has just filled it (one stat fewer on a FUSE backing).
pub(super) fn created_stat(dir: RawFd, name: &CStr) -> Res<libc::stat> {
    crate::fault::stat_after_create(name.to_bytes())?;
    sys::stat_cached_at(dir, name)
}

/// A create that fails after the object exists removes it again: the
/// caller gets an error, so the kernel records no change in the directory
/// and a listing it keeps must still match the backing. What `make` gave
/// (an open descriptor of a new file) goes first: a backing like ntfs-3g
/// hides a removed file that is still open instead of removing it.
pub(super) fn undo_create<T>(dir: RawFd, name: &CStr, is_dir: bool, made: T, e: Errno) -> Errno {
    drop(made);
    let flag = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    let _ = sys::unlink_at(dir, name, flag);
    e
}

/// The directory `dir` (with attributes `st`) is in, and its name there:
/// where an area is looked for again when it is made anew. The name is the
/// one the directory has, which is not the last one of the configured path
/// where that ends in a symlink.
pub(super) fn name_in_parent(
    dir: &OwnedFd,
    st: &libc::stat,
) -> Option<(OwnedFd, std::ffi::CString)> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY;
    let parent = sys::open_at(dir.as_raw_fd(), c"..", flags, 0).ok()?;
    let name = crate::tree::list_dir(&parent).ok()?.into_iter().find(|n| {
        sys::stat_at(parent.as_raw_fd(), n)
            .is_ok_and(|s| (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino))
    })?;
    let parent = sys::open_at(dir.as_raw_fd(), c"..", libc::O_PATH | libc::O_DIRECTORY, 0).ok()?;
    Some((parent, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MountArgs, build_from_text};
    use crate::inode::ROOT_ID;

    fn dir_fd(p: &std::path::Path) -> (OwnedFd, libc::stat) {
        let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        let fd = sys::open_at(libc::AT_FDCWD, &c, libc::O_PATH | libc::O_DIRECTORY, 0).unwrap();
        let st = sys::fstat(fd.as_raw_fd()).unwrap();
        (fd, st)
    }

    /// Routing on its own, over plain directories: which rule routes a
    /// name where, never inside an area, and an area an operator made
    /// anew is found again.
    #[test]
    fn routes_outside_areas_and_finds_an_area_made_anew() {
        let base = std::env::temp_dir().join(format!("casafs-routing-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (tree, scratch) = (base.join("tree"), base.join("scratch"));
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::create_dir_all(&scratch).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o700)).unwrap();
        let args = MountArgs {
            source: tree.clone(),
            mountpoint: tree.clone(),
            options: vec![format!("scratch={}", scratch.display())],
            config: None,
            foreground: true,
        };
        let settings =
            build_from_text(&args, "[[rule]]\nname = \"casa-logs\"\nenabled = false\n").unwrap();
        let live = Live::new(&settings);
        let (fd, st) = dir_fd(&scratch);
        let parent = name_in_parent(&fd, &st);
        let area = Area {
            path: scratch.clone(),
            inode: parking_lot::RwLock::new(Inode::new_held(
                crate::inode::area_id(0),
                fd,
                &st,
                true,
            )),
            fs_type: 0,
            parent,
            listing: Default::default(),
            place_lock: parking_lot::Mutex::new(()),
        };
        let routing = Routing::new(vec![area], vec![0], vec!["tmppointing".into()]);
        let (tfd, tst) = dir_fd(&tree);
        let root = Inode::new_held(ROOT_ID, tfd, &tst, false);

        assert_eq!(routing.route(&live, &root, c"TMPPOINTING1", true), Some(0));
        assert_eq!(
            routing.route(&live, &root, c"casa-1.log", false),
            None,
            "rule off"
        );
        assert_eq!(routing.route(&live, &root, c"data.ms", true), None);
        let area_dir = routing.areas[0].dir();
        assert_eq!(routing.route(&live, &area_dir, c"TMPPOINTING2", true), None);

        // The operator rotates the area and makes it again, root's alone.
        std::fs::rename(&scratch, base.join("scratch.old")).unwrap();
        std::fs::create_dir(&scratch).unwrap();
        std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o700)).unwrap();
        let (_, new) = dir_fd(&scratch);
        assert!(!routing.is_area(new.st_dev, new.st_ino));
        assert!(routing.revive_area(0));
        assert!(routing.is_area(new.st_dev, new.st_ino));
        assert!(
            !routing.is_area(st.st_dev, st.st_ino),
            "the old one is no area now"
        );
        let _ = std::fs::remove_dir_all(&base);
    }
}
