//! The control directory `MOUNTPOINT/.casafs/`: read-only files generated
//! at open, living only in the mount. It resolves by name from the root but
//! is never listed there, so tree walkers and `git status` do not see it.
//!
//! Every user may read them, and each reader sees only what it could see
//! natively: `redirects` lists the objects whose original directory the
//! reader may list. A snapshot is shared by the readers it is the same
//! for, and each user holds a bounded number and size open, so that
//! opening many costs the daemon bounded memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use super::CasaFs;
use crate::handle::{Body, Handle};
use crate::inode::{CONTROL_DIR_ID, ROOT_ID};
use crate::sys::{Errno, Res};

pub const CONTROL_NAME: &str = ".casafs";

pub const FILES: &[&str] = &["stats.json", "metrics", "redirects", "config"];

/// Control files one user may hold open at once.
const PER_READER: u32 = 64;
/// Bytes of snapshots one user other than root may hold open: past them
/// the next open is refused, so a user who grows `redirects` (routed
/// names under long paths) cannot make each handle cost more. A reader
/// holding none gets one of any size within `ALL_READERS_BYTES`.
const PER_READER_BYTES: usize = 16 << 20;
/// Bytes of snapshots all users other than root may hold open together
/// (many user ids each within their own bound). Root is never refused.
const ALL_READERS_BYTES: usize = 128 << 20;

/// A control file (its node id) as one user (uid) reads it.
type Reading = (u64, u32);

/// Open snapshots: how many each user holds and their bytes, and the last
/// one made of each file for each user who holds any (shared while it
/// stays the same).
#[derive(Default)]
pub struct Snapshots {
    open: parking_lot::Mutex<Held>,
    last: parking_lot::Mutex<HashMap<Reading, Arc<[u8]>>>,
}

#[derive(Default)]
struct Held {
    /// Per user: snapshots and bytes held.
    by: HashMap<u32, (u32, usize)>,
    /// Bytes held by users other than root.
    bytes: usize,
}

impl Snapshots {
    /// Counts a snapshot of `len` bytes opened by `reader`, or refuses it
    /// (ENFILE) when that user holds too many or too much, or all users
    /// together too much.
    fn opened(&self, reader: u32, len: usize) -> Res<()> {
        let mut held = self.open.lock();
        let all = held.bytes;
        let (n, bytes) = held.by.entry(reader).or_default();
        let too_much = reader != 0 && (*bytes >= PER_READER_BYTES || all + len > ALL_READERS_BYTES);
        if *n >= PER_READER || too_much {
            if *n == 0 {
                held.by.remove(&reader);
            }
            return Err(Errno::ENFILE);
        }
        *n += 1;
        *bytes += len;
        if reader != 0 {
            held.bytes += len;
        }
        Ok(())
    }

    pub fn closed(&self, reader: u32, len: usize) {
        let mut held = self.open.lock();
        if reader != 0 {
            held.bytes = held.bytes.saturating_sub(len);
        }
        let Some((n, bytes)) = held.by.get_mut(&reader) else {
            return;
        };
        *n = n.saturating_sub(1);
        *bytes = bytes.saturating_sub(len);
        if *n == 0 {
            held.by.remove(&reader);
            drop(held);
            // Nothing of theirs to share any more.
            self.last.lock().retain(|&(_, r), _| r != reader);
        }
    }

    /// `data`, or the equal snapshot already held for (`ino`, `reader`).
    fn share(&self, ino: u64, reader: u32, data: Vec<u8>) -> Arc<[u8]> {
        let mut last = self.last.lock();
        match last.get(&(ino, reader)) {
            Some(prev) if **prev == *data => prev.clone(),
            _ => {
                let a: Arc<[u8]> = Arc::from(data);
                last.insert((ino, reader), a.clone());
                a
            }
        }
    }
}

pub fn is_control(ino: u64) -> bool {
    (CONTROL_DIR_ID..=CONTROL_DIR_ID + FILES.len() as u64).contains(&ino)
}

impl CasaFs {
    /// The control entry for `name` in `parent`, if it is one.
    pub(super) fn control_lookup(&self, parent: u64, name: &[u8]) -> Option<Res<FileAttr>> {
        if parent == ROOT_ID && name == CONTROL_NAME.as_bytes() {
            return Some(Ok(self.control_attr(CONTROL_DIR_ID)));
        }
        if parent != CONTROL_DIR_ID {
            return None;
        }
        Some(
            FILES
                .iter()
                .position(|f| f.as_bytes() == name)
                .map(|i| self.control_attr(CONTROL_DIR_ID + 1 + i as u64))
                .ok_or(Errno::ENOENT),
        )
    }

    pub(super) fn control_attr(&self, ino: u64) -> FileAttr {
        let now = SystemTime::now();
        let dir = ino == CONTROL_DIR_ID;
        FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: UNIX_EPOCH,
            kind: if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: if dir { 0o555 } else { 0o444 },
            nlink: if dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// The Prometheus text of `.casafs/metrics` (and of the textfile).
    pub fn metrics_text(&self) -> String {
        let extra = crate::creds::as_root(|| self.extra());
        self.stats.to_prometheus(&extra)
    }

    /// A control file's content for the thread's caller. What casafs
    /// reads of its own (areas, graveyard) it reads as root; what the
    /// caller may see is judged as the caller.
    pub fn control_content(&self, ino: u64) -> Vec<u8> {
        let idx = ino.wrapping_sub(CONTROL_DIR_ID + 1) as usize;
        match FILES.get(idx).copied() {
            Some("stats.json") => {
                let extra = crate::creds::as_root(|| self.extra());
                let mut v =
                    serde_json::to_vec_pretty(&self.stats.to_json(&extra)).unwrap_or_default();
                v.push(b'\n');
                v
            }
            Some("metrics") => self.metrics_text().into_bytes(),
            Some("redirects") => {
                crate::creds::as_root(|| self.routing.redirects.drop_gone(&self.routing.areas));
                let Ok(root) = self.root_fd() else {
                    return Vec::new();
                };
                use std::os::fd::AsRawFd;
                let visible = |origin: &[u8]| origin_searchable(root.as_raw_fd(), origin);
                self.routing
                    .redirects
                    .render(&self.routing.areas, &self.routing.rule_names, &visible)
                    .into_bytes()
            }
            Some("config") => crate::config::render(&self.live.current()).into_bytes(),
            _ => Vec::new(),
        }
    }

    pub(super) fn control_open(&self, ino: u64, flags: i32) -> Res<u64> {
        if ino == CONTROL_DIR_ID {
            return Err(Errno::EISDIR);
        }
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(Errno::EACCES);
        }
        let root = self.inodes.root()?;
        let reader = crate::creds::request_caller().uid;
        let content = self.control_content(ino);
        self.control.opened(reader, content.len())?;
        let data = self.control.share(ino, reader, content);
        self.stats.open_handles.fetch_add(1, Relaxed);
        Ok(self.handles.insert(Handle {
            inode: root,
            body: Body::Control { data, reader },
            passthrough: false,
            writer: false,
            append: false,
            opener: crate::creds::request_caller(),
        }))
    }

    pub(super) fn control_opendir(&self) -> Res<u64> {
        let root = self.inodes.root()?;
        self.stats.open_handles.fetch_add(1, Relaxed);
        Ok(self.handles.insert(Handle {
            inode: root,
            body: Body::ControlDir,
            passthrough: false,
            writer: false,
            append: false,
            opener: crate::creds::request_caller(),
        }))
    }

    /// Entries of the control directory: (ino, kind, name).
    pub(super) fn control_entries(&self) -> Vec<(u64, FileType, String)> {
        let mut v = vec![
            (CONTROL_DIR_ID, FileType::Directory, ".".to_string()),
            (ROOT_ID, FileType::Directory, "..".to_string()),
        ];
        for (i, f) in FILES.iter().enumerate() {
            v.push((
                CONTROL_DIR_ID + 1 + i as u64,
                FileType::RegularFile,
                f.to_string(),
            ));
        }
        v
    }
}

/// Whether the thread's caller may search its way to the directory of
/// `origin` (a path relative to the source root) and read it, as a listing
/// of it through the mount would need: every directory on the way opened
/// beneath the root with the caller's rights.
fn origin_searchable(root: std::os::fd::RawFd, origin: &[u8]) -> bool {
    if !crate::creds::enabled() {
        return true;
    }
    // Listing it shows names in the directory: the reader must be able to
    // read the directory, not only to pass through it.
    let may = libc::R_OK | libc::X_OK;
    let Some(i) = origin.iter().rposition(|&b| b == b'/') else {
        return crate::sys::access_at(root, c"", may).is_ok();
    };
    let Ok(dir) = std::ffi::CString::new(&origin[..i]) else {
        return false;
    };
    crate::sys::open_beneath(root, &dir, libc::O_PATH | libc::O_DIRECTORY, 0).is_ok_and(|fd| {
        use std::os::fd::AsRawFd;
        crate::sys::access_at(fd.as_raw_fd(), c"", may).is_ok()
    })
}
