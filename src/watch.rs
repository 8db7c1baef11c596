//! Changes made to the backing tree other than through the mount: a
//! process that kept a working directory from before an over-itself mount,
//! an operator working in the backing directory, another casafs mount of
//! the same tree, `casafs sweep`. The kernel keeps names and attributes it
//! was given for as long as it was told; casafs watches the filesystems
//! beneath it (fanotify) so that it can tell the kernel to forget what such
//! a change made stale, and may then let the kernel keep them long.
//!
//! What casafs's own serving threads do is not reported: the kernel saw
//! those requests and keeps its caches right itself. Everything else is,
//! casafs's own background work included.
//!
//! A filesystem is watched whole where the kernel allows it (ext4, xfs,
//! btrfs, tmpfs: one mark); on a FUSE block filesystem (ntfs-3g) each
//! directory whose names the kernel is given gets a mark of its own.
//! Network and cluster filesystems are never watched: other hosts change
//! them without any local event.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;

use crate::exports::BackingHandle;
use parking_lot::{Mutex, RwLock};

/// Changes to the names in a directory.
const NAMES: u64 = libc::FAN_CREATE | libc::FAN_DELETE | libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO;
/// Changes to an object's attributes (a write changes size and times).
const ATTRS: u64 = libc::FAN_ATTRIB | libc::FAN_MODIFY;
const MASK: u64 = NAMES | ATTRS | libc::FAN_ONDIR;

/// What an event says changed, in terms of the node ids casafs gave the
/// kernel.
#[derive(Debug)]
pub enum Change<'a> {
    /// `name` in directory `dir` was made, removed, or renamed.
    Name { dir: u64, name: &'a CStr },
    /// An object's attributes changed (a name of it made or removed
    /// changes its link count; `written`: its contents, by a write). It
    /// is `object` where the filesystem can open what events name, else
    /// `name` in `dir` (`.`: `dir` itself).
    Object {
        object: Option<OwnedFd>,
        dir: Option<u64>,
        name: &'a CStr,
        written: bool,
        /// Nothing but a write (no attribute change merged into it).
        only_written: bool,
        /// The thread that made the change.
        by: u32,
    },
    /// A name casafs changed in a way the kernel did not see (it routed
    /// an object there): to be asked for again.
    Expire { dir: u64, name: CString },
    /// The attributes of node `node`, told once already while the kernel
    /// may not have had it yet: told again.
    Again(u64),
    /// Events were lost: nothing cached can be trusted.
    Lost,
}

/// How a filesystem is watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// One mark on the whole filesystem.
    Whole,
    /// A mark on each directory.
    PerDirectory,
    /// Not at all: changes beneath are found only when cache times run out.
    No,
}

/// What the reading thread is to do at its next turn.
enum Deferred {
    Expire(u64, CString),
    Again(u64),
}

#[derive(Clone)]
struct Dev {
    mode: Mode,
    fsid: [u8; 8],
}

pub struct Watch {
    fan: OwnedFd,
    /// Wakes the reading thread for deferred expiries.
    wake: OwnedFd,
    deferred: Mutex<Vec<Deferred>>,
    /// Per device: how it is watched, and its fsid (how events name it).
    devs: RwLock<HashMap<u64, Dev>>,
    /// A descriptor on each watched filesystem, by fsid, to open the
    /// objects events name.
    mounts: RwLock<HashMap<[u8; 8], Arc<OwnedFd>>>,
    /// A watched directory's file handle (fsid, type, bytes) and its node.
    dirs: DashMap<Box<[u8]>, u64>,
    keys: DashMap<u64, Box<[u8]>>,
    /// Held while a directory is added or removed, so that a removal for
    /// the kernel letting go never undoes an addition for a new lookup.
    pub registry: Mutex<()>,
    /// Events are (or will be, once the thread reading them starts: they
    /// queue meanwhile) read and applied.
    running: AtomicBool,
    /// Since when the reading thread works on a batch (0: waiting).
    busy_since: AtomicU64,
    /// When events were last lost.
    lost_at: AtomicU64,
    /// Directory marks held (on filesystems watched a directory at a time).
    marks: AtomicU64,
}

/// A reading thread that has not come back from a batch for this long is
/// taken as stuck: cache times are short until it does.
const STUCK_NS: u64 = 1_000_000_000;
/// Cache times stay short this long after events were lost.
const LOST_HOLD_NS: u64 = 5_000_000_000;
/// At most this many directory marks (they count against root's fanotify
/// marks, shared with every other watcher root runs): past it, directories
/// keep short cache times.
const MAX_MARKS: u64 = 262_144;

/// Changes applied so far: a reply built from a stat taken before a change
/// was applied may carry what the change made stale, and the kernel may
/// have had nothing to forget yet when it was told (the reply had not
/// arrived). Such a reply is kept short (`quiet_since_request`).
static APPLIED: AtomicU64 = AtomicU64::new(0);

/// Counts a change about to be told to the kernel.
pub fn applying() {
    APPLIED.fetch_add(1, Ordering::AcqRel);
}

/// Threads that serve requests: what they do, the kernel asked for.
fn serving() -> &'static RwLock<HashSet<i32>> {
    static S: OnceLock<RwLock<HashSet<i32>>> = OnceLock::new();
    S.get_or_init(Default::default)
}

struct Serving(i32);

impl Drop for Serving {
    fn drop(&mut self) {
        serving().write().remove(&self.0);
    }
}

thread_local! {
    static SERVING: std::cell::OnceCell<Serving> = const { std::cell::OnceCell::new() };
    static REQUEST_SAW: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Marks the calling thread as one that serves requests (the mark goes
/// with the thread), at the start of a request.
pub fn request_starts() {
    SERVING.with(|s| {
        s.get_or_init(|| {
            let tid = unsafe { libc::gettid() };
            serving().write().insert(tid);
            Serving(tid)
        });
    });
    REQUEST_SAW.with(|c| c.set(APPLIED.load(Ordering::Acquire)));
}

/// No change beneath the mount was applied since this thread's request
/// started.
pub fn quiet_since_request() -> bool {
    REQUEST_SAW.with(|c| c.get()) == APPLIED.load(Ordering::Acquire)
}

fn is_serving(tid: i32) -> bool {
    serving().read().contains(&tid)
}

/// Filesystems that only this machine changes, and whose every change
/// makes an event here: local disk filesystems, tmpfs, and FUSE
/// filesystems on a local volume (ntfs-3g: `fuseblk` on a block device;
/// plain `fuse` on an image file, which is only taken as one for the tree
/// casafs was started on, checked before it mounts). Not network or
/// cluster filesystems, nor other FUSE filesystems (sshfs, a user's own),
/// which change behind the kernel's back; not ntfs-3g with `ignore_case`
/// (an event's spelling of a name need not be the kernel's).
fn local(kind: &str, source: &str, options: &str, first: bool) -> bool {
    let on_image = || {
        first
            && source.starts_with('/')
            && std::fs::metadata(source).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_block_device() || m.is_file()
            })
    };
    if options.split(',').any(|o| o == "ignore_case") {
        return false;
    }
    match kind {
        "ext2" | "ext3" | "ext4" | "xfs" | "btrfs" | "tmpfs" | "f2fs" | "bcachefs" | "zfs"
        | "jfs" => true,
        k if k == "fuseblk" || k.starts_with("fuseblk.") => true,
        "fuse" | "fuse.ntfs-3g" | "fuse.ntfs" | "fuse.exfat" => on_image(),
        _ => false,
    }
}

impl Watch {
    /// A watch, if the kernel offers one to this process (root, fanotify
    /// with names and handles of directories: Linux 6.5 and later), with
    /// the tree's own filesystem (`root`, a directory of it) looked at
    /// before the mount covers it.
    pub fn new(root: RawFd) -> Option<Watch> {
        let fd = if crate::fault::no_watch() {
            unsafe { *libc::__errno_location() = libc::ENOSYS };
            -1
        } else {
            unsafe {
                libc::fanotify_init(
                    libc::FAN_CLASS_NOTIF
                        | libc::FAN_REPORT_DFID_NAME
                        | libc::FAN_REPORT_FID
                        | libc::FAN_REPORT_TID
                        | libc::FAN_NONBLOCK
                        | libc::FAN_CLOEXEC,
                    libc::O_RDONLY as u32,
                )
            }
        };
        if fd < 0 {
            tracing::info!(
                "changes beneath the mount are not watched ({}): cache times stay short",
                std::io::Error::last_os_error()
            );
            return None;
        }
        let fan = unsafe { OwnedFd::from_raw_fd(fd) };
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return None;
        }
        let w = Watch {
            fan,
            wake: unsafe { OwnedFd::from_raw_fd(wake) },
            deferred: Mutex::new(Vec::new()),
            devs: RwLock::new(HashMap::new()),
            mounts: RwLock::new(HashMap::new()),
            dirs: DashMap::new(),
            keys: DashMap::new(),
            registry: Mutex::new(()),
            running: AtomicBool::new(true),
            busy_since: AtomicU64::new(0),
            lost_at: AtomicU64::new(0),
            marks: AtomicU64::new(0),
        };
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(root, &mut st) } == 0 {
            w.probe(st.st_dev, root, true);
        }
        Some(w)
    }

    /// Nothing more is heard of (no thread reads the events).
    pub fn stopped(&self) {
        self.running.store(false, Ordering::Release);
    }

    /// Whether changes are heard of now: the watch's thread runs, is not
    /// stuck telling the kernel (a notice can wait on a directory a hung
    /// request holds), and lost no events lately.
    pub fn running(&self) -> bool {
        let now = crate::sys::coarse_now_ns();
        let busy = self.busy_since.load(Ordering::Acquire);
        self.running.load(Ordering::Acquire)
            && (busy == 0 || now.saturating_sub(busy) < STUCK_NS)
            && now.saturating_sub(self.lost_at.load(Ordering::Acquire)) >= LOST_HOLD_NS
    }

    fn busy(&self, on: bool) {
        let v = if on {
            crate::sys::coarse_now_ns().max(1)
        } else {
            0
        };
        self.busy_since.store(v, Ordering::Release);
    }

    /// Events were lost: what is cached is to be asked for again, once a
    /// second at most, and cache times stay short for a while.
    pub fn lost(&self) -> bool {
        let now = crate::sys::coarse_now_ns();
        let last = self.lost_at.swap(now, Ordering::AcqRel);
        now.saturating_sub(last) >= 1_000_000_000
    }

    fn mark(&self, flags: u32, mask: u64, fd: RawFd) -> bool {
        unsafe {
            libc::fanotify_mark(
                self.fan.as_raw_fd(),
                libc::FAN_MARK_ADD | libc::FAN_MARK_ONLYDIR | flags,
                mask,
                fd,
                c".".as_ptr(),
            ) == 0
        }
    }

    /// Decides how device `dev` is watched, from its directory `fd`;
    /// `first`: the tree's own, looked at before the mount.
    fn probe(&self, dev: u64, fd: RawFd, first: bool) -> Dev {
        if let Some(d) = self.devs.read().get(&dev) {
            return d.clone();
        }
        let (kind, source, options) = crate::fstype::mount_of_dev(dev).unwrap_or_default();
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        let fsid = if unsafe { libc::fstatfs(fd, &mut st) } == 0 {
            // fsid_t keeps its two ints private; they are its only bytes.
            unsafe { std::mem::transmute::<libc::fsid_t, [u8; 8]>(st.f_fsid) }
        } else {
            [0; 8]
        };
        let mode = if !local(&kind, &source, &options, first) || handle_key(fd, fsid).is_none() {
            Mode::No
        } else if self.mark(libc::FAN_MARK_FILESYSTEM, MASK, fd) {
            Mode::Whole
        } else {
            Mode::PerDirectory
        };
        tracing::debug!("filesystem {kind} (device {dev:x}): watched {mode:?}");
        if mode != Mode::No {
            // open_by_handle_at wants a descriptor that is not O_PATH.
            let mount = unsafe {
                libc::openat(
                    fd,
                    c".".as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NONBLOCK | libc::O_CLOEXEC,
                )
            };
            if mount >= 0 {
                self.mounts
                    .write()
                    .entry(fsid)
                    .or_insert_with(|| Arc::new(unsafe { OwnedFd::from_raw_fd(mount) }));
            }
        }
        let d = Dev { mode, fsid };
        self.devs.write().entry(dev).or_insert(d).clone()
    }

    /// Watches the names in directory `fd` (device `dev`), known to the
    /// kernel as node `nodeid`. False where changes there cannot be seen.
    /// Called with `registry` held.
    pub fn add_dir(&self, nodeid: u64, dev: u64, fd: RawFd) -> bool {
        if !self.running() {
            return false;
        }
        let d = self.probe(dev, fd, false);
        match d.mode {
            Mode::No => return false,
            Mode::Whole => {}
            Mode::PerDirectory => {
                if self.marks.load(Ordering::Relaxed) >= MAX_MARKS
                    || !self.mark(0, MASK | libc::FAN_EVENT_ON_CHILD, fd)
                {
                    return false;
                }
                self.marks.fetch_add(1, Ordering::Relaxed);
            }
        }
        if d.mode == Mode::Whole && case_folded(fd) {
            return false;
        }
        let Some(key) = handle_key(fd, d.fsid) else {
            return false;
        };
        if let Some(old) = self.keys.insert(nodeid, key.clone())
            && old != key
        {
            self.dirs.remove_if(&old, |_, n| *n == nodeid);
        }
        self.dirs.insert(key, nodeid);
        true
    }

    /// The kernel let go of directory `nodeid`: its names are cached no
    /// more. `fd` (if it is still reachable) drops its own mark. Called
    /// with `registry` held.
    pub fn remove_dir(&self, nodeid: u64, dev: u64, fd: Option<RawFd>) {
        if let Some((_, key)) = self.keys.remove(&nodeid) {
            self.dirs.remove_if(&key, |_, n| *n == nodeid);
        }
        let per_dir = matches!(
            self.devs.read().get(&dev),
            Some(Dev {
                mode: Mode::PerDirectory,
                ..
            })
        );
        if per_dir {
            self.marks.fetch_sub(1, Ordering::Relaxed);
        }
        if let (true, Some(fd)) = (per_dir, fd) {
            unsafe {
                libc::fanotify_mark(
                    self.fan.as_raw_fd(),
                    libc::FAN_MARK_REMOVE | libc::FAN_MARK_ONLYDIR,
                    MASK | libc::FAN_EVENT_ON_CHILD,
                    fd,
                    c".".as_ptr(),
                )
            };
        }
    }

    /// Has `name` in directory node `dir` asked for again by the kernel,
    /// from the thread that reads events (never from one serving a request
    /// on that directory, whose locks the kernel may hold).
    pub fn expire_later(&self, dir: u64, name: &CStr) {
        self.defer(Deferred::Expire(dir, name.to_owned()));
    }

    /// Tells the kernel again, at the reading thread's next turn, that the
    /// attributes of `node` changed.
    pub fn again_later(&self, node: u64) {
        self.defer(Deferred::Again(node));
    }

    fn defer(&self, d: Deferred) {
        self.deferred.lock().push(d);
        let one: u64 = 1;
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Reads events for ever, handing each change not made by a serving
    /// thread to `apply`.
    pub fn run(&self, mut apply: impl FnMut(Change<'_>)) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.fan.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return self.fail(&mut apply);
            }
            if fds[1].revents != 0 {
                let mut n = 0u64;
                unsafe { libc::read(self.wake.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
            }
            // Retries wait one turn: the reply they wait for is on its way.
            let due = std::mem::take(&mut *self.deferred.lock());
            self.busy(true);
            for d in due {
                match d {
                    Deferred::Expire(dir, name) => apply(Change::Expire { dir, name }),
                    Deferred::Again(node) => apply(Change::Again(node)),
                }
            }
            loop {
                let n =
                    unsafe { libc::read(self.fan.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    match std::io::Error::last_os_error().raw_os_error() {
                        Some(libc::EAGAIN) => break,
                        Some(libc::EINTR) => continue,
                        _ => return self.fail(&mut apply),
                    }
                }
                self.parse(&buf[..n as usize], &mut apply);
            }
            self.busy(false);
            // Events of one thread on one object merge while they wait to
            // be read: a writer's stream of writes costs one event per
            // pause, not one per write.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    fn fail(&self, apply: &mut impl FnMut(Change<'_>)) {
        tracing::error!(
            "watching changes beneath the mount stopped: {}",
            std::io::Error::last_os_error()
        );
        self.stopped();
        self.dirs.clear();
        apply(Change::Lost);
    }

    fn parse(&self, mut buf: &[u8], apply: &mut impl FnMut(Change<'_>)) {
        const META: usize = std::mem::size_of::<libc::fanotify_event_metadata>();
        while buf.len() >= META {
            let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len < META || len > buf.len() {
                return;
            }
            let (event, rest) = buf.split_at(len);
            buf = rest;
            let meta_len = u16::from_ne_bytes([event[6], event[7]]) as usize;
            let mask = u64::from_ne_bytes(event[8..16].try_into().unwrap_or([0; 8]));
            let fd = i32::from_ne_bytes(event[16..20].try_into().unwrap_or([0; 4]));
            let tid = i32::from_ne_bytes(event[20..24].try_into().unwrap_or([0; 4]));
            if fd >= 0 {
                // Not asked for (events carry handles), but never leaked.
                unsafe { libc::close(fd) };
            }
            if mask & libc::FAN_Q_OVERFLOW != 0 {
                apply(Change::Lost);
                continue;
            }
            if is_serving(tid) {
                continue;
            }
            let (mut dir_rec, mut obj_rec) = (None, None);
            let mut infos = event.get(meta_len..).unwrap_or_default();
            while let Some((rec, next)) = info_record(infos) {
                match rec.kind {
                    libc::FAN_EVENT_INFO_TYPE_DFID_NAME | libc::FAN_EVENT_INFO_TYPE_DFID => {
                        dir_rec = Some(rec)
                    }
                    libc::FAN_EVENT_INFO_TYPE_FID => obj_rec = Some(rec),
                    _ => {}
                }
                infos = next;
            }
            let dir = dir_rec
                .as_ref()
                .and_then(|r| self.dirs.get(r.key.as_slice()).map(|n| *n));
            let name = dir_rec.as_ref().map(|r| r.name).unwrap_or(c"");
            if let Some(d) = dir
                && mask & NAMES != 0
                && !name.is_empty()
                && name.to_bytes() != b"."
            {
                apply(Change::Name { dir: d, name });
            }
            // The object itself: by its handle where it can be opened
            // (only when it is in a watched directory, or the event names
            // no directory: a link count), else by its name there.
            let self_event = name.is_empty() || name.to_bytes() == b".";
            if dir.is_some() || dir_rec.is_none() || self_event {
                let object = obj_rec.and_then(|r| self.open(&r.key));
                if object.is_some() || dir.is_some() {
                    apply(Change::Object {
                        object,
                        dir,
                        name,
                        written: mask & libc::FAN_MODIFY != 0,
                        only_written: mask & (libc::FAN_MODIFY | libc::FAN_ATTRIB | NAMES)
                            == libc::FAN_MODIFY,
                        by: tid as u32,
                    });
                }
            }
        }
    }

    /// Opens (O_PATH) the object whose key (fsid, type, handle) an event
    /// gave, where its filesystem can.
    fn open(&self, key: &[u8]) -> Option<OwnedFd> {
        let fsid: [u8; 8] = key.get(..8)?.try_into().ok()?;
        let mount = self.mounts.read().get(&fsid)?.clone();
        let handle = BackingHandle {
            kind: i32::from_ne_bytes(key.get(8..12)?.try_into().ok()?),
            bytes: key.get(12..)?.into(),
        };
        handle.open(mount.as_raw_fd()).ok()
    }
}

/// One info record of an event: its type, the key (fsid, handle type,
/// handle) of what it names, and the name that follows (DFID_NAME).
struct Record<'a> {
    kind: u8,
    key: Vec<u8>,
    name: &'a CStr,
}

/// The first info record of `info` and what follows it.
fn info_record(info: &[u8]) -> Option<(Record<'_>, &[u8])> {
    // struct fanotify_event_info_header { u8 type; u8 pad; u16 len; },
    // then the fsid (8 bytes), then a struct file_handle, then the name.
    let kind = *info.first()?;
    let len = u16::from_ne_bytes([*info.get(2)?, *info.get(3)?]) as usize;
    if len < 4 {
        return None;
    }
    let rec = info.get(..len)?;
    let rest = info.get(len..)?;
    let fsid = rec.get(4..12)?;
    let bytes = u32::from_ne_bytes(rec.get(12..16)?.try_into().ok()?) as usize;
    let htype = rec.get(16..20)?;
    let handle = rec.get(20..20 + bytes)?;
    let mut key = Vec::with_capacity(12 + bytes);
    key.extend_from_slice(fsid);
    key.extend_from_slice(htype);
    key.extend_from_slice(handle);
    let name = if kind == libc::FAN_EVENT_INFO_TYPE_DFID_NAME {
        CStr::from_bytes_until_nul(rec.get(20 + bytes..)?).ok()?
    } else {
        c""
    };
    Some((Record { kind, key, name }, rest))
}

/// Whether directory `fd` looks names up without regard to case (ext4,
/// f2fs, tmpfs `+F`): an event's spelling of a name need not be the one
/// the kernel keeps.
fn case_folded(fd: RawFd) -> bool {
    const FS_CASEFOLD_FL: libc::c_long = 0x4000_0000;
    let d = unsafe {
        libc::openat(
            fd,
            c".".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if d < 0 {
        return false;
    }
    let d = unsafe { OwnedFd::from_raw_fd(d) };
    let mut flags: libc::c_long = 0;
    let rc = unsafe { libc::ioctl(d.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    rc == 0 && flags & FS_CASEFOLD_FL != 0
}

/// The key events use for directory `fd`: fsid, handle type, handle.
fn handle_key(fd: RawFd, fsid: [u8; 8]) -> Option<Box<[u8]>> {
    let h = BackingHandle::fid_of(fd).ok()?;
    let mut key = Vec::with_capacity(12 + h.bytes.len());
    key.extend_from_slice(&fsid);
    key.extend_from_slice(&h.kind.to_ne_bytes());
    key.extend_from_slice(&h.bytes);
    Some(key.into_boxed_slice())
}
