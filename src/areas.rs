//! Who may reach casafs's own directories: the target areas and the
//! graveyard. casafs acts in them as root, by name, so no user may be able
//! to change a name in them (take one over, swap a symlink in), and since
//! users reach their routed objects by their original paths through the
//! mount, no user needs to reach them directly: a routed object is then
//! never more exposed than in its original directory.
//!
//! So each is owned by root and open to root alone (mode 0700). casafs
//! makes them so, and an area found open to others for reading is closed
//! (a routed log from a private directory would be readable there); one
//! that another user owns or may write is refused, since that user may
//! already have changed what is in it. A filesystem that keeps no modes
//! (ntfs-3g without a user mapping, vfat) cannot do either: there every
//! user may do everything, in the areas as in the tree.

use std::collections::VecDeque;
use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use crate::sys::{self, Errno};

/// Why a directory cannot be one of casafs's own.
#[derive(Debug)]
pub struct NotPrivate(pub String);

/// The mode of casafs's directories.
pub const PRIVATE_MODE: u32 = 0o700;

/// Checks the directory open as `fd` for use as an area or as the
/// graveyard's base, and closes it to others where it is readable by them.
/// Ok(Some(note)) says what was changed or why it could not be.
pub fn secure(fd: RawFd) -> Result<Option<String>, NotPrivate> {
    if !crate::creds::enabled() {
        // A daemon that is not root serves its own user alone.
        return Ok(None);
    }
    let st = sys::fstat(fd).map_err(|e| NotPrivate(errno_text(e)))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(NotPrivate("not a directory".into()));
    }
    if st.st_uid != 0 && keeps_no_owners(fd) {
        return Ok(Some(format!(
            "its filesystem keeps no owners (it shows uid {}): every user may reach it",
            st.st_uid
        )));
    }
    if st.st_uid != 0 {
        return Err(NotPrivate(format!(
            "owned by uid {}, who could have changed what is in it (it must be root's: chown root, or remove it and let casafs make it)",
            st.st_uid
        )));
    }
    let mode = st.st_mode & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    match sys::chmod_fd(fd, PRIVATE_MODE) {
        Ok(()) => {}
        Err(Errno::EPERM | Errno::EOPNOTSUPP) => {
            return Ok(Some(format!(
                "its filesystem keeps no modes (mode {mode:04o}): every user may reach it"
            )));
        }
        Err(e) => return Err(NotPrivate(errno_text(e))),
    }
    let now = sys::fstat(fd).map_err(|e| NotPrivate(errno_text(e)))?;
    if now.st_mode & 0o077 != 0 {
        return Ok(Some(format!(
            "its filesystem keeps no modes (mode {:04o}): every user may reach it",
            now.st_mode & 0o7777
        )));
    }
    if mode & 0o022 != 0 {
        // Writable by others: anything in it may be another user's doing
        // by now (a name taken, a symlink planted, an object of theirs).
        return Err(NotPrivate(format!(
            "was writable by other users (mode {mode:04o}; now 0700): check what is in it, then mount again"
        )));
    }
    Ok(Some(format!(
        "mode {mode:04o} -> 0700: only casafs reaches routed objects directly, users reach theirs by their original paths"
    )))
}

/// Whether the directory `st` describes may be adopted as an area found
/// anew at run time: root's and open to nobody else. Never changed here:
/// a directory someone else made or opened is simply not the area.
pub fn adoptable(st: &libc::stat) -> bool {
    !crate::creds::enabled() || (st.st_uid == 0 && st.st_mode & 0o022 == 0)
}

/// Whether the filesystem of `fd` shows owners it does not keep (set by a
/// mount option: ntfs-3g, vfat, exFAT).
fn keeps_no_owners(fd: RawFd) -> bool {
    sys::fstatfs_type(fd).is_ok_and(crate::fstype::keeps_no_owners)
}

/// Opens the directory `path` names for use as an area, making what is
/// missing of it (noted in `made`, outermost first; the area itself 0700).
/// Resolved one component at a time from `/` through descriptors, so that
/// nothing can be swapped in between, and through no symlink that someone
/// other than root owns: a user who may write a directory on the way
/// cannot point the area anywhere else.
pub fn open_area(path: &Path, made: &mut Vec<PathBuf>) -> Result<OwnedFd, String> {
    let root = || sys::open_at(libc::AT_FDCWD, c"/", libc::O_PATH | libc::O_DIRECTORY, 0);
    let err = |what: &str, e: Errno| format!("{what}: {}", errno_text(e));
    let mut dir = root().map_err(|e| err("/", e))?;
    let mut at = PathBuf::from("/");
    let path = match path.is_relative() {
        true => std::env::current_dir()
            .map_err(|e| e.to_string())?
            .join(path),
        false => path.to_path_buf(),
    };
    let mut todo: VecDeque<OsString> = components(&path);
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            dir = sys::open_at(dir.as_raw_fd(), c"..", libc::O_PATH | libc::O_DIRECTORY, 0)
                .map_err(|e| err("..", e))?;
            at.pop();
            continue;
        }
        let name = CString::new(c.as_bytes()).map_err(|_| "a name with a NUL byte".to_string())?;
        let next = at.join(&c);
        let fd = match sys::open_at(dir.as_raw_fd(), &name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                let mode = if todo.is_empty() { PRIVATE_MODE } else { 0o755 };
                match sys::mkdir_at(dir.as_raw_fd(), &name, mode) {
                    Ok(()) => made.push(next.clone()),
                    Err(Errno::EEXIST) => {}
                    Err(e) => return Err(err(&format!("cannot create {}", next.display()), e)),
                }
                sys::open_at(dir.as_raw_fd(), &name, libc::O_PATH | libc::O_NOFOLLOW, 0)
                    .map_err(|e| err(&next.display().to_string(), e))?
            }
            Err(e) => return Err(err(&next.display().to_string(), e)),
        };
        let st = sys::fstat(fd.as_raw_fd()).map_err(|e| err(&next.display().to_string(), e))?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                dir = fd;
                at = next;
            }
            libc::S_IFLNK => {
                if st.st_uid != 0 && crate::creds::enabled() {
                    return Err(format!(
                        "{} is a symlink of uid {}, who could point it anywhere",
                        next.display(),
                        st.st_uid
                    ));
                }
                hops += 1;
                if hops > 40 {
                    return Err(err(&next.display().to_string(), Errno::ELOOP));
                }
                let target = sys::readlink_at(fd.as_raw_fd(), c"")
                    .map_err(|e| err(&next.display().to_string(), e))?;
                let target = PathBuf::from(OsString::from_vec(target));
                if target.is_absolute() {
                    dir = root().map_err(|e| err("/", e))?;
                    at = PathBuf::from("/");
                }
                for c in components(&target).into_iter().rev() {
                    todo.push_front(c);
                }
            }
            _ => return Err(format!("{} is not a directory", next.display())),
        }
    }
    Ok(dir)
}

/// The names of a path, `..` kept, `.` and `/` left out.
fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

fn errno_text(e: Errno) -> String {
    std::io::Error::from_raw_os_error(e.code()).to_string()
}
