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
use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};

/// Changes to the names in a directory.
const NAMES: u64 = libc::FAN_CREATE | libc::FAN_DELETE | libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO;
/// Changes to an object's attributes (a write changes size and times).
const ATTRS: u64 = libc::FAN_ATTRIB | libc::FAN_MODIFY;
const MASK: u64 = NAMES | ATTRS | libc::FAN_ONDIR;

/// What an event says changed, in terms of the node ids casafs gave the
/// kernel.
#[derive(Debug, PartialEq, Eq)]
pub enum Change<'a> {
    /// `name` in directory `dir` was made, removed, or renamed.
    Name { dir: u64, name: &'a CStr },
    /// The attributes (or contents) of `name` in `dir` changed; `written`:
    /// by a write alone.
    Attrs {
        dir: u64,
        name: &'a CStr,
        written: bool,
    },
    /// The attributes of directory `dir` itself changed.
    Dir(u64),
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

pub struct Watch {
    fan: OwnedFd,
    /// Per device: how it is watched, and its fsid (how events name it).
    devs: Mutex<HashMap<u64, (Mode, [u8; 8])>>,
    /// A watched directory's file handle (fsid, type, bytes) and its node.
    dirs: DashMap<Box<[u8]>, u64>,
    keys: DashMap<u64, Box<[u8]>>,
    /// Events are (or will be, once the thread reading them starts: they
    /// queue meanwhile) read and applied.
    running: std::sync::atomic::AtomicBool,
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
}

/// Marks the calling thread as one that serves requests (once per thread;
/// the mark goes with the thread).
pub fn serving_thread() {
    SERVING.with(|s| {
        s.get_or_init(|| {
            let tid = unsafe { libc::gettid() };
            serving().write().insert(tid);
            Serving(tid)
        });
    });
}

fn is_serving(tid: i32) -> bool {
    serving().read().contains(&tid)
}

/// Filesystems that only this machine changes, and whose every change
/// makes an event here: local disk filesystems, tmpfs, and FUSE
/// filesystems on a local volume or image (ntfs-3g: `fuseblk` on a block
/// device, plain `fuse` on an image file). Not network or cluster
/// filesystems, nor FUSE filesystems of other kinds (sshfs), which other
/// hosts or the FUSE server change behind the kernel's back.
fn local(kind: &str, source: &str) -> bool {
    let on_volume = || {
        std::fs::metadata(source).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            source.starts_with('/') && (m.file_type().is_block_device() || m.is_file())
        })
    };
    match kind {
        "ext2" | "ext3" | "ext4" | "xfs" | "btrfs" | "tmpfs" | "f2fs" | "bcachefs" | "zfs"
        | "jfs" => true,
        k if k == "fuseblk" || k.starts_with("fuseblk.") => true,
        "fuse" | "fuse.ntfs-3g" | "fuse.ntfs" | "fuse.exfat" => on_volume(),
        _ => false,
    }
}

#[repr(C)]
struct FileHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; 128],
}

impl Watch {
    /// A watch, if the kernel offers one to this process (root, fanotify
    /// with names: Linux 5.9 and later).
    pub fn new() -> Option<Watch> {
        let fd = if crate::fault::no_watch() {
            unsafe { *libc::__errno_location() = libc::ENOSYS };
            -1
        } else {
            unsafe {
                libc::fanotify_init(
                    libc::FAN_CLASS_NOTIF
                        | libc::FAN_REPORT_DFID_NAME
                        | libc::FAN_REPORT_TID
                        | libc::FAN_UNLIMITED_QUEUE
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
        Some(Watch {
            fan: unsafe { OwnedFd::from_raw_fd(fd) },
            devs: Mutex::new(HashMap::new()),
            dirs: DashMap::new(),
            keys: DashMap::new(),
            running: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Nothing more is heard of (no thread reads the events).
    pub fn stopped(&self) {
        self.running
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// Whether changes are heard of at all (the watch's thread runs).
    pub fn running(&self) -> bool {
        self.running.load(std::sync::atomic::Ordering::Acquire)
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

    /// How device `dev` is watched, decided at its first directory `fd`.
    fn mode(&self, dev: u64, fd: RawFd) -> (Mode, [u8; 8]) {
        let mut devs = self.devs.lock();
        if let Some(m) = devs.get(&dev) {
            return *m;
        }
        let (kind, source) = crate::fstype::mount_of_dev(dev).unwrap_or_default();
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        let fsid = if unsafe { libc::fstatfs(fd, &mut st) } == 0 {
            // fsid_t keeps its two ints private; they are its only bytes.
            unsafe { std::mem::transmute::<libc::fsid_t, [u8; 8]>(st.f_fsid) }
        } else {
            [0; 8]
        };
        let mode = if !local(&kind, &source) {
            Mode::No
        } else if self.mark(libc::FAN_MARK_FILESYSTEM, MASK, fd) {
            Mode::Whole
        } else {
            Mode::PerDirectory
        };
        tracing::debug!("filesystem {kind} (device {dev:x}): watched {mode:?}");
        devs.insert(dev, (mode, fsid));
        (mode, fsid)
    }

    /// Watches the names in directory `fd` (device `dev`), known to the
    /// kernel as node `nodeid`. False where changes there cannot be seen.
    pub fn add_dir(&self, nodeid: u64, dev: u64, fd: RawFd) -> bool {
        if !self.running.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        let (mode, fsid) = self.mode(dev, fd);
        match mode {
            Mode::No => return false,
            Mode::Whole => {}
            Mode::PerDirectory => {
                if !self.mark(0, MASK | libc::FAN_EVENT_ON_CHILD, fd) {
                    return false;
                }
            }
        }
        let Some(key) = handle_key(fd, fsid) else {
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
    /// more. `fd` (if it is still reachable) drops its own mark.
    pub fn remove_dir(&self, nodeid: u64, dev: u64, fd: Option<RawFd>) {
        if let Some((_, key)) = self.keys.remove(&nodeid) {
            self.dirs.remove_if(&key, |_, n| *n == nodeid);
        }
        let per_dir = matches!(self.devs.lock().get(&dev), Some((Mode::PerDirectory, _)));
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

    /// Reads events for ever, handing each change not made by a serving
    /// thread to `apply`.
    pub fn run(&self, mut apply: impl FnMut(Change<'_>)) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = unsafe { libc::read(self.fan.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                tracing::error!(
                    "watching changes beneath the mount stopped: {}",
                    std::io::Error::last_os_error()
                );
                self.running
                    .store(false, std::sync::atomic::Ordering::Release);
                self.dirs.clear();
                apply(Change::Lost);
                return;
            }
            self.parse(&buf[..n as usize], &mut apply);
        }
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
            let Some((key, name)) = event.get(meta_len..).and_then(dir_and_name) else {
                continue;
            };
            let Some(dir) = self.dirs.get(key.as_slice()).map(|n| *n) else {
                continue;
            };
            if name.is_empty() || name.to_bytes() == b"." {
                if mask & ATTRS != 0 {
                    apply(Change::Dir(dir));
                }
                continue;
            }
            if mask & NAMES != 0 {
                apply(Change::Name { dir, name });
            }
            if mask & ATTRS != 0 {
                let written = mask & libc::FAN_ATTRIB == 0;
                apply(Change::Attrs { dir, name, written });
            }
        }
    }
}

/// The directory handle (as a key: fsid, type, bytes) and the name an
/// event's first info record gives.
fn dir_and_name(info: &[u8]) -> Option<(Vec<u8>, &CStr)> {
    // struct fanotify_event_info_header { u8 type; u8 pad; u16 len; },
    // then the fsid (8 bytes), then a struct file_handle, then the name.
    let kind = *info.first()?;
    if kind != libc::FAN_EVENT_INFO_TYPE_DFID_NAME && kind != libc::FAN_EVENT_INFO_TYPE_DFID {
        return None;
    }
    let len = u16::from_ne_bytes([*info.get(2)?, *info.get(3)?]) as usize;
    let rec = info.get(..len)?;
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
    Some((key, name))
}

/// The key events use for directory `fd`: fsid, handle type, handle.
fn handle_key(fd: RawFd, fsid: [u8; 8]) -> Option<Box<[u8]>> {
    let mut fh = FileHandle {
        handle_bytes: 128,
        handle_type: 0,
        f_handle: [0; 128],
    };
    let mut mount_id = 0;
    let rc = unsafe {
        libc::name_to_handle_at(
            fd,
            c"".as_ptr(),
            (&mut fh as *mut FileHandle).cast(),
            &mut mount_id,
            libc::AT_EMPTY_PATH | libc::AT_HANDLE_FID,
        )
    };
    if rc != 0 {
        return None;
    }
    let bytes = fh.f_handle.get(..fh.handle_bytes as usize)?;
    let mut key = Vec::with_capacity(12 + bytes.len());
    key.extend_from_slice(&fsid);
    key.extend_from_slice(&fh.handle_type.to_ne_bytes());
    key.extend_from_slice(bytes);
    Some(key.into_boxed_slice())
}
