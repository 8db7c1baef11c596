//! The inode table: every object the kernel knows by a node id, where it lives
//! in the backing store, and how many lookups the kernel holds on it.
//!
//! Node ids are the backing inode numbers (so `st_ino`, hard links and
//! readdir's `d_ino` stay native). Objects on another device than the source
//! (a scratch area on NVMe, a submount) get synthetic ids from a reserved
//! range so they can never collide.
//!
//! Descriptors stay bounded: a regular file holds no descriptor at all, only
//! its parent and name; directories keep an `O_PATH` descriptor while fewer
//! than `fdbudget::cached_dirs()` are cached, and are reopened through their
//! parent when they are not.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use parking_lot::Mutex;

use crate::sys::{self, Errno, Res};

// The node-id space, all of it:
//   ROOT_ID                           the tree's root
//   below SYNTHETIC_BASE              objects of the tree's own filesystem: their inode number
//   ALIAS_BASE up                     directories seen through an area's own path in the tree
//                                     (they show their own inode number)
//   SYNTHETIC_BASE up                 objects elsewhere (an area on its own disk), numbered as met
//   area_id(i) = u64::MAX - 64 - i    area i's directory
//   CONTROL_DIR_ID up                 the control directory, then its files
//   GRAVEYARD_ID                      the graveyard's directory
pub const ROOT_ID: u64 = 1;
const SYNTHETIC_BASE: u64 = 1 << 62;
const ALIAS_BASE: u64 = 1 << 61;

/// A node id of a directory seen through an area's path (`area_view`).
pub fn is_alias(nodeid: u64) -> bool {
    (ALIAS_BASE..SYNTHETIC_BASE).contains(&nodeid)
}
pub const CONTROL_DIR_ID: u64 = u64::MAX - 16;
pub const GRAVEYARD_ID: u64 = u64::MAX - 8;

pub fn area_id(i: usize) -> u64 {
    u64::MAX - 64 - i as u64
}

static CACHED_DIR_FDS: AtomicUsize = AtomicUsize::new(0);
/// Objects kept reachable without a name (each costs a descriptor, shared
/// out by `crate::fdbudget`), and those of them kept only to be freed at
/// the kernel's forget.
static PINS: AtomicUsize = AtomicUsize::new(0);
static PINS_UNTIL_FORGET: AtomicUsize = AtomicUsize::new(0);

/// Pins by the uid whose request made them.
fn pins_by_user() -> &'static DashMap<u32, usize> {
    static BY: std::sync::OnceLock<DashMap<u32, usize>> = std::sync::OnceLock::new();
    BY.get_or_init(DashMap::new)
}

/// Below `bound`, one more in `count`.
fn take_one(count: &AtomicUsize, bound: usize) -> bool {
    count
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < bound).then_some(n + 1)
        })
        .is_ok()
}

/// A pin counted against `uid`, or None past a bound.
fn take_pin(uid: u32, until_forget: bool) -> Option<()> {
    if until_forget && !take_one(&PINS_UNTIL_FORGET, crate::fdbudget::freed_at_forget()) {
        return None;
    }
    let taken = take_one(&PINS, crate::fdbudget::pins()) && {
        let mut n = pins_by_user().entry(uid).or_default();
        let ok = uid == 0 || *n < crate::fdbudget::pins_per_user();
        if ok {
            *n += 1;
        } else {
            PINS.fetch_sub(1, Ordering::Relaxed);
        }
        ok
    };
    if !taken && until_forget {
        PINS_UNTIL_FORGET.fetch_sub(1, Ordering::Relaxed);
    }
    taken.then_some(())
}

fn give_pin(pin: &Pin) {
    PINS.fetch_sub(1, Ordering::Relaxed);
    if pin.until_forget {
        PINS_UNTIL_FORGET.fetch_sub(1, Ordering::Relaxed);
    }
    if let dashmap::mapref::entry::Entry::Occupied(mut e) = pins_by_user().entry(pin.uid) {
        *e.get_mut() = e.get().saturating_sub(1);
        if *e.get() == 0 {
            e.remove();
        }
    }
}

/// A descriptor of an object whose last name went away while the kernel
/// may still ask about it.
struct Pin {
    fd: Arc<OwnedFd>,
    /// Whose request pinned it.
    uid: u32,
    /// Kept only so that the backing frees it at the kernel's forget.
    until_forget: bool,
}

/// How many directories without a descriptor `Inode::path_fd` opens on its
/// way down to one object.
const MAX_UNHELD_ANCESTORS: usize = 512;

pub fn pinned_objects() -> usize {
    PINS.load(Ordering::Relaxed)
}

pub fn cached_dir_fds() -> usize {
    CACHED_DIR_FDS.load(Ordering::Relaxed)
}

/// Where an object lives in the backing store.
pub enum Loc {
    /// An anchor: the source root, a target area root, the graveyard. Its
    /// descriptor is always held.
    Anchor,
    /// `name` inside the backing directory `parent`.
    At { parent: Arc<Inode>, name: CString },
}

/// State that exists only while an inode has open handles.
#[derive(Default)]
pub struct OpenState {
    pub handles: u32,
    /// The kernel passthrough backing id shared by all handles of the inode.
    pub backing: Option<Arc<crate::backing::Backing>>,
    /// Graveyard names holding this inode's data until the last close.
    pub buried: Vec<CString>,
    /// The kernel may still hold the backing file open without any handle:
    /// a memory mapping of a file opened with kernel passthrough maps the
    /// kernel's own open of the backing file, which outlives the last
    /// close and is invisible to casafs. Set by every readable passthrough
    /// open; cleared when the kernel lets go of the inode (a mapping holds
    /// the inode, so no forget comes while one lives).
    pub mapped: bool,
    /// Handles open for writing with kernel passthrough, whose writes the
    /// kernel makes straight to the backing file as the caller.
    pub writers: u32,
}

pub struct Inode {
    pub nodeid: u64,
    pub dev: u64,
    pub ino: u64,
    /// `st_mode & S_IFMT` when first seen; a name reused by another kind of
    /// object is a different inode.
    pub fmt: u32,
    /// Inside a target area: names here are never routed again.
    pub in_area: bool,
    /// Reached through an area's own path inside the tree (the area seen as
    /// a directory of the tree), not through the name it was routed from.
    /// A routed directory is one object with two paths; the kernel allows a
    /// directory only one, so the area's path shows it under a node id of
    /// its own (as a bind mount would) and neither path moves the other.
    pub area_view: bool,
    /// Reached through its own descriptor only, having no name casafs knows
    /// (`O_TMPFILE`, found by a file handle) until a lookup or link gives
    /// it one: then it is reached by that name and the descriptor goes.
    nameless: std::sync::atomic::AtomicBool,
    /// A directory of casafs's own (an area, the graveyard), open to root
    /// alone: what is in it is reached through descriptors of its own,
    /// opened by casafs, never by name as a caller (see `anchor`).
    pub private: bool,
    pub lookups: AtomicU64,
    /// Tells apart objects that had the same node id (the backing reuses
    /// numbers): from the object's birth time where the backing keeps one
    /// (`sys::birth_generation`: the same in every mount, as file handles
    /// need), else bumped when a number is reused while the kernel may
    /// still hold the old object. The kernel then retires its old inode
    /// instead of mixing the two, and a file handle of it answers ESTALE.
    pub generation: u64,
    /// The object is gone (removed through us); its number may be reused.
    pub dead: std::sync::atomic::AtomicBool,
    /// A hard link to it was made through casafs. A backing that keeps a
    /// cache per name (ntfs-3g) can then report the old link count for a
    /// while under its other names.
    pub linked: std::sync::atomic::AtomicBool,
    pub loc: Mutex<Loc>,
    fd: Mutex<Option<Arc<OwnedFd>>>,
    /// See `pin`.
    pinned: Mutex<Option<Pin>>,
    pub open: Mutex<OpenState>,
    /// When the kernel last got the object's attributes with a reference
    /// (`sys::coarse_now_ns`).
    attrs_sent: AtomicU64,
    /// Since when the names of this directory's last complete listing are
    /// fresh in the kernel (0: no such listing).
    listed: AtomicU64,
    /// A directory whose changes made beneath the mount casafs hears of
    /// (`crate::watch`).
    pub names_watched: std::sync::atomic::AtomicBool,
    /// Changes beneath the mount to this object's name and attributes are
    /// heard of: it was last found in a directory with watched names.
    pub watched: std::sync::atomic::AtomicBool,
    /// The thread that last opened it for writing with kernel passthrough,
    /// and when such a handle was last closed: a write event of that
    /// thread then is one the kernel saw (passthrough writes come from the
    /// caller).
    pub last_writer: std::sync::atomic::AtomicU32,
    pub closed_at: AtomicU64,
}

impl Drop for Inode {
    fn drop(&mut self) {
        if let Some(pin) = self.pinned.get_mut().take() {
            give_pin(&pin);
        }
        let mut next = self.let_go_of_parent();
        // A chain of parents that only this inode held goes one at a time:
        // dropped by recursion, a deep one would exhaust the stack.
        while let Some(p) = next {
            next = match Arc::try_unwrap(p) {
                Ok(mut parent) => parent.let_go_of_parent(),
                Err(_) => None,
            };
        }
    }
}

impl Inode {
    /// Gives back the descriptor slot this inode counts and hands over its
    /// parent, leaving it an anchor with nothing to drop after it.
    fn let_go_of_parent(&mut self) -> Option<Arc<Inode>> {
        let cached = self.fd.get_mut().take().is_some();
        match std::mem::replace(self.loc.get_mut(), Loc::Anchor) {
            Loc::At { parent, .. } => {
                if cached {
                    CACHED_DIR_FDS.fetch_sub(1, Ordering::Relaxed);
                }
                Some(parent)
            }
            Loc::Anchor => None,
        }
    }
}

/// Whether a `sys::coarse_now_ns` stamp is less than `ttl` old.
fn younger_than(stamp: u64, ttl: std::time::Duration) -> bool {
    let ttl = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
    sys::coarse_now_ns().saturating_sub(stamp) < ttl
}

/// How to reach an object for one operation.
pub enum Anchor {
    /// A descriptor (`O_PATH`) of the object itself.
    Fd(Arc<OwnedFd>),
    /// A name inside a directory descriptor.
    At(Arc<OwnedFd>, CString),
}

impl Anchor {
    pub fn stat(&self) -> Res<libc::stat> {
        match self {
            Anchor::Fd(fd) => sys::fstat(fd.as_raw_fd()),
            Anchor::At(dir, name) => sys::stat_at(dir.as_raw_fd(), name),
        }
    }

    /// `stat` from the backing's cache (`sys::stat_cached_at`).
    pub fn stat_cached(&self) -> Res<libc::stat> {
        match self {
            Anchor::Fd(fd) => sys::fstat_cached(fd.as_raw_fd()),
            Anchor::At(dir, name) => sys::stat_cached_at(dir.as_raw_fd(), name),
        }
    }

    /// Opens the object with real access flags. Never follows a symlink,
    /// and never waits: what is found there may have been swapped for a
    /// FIFO or a device since the kernel looked it up (outside the mount,
    /// in an area), whose open would hold a serving thread until someone
    /// else acts. The caller checks that it opened the object it meant.
    pub fn open(&self, flags: i32) -> Res<OwnedFd> {
        let flags = flags & !(libc::O_CREAT | libc::O_EXCL) | libc::O_NONBLOCK | libc::O_NOCTTY;
        let via_proc = |fd: &OwnedFd| {
            sys::open_at(
                libc::AT_FDCWD,
                &sys::proc_path(fd.as_raw_fd()),
                flags & !libc::O_NOFOLLOW,
                0,
            )
        };
        let fd = match self {
            // "." from a directory's own O_PATH descriptor: no walk through
            // /proc. It needs search permission, which a caller may lack
            // where /proc would still open it (a directory it may read but
            // not search).
            Anchor::Fd(fd) if flags & libc::O_DIRECTORY != 0 => {
                match sys::open_at(fd.as_raw_fd(), c".", flags, 0) {
                    Err(Errno::EACCES) => via_proc(fd),
                    r => r,
                }
            }
            Anchor::Fd(fd) => via_proc(fd),
            Anchor::At(dir, name) => {
                sys::open_at(dir.as_raw_fd(), name, flags | libc::O_NOFOLLOW, 0)
            }
        }?;
        // O_NONBLOCK stays: on the regular files and directories casafs keeps
        // open it changes nothing (reads and writes of a regular file never
        // wait for it), and this descriptor is casafs's alone (the kernel
        // opens its own for passthrough, with the caller's flags).
        Ok(fd)
    }

    /// An extended attribute of the object (never of a symlink's target)
    /// into `buf`, or its size when `buf` is empty.
    pub fn getxattr(&self, attr: &CStr, buf: &mut [u8]) -> Res<usize> {
        self.xattr(
            buf,
            |dir, name, buf| sys::getxattr_at(dir, name, attr, buf),
            |path, follow, buf| sys::getxattr(path, attr, buf, follow),
        )
    }

    /// The names of the object's extended attributes, or their size.
    pub fn listxattr(&self, buf: &mut [u8]) -> Res<usize> {
        self.xattr(buf, sys::listxattr_at, |path, follow, buf| {
            sys::listxattr(path, buf, follow)
        })
    }

    pub fn setxattr(&self, attr: &CStr, val: &[u8], flags: i32) -> Res<()> {
        self.xattr(
            &mut [],
            |dir, name, _| sys::setxattr_at(dir, name, attr, val, flags),
            |path, follow, _| sys::setxattr(path, attr, val, flags, follow),
        )
    }

    pub fn removexattr(&self, attr: &CStr) -> Res<()> {
        self.xattr(
            &mut [],
            |dir, name, _| sys::removexattr_at(dir, name, attr),
            |path, follow, _| sys::removexattr(path, attr, follow),
        )
    }

    /// One xattr call: its `*xattrat` form `at` on a name in a directory
    /// (a directory's own descriptor with "."), or `by_path` on the /proc
    /// path where there is no such form: the call is missing, the object is
    /// a pinned file (only its O_PATH descriptor is left, which the *at
    /// calls refuse), or a daemon that is not root may not search the
    /// directory.
    fn xattr<T>(
        &self,
        buf: &mut [u8],
        at: impl FnOnce(RawFd, &CStr, &mut [u8]) -> Option<Res<T>>,
        by_path: impl FnOnce(&CStr, bool, &mut [u8]) -> Res<T>,
    ) -> Res<T> {
        let fast = match self {
            Anchor::At(dir, name) => at(dir.as_raw_fd(), name, buf),
            Anchor::Fd(fd) => match at(fd.as_raw_fd(), c".", buf) {
                Some(Err(Errno::ENOTDIR | Errno::EACCES)) => None,
                r => r,
            },
        };
        if let Some(r) = fast {
            return r;
        }
        let (path, follow) = self.path()?;
        by_path(&path, follow, buf)
    }

    /// A path for the calls without an `*at()` form, plus whether the call
    /// must follow the last component (the `/proc/self/fd/N` magic link).
    fn path(&self) -> Res<(CString, bool)> {
        match self {
            Anchor::Fd(fd) => Ok((sys::proc_path(fd.as_raw_fd()), true)),
            Anchor::At(dir, name) => Ok((sys::proc_child_path(dir.as_raw_fd(), name)?, false)),
        }
    }
}

impl Inode {
    /// An inode reached through its own descriptor, held for as long as the
    /// inode lives (the root, an area, the graveyard).
    pub fn new_held(nodeid: u64, fd: OwnedFd, st: &libc::stat, in_area: bool) -> Arc<Inode> {
        Arc::new(Self::held(nodeid, fd, st, in_area))
    }

    fn held(nodeid: u64, fd: OwnedFd, st: &libc::stat, in_area: bool) -> Inode {
        Inode {
            nodeid,
            dev: st.st_dev,
            ino: st.st_ino,
            fmt: st.st_mode & libc::S_IFMT,
            in_area,
            area_view: false,
            nameless: std::sync::atomic::AtomicBool::new(false),
            private: in_area,
            lookups: AtomicU64::new(0),
            generation: 0,
            dead: std::sync::atomic::AtomicBool::new(false),
            linked: std::sync::atomic::AtomicBool::new(false),
            loc: Mutex::new(Loc::Anchor),
            fd: Mutex::new(Some(Arc::new(fd))),
            pinned: Mutex::new(None),
            open: Mutex::new(OpenState::default()),
            attrs_sent: AtomicU64::new(0),
            listed: AtomicU64::new(0),
            names_watched: std::sync::atomic::AtomicBool::new(false),
            last_writer: std::sync::atomic::AtomicU32::new(0),
            closed_at: AtomicU64::new(0),
            watched: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.fmt == libc::S_IFDIR
    }

    pub fn same_as(&self, other: &Inode) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }

    pub fn same(&self, st: &libc::stat) -> bool {
        st.st_dev == self.dev && st.st_ino == self.ino
    }

    /// Whether the kernel holds the object and got its attributes from a
    /// lookup or listing less than `ttl` ago, i.e. may still have them
    /// cached.
    pub fn attrs_sent_within(&self, ttl: std::time::Duration) -> bool {
        self.lookups.load(Ordering::Relaxed) > 0
            && !self.dead.load(Ordering::Relaxed)
            && younger_than(self.attrs_sent.load(Ordering::Relaxed), ttl)
    }

    /// Attributes stamped as sent did not go out after all. Their previous
    /// time is gone, so the next listing sends them in full.
    pub fn attrs_not_sent(&self) {
        self.attrs_sent.store(0, Ordering::Relaxed);
    }

    /// When the kernel last got the object's attributes with a reference.
    pub fn attrs_sent_ns(&self) -> u64 {
        self.attrs_sent.load(Ordering::Relaxed)
    }

    /// A listing of this directory reached its end; every name it gave is
    /// fresh in the kernel since `fresh_since` (0: not all of them are).
    pub fn mark_listed(&self, fresh_since: u64) {
        self.listed.store(fresh_since, Ordering::Relaxed);
    }

    /// Whether the names of the last complete listing of this directory
    /// are all younger in the kernel than `ttl`.
    pub fn listed_within(&self, ttl: std::time::Duration) -> bool {
        let at = self.listed.load(Ordering::Relaxed);
        at != 0 && younger_than(at, ttl)
    }

    /// The backing parent and name, if the object has one.
    pub fn parent_name(&self) -> Option<(Arc<Inode>, CString)> {
        match &*self.loc.lock() {
            Loc::At { parent, name } => Some((parent.clone(), name.clone())),
            Loc::Anchor => None,
        }
    }

    pub fn set_loc(&self, parent: Arc<Inode>, name: CString) {
        let mut loc = self.loc.lock();
        if !matches!(*loc, Loc::Anchor) {
            *loc = Loc::At { parent, name };
        }
    }

    /// Found under `name` in `parent`. If that is not where we thought it
    /// was, it was moved behind our back, or it is a new object that reuses
    /// a freed inode number (ntfs-3g reuses MFT records at once): either
    /// way descriptors we cached for the old place must go.
    pub fn relocate(&self, parent: &Arc<Inode>, name: &CStr) {
        // Read first: every lookup of a known object comes here.
        if self.nameless.load(Ordering::Relaxed) && self.nameless.swap(false, Ordering::AcqRel) {
            *self.loc.lock() = Loc::At {
                parent: parent.clone(),
                name: name.to_owned(),
            };
            // Held, not cached: it was never counted among the cached
            // directory descriptors.
            self.fd.lock().take();
            return;
        }
        let moved = match &*self.loc.lock() {
            Loc::Anchor => return,
            Loc::At { parent: p, name: n } => !(p.same_as(parent) && n.as_c_str() == name),
        };
        if !moved {
            return;
        }
        self.set_loc(parent.clone(), name.to_owned());
        self.drop_cached_fd();
        if self.open.lock().handles == 0 {
            self.unpin();
        }
    }

    /// Marks the object removed: its number is free for reuse by the
    /// backing filesystem. A removed directory keeps the descriptor it has:
    /// a process may still work in it (its `stat .` answers with no links,
    /// as natively), and holding it keeps its number from being reused
    /// until the kernel lets go of it.
    pub fn mark_dead(&self) {
        self.dead.store(true, Ordering::Release);
        if !self.is_dir() {
            self.drop_cached_fd();
        }
    }

    /// Forgets the cached directory descriptor (the directory was removed
    /// or replaced).
    pub fn drop_cached_fd(&self) {
        if matches!(*self.loc.lock(), Loc::Anchor) {
            return;
        }
        if self.fd.lock().take().is_some() {
            CACHED_DIR_FDS.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Keeps a descriptor of the object so that it stays reachable after its
    /// name is gone (unlinked while open).
    ///
    /// Pins are bounded (`fdbudget::pins`): each is a descriptor of the daemon's,
    /// and a user who made unlinked-but-held objects by the thousand must
    /// not use up the descriptors every other user's opens need. Past the
    /// bound an object is not pinned, and may answer ENOENT once its last
    /// name is gone.
    pub fn pin(&self) -> Res<()> {
        if self.pinned.lock().is_some() {
            return Ok(());
        }
        self.pin_with(self.path_fd()?)
    }

    /// `pin` with `fd`, a descriptor already verified to be this object.
    pub fn pin_with(&self, fd: Arc<OwnedFd>) -> Res<()> {
        self.pin_as(fd, false)
    }

    /// `pin_with` for an object kept only so that the backing frees it
    /// when the kernel lets go of it (`unpin` at the forget), not inside
    /// the unlink; bounded more tightly than other pins
    /// (`fdbudget::freed_at_forget`).
    pub fn pin_until_forget(&self, fd: Arc<OwnedFd>) -> Res<()> {
        self.pin_as(fd, true)
    }

    fn pin_as(&self, fd: Arc<OwnedFd>, until_forget: bool) -> Res<()> {
        let uid = crate::creds::request_caller().uid;
        let mut slot = self.pinned.lock();
        if slot.is_none() {
            take_pin(uid, until_forget).ok_or(Errno::EMFILE)?;
            *slot = Some(Pin {
                fd,
                uid,
                until_forget,
            });
        }
        Ok(())
    }

    /// Whether the file, with no handle left, may still be open for the
    /// backing through a memory mapping (see `OpenState::mapped`): only
    /// while the kernel holds the inode.
    pub fn may_be_mapped(&self, open: &OpenState) -> bool {
        open.mapped && self.lookups.load(Ordering::Relaxed) > 0
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    pub fn is_pinned(&self) -> bool {
        self.pinned.lock().is_some()
    }

    pub fn unpin(&self) {
        if let Some(pin) = self.pinned.lock().take() {
            give_pin(&pin);
        }
    }

    /// The descriptor this inode holds, if any.
    fn held_fd(&self) -> Option<Arc<OwnedFd>> {
        if let Some(fd) = self.fd.lock().as_ref() {
            return Some(fd.clone());
        }
        self.pinned.lock().as_ref().map(|p| p.fd.clone())
    }

    /// An `O_PATH` descriptor of the object itself, verified to be the same
    /// (dev, ino) that the kernel knows. Ancestors without a descriptor are
    /// opened from the nearest one that has one, top down, without
    /// recursion: a chain of directories deeper than the descriptor cache
    /// must not exhaust a serving thread's stack.
    pub fn path_fd(&self) -> Res<Arc<OwnedFd>> {
        if let Some(fd) = self.held_fd() {
            return Ok(fd);
        }
        let (mut parent, name) = self.parent_name().ok_or(Errno::ESTALE)?;
        let mut missing: Vec<(Arc<Inode>, CString)> = Vec::new();
        let mut fd = loop {
            if let Some(fd) = parent.held_fd() {
                break fd;
            }
            // Each request walks down from there, so the walk is bounded:
            // only a tree thousands of levels deep, with the descriptor
            // cache full, has objects this far from a held directory.
            if missing.len() >= MAX_UNHELD_ANCESTORS {
                return Err(Errno::ENAMETOOLONG);
            }
            let (up, pname) = parent.parent_name().ok_or(Errno::ESTALE)?;
            missing.push((std::mem::replace(&mut parent, up), pname));
        };
        let mut above = parent;
        while let Some((dir, dname)) = missing.pop() {
            fd = dir.open_in(&above, &fd, &dname)?;
            above = dir;
        }
        self.open_in(&above, &fd, &name)
    }

    /// Opens this object as `name` in `parent` (open as `pfd`).
    fn open_in(&self, parent: &Inode, pfd: &Arc<OwnedFd>, name: &CStr) -> Res<Arc<OwnedFd>> {
        // casafs's own descriptor of an object the kernel already holds,
        // checked to be that object: opened as root where the caller may
        // not search the directory (an area; a directory whose mode changed
        // since the caller got the object).
        let open = || sys::open_at(pfd.as_raw_fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0);
        let fd = if parent.private {
            crate::creds::as_root(open)?
        } else {
            match open() {
                Err(Errno::EACCES) => crate::creds::as_root(open)?,
                r => r?,
            }
        };
        let st = sys::fstat(fd.as_raw_fd())?;
        if !self.same(&st) {
            return Err(Errno::ENOENT);
        }
        let fd = Arc::new(fd);
        let keep = self.is_dir() || parent.private;
        if keep && CACHED_DIR_FDS.load(Ordering::Relaxed) < crate::fdbudget::cached_dirs() {
            let mut slot = self.fd.lock();
            if slot.is_none() {
                CACHED_DIR_FDS.fetch_add(1, Ordering::Relaxed);
                *slot = Some(fd.clone());
            }
        }
        Ok(fd)
    }

    /// A directory descriptor to use as the `dirfd` of `*at()` calls.
    pub fn dir_fd(&self) -> Res<Arc<OwnedFd>> {
        if !self.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        self.path_fd()
    }

    /// How to reach the object: directories, pinned objects and what is in
    /// casafs's own directories by their own descriptor, everything else by
    /// name in the parent.
    pub fn anchor(&self) -> Res<Anchor> {
        if let Some(fd) = self.pinned.lock().as_ref() {
            return Ok(Anchor::Fd(fd.fd.clone()));
        }
        if self.is_dir() || matches!(*self.loc.lock(), Loc::Anchor) {
            return Ok(Anchor::Fd(self.path_fd()?));
        }
        let (parent, name) = self.parent_name().ok_or(Errno::ESTALE)?;
        if parent.private {
            return Ok(Anchor::Fd(self.path_fd()?));
        }
        Ok(Anchor::At(parent.path_fd()?, name))
    }

    /// Runs `f` on the object by `anchor`, and, where that answers EACCES
    /// from a name (the caller may no longer search the directory of an
    /// object the kernel has let it reach: a descriptor it holds, or a
    /// directory whose mode changed since), once more through the object's
    /// own descriptor, where only the object's own permissions count, as
    /// for a call on a descriptor natively.
    pub fn on_object<T>(&self, mut f: impl FnMut(&Anchor) -> Res<T>) -> Res<T> {
        let a = self.anchor()?;
        match f(&a) {
            Err(Errno::EACCES) if matches!(a, Anchor::At(..)) => f(&Anchor::Fd(self.path_fd()?)),
            r => r,
        }
    }

    /// Current attributes, verified to belong to this inode. A name that now
    /// holds another object means ours is gone: ENOENT, never its stats.
    pub fn stat(&self) -> Res<libc::stat> {
        self.stat_from(false)
    }

    /// `stat` from the backing's cache, right after a change through it
    /// whose reply refreshed that cache.
    pub fn stat_cached(&self) -> Res<libc::stat> {
        self.stat_from(true)
    }

    fn stat_from(&self, cached: bool) -> Res<libc::stat> {
        let a = self.anchor()?;
        let get = || if cached { a.stat_cached() } else { a.stat() };
        // Attributes of an object the kernel holds are casafs's to know,
        // also where the caller may no longer search its directory (an
        // fstat of a descriptor opened before a chmod of the directory).
        let st = match get() {
            Err(Errno::EACCES) => crate::creds::as_root(get)?,
            r => r?,
        };
        if self.same(&st) {
            return Ok(st);
        }
        if let Some(fd) = self.pinned.lock().as_ref() {
            return if cached {
                sys::fstat_cached(fd.fd.as_raw_fd())
            } else {
                sys::fstat(fd.fd.as_raw_fd())
            };
        }
        Err(Errno::ENOENT)
    }
}

/// nodeid -> inode, plus the id mapping for foreign devices.
pub struct InodeTable {
    map: DashMap<u64, Arc<Inode>>,
    foreign: DashMap<(u64, u64), u64>,
    /// Node ids of directories seen through an area's path (`area_view`).
    aliases: DashMap<(u64, u64), u64>,
    next_alias: AtomicU64,
    next_synthetic: AtomicU64,
    pub root_dev: u64,
    pub root_ino: u64,
}

impl InodeTable {
    pub fn new(root: Arc<Inode>) -> InodeTable {
        let map = DashMap::new();
        let (root_dev, root_ino) = (root.dev, root.ino);
        root.lookups.store(1, Ordering::Relaxed);
        map.insert(ROOT_ID, root);
        InodeTable {
            map,
            foreign: DashMap::new(),
            aliases: DashMap::new(),
            next_alias: AtomicU64::new(ALIAS_BASE),
            next_synthetic: AtomicU64::new(SYNTHETIC_BASE),
            root_dev,
            root_ino,
        }
    }

    pub fn get(&self, nodeid: u64) -> Res<Arc<Inode>> {
        if nodeid >= CONTROL_DIR_ID {
            // The control directory and its files take no changes.
            return Err(Errno::EROFS);
        }
        self.map
            .get(&nodeid)
            .map(|e| e.clone())
            .ok_or(Errno::ESTALE)
    }

    pub fn root(&self) -> Res<Arc<Inode>> {
        self.get(ROOT_ID)
    }

    /// Every inode the table holds now.
    pub fn all(&self) -> Vec<Arc<Inode>> {
        self.map.iter().map(|e| e.value().clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The node id the kernel sees for a backing (dev, ino).
    pub fn nodeid_for(&self, dev: u64, ino: u64) -> u64 {
        if dev == self.root_dev {
            if ino == self.root_ino {
                return ROOT_ID;
            }
            if ino != ROOT_ID && ino < ALIAS_BASE {
                return ino;
            }
        }
        *self
            .foreign
            .entry((dev, ino))
            .or_insert_with(|| self.next_synthetic.fetch_add(1, Ordering::Relaxed))
    }

    /// The backing inode number of an object the mount shows under a node
    /// id of casafs's own making (one on another filesystem than the
    /// root's), if casafs knows it.
    pub fn backing_ino(&self, nodeid: u64) -> Option<u64> {
        if !(ALIAS_BASE..CONTROL_DIR_ID).contains(&nodeid) {
            return None;
        }
        self.map.get(&nodeid).map(|i| i.ino)
    }

    /// The node id the kernel sees, without allocating one for an object it
    /// does not know (readdir's `d_ino` of foreign entries).
    pub fn peek_nodeid(&self, dev: u64, ino: u64) -> u64 {
        if dev == self.root_dev && ino != ROOT_ID && ino < ALIAS_BASE {
            if ino == self.root_ino {
                return ROOT_ID;
            }
            return ino;
        }
        self.foreign.get(&(dev, ino)).map(|v| *v).unwrap_or(ino)
    }

    /// Registers a lookup of `name` in `parent` that found `st`, adding one
    /// kernel reference. A known inode's location moves to this name (the
    /// newest name is the one most likely to still exist).
    pub fn remember(
        &self,
        parent: &Arc<Inode>,
        name: &CStr,
        st: &libc::stat,
        in_area: bool,
    ) -> Arc<Inode> {
        let fmt = st.st_mode & libc::S_IFMT;
        let nodeid = if parent.area_view && fmt == libc::S_IFDIR {
            *self
                .aliases
                .entry((st.st_dev, st.st_ino))
                .or_insert_with(|| self.next_alias.fetch_add(1, Ordering::Relaxed))
        } else {
            self.nodeid_for(st.st_dev, st.st_ino)
        };
        match self.map.entry(nodeid) {
            Entry::Occupied(mut e) => {
                let cur = e.get();
                if cur.same(st) && cur.fmt == fmt && !cur.dead.load(Ordering::Acquire) {
                    cur.lookups.fetch_add(1, Ordering::Relaxed);
                    cur.attrs_sent
                        .store(sys::coarse_now_ns(), Ordering::Relaxed);
                    cur.watched.store(
                        !in_area
                            && st.st_dev == parent.dev
                            && parent.names_watched.load(Ordering::Relaxed),
                        Ordering::Relaxed,
                    );
                    cur.relocate(parent, name);
                    return cur.clone();
                }
                // The backing inode number was reused by a new object while
                // the kernel still holds the old one. The new object gets a
                // new generation; the lookups the kernel holds on the old
                // one carry over, since its forget will come to this id.
                let held = cur.lookups.load(Ordering::Acquire);
                let generation = born_in(parent, name)
                    .filter(|&g| g != cur.generation)
                    .unwrap_or(cur.generation + 1);
                let ino = Arc::new(Self::make(
                    nodeid,
                    parent,
                    name,
                    st,
                    in_area,
                    generation,
                    held + 1,
                ));
                e.insert(ino.clone());
                ino
            }
            Entry::Vacant(v) => {
                let generation = born_in(parent, name).unwrap_or(0);
                let ino = Arc::new(Self::make(nodeid, parent, name, st, in_area, generation, 1));
                v.insert(ino.clone());
                ino
            }
        }
    }

    /// Registers an object without a name (`O_TMPFILE`, or found again by a
    /// file handle), reached through
    /// its own descriptor `fd`, adding one kernel reference.
    /// `fresh`: just made, so an inode the table holds under its number is
    /// an old object's, removed behind casafs's back.
    pub fn remember_nameless(
        &self,
        fd: OwnedFd,
        st: &libc::stat,
        in_area: bool,
        fresh: bool,
    ) -> Arc<Inode> {
        let nodeid = self.nodeid_for(st.st_dev, st.st_ino);
        let born = sys::birth_generation(fd.as_raw_fd(), c"");
        let mut ino = Inode::held(nodeid, fd, st, in_area);
        ino.generation = born.unwrap_or(0);
        ino.private = false;
        ino.nameless = std::sync::atomic::AtomicBool::new(true);
        ino.lookups = AtomicU64::new(1);
        match self.map.entry(nodeid) {
            // Known already (a directory reached again as a parent): the
            // same inode, one more reference.
            Entry::Occupied(e)
                if !fresh
                    && e.get().same(st)
                    && e.get().fmt == ino.fmt
                    && !e.get().dead.load(Ordering::Acquire) =>
            {
                e.get().lookups.fetch_add(1, Ordering::Relaxed);
                e.get().clone()
            }
            // A number reused while the kernel holds the old object: as in
            // `remember`.
            Entry::Occupied(mut e) => {
                let cur = e.get();
                if born.is_none_or(|g| g == cur.generation) {
                    ino.generation = cur.generation + 1;
                }
                *ino.lookups.get_mut() += cur.lookups.load(Ordering::Acquire);
                let ino = Arc::new(ino);
                e.insert(ino.clone());
                ino
            }
            Entry::Vacant(v) => {
                let ino = Arc::new(ino);
                v.insert(ino.clone());
                ino
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn make(
        nodeid: u64,
        parent: &Arc<Inode>,
        name: &CStr,
        st: &libc::stat,
        t: bool,
        generation: u64,
        lookups: u64,
    ) -> Inode {
        Inode {
            nodeid,
            dev: st.st_dev,
            ino: st.st_ino,
            fmt: st.st_mode & libc::S_IFMT,
            in_area: t,
            area_view: (t && !parent.in_area) || parent.area_view,
            nameless: std::sync::atomic::AtomicBool::new(false),
            // An area's own directory, seen through the tree.
            private: t && !parent.in_area,
            lookups: AtomicU64::new(lookups),
            generation,
            dead: std::sync::atomic::AtomicBool::new(false),
            linked: std::sync::atomic::AtomicBool::new(false),
            loc: Mutex::new(Loc::At {
                parent: parent.clone(),
                name: name.to_owned(),
            }),
            fd: Mutex::new(None),
            pinned: Mutex::new(None),
            open: Mutex::new(OpenState::default()),
            attrs_sent: AtomicU64::new(sys::coarse_now_ns()),
            listed: AtomicU64::new(0),
            names_watched: std::sync::atomic::AtomicBool::new(false),
            last_writer: std::sync::atomic::AtomicU32::new(0),
            closed_at: AtomicU64::new(0),
            watched: std::sync::atomic::AtomicBool::new(
                !t && st.st_dev == parent.dev && parent.names_watched.load(Ordering::Relaxed),
            ),
        }
    }

    /// Drops `n` kernel references. At zero, `let_go` sees the inode first
    /// (for what waited for the kernel to let go of it), then it leaves the
    /// table unless something of ours (a child, an open handle) still
    /// holds it.
    pub fn forget(&self, nodeid: u64, n: u64, let_go: impl FnOnce(&Arc<Inode>)) {
        if nodeid == ROOT_ID {
            return;
        }
        let Some(ino) = self.map.get(&nodeid).map(|e| e.clone()) else {
            return;
        };
        let prev = ino
            .lookups
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            })
            .unwrap_or(0);
        if prev > n {
            return;
        }
        let_go(&ino);
        // A pin keeps an unlinked object for the kernel's sake; the kernel
        // let go of it, and the last close (if there are handles) found it
        // still held.
        if ino.open.lock().handles == 0 {
            ino.unpin();
        }
        drop(ino);
        let removed = self.map.remove_if(&nodeid, |_, i| {
            i.lookups.load(Ordering::Acquire) == 0 && Arc::strong_count(i) == 1
        });
        if let Some((_, i)) = removed {
            if i.area_view && i.is_dir() {
                self.aliases.remove_if(&(i.dev, i.ino), |_, v| *v == nodeid);
            } else if !(i.dev == self.root_dev && i.ino < ALIAS_BASE && i.ino != ROOT_ID) {
                self.foreign.remove_if(&(i.dev, i.ino), |_, v| *v == nodeid);
            }
        }
    }

    /// The path of an inode relative to the source root, for logs and the
    /// redirect listing. Objects outside the tree show their anchor's path.
    pub fn rel_path(&self, ino: &Arc<Inode>) -> String {
        String::from_utf8_lossy(&self.rel_path_bytes(ino)).into_owned()
    }

    /// `rel_path` as the bytes of the names, for what must find the object
    /// again (names need not be UTF-8).
    pub fn rel_path_bytes(&self, ino: &Arc<Inode>) -> Vec<u8> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut cur = ino.clone();
        for _ in 0..4096 {
            let next = match &*cur.loc.lock() {
                Loc::Anchor => None,
                Loc::At { parent, name } => {
                    parts.push(name.to_bytes().to_vec());
                    Some(parent.clone())
                }
            };
            match next {
                Some(p) => cur = p,
                None => break,
            }
        }
        parts.reverse();
        parts.join(&b'/')
    }
}

/// The birth generation (`sys::birth_generation`) of `name` in `parent`.
fn born_in(parent: &Inode, name: &CStr) -> Option<u64> {
    let dir = parent.path_fd().ok()?;
    sys::birth_generation(dir.as_raw_fd(), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set, get, list and remove through an anchor: on a file by name, on a
    /// symlink by name (its own attributes, never its target's), and on a
    /// directory by its descriptor.
    fn xattrs_through_anchors(tag: &str) {
        let dir = std::env::temp_dir().join(format!("casafs-anchor-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("d")).unwrap();
        std::fs::write(dir.join("f"), b"").unwrap();
        std::os::unix::fs::symlink("f", dir.join("l")).unwrap();
        let path_fd = |p: &std::path::Path| {
            let c = sys::cpath(p).unwrap();
            Arc::new(sys::open_at(libc::AT_FDCWD, &c, libc::O_PATH | libc::O_NOFOLLOW, 0).unwrap())
        };
        let top = path_fd(&dir);
        let anchors = [
            ("file", Anchor::At(top.clone(), c"f".to_owned()), "user.a"),
            (
                "link",
                Anchor::At(top.clone(), c"l".to_owned()),
                "trusted.a",
            ),
            ("dir", Anchor::Fd(path_fd(&dir.join("d"))), "user.a"),
        ];
        for (what, a, attr) in &anchors {
            let attr = CString::new(*attr).unwrap();
            assert_eq!(a.setxattr(&attr, b"v1", 0), Ok(()), "{what}");
            assert_eq!(
                a.setxattr(&attr, b"v2", libc::XATTR_CREATE),
                Err(Errno::EEXIST),
                "{what}"
            );
            let mut buf = [0u8; 64];
            assert_eq!(a.getxattr(&attr, &mut []), Ok(2), "{what}");
            let n = a.getxattr(&attr, &mut buf).unwrap();
            assert_eq!(&buf[..n], b"v1", "{what}");
            let n = a.listxattr(&mut buf).unwrap();
            assert!(
                buf[..n].split(|&b| b == 0).any(|x| x == attr.as_bytes()),
                "{what}"
            );
            assert_eq!(a.removexattr(&attr), Ok(()), "{what}");
            assert_eq!(a.removexattr(&attr), Err(Errno::ENODATA), "{what}");
            assert_eq!(a.getxattr(&attr, &mut buf), Err(Errno::ENODATA), "{what}");
        }
        // The link's attribute never reached its target.
        let f = Anchor::At(top, c"f".to_owned());
        assert_eq!(f.getxattr(c"trusted.a", &mut [0u8; 8]), Err(Errno::ENODATA));
        f.setxattr(c"trusted.t", b"target", 0).unwrap();
        let l = &anchors[1].1;
        assert_eq!(l.getxattr(c"trusted.t", &mut [0u8; 8]), Err(Errno::ENODATA));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn xattrs_through_the_at_calls() {
        xattrs_through_anchors("at");
    }

    #[test]
    fn xattrs_through_proc_paths_where_the_at_calls_are_missing() {
        sys::xattr_at::pretend_missing();
        xattrs_through_anchors("proc");
    }
}
