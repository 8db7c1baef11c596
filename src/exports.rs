//! File handles for objects the kernel has forgotten: what lets the mount
//! be exported over NFS and `open_by_handle_at(2)` work on it.
//!
//! The kernel makes a FUSE file handle of a node id and a generation, and
//! when it no longer holds the inode it asks casafs to find that node id
//! again. A node id alone names no object on the backing, so casafs keeps,
//! for each object of the tree's own filesystem the kernel lets go of, the
//! backing filesystem's own handle of it (`name_to_handle_at(2)`), and opens
//! the object again by that handle. The backing handle carries the
//! backing's generation, so a number reused for a new object answers
//! ESTALE, never the new object. Only node ids casafs handed out are ever
//! found: a handle made up by someone names nothing here.
//!
//! The table is bounded (the oldest entries go first) and is kept across
//! remounts in casafs's state directory (`/var/lib/casafs`, root's alone):
//! written at unmount, read at mount. A daemon killed with -9 loses the
//! entries since its mount; their handles then answer ESTALE, as after a
//! server's crash.

use std::collections::{HashMap, VecDeque};
use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use parking_lot::Mutex;

use crate::sys::{self, Errno, Res};

/// Entries kept: about 40 bytes each for ext4's handles.
const MAX_ENTRIES: usize = 1 << 18;
const MAX_HANDLE_SZ: usize = 128;
const MAGIC: &[u8] = b"casafs-handles-1\n";

/// A backing handle: its type and bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackingHandle {
    pub kind: i32,
    pub bytes: Box<[u8]>,
}

#[repr(C)]
struct FileHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

impl BackingHandle {
    /// The handle of `name` in `dir` (or of `dir` itself for an empty
    /// name), without following a last symlink.
    pub fn of(dir: RawFd, name: &CStr) -> Res<BackingHandle> {
        let flags = if name.is_empty() {
            libc::AT_EMPTY_PATH
        } else {
            0
        };
        Self::encode(dir, name, flags)
    }

    /// The handle fanotify gives for directory `dir` in its events (one
    /// that identifies, whether or not the filesystem can open it).
    pub fn fid_of(dir: RawFd) -> Res<BackingHandle> {
        Self::encode(dir, c"", libc::AT_EMPTY_PATH | libc::AT_HANDLE_FID)
    }

    fn encode(dir: RawFd, name: &CStr, flags: libc::c_int) -> Res<BackingHandle> {
        let mut fh = FileHandle {
            handle_bytes: MAX_HANDLE_SZ as u32,
            handle_type: 0,
            f_handle: [0; MAX_HANDLE_SZ],
        };
        let mut mount_id: libc::c_int = 0;
        let rc = unsafe {
            libc::syscall(
                libc::SYS_name_to_handle_at,
                dir,
                name.as_ptr(),
                &mut fh as *mut FileHandle,
                &mut mount_id as *mut libc::c_int,
                flags,
            )
        };
        if rc != 0 {
            return Err(sys::last_errno());
        }
        let n = (fh.handle_bytes as usize).min(MAX_HANDLE_SZ);
        Ok(BackingHandle {
            kind: fh.handle_type,
            bytes: fh.f_handle[..n].into(),
        })
    }

    /// Opens the object (`O_PATH`) on the filesystem of `mount_fd` (not an
    /// `O_PATH` descriptor: open_by_handle_at answers EBADF). Needs
    /// CAP_DAC_READ_SEARCH (casafs's own act: the kernel asked for an
    /// object it had handed out).
    pub fn open(&self, mount_fd: RawFd) -> Res<OwnedFd> {
        let mut fh = FileHandle {
            handle_bytes: self.bytes.len() as u32,
            handle_type: self.kind,
            f_handle: [0; MAX_HANDLE_SZ],
        };
        fh.f_handle[..self.bytes.len()].copy_from_slice(&self.bytes);
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                mount_fd,
                &mut fh as *mut FileHandle,
                libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            )
        };
        if fd < 0 {
            // A handle of an object that is gone.
            return Err(match sys::last_errno() {
                Errno::ENOENT => Errno::ESTALE,
                e => e,
            });
        }
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }
}

/// Node id to backing handle, bounded, oldest out first.
#[derive(Default)]
pub struct Exports {
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    map: HashMap<u64, BackingHandle>,
    order: VecDeque<u64>,
}

impl Exports {
    pub fn keep(&self, nodeid: u64, h: BackingHandle) {
        let mut t = self.inner.lock();
        if t.map.insert(nodeid, h).is_none() {
            t.order.push_back(nodeid);
        }
        while t.map.len() > MAX_ENTRIES {
            let Some(old) = t.order.pop_front() else {
                break;
            };
            t.map.remove(&old);
        }
    }

    pub fn get(&self, nodeid: u64) -> Option<BackingHandle> {
        self.inner.lock().map.get(&nodeid).cloned()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The table of the tree `id` (its root's device and inode) as bytes,
    /// oldest first.
    pub fn to_bytes(&self, id: (u64, u64)) -> Vec<u8> {
        let t = self.inner.lock();
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&id.0.to_le_bytes());
        out.extend_from_slice(&id.1.to_le_bytes());
        for id in &t.order {
            if let Some(h) = t.map.get(id) {
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&h.kind.to_le_bytes());
                out.push(h.bytes.len() as u8);
                out.extend_from_slice(&h.bytes);
            }
        }
        out
    }

    /// A table read back; None for anything that is not one whole table
    /// of the tree `id`.
    pub fn from_bytes(b: &[u8], id: (u64, u64)) -> Option<Exports> {
        let rest = b.strip_prefix(MAGIC)?;
        if rest.len() < 16
            || u64::from_le_bytes(rest[..8].try_into().ok()?) != id.0
            || u64::from_le_bytes(rest[8..16].try_into().ok()?) != id.1
        {
            return None;
        }
        let mut rest = &rest[16..];
        let e = Exports::default();
        while !rest.is_empty() {
            if rest.len() < 13 {
                return None;
            }
            let id = u64::from_le_bytes(rest[..8].try_into().ok()?);
            let kind = i32::from_le_bytes(rest[8..12].try_into().ok()?);
            let n = rest[12] as usize;
            if n > MAX_HANDLE_SZ || rest.len() < 13 + n {
                return None;
            }
            e.keep(
                id,
                BackingHandle {
                    kind,
                    bytes: rest[13..13 + n].into(),
                },
            );
            rest = &rest[13 + n..];
        }
        Some(e)
    }
}

/// Where the table of the tree at `source` is kept across remounts: a file
/// of root's in casafs's state directory (`/var/lib/casafs`, or
/// `$CASAFS_STATE_DIR`), never in the tree. Handles are the kernel's of this
/// host, so each host keeps its own.
fn state_dir() -> std::path::PathBuf {
    std::env::var_os("CASAFS_STATE_DIR")
        .map(Into::into)
        .unwrap_or_else(|| "/var/lib/casafs".into())
}

/// Which tree a table belongs to: its file's name (from the tree's
/// canonical path) and the tree root's device and inode number, which the
/// table carries and must match when read back.
pub struct Tree {
    name: String,
    id: (u64, u64),
}

impl Tree {
    pub fn of(source: &std::path::Path, root: &libc::stat) -> Tree {
        let path = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
        // FNV-1a: a short fixed name for any path.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in path.as_os_str().as_encoded_bytes() {
            h = (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        Tree {
            name: format!("handles-{h:016x}"),
            id: (root.st_dev, root.st_ino),
        }
    }

    fn file(&self, suffix: &str) -> std::ffi::CString {
        std::ffi::CString::new(format!("{}{suffix}", self.name)).unwrap_or_default()
    }
}

/// casafs's state directory, made if missing, and only if no one but its
/// owner (this process's user) may change it.
fn open_state_dir(make: bool) -> Option<OwnedFd> {
    let dir = state_dir();
    if make {
        use std::os::unix::fs::DirBuilderExt;
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir);
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    let fd = sys::open_at(
        libc::AT_FDCWD,
        &c,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
    .ok()?;
    let st = sys::fstat(fd.as_raw_fd()).ok()?;
    let mine = st.st_uid == unsafe { libc::geteuid() };
    (mine && st.st_mode & 0o022 == 0).then_some(fd)
}

/// The lock a mount of `source` holds from its start until its table is
/// written: a remount right after an unmount (`umount; mount`) would
/// otherwise read the table before the stopping daemon wrote it. Waited for
/// up to 10 s (a daemon that hangs while stopping costs its handles, not
/// the mount).
pub fn hold(tree: &Tree) -> Option<OwnedFd> {
    let dir = open_state_dir(true)?;
    let name = tree.file(".lock");
    let fd = sys::open_at(
        dir.as_raw_fd(),
        &name,
        libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW,
        0o600,
    )
    .ok()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Some(fd);
        }
        if std::time::Instant::now() > deadline {
            tracing::warn!(
                "file handles: another casafs of this tree did not finish stopping in 10 s; handles of objects it let go of will answer ESTALE"
            );
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Reads the table kept for `source`; an empty one when there is none or it
/// is not whole (its handles then answer ESTALE).
pub fn load(tree: &Tree) -> Exports {
    let read = || -> Option<Exports> {
        let dir = open_state_dir(false)?;
        let fd = sys::open_at(
            dir.as_raw_fd(),
            &tree.file(""),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
            0,
        )
        .ok()?;
        let st = sys::fstat(fd.as_raw_fd()).ok()?;
        // Only a regular file of its own, no bigger than a full table.
        if st.st_mode & libc::S_IFMT != libc::S_IFREG
            || st.st_uid != unsafe { libc::geteuid() }
            || st.st_size as usize > MAX_ENTRIES * (13 + MAX_HANDLE_SZ) + MAGIC.len() + 16
        {
            return None;
        }
        let mut f = std::fs::File::from(fd);
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut b).ok()?;
        Exports::from_bytes(&b, tree.id)
    };
    read().unwrap_or_default()
}

/// Writes the table of `tree`, replacing the one kept in one step.
pub fn save(tree: &Tree, e: &Exports) -> Res<()> {
    let dir = open_state_dir(true).ok_or(Errno::EACCES)?;
    let dir = dir.as_raw_fd();
    let name = tree.file("");
    // Its own temporary name: another daemon of the same tree may be
    // writing too.
    let tmp = tree.file(&format!(".new.{}", std::process::id()));
    let _ = sys::unlink_at(dir, &tmp, 0);
    let fd = sys::open_at(
        dir,
        &tmp,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
        0o600,
    )?;
    let mut f = std::fs::File::from(fd);
    let written =
        std::io::Write::write_all(&mut f, &e.to_bytes(tree.id)).and_then(|_| f.sync_all());
    if written.is_err() {
        let _ = sys::unlink_at(dir, &tmp, 0);
        return Err(Errno::EIO);
    }
    sys::rename_at2(dir, &tmp, dir, &name, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_survives_its_bytes_and_stays_bounded() {
        let e = Exports::default();
        for i in 0..(MAX_ENTRIES as u64 + 10) {
            e.keep(
                i + 2,
                BackingHandle {
                    kind: 1,
                    bytes: i.to_le_bytes()[..4].into(),
                },
            );
        }
        assert_eq!(e.len(), MAX_ENTRIES);
        // The oldest went first.
        assert_eq!(e.get(2), None);
        let last = MAX_ENTRIES as u64 + 11;
        let id = (7, 11);
        let back = Exports::from_bytes(&e.to_bytes(id), id).unwrap();
        assert_eq!(back.len(), MAX_ENTRIES);
        assert_eq!(back.get(last), e.get(last));
        // A cut table is no table.
        let b = e.to_bytes(id);
        assert!(Exports::from_bytes(&b[..b.len() - 1], id).is_none());
        assert!(Exports::from_bytes(b"casafs-handles-0\n", id).is_none());
        // Another tree's table is no table of this one.
        assert!(Exports::from_bytes(&b, (7, 12)).is_none());
    }

    #[test]
    fn a_backing_handle_opens_its_object_again() {
        let dir = std::env::temp_dir().join(format!("casafs-handle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), b"x").unwrap();
        let d = sys::open_at(
            libc::AT_FDCWD,
            &std::ffi::CString::new(dir.to_str().unwrap()).unwrap(),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .unwrap();
        let h = BackingHandle::of(d.as_raw_fd(), c"f").unwrap();
        let before = sys::stat_at(d.as_raw_fd(), c"f").unwrap();
        // Root only (CAP_DAC_READ_SEARCH); the suite runs as root.
        let fd = h.open(d.as_raw_fd()).unwrap();
        assert_eq!(sys::fstat(fd.as_raw_fd()).unwrap().st_ino, before.st_ino);
        drop(fd);
        std::fs::remove_file(dir.join("f")).unwrap();
        assert!(h.open(d.as_raw_fd()).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
