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

use std::os::fd::RawFd;

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

fn errno_text(e: Errno) -> String {
    std::io::Error::from_raw_os_error(e.code()).to_string()
}
