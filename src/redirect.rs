//! The redirect table: routed objects, keyed by where their creator put them
//! (origin directory and name), pointing at where they really live (a target
//! area and a unique name there).
//!
//! Lookups of the original name consult this table first, which is what
//! keeps the original path working while the original directory's listing
//! stays clean. The origin is also written on the object itself, with who
//! routed it on which host and from which directory, so that it survives a
//! remount and any host of a shared tree finds it: as `trusted.*` xattrs,
//! which only root can set, or `user.*` ones where the filesystem keeps no
//! others, believed only as far as the object's owner's rights go.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use dashmap::DashMap;

use crate::inode::{Anchor, Inode};
use crate::sys;

/// The origin path, relative to the source root.
pub const ORIGIN_XATTR: &CStr = c"trusted.casafs.origin";
/// Who routed the object and on which host: "uid gid host" (for
/// retention, which removes with that user's rights, and leaves what a
/// live daemon of another host routed to that host).
pub const BY_XATTR: &CStr = c"trusted.casafs.by";
/// Where the origin is recorded where `trusted.*` cannot be: by a daemon
/// that is not root (which serves its own user alone), and on filesystems
/// that keep only `user.*` xattrs (NFS 4.2). The object's owner can change
/// these, so a daemon that is root takes from them nothing the owner could
/// not do anyway (see `Record::by`).
pub const ORIGIN_XATTR_USER: &CStr = c"user.casafs.origin";
/// "uid gid host", beside `ORIGIN_XATTR_USER`; its uid and gid are never
/// believed, only its host.
pub const BY_XATTR_USER: &CStr = c"user.casafs.by";
/// Which directory the object came from: its inode number, and birth
/// time where the filesystem keeps one (`DirId`). A path alone would let a
/// new directory made under a removed one's name inherit its objects.
pub const DIR_XATTR: &CStr = c"trusted.casafs.dir";
pub const DIR_XATTR_USER: &CStr = c"user.casafs.dir";
/// casafs's records, hidden through the mount.
pub const ORIGIN_XATTRS: [&CStr; 6] = [
    ORIGIN_XATTR,
    BY_XATTR,
    DIR_XATTR,
    ORIGIN_XATTR_USER,
    BY_XATTR_USER,
    DIR_XATTR_USER,
];

/// A directory as every host of a shared filesystem sees it: its inode
/// number (the same on every client of NFS, Lustre, CephFS) and, where the
/// filesystem keeps one, its birth time (told apart from a new directory
/// that got a removed one's number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirId {
    pub ino: u64,
    pub born: Option<u64>,
}

impl DirId {
    /// The directory open as `fd`.
    pub fn of(fd: RawFd) -> Option<DirId> {
        let st = sys::fstat(fd).ok()?;
        Some(DirId {
            ino: st.st_ino,
            born: sys::birth_generation(fd, c""),
        })
    }

    fn text(&self) -> String {
        match self.born {
            Some(b) => format!("{} {b}", self.ino),
            None => self.ino.to_string(),
        }
    }

    fn parse(b: &[u8]) -> Option<DirId> {
        let t = std::str::from_utf8(b).ok()?;
        let mut it = t.split(' ');
        let ino = it.next()?.parse().ok()?;
        let born = it.next().and_then(|v| v.parse().ok());
        Some(DirId { ino, born })
    }

    /// What a removed directory's objects record: no directory.
    pub const GONE: DirId = DirId { ino: 0, born: None };

    /// The same directory, as far as both know.
    pub fn same(&self, other: &DirId) -> bool {
        self.ino == other.ino
            && match (self.born, other.born) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// What casafs recorded on a routed object.
pub struct Record {
    /// The origin path, relative to the source root.
    pub origin: Vec<u8>,
    /// Whose rights act on the object (retention, restoring its path): as
    /// recorded where only root could record it, else its owner.
    pub by: (u32, u32),
    /// The host that routed it, where recorded.
    pub host: Option<String>,
    /// The directory it came from, where recorded.
    pub dir: Option<DirId>,
}

/// The three xattrs of a record, in one namespace.
struct Names {
    origin: &'static CStr,
    by: &'static CStr,
    dir: &'static CStr,
    /// Only root can set them: the ids recorded are believed.
    trusted: bool,
}

const TRUSTED: Names = Names {
    origin: ORIGIN_XATTR,
    by: BY_XATTR,
    dir: DIR_XATTR,
    trusted: true,
};
const USER: Names = Names {
    origin: ORIGIN_XATTR_USER,
    by: BY_XATTR_USER,
    dir: DIR_XATTR_USER,
    trusted: false,
};

/// Where the object's record is, and its origin: `trusted.*` for a daemon
/// that is root, `user.*` only where the filesystem keeps no `trusted.*`
/// (there its owner could have written it, which its readers allow for):
/// where it keeps them, a `user.*` record is anyone's forgery.
fn record_names(anchor: &Anchor) -> Option<(&'static Names, Vec<u8>)> {
    if crate::creds::enabled() {
        match read_xattr(anchor, TRUSTED.origin) {
            Ok(origin) => return Some((&TRUSTED, origin)),
            Err(sys::Errno::EOPNOTSUPP) => {}
            Err(_) => return None,
        }
    }
    Some((&USER, get_xattr(anchor, USER.origin)?))
}

fn get_xattr(anchor: &Anchor, name: &CStr) -> Option<Vec<u8>> {
    read_xattr(anchor, name).ok()
}

fn read_xattr(anchor: &Anchor, name: &CStr) -> sys::Res<Vec<u8>> {
    if name.to_bytes().starts_with(b"trusted.") && crate::fault::no_trusted_xattrs() {
        return Err(sys::Errno::EOPNOTSUPP);
    }
    let mut buf = vec![0u8; 4096];
    let n = anchor.getxattr(name, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// "uid gid host" as recorded: the ids, and the host where given.
fn parse_by(text: &[u8]) -> Option<((u32, u32), Option<String>)> {
    let text = std::str::from_utf8(text).ok()?;
    let mut it = text.splitn(3, ' ');
    let uid = it.next()?.parse().ok()?;
    let gid = it.next()?.parse().ok()?;
    Some(((uid, gid), it.next().map(str::to_string)))
}

/// The record on the object `tname` in the area directory `area`.
pub fn record_of(area: &Arc<OwnedFd>, tname: &CStr) -> Option<Record> {
    let anchor = Anchor::At(area.clone(), tname.to_owned());
    let (names, origin) = record_names(&anchor)?;
    let by = get_xattr(&anchor, names.by).and_then(|b| parse_by(&b));
    let host = by.as_ref().and_then(|(_, h)| h.clone());
    let ids = match by {
        Some((ids, _)) if names.trusted => ids,
        _ => {
            let st = sys::stat_at(area.as_raw_fd(), tname).ok()?;
            (st.st_uid, st.st_gid)
        }
    };
    Some(Record {
        origin,
        by: ids,
        host,
        dir: get_xattr(&anchor, names.dir).and_then(|d| DirId::parse(&d)),
    })
}

/// A target area: a directory that routed objects are placed in.
pub struct Area {
    pub path: PathBuf,
    /// The area's directory. Replaced when the directory was removed and
    /// an operator made it again (see `CasaFs::revive_area`).
    pub inode: parking_lot::RwLock<Arc<Inode>>,
    pub fs_type: i64,
    /// The directory the area was found in and its name there, to look
    /// for it again (made anew, rotated) by one name in a directory opened
    /// before mounting: a path could lead through the mount itself, and a
    /// request that waits on the mount can wait on itself.
    pub parent: Option<(OwnedFd, CString)>,
    /// The names in the area, as last listed (see `Listing`).
    pub listing: Listing,
    /// Held while a free name is found and taken: where the backing has no
    /// RENAME_NOREPLACE (ntfs-3g) that is a stat and then a rename, and two
    /// routed objects must never take one name.
    pub place_lock: parking_lot::Mutex<()>,
}

/// The names in an area, listed again only once the area's directory
/// changed: a lookup of a routed name this daemon does not know looks for
/// its record among them (`find_recorded`), and a user looking up many such
/// names must not make casafs list a large area each time.
#[derive(Default)]
pub struct Listing(parking_lot::Mutex<Option<(Stamp, Arc<Vec<CString>>)>>);

/// A directory's inode number, modification and change times, as the
/// filesystem has them now (past a network filesystem's attribute cache).
type Stamp = (u64, i128, i128);

fn stamp(fd: RawFd) -> Option<Stamp> {
    let mask = libc::STATX_INO | libc::STATX_MTIME | libc::STATX_CTIME;
    let stx = sys::statx_synced(fd, mask)?;
    Some((
        stx.stx_ino,
        sys::statx_ns(stx.stx_mtime),
        sys::statx_ns(stx.stx_ctime),
    ))
}

impl Listing {
    /// The names in the area open as `area`.
    pub fn names(&self, area: &Arc<OwnedFd>) -> Option<Arc<Vec<CString>>> {
        // Taken before listing: a change meanwhile lists again next time.
        let now = stamp(area.as_raw_fd())?;
        if let Some((was, names)) = &*self.0.lock()
            && *was == now
        {
            return Some(names.clone());
        }
        let list = sys::open_at(
            area.as_raw_fd(),
            c".",
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .ok()?;
        let names = Arc::new(crate::tree::list_dir(&list).ok()?);
        *self.0.lock() = Some((now, names.clone()));
        Some(names)
    }
}

impl Area {
    pub fn dir(&self) -> Arc<Inode> {
        self.inode.read().clone()
    }
}

#[derive(Clone)]
pub struct Redirect {
    pub area: usize,
    pub rule: usize,
    /// The object's name inside the area.
    pub tname: CString,
    /// Origin path relative to the source root: the bytes of the names,
    /// which need not be UTF-8.
    pub origin: Vec<u8>,
    pub created: SystemTime,
    /// The object's inode number in its area: a redirect whose name there
    /// names another object (its own went, and a new one took the name)
    /// has lost its object and must not show the newcomer.
    pub ino: u64,
}

type Key = (u64, u64, CString);

#[derive(Default)]
pub struct RedirectTable {
    map: DashMap<Key, Redirect>,
    /// How many redirects each origin directory (dev, ino) has, so that an
    /// rmdir of a directory without any costs one lookup.
    dirs: DashMap<(u64, u64), usize>,
    /// Which origin each object in an area belongs to, by (area, name).
    /// Redirects are followed by name: when a name in an area is taken by a
    /// new object, whatever redirect still pointed at it had lost its
    /// object (retention, an operator) and must not show the newcomer.
    targets: DashMap<(usize, CString), Key>,
    /// How many redirects `map` holds, or more for a moment while one is
    /// added: whether there is any costs one load, where `DashMap`'s own
    /// count locks every shard in turn. Asked on every request that
    /// resolves a name.
    live: AtomicUsize,
}

impl RedirectTable {
    fn key(dir: &Inode, name: &CStr) -> Key {
        (dir.dev, dir.ino, name.to_owned())
    }

    pub fn get(&self, dir: &Inode, name: &CStr) -> Option<Redirect> {
        if self.is_empty() {
            return None;
        }
        self.map.get(&Self::key(dir, name)).map(|r| r.clone())
    }

    /// Another object took the routed name's place in its area.
    pub fn set_ino(&self, dir: &Inode, name: &CStr, ino: u64) {
        if let Some(mut r) = self.map.get_mut(&Self::key(dir, name)) {
            r.ino = ino;
        }
    }

    pub fn insert(&self, dir: &Inode, name: &CStr, r: Redirect) {
        self.add(Self::key(dir, name), r);
    }

    fn add(&self, key: Key, r: Redirect) {
        let target = (r.area, r.tname.clone());
        let stale = self.targets.insert(target.clone(), key.clone());
        if let Some(old) = stale.filter(|old| *old != key) {
            self.drop_key(&old);
        }
        let dir = (key.0, key.1);
        // Counted before it is in: never fewer than there are.
        self.live.fetch_add(1, Ordering::SeqCst);
        match self.map.insert(key.clone(), r) {
            None => *self.dirs.entry(dir).or_default() += 1,
            Some(prev) => {
                self.live.fetch_sub(1, Ordering::SeqCst);
                if target != (prev.area, prev.tname.clone()) {
                    self.untarget(&(prev.area, prev.tname), &key)
                }
            }
        }
    }

    /// Forgets that `target` belongs to `key`, unless it went to another.
    fn untarget(&self, target: &(usize, CString), key: &Key) {
        self.targets.remove_if(target, |_, k| k == key);
    }

    /// Rebuilds the table after a restart from the origins recorded on the
    /// objects in the areas (`user.casafs.origin`). An object is reachable
    /// by its original path again when that directory still exists, the
    /// name there is free, and the rule still routes the name to this area.
    /// Returns how many were restored.
    pub fn restore(
        &self,
        areas: &[Area],
        rule_area: &[usize],
        rules: &crate::rules::RuleSet,
        root: RawFd,
    ) -> usize {
        let mut restored = 0;
        for (ai, area) in areas.iter().enumerate() {
            let Ok(afd) = area.dir().dir_fd() else {
                continue;
            };
            let Ok(list) =
                sys::open_at(afd.as_raw_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
            else {
                continue;
            };
            for tname in crate::graveyard::list_dir(&list).unwrap_or_default() {
                let Some(record) = record_of(&afd, &tname) else {
                    continue;
                };
                let Some((origin, parent, name, created)) = origin_of(&afd, &tname, record.origin)
                else {
                    continue;
                };
                // Only under a name casafs gives it there: a copy or a
                // rename aside made in the area directly keeps the record
                // but is not the routed object.
                if !named_for(tname.to_bytes(), name.to_bytes()) {
                    continue;
                }
                let Ok(st) = sys::stat_at(afd.as_raw_fd(), &tname) else {
                    continue;
                };
                let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
                let Some(rule) = rules.route(name.to_bytes(), is_dir) else {
                    continue;
                };
                if rule_area.get(rule) != Some(&ai) {
                    continue;
                }
                // The origin must be a place the one who routed the object
                // could create in: reached strictly beneath the tree, with
                // that user's rights. A record naming anywhere else is not
                // one casafs made.
                let (uid, _) = record.by;
                let reach = || -> Option<Option<OwnedFd>> {
                    let pfd = if parent.is_empty() {
                        None
                    } else {
                        let p = CString::new(parent.clone()).ok()?;
                        Some(
                            sys::open_beneath(root, &p, libc::O_PATH | libc::O_DIRECTORY, 0)
                                .ok()?,
                        )
                    };
                    let praw = pfd.as_ref().map_or(root, |f| f.as_raw_fd());
                    sys::access_at(praw, c"", libc::W_OK | libc::X_OK).ok()?;
                    Some(pfd)
                };
                let Some(pfd) = crate::creds::as_user(uid, reach).flatten() else {
                    tracing::warn!(
                        "{}: its origin {} is not a place uid {uid} could create in; not restored",
                        area.path.join(tname.to_string_lossy().as_ref()).display(),
                        String::from_utf8_lossy(&origin)
                    );
                    continue;
                };
                let praw = pfd.as_ref().map_or(root, |f| f.as_raw_fd());
                if sys::stat_at(praw, &name).is_ok() {
                    continue;
                }
                // A new directory under a removed one's name is not where
                // the object came from.
                if let (Some(was), Some(now)) = (&record.dir, DirId::of(praw))
                    && !was.same(&now)
                {
                    continue;
                }
                let Ok(pst) = sys::fstat(praw) else {
                    continue;
                };
                let key = (pst.st_dev, pst.st_ino, name);
                if self.map.contains_key(&key) {
                    continue;
                }
                self.add(
                    key,
                    Redirect {
                        area: ai,
                        rule,
                        tname,
                        origin,
                        created,
                        ino: st.st_ino,
                    },
                );
                restored += 1;
            }
        }
        restored
    }

    pub fn remove(&self, dir: &Inode, name: &CStr) -> Option<Redirect> {
        self.remove_key(&Self::key(dir, name))
    }

    fn remove_key(&self, key: &Key) -> Option<Redirect> {
        let r = self.drop_key(key)?;
        self.untarget(&(r.area, r.tname.clone()), key);
        Some(r)
    }

    /// Removes the redirect and its origin directory's count, not its entry
    /// in `targets`.
    fn drop_key(&self, key: &Key) -> Option<Redirect> {
        let (_, r) = self.map.remove(key)?;
        self.live.fetch_sub(1, Ordering::SeqCst);
        if let dashmap::mapref::entry::Entry::Occupied(mut e) = self.dirs.entry((key.0, key.1)) {
            *e.get_mut() = e.get().saturating_sub(1);
            if *e.get() == 0 {
                e.remove();
            }
        }
        Some(r)
    }

    /// Whether the directory (`dev`, `ino`) holds any routed name.
    pub fn routes_in(&self, dev: u64, ino: u64) -> bool {
        !self.is_empty() && self.dirs.get(&(dev, ino)).is_some_and(|n| *n > 0)
    }

    /// Drops the redirects of a removed directory: they are not live any
    /// more, and a new directory that gets its number must not inherit
    /// them.
    /// Returns them.
    pub fn forget_dir(&self, dev: u64, ino: u64) -> Vec<Redirect> {
        if self.dirs.remove(&(dev, ino)).is_none() {
            return Vec::new();
        }
        let keys: Vec<Key> = self
            .map
            .iter()
            .filter(|e| (e.key().0, e.key().1) == (dev, ino))
            .map(|e| e.key().clone())
            .collect();
        keys.iter().filter_map(|k| self.remove_key(k)).collect()
    }

    /// Drops the redirects whose object is no longer in its area (removed
    /// by retention or by hand), so that what is listed as live is: a
    /// lookup of the original name would drop each anyway.
    pub fn drop_gone(&self, areas: &[Area]) {
        if self.is_empty() {
            return;
        }
        let fds: Vec<_> = areas.iter().map(|a| a.dir().dir_fd().ok()).collect();
        let gone: Vec<Key> = self
            .map
            .iter()
            .filter(|e| {
                let r = e.value();
                let stable = areas
                    .get(r.area)
                    .is_some_and(|a| crate::fstype::keeps_inode_numbers(a.fs_type));
                fds.get(r.area).and_then(Option::as_ref).is_some_and(|fd| {
                    match sys::stat_at(fd.as_raw_fd(), &r.tname) {
                        Err(sys::Errno::ENOENT) => true,
                        Ok(st) => stable && st.st_ino != r.ino,
                        Err(_) => false,
                    }
                })
            })
            .map(|e| e.key().clone())
            .collect();
        for k in &gone {
            self.remove_key(k);
        }
    }

    /// Directories moved, each from one path to another (relative to the
    /// source root): the origins recorded beneath them follow, in the table
    /// and on the objects, so that a remount finds them where they are now.
    pub fn rebase(&self, moves: &[(Vec<u8>, Vec<u8>)], areas: &[Area]) {
        if self.is_empty() {
            return;
        }
        let mut changed = Vec::new();
        for mut e in self.map.iter_mut() {
            let r = e.value_mut();
            let moved = moves.iter().find_map(|(from, to)| {
                let rest = r.origin.strip_prefix(from.as_slice())?;
                rest.starts_with(b"/")
                    .then(|| [to.as_slice(), rest].concat())
            });
            if let Some(origin) = moved {
                r.origin = origin;
                changed.push((r.area, r.tname.clone(), r.origin.clone()));
            }
        }
        for (area, tname, origin) in changed {
            if let Some(a) = areas.get(area) {
                tag_origin(a, &tname, &origin, None, None);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.load(Ordering::SeqCst) == 0
    }

    /// `origin -> target` lines for `.casafs/redirects`, sorted by origin,
    /// of the origins `visible` accepts.
    pub fn render(
        &self,
        areas: &[Area],
        rule_names: &[String],
        visible: &dyn Fn(&[u8]) -> bool,
    ) -> String {
        let mut rows: Vec<(String, String, String)> = self
            .map
            .iter()
            .filter(|e| visible(&e.value().origin))
            .map(|e| {
                let r = e.value();
                let target = areas
                    .get(r.area)
                    .map(|a| {
                        a.path
                            .join(String::from_utf8_lossy(r.tname.to_bytes()).as_ref())
                    })
                    .unwrap_or_default();
                let rule = rule_names.get(r.rule).cloned().unwrap_or_default();
                (
                    String::from_utf8_lossy(&r.origin).into_owned(),
                    target.to_string_lossy().into_owned(),
                    rule,
                )
            })
            .collect();
        rows.sort();
        let mut out = String::new();
        for (o, t, rule) in rows {
            out.push_str(&format!("{}\t{}\t{rule}\n", escape(&o), escape(&t)));
        }
        out
    }
}

/// A path as a field of a `.casafs/redirects` line: a backslash, a tab, a
/// newline or another control character (any of which a user may put in
/// a name) is written `\\`, `\t`, `\n` or `\xHH`, so that no name
/// makes a line or a field of its own.
pub fn escape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    for c in field.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The path an `escape`d field stands for.
pub fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                if let Some(b) = u8::from_str_radix(&hex, 16).ok().filter(u8::is_ascii) {
                    out.push(b as char);
                }
            }
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// Candidate names in the target area for `name`: itself, then
/// `stem-2.ext`, `stem-3.ext`, ... so two origins never share one object.
pub fn candidate(name: &CStr, n: u32) -> CString {
    if n <= 1 {
        return name.to_owned();
    }
    let b = name.to_bytes();
    let dot = b.iter().rposition(|&c| c == b'.').filter(|&i| i > 0);
    let mut out = Vec::with_capacity(b.len() + 8);
    match dot {
        Some(i) => {
            out.extend_from_slice(&b[..i]);
            out.extend_from_slice(format!("-{n}").as_bytes());
            out.extend_from_slice(&b[i..]);
        }
        None => {
            out.extend_from_slice(b);
            out.extend_from_slice(format!("-{n}").as_bytes());
        }
    }
    CString::new(out).unwrap_or_else(|_| name.to_owned())
}

/// The candidate numbers to try, in order, for a name to place: the first
/// few in turn, as an operator expects them (`-2`, `-3`, ...), then
/// numbers drawn at random, so that however many objects of one name an
/// area holds (any user can make thousands), a free one is found in a few
/// tries rather than one try per object there.
pub fn candidate_numbers() -> impl Iterator<Item = u32> {
    const IN_TURN: u32 = 16;
    const DRAWN: usize = 64;
    let mut seed = crate::sys::random_u64() | 1;
    (1..=IN_TURN).chain(
        std::iter::repeat_with(move || {
            // xorshift64: cheap, and seeded from the kernel.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            IN_TURN + 1 + (seed % u64::from(i32::MAX as u32 - IN_TURN)) as u32
        })
        .take(DRAWN),
    )
}

/// The name `candidate` made `name` from with n >= 2, if it is one:
/// `casa-X-2.log` -> `casa-X.log`.
pub fn uncandidate(name: &[u8]) -> Option<Vec<u8>> {
    let dot = name.iter().rposition(|&c| c == b'.').filter(|&i| i > 0);
    let (stem, ext) = name.split_at(dot.unwrap_or(name.len()));
    let dash = stem.iter().rposition(|&c| c == b'-')?;
    let digits = &stem[dash + 1..];
    let n: u32 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    if n < 2 || digits.first() == Some(&b'0') || dash == 0 {
        return None;
    }
    let mut out = stem[..dash].to_vec();
    out.extend_from_slice(ext);
    Some(out)
}

/// Whether `tname` is a name routing gives an object called `name` in its
/// area: the same, or one of its `candidate`s.
fn named_for(tname: &[u8], name: &[u8]) -> bool {
    tname == name || uncandidate(tname).as_deref() == Some(name)
}

/// The origin path recorded on the object `tname` in the area directory
/// `area`, and the directory it came from where recorded.
pub fn recorded_place(area: &Arc<OwnedFd>, tname: &CStr) -> Option<(Vec<u8>, Option<DirId>)> {
    let anchor = Anchor::At(area.clone(), tname.to_owned());
    let (names, origin) = record_names(&anchor)?;
    let dir = get_xattr(&anchor, names.dir).and_then(|d| DirId::parse(&d));
    Some((origin, dir))
}

/// The last name of an origin path.
pub fn last_name(origin: &[u8]) -> &[u8] {
    origin.rsplit(|&b| b == b'/').next().unwrap_or(origin)
}

/// The object in the area `area` routed from `name` in the directory
/// `dir` (whose path is `origin`): named `name` or one of its candidates
/// there, recording that directory (or, for a record without one, that
/// path); its attributes and its record. Looked for by listing the area:
/// any daemon of any host may have routed it.
pub fn find_recorded(
    area: &Arc<OwnedFd>,
    listing: &Listing,
    name: &CStr,
    origin: &[u8],
    dir: Option<DirId>,
) -> Option<(CString, libc::stat, Record)> {
    let mut names: Vec<CString> = listing
        .names(area)?
        .iter()
        .filter(|t| named_for(t.to_bytes(), name.to_bytes()))
        .cloned()
        .collect();
    // The first one routed from there, should two hosts have made one each.
    names.sort_by_key(|t| (t.to_bytes().len(), t.clone()));
    names.into_iter().find_map(|t| {
        let record = record_of(area, &t)?;
        let from_here = match (&record.dir, &dir) {
            (Some(r), _) if *r == DirId::GONE => false,
            // Where the directory was moved since, its objects follow; but
            // without birth times a new directory may have a removed one's
            // number, so there the path must be the same too.
            (Some(r), Some(d)) => {
                r.same(d)
                    && last_name(&record.origin) == name.to_bytes()
                    && ((r.born.is_some() && d.born.is_some()) || record.origin == origin)
            }
            _ => record.origin == origin,
        };
        if !from_here {
            return None;
        }
        let st = sys::stat_at(area.as_raw_fd(), &t).ok()?;
        Some((t, st, record))
    })
}

/// The origin recorded on an object in an area: the whole relative path, its
/// directory part, its name, and the object's change time.
#[allow(clippy::type_complexity)]
fn origin_of(
    area: &Arc<OwnedFd>,
    tname: &CStr,
    origin: Vec<u8>,
) -> Option<(Vec<u8>, Vec<u8>, CString, SystemTime)> {
    let (parent, name) = match origin.iter().rposition(|&b| b == b'/') {
        Some(i) => (&origin[..i], &origin[i + 1..]),
        None => (&origin[..0], &origin[..]),
    };
    if name.is_empty() || name == b"." || name == b".." || parent.starts_with(b"/") {
        return None;
    }
    let st = sys::stat_at(area.as_raw_fd(), tname).ok()?;
    let created = std::time::UNIX_EPOCH + std::time::Duration::from_secs(st.st_ctime.max(0) as u64);
    Some((
        origin.clone(),
        parent.to_vec(),
        CString::new(name).ok()?,
        created,
    ))
}

/// Records the origin on the object (with `by`, who routed it and on which
/// host; with `dir`, the directory it came from), as root in `trusted.*`;
/// where the filesystem keeps only `user.*` xattrs (NFS), or the daemon is
/// not root, in `user.*`. Filesystems without xattrs simply do not carry
/// it.
pub fn tag_origin(
    area: &Area,
    tname: &CStr,
    origin: &[u8],
    by: Option<(u32, u32, &str)>,
    dir: Option<DirId>,
) {
    if let Ok(adir) = area.dir().dir_fd() {
        let anchor = Anchor::At(adir, tname.to_owned());
        let by = by.map(|(uid, gid, host)| format!("{uid} {gid} {host}"));
        let dir = dir.map(|d| d.text());
        let write = |names: &Names| {
            if let Some(by) = &by {
                let _ = anchor.setxattr(names.by, by.as_bytes(), 0);
            }
            if let Some(dir) = &dir {
                let _ = anchor.setxattr(names.dir, dir.as_bytes(), 0);
            }
        };
        crate::creds::as_root(|| {
            if crate::creds::enabled() {
                let trusted = if crate::fault::no_trusted_xattrs() {
                    Err(sys::Errno::EOPNOTSUPP)
                } else {
                    anchor.setxattr(TRUSTED.origin, origin, 0)
                };
                match trusted {
                    Ok(()) => return write(&TRUSTED),
                    Err(sys::Errno::EOPNOTSUPP) => {}
                    Err(_) => return,
                }
            }
            if anchor.setxattr(USER.origin, origin, 0).is_ok() {
                write(&USER);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An area is listed again only once it changed: a user looking up
    /// name after name makes casafs read its directory once.
    #[test]
    fn an_area_is_listed_again_only_once_it_changed() {
        let dir = sys::TestDir::new("listing");
        let base = &dir.0;
        std::fs::write(base.join("casa-1.log"), b"").unwrap();
        let fd = Arc::new(dir.open("", libc::O_PATH | libc::O_DIRECTORY));
        let listing = Listing::default();
        let first = listing.names(&fd).unwrap();
        assert_eq!(first.as_slice(), [c"casa-1.log".to_owned()]);
        for _ in 0..100 {
            assert!(Arc::ptr_eq(&first, &listing.names(&fd).unwrap()));
        }
        std::fs::write(base.join("casa-2.log"), b"").unwrap();
        let again = listing.names(&fd).unwrap();
        assert!(!Arc::ptr_eq(&first, &again));
        assert_eq!(again.len(), 2);
    }

    #[test]
    fn the_table_is_empty_exactly_when_it_holds_no_redirect() {
        let t = RedirectTable::default();
        let r = |tname: &CStr| Redirect {
            area: 0,
            rule: 0,
            tname: tname.to_owned(),
            origin: b"d/x".to_vec(),
            created: SystemTime::UNIX_EPOCH,
            ino: 7,
        };
        let (a, b) = ((1, 2, c"a".to_owned()), (1, 2, c"b".to_owned()));
        assert!(t.is_empty() && !t.routes_in(1, 2));
        t.add(a.clone(), r(c"a"));
        // The same name again replaces it, also under another area name.
        t.add(a.clone(), r(c"a-2"));
        t.add(b.clone(), r(c"b"));
        assert_eq!((t.len(), t.is_empty()), (2, false));
        assert!(t.routes_in(1, 2) && !t.routes_in(1, 3));
        assert!(t.remove_key(&a).is_some());
        assert!(t.remove_key(&a).is_none());
        assert!(!t.is_empty());
        // A new name in the area taken by another origin drops the old.
        t.add((1, 3, c"c".to_owned()), r(c"b"));
        assert_eq!((t.len(), t.is_empty()), (1, false));
        assert_eq!(t.forget_dir(1, 3).len(), 1);
        assert!(t.is_empty() && !t.routes_in(1, 3));
    }

    #[test]
    fn a_free_candidate_is_found_in_few_tries_however_many_are_taken() {
        // The first ones in turn, as operators expect them.
        let first: Vec<u32> = candidate_numbers().take(16).collect();
        assert_eq!(first, (1..=16).collect::<Vec<_>>());
        // An area holding 100,000 objects of one name (1 to 100,000):
        // the next gets a free name within a few tries, not 100,001.
        let tries = candidate_numbers().position(|n| n > 100_000).unwrap() + 1;
        assert!(tries <= 20, "{tries} tries");
        // Every number still makes a name routing recognises as the
        // name's own.
        for n in candidate_numbers() {
            let c = candidate(c"casa-1.log", n);
            assert!(n == 1 || uncandidate(c.to_bytes()).as_deref() == Some(&b"casa-1.log"[..]));
        }
    }

    #[test]
    fn candidates_keep_the_extension() {
        let n = c"casa-20250101-000000.log";
        assert_eq!(candidate(n, 1).as_c_str(), n);
        assert_eq!(candidate(n, 2).as_c_str(), c"casa-20250101-000000-2.log");
        assert_eq!(
            candidate(c"TMPPOINTING17", 3).as_c_str(),
            c"TMPPOINTING17-3"
        );
        assert_eq!(candidate(c".hidden", 2).as_c_str(), c".hidden-2");
    }

    #[test]
    fn an_area_name_is_the_origins_or_a_candidate_of_it() {
        assert!(named_for(b"TMPPOINTING4", b"TMPPOINTING4"));
        assert!(named_for(b"TMPPOINTING4-2", b"TMPPOINTING4"));
        assert!(named_for(b"casa-1-3.log", b"casa-1.log"));
        assert!(!named_for(b"TMPPOINTING4.bak", b"TMPPOINTING4"));
        assert!(!named_for(b"TMPPOINTING4-keep", b"TMPPOINTING4"));
        assert!(!named_for(b"casa-1.log.1", b"casa-1.log"));
    }

    #[test]
    fn uncandidate_undoes_candidate_and_nothing_else() {
        for (name, n) in [
            (&b"casa-20250101-000000.log"[..], 2),
            (b"tmp12.ms", 17),
            (b"TMPPOINTING17", 3),
            (b".hidden", 2),
        ] {
            let c = CString::new(name).unwrap();
            let made = candidate(&c, n);
            assert_eq!(uncandidate(made.to_bytes()).as_deref(), Some(name));
        }
        for plain in [
            &b"casa-20250101-000000.log"[..],
            b"keep-case.ms",
            b"x-1.log",
            b"x-02.log",
        ] {
            assert_eq!(
                uncandidate(plain),
                None,
                "{}",
                String::from_utf8_lossy(plain)
            );
        }
    }
}
