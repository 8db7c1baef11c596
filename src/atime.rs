//! The access-time options of the mount (`noatime`, `relatime`,
//! `strictatime`, `nodiratime`, and `ro`, which changes no access time).
//!
//! casafs reads the backing through descriptors of its own, and the kernel
//! reads passthrough files through them without asking casafs, so access
//! times follow the mount those descriptors were opened on. When the mount
//! asks for an access-time mode, casafs opens the tree through a private
//! copy of the backing mount (`open_tree(OPEN_TREE_CLONE)`, attached
//! nowhere, seen by nobody) carrying that mode: the kernel then keeps access
//! times exactly as it would on a native mount with these options. Without
//! such an option the backing's own mount decides, as before.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use fuser::MountOption;

const MOUNT_ATTR_RDONLY: u64 = 0x01;
const MOUNT_ATTR_ATIME: u64 = 0x70;
const MOUNT_ATTR_RELATIME: u64 = 0x00;
const MOUNT_ATTR_NOATIME: u64 = 0x10;
const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
const MOUNT_ATTR_NODIRATIME: u64 = 0x80;
const OPEN_TREE_CLONE: libc::c_uint = 1;

/// The words of the atime family, as kept among the mount's flags.
pub const WORDS: &[&str] = &[
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "nodiratime",
    "diratime",
];

/// What the backing mount's copy gets: bits to set and to clear, in
/// `mount_setattr(2)`'s terms. None: no option asked for anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub set: u64,
    pub clear: u64,
}

/// The access-time mode the mount's options ask for, the last word of a
/// kind winning as in mount(8). `ro` changes no access time.
pub fn wanted(flags: &[MountOption]) -> Option<Attr> {
    let mut mode: Option<u64> = None;
    let mut dir: Option<bool> = None;
    let mut ro = false;
    for f in flags {
        match f {
            MountOption::NoAtime => mode = Some(MOUNT_ATTR_NOATIME),
            MountOption::Atime => mode = Some(MOUNT_ATTR_RELATIME),
            MountOption::RO => ro = true,
            MountOption::RW => ro = false,
            MountOption::CUSTOM(w) => match w.as_str() {
                "relatime" | "nostrictatime" => mode = Some(MOUNT_ATTR_RELATIME),
                "strictatime" | "norelatime" => mode = Some(MOUNT_ATTR_STRICTATIME),
                "nodiratime" => dir = Some(false),
                "diratime" => dir = Some(true),
                _ => {}
            },
            _ => {}
        }
    }
    if ro {
        mode = Some(MOUNT_ATTR_NOATIME);
    }
    if mode.is_none() && dir.is_none() {
        return None;
    }
    let mut a = Attr { set: 0, clear: 0 };
    if let Some(m) = mode {
        a.set |= m;
        a.clear |= MOUNT_ATTR_ATIME;
    }
    match dir {
        Some(false) => a.set |= MOUNT_ATTR_NODIRATIME,
        Some(true) => a.clear |= MOUNT_ATTR_NODIRATIME,
        None => {}
    }
    Some(a)
}

/// The kernel mount flag of an atime word, for the mount table.
pub fn ms_flag(word: &str) -> libc::c_ulong {
    match word {
        "relatime" => libc::MS_RELATIME,
        "strictatime" | "norelatime" => libc::MS_STRICTATIME,
        "nodiratime" => libc::MS_NODIRATIME,
        _ => 0,
    }
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// The directory `dir` (an open descriptor of it) reached through a private
/// copy of its mount, and of the mounts beneath it, with `attr` applied. The
/// copy goes away with the last descriptor opened through it.
pub fn through_copy(dir: &OwnedFd, attr: Attr) -> std::io::Result<OwnedFd> {
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dir.as_raw_fd(),
            c"".as_ptr(),
            OPEN_TREE_CLONE
                | libc::O_CLOEXEC as libc::c_uint
                | libc::AT_EMPTY_PATH as libc::c_uint
                | libc::AT_RECURSIVE as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let copy = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let ma = MountAttr {
        attr_set: attr.set & !MOUNT_ATTR_RDONLY,
        attr_clr: attr.clear,
        propagation: 0,
        userns_fd: 0,
    };
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            copy.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &ma as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(words: &[&str]) -> Vec<MountOption> {
        words
            .iter()
            .map(|w| match *w {
                "noatime" => MountOption::NoAtime,
                "atime" => MountOption::Atime,
                "ro" => MountOption::RO,
                "rw" => MountOption::RW,
                other => MountOption::CUSTOM(other.into()),
            })
            .collect()
    }

    #[test]
    fn the_last_word_of_a_kind_wins() {
        assert_eq!(wanted(&w(&[])), None);
        assert_eq!(wanted(&w(&["rw"])), None);
        let noatime = wanted(&w(&["relatime", "noatime"])).unwrap();
        assert_eq!((noatime.set, noatime.clear), (0x10, 0x70));
        let strict = wanted(&w(&["noatime", "strictatime", "nodiratime"])).unwrap();
        assert_eq!((strict.set, strict.clear), (0x20 | 0x80, 0x70));
        let dir = wanted(&w(&["nodiratime", "diratime"])).unwrap();
        assert_eq!((dir.set, dir.clear), (0, 0x80));
        // A read-only mount changes no access time, whatever else it says.
        let ro = wanted(&w(&["strictatime", "ro"])).unwrap();
        assert_eq!((ro.set, ro.clear), (0x10, 0x70));
    }
}
