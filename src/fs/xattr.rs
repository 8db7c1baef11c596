//! Extended attributes, passed through on the object itself (never through
//! a symlink it may be), except casafs's own record of a routed object's
//! origin: shown, `cp -a` would copy it onto another file, and after a
//! remount that file would be restored at the original's path. Through the
//! mount it is never there, and setting it keeps nothing.

use std::ffi::{CStr, OsStr};

use std::os::fd::AsRawFd;

use super::CasaFs;
use crate::creds;
use crate::inode::Anchor;
use crate::redirect::ORIGIN_XATTRS;
use crate::sys::{self, Errno, Res, cname};

const CAPABILITY: &CStr = c"security.capability";

/// Whether the caller may write the object.
fn may_write(anchor: &Anchor) -> bool {
    match anchor {
        Anchor::At(d, n) => sys::access_at(d.as_raw_fd(), n, libc::W_OK).is_ok(),
        Anchor::Fd(fd) => sys::access_at(fd.as_raw_fd(), c"", libc::W_OK).is_ok(),
    }
}

fn is_posix_acl(name: &CStr) -> bool {
    [c"system.posix_acl_access", c"system.posix_acl_default"].contains(&name)
}

fn is_origin(name: &CStr) -> bool {
    ORIGIN_XATTRS.contains(&name)
}

/// A `listxattr` list without the origin record.
fn without_origin(list: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len());
    for n in list.split_inclusive(|&b| b == 0) {
        let name = n.strip_suffix(&[0]).unwrap_or(n);
        if !ORIGIN_XATTRS.iter().any(|x| x.to_bytes() == name) {
            out.extend_from_slice(n);
        }
    }
    out
}

/// A reply to a get/list call: the size asked for, or the data.
pub(super) enum XattrAnswer {
    Size(u32),
    Data(Vec<u8>),
}

const XATTR_MAX: usize = 64 * 1024;

impl CasaFs {
    pub(super) fn do_getxattr(&self, ino: u64, name: &OsStr, size: u32) -> Res<XattrAnswer> {
        let inode = self.inodes.get(ino)?;
        let name = cname(name)?;
        if is_origin(&name) {
            return Err(Errno::ENODATA);
        }
        let mut buf = vec![0u8; (size as usize).min(XATTR_MAX)];
        let n = match inode.on_object(|a| a.getxattr(&name, &mut buf)) {
            // casafs has the kernel check POSIX ACLs (`FUSE_POSIX_ACL`),
            // which it asks for on each permission check it makes for a
            // user: a backing without them (ntfs-3g with `permissions`)
            // has none to give, and any other answer fails the check.
            Err(Errno::EOPNOTSUPP) if is_posix_acl(&name) => return Err(Errno::ENODATA),
            n => n?,
        };
        if size == 0 {
            return Ok(XattrAnswer::Size(n as u32));
        }
        buf.truncate(n);
        Ok(XattrAnswer::Data(buf))
    }

    pub(super) fn do_listxattr(&self, ino: u64, size: u32) -> Res<XattrAnswer> {
        let inode = self.inodes.get(ino)?;
        inode.on_object(|anchor| list(anchor, size))
    }
}

/// The listxattr answer for the object `anchor` reaches.
fn list(anchor: &Anchor, size: u32) -> Res<XattrAnswer> {
    // Room for the origin record on top of what the caller can take:
    // the list it gets may fit where the whole one would not.
    let mut tries = 0;
    let list = loop {
        let room = match size {
            0 => anchor.listxattr(&mut [])?,
            _ => {
                size as usize
                    + ORIGIN_XATTRS
                        .iter()
                        .map(|x| x.to_bytes_with_nul().len())
                        .sum::<usize>()
            }
        };
        if room == 0 {
            return Ok(XattrAnswer::Size(0));
        }
        let mut buf = vec![0u8; room.min(XATTR_MAX)];
        match anchor.listxattr(&mut buf) {
            Ok(n) => break without_origin(&buf[..n]),
            // A size query never fails for want of room: an attribute
            // added between its two calls is measured again.
            Err(Errno::ERANGE) if size == 0 && tries < 8 => tries += 1,
            Err(e) => return Err(e),
        }
    };
    if size == 0 {
        return Ok(XattrAnswer::Size(list.len() as u32));
    }
    if list.len() > size as usize {
        return Err(Errno::ERANGE);
    }
    Ok(XattrAnswer::Data(list))
}

impl CasaFs {
    pub(super) fn do_setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Res<()> {
        let inode = self.inodes.get(ino)?;
        let name = cname(name)?;
        if is_origin(&name) {
            // Taken and dropped, as it was never there: a copy from an
            // area outside the mount (`mv`, `cp -a`, `rsync -X` back into
            // the tree) carries one, and must neither fail nor keep it.
            return match flags & libc::XATTR_REPLACE {
                0 => Ok(()),
                _ => Err(Errno::ENODATA),
            };
        }
        inode.on_object(|a| a.setxattr(&name, value, flags))
    }

    pub(super) fn do_removexattr(&self, ino: u64, name: &OsStr) -> Res<()> {
        let inode = self.inodes.get(ino)?;
        let name = cname(name)?;
        if is_origin(&name) {
            return Err(Errno::ENODATA);
        }
        match inode.on_object(|a| a.removexattr(&name)) {
            // The kernel drops a file's capabilities before a write by
            // anyone who may write it, and asks casafs to here; the caller
            // lacks CAP_SETFCAP, which the kernel does not need for that.
            // Judged and done on the object's own descriptor.
            Err(Errno::EPERM) if name.as_c_str() == CAPABILITY && creds::unprivileged() => {
                let obj = Anchor::Fd(inode.path_fd()?);
                if !may_write(&obj) {
                    return Err(Errno::EPERM);
                }
                creds::as_root(|| obj.removexattr(&name))
            }
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_record_is_left_out_of_a_list() {
        assert_eq!(
            without_origin(b"user.a\0user.casafs.origin\0security.selinux\0"),
            b"user.a\0security.selinux\0"
        );
        assert_eq!(without_origin(b"user.casafs.origin\0"), b"");
        assert_eq!(
            without_origin(b"trusted.casafs.origin\0user.b\0"),
            b"user.b\0"
        );
        assert_eq!(
            without_origin(b"user.casafs.origin2\0"),
            b"user.casafs.origin2\0"
        );
        assert_eq!(without_origin(b""), b"");
    }
}
