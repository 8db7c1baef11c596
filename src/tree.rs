//! Walking and removing directory trees through descriptors: each level
//! is opened from its parent's descriptor without following symlinks, so
//! a tree renamed or swapped under a walk is never left for another place,
//! and the walk keeps its state on the heap rather than the stack (a tree
//! thousands of levels deep costs memory, never a crashed thread).

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::sys::{self, Res};

/// How deep a walk goes; what lies below is left alone (and reported by
/// the callers as not removed). Each level holds one descriptor.
pub const MAX_DEPTH: usize = 1024;

/// Calls `f` with the inode number and name of each entry of the open
/// directory `fd` (`.` and `..` included) until it answers `Some`.
fn find_entry<T>(fd: &OwnedFd, mut f: impl FnMut(u64, &[u8]) -> Option<T>) -> Res<Option<T>> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = sys::getdents(fd.as_raw_fd(), &mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        let mut off = 0;
        while off + 19 < n {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen == 0 {
                break;
            }
            let mut ino = [0u8; 8];
            ino.copy_from_slice(&buf[off..off + 8]);
            let name_bytes = &buf[off + 19..off + reclen];
            let end = name_bytes
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(name_bytes.len());
            if let Some(t) = f(u64::from_ne_bytes(ino), &name_bytes[..end]) {
                return Ok(Some(t));
            }
            off += reclen;
        }
    }
}

/// Names in an open directory, without `.` and `..`.
pub fn list_dir(fd: &OwnedFd) -> Res<Vec<CString>> {
    let mut out = Vec::new();
    find_entry(fd, |_, name| {
        if name != b"." && name != b".." {
            out.push(CString::new(name).unwrap_or_default());
        }
        None::<()>
    })?;
    Ok(out)
}

/// The inode number the directory `dir` (an `O_PATH` descriptor will do)
/// lists for `..`: its parent's, found without a path walk, which would
/// enter whatever is mounted on the parent.
pub fn parent_ino(dir: RawFd) -> Res<u64> {
    let fd = open_dir_at(dir, c".")?;
    find_entry(&fd, |ino, name| (name == b"..").then_some(ino))?.ok_or(sys::Errno::ENOENT)
}

fn open_dir_at(dir: RawFd, name: &CStr) -> Res<OwnedFd> {
    sys::open_at(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

/// One directory being walked: its descriptor, its name in its parent,
/// and the names in it not yet visited.
struct Level {
    fd: OwnedFd,
    name: CString,
    left: Vec<CString>,
}

/// Visits every object below the directory open as `top` (not `top`
/// itself), parents before children, with the directory it is in and its
/// attributes. `leave(dir, name)` is called on each directory once all of
/// it was visited.
pub fn walk(
    top: OwnedFd,
    visit: &mut dyn FnMut(RawFd, &CStr, &libc::stat),
    leave: &mut dyn FnMut(RawFd, &CStr),
) {
    let left = list_dir(&top).unwrap_or_default();
    let mut stack = vec![Level {
        fd: top,
        name: CString::default(),
        left,
    }];
    while let Some(level) = stack.last_mut() {
        let Some(child) = level.left.pop() else {
            let done = stack.pop();
            if let (Some(done), Some(parent)) = (done, stack.last()) {
                drop(done.fd);
                leave(parent.fd.as_raw_fd(), &done.name);
            }
            continue;
        };
        let dir = level.fd.as_raw_fd();
        let Ok(st) = sys::stat_at(dir, &child) else {
            continue;
        };
        visit(dir, &child, &st);
        // The directory opened must be the one just visited.
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR
            && stack.len() < MAX_DEPTH
            && let Ok(fd) = open_dir_at(dir, &child)
            && sys::fstat(fd.as_raw_fd())
                .is_ok_and(|now| (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino))
        {
            let left = list_dir(&fd).unwrap_or_default();
            stack.push(Level {
                fd,
                name: child,
                left,
            });
        }
    }
}

/// Removes everything below the directory open as `top`, with the
/// thread's credentials; returns the bytes of the files removed. What may
/// not be removed stays.
pub fn empty(top: OwnedFd) -> u64 {
    let mut freed = 0;
    walk(
        top,
        &mut |dir, name, st| {
            if st.st_mode & libc::S_IFMT != libc::S_IFDIR && sys::unlink_at(dir, name, 0).is_ok() {
                freed += st.st_size as u64;
            }
        },
        &mut |dir, name| {
            let _ = sys::unlink_at(dir, name, libc::AT_REMOVEDIR);
        },
    );
    freed
}

/// Removes `name` in `parent` and everything below it, without following
/// symlinks. Returns bytes freed.
pub fn remove_tree_at(parent: RawFd, name: &CStr) -> Res<u64> {
    remove_tree_if(parent, name, None)
}

/// Removes `name` in `parent` and everything below it, only while it is
/// object `judged` (device, inode), if given: what is inside goes through
/// a descriptor checked to be it, and the name is checked again before it
/// goes (`ESTALE` otherwise).
fn remove_tree_if(parent: RawFd, name: &CStr, judged: Option<(u64, u64)>) -> Res<u64> {
    let st = sys::stat_at(parent, name)?;
    let id = (st.st_dev, st.st_ino);
    if judged.is_some_and(|j| j != id) {
        return Err(sys::Errno::ESTALE);
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        sys::unlink_at(parent, name, 0)?;
        return Ok(st.st_size as u64);
    }
    let freed = empty(open_dir_if_same(parent, name, id)?);
    if judged.is_some() && sys::stat_at(parent, name).map(|s| (s.st_dev, s.st_ino)) != Ok(id) {
        return Err(sys::Errno::ESTALE);
    }
    sys::unlink_at(parent, name, libc::AT_REMOVEDIR)?;
    Ok(freed)
}

/// `name` in `parent` opened as a directory (a symlink is not followed)
/// if it is still the object `id` (device, inode) that was judged: a user
/// who may rename in `parent` can give the name to another object in
/// between (`ESTALE` then).
pub fn open_dir_if_same(parent: RawFd, name: &CStr, id: (u64, u64)) -> Res<OwnedFd> {
    let fd = open_dir_at(parent, name)?;
    let st = sys::fstat(fd.as_raw_fd())?;
    if (st.st_dev, st.st_ino) != id {
        return Err(sys::Errno::ESTALE);
    }
    Ok(fd)
}

/// `remove_tree_at`, only while `name` is the object `id` that was
/// judged.
pub fn remove_tree_at_if_same(parent: RawFd, name: &CStr, id: (u64, u64)) -> Res<u64> {
    remove_tree_if(parent, name, Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_very_deep_tree_is_removed_without_recursion() {
        let top = std::env::temp_dir().join(format!("casafs-tree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        std::fs::create_dir(&top).unwrap();
        let c = sys::cpath(&top).unwrap();
        let base = sys::open_at(libc::AT_FDCWD, &c, libc::O_PATH | libc::O_DIRECTORY, 0).unwrap();
        // Deeper than any path can name: made one level at a time.
        let mut fd = sys::open_at(base.as_raw_fd(), c".", libc::O_PATH, 0).unwrap();
        sys::mkdir_at(fd.as_raw_fd(), c"t", 0o755).unwrap();
        fd = sys::open_at(fd.as_raw_fd(), c"t", libc::O_PATH, 0).unwrap();
        for _ in 0..(MAX_DEPTH - 10) {
            sys::mkdir_at(fd.as_raw_fd(), c"d", 0o755).unwrap();
            let f = sys::open_at(fd.as_raw_fd(), c"f", libc::O_CREAT | libc::O_WRONLY, 0o644);
            drop(f.unwrap());
            fd = sys::open_at(fd.as_raw_fd(), c"d", libc::O_PATH, 0).unwrap();
        }
        drop(fd);
        let handle = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || remove_tree_at(base.as_raw_fd(), c"t"))
            .unwrap();
        assert_eq!(handle.join().unwrap(), Ok(0));
        assert!(std::fs::read_dir(&top).unwrap().next().is_none());
        std::fs::remove_dir(&top).unwrap();
    }
}
