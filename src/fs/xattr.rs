//! Extended attributes, passed through on the object itself (never through
//! a symlink it may be).

use std::ffi::OsStr;

use super::CasaFs;
use crate::sys::{Res, cname};

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
        let mut buf = vec![0u8; (size as usize).min(XATTR_MAX)];
        let n = inode.anchor()?.getxattr(&name, &mut buf)?;
        if size == 0 {
            return Ok(XattrAnswer::Size(n as u32));
        }
        buf.truncate(n);
        Ok(XattrAnswer::Data(buf))
    }

    pub(super) fn do_listxattr(&self, ino: u64, size: u32) -> Res<XattrAnswer> {
        let inode = self.inodes.get(ino)?;
        let mut buf = vec![0u8; (size as usize).min(XATTR_MAX)];
        let n = inode.anchor()?.listxattr(&mut buf)?;
        if size == 0 {
            return Ok(XattrAnswer::Size(n as u32));
        }
        buf.truncate(n);
        Ok(XattrAnswer::Data(buf))
    }

    pub(super) fn do_setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Res<()> {
        let inode = self.inodes.get(ino)?;
        let name = cname(name)?;
        inode.anchor()?.setxattr(&name, value, flags)
    }

    pub(super) fn do_removexattr(&self, ino: u64, name: &OsStr) -> Res<()> {
        let inode = self.inodes.get(ino)?;
        let name = cname(name)?;
        inode.anchor()?.removexattr(&name)
    }
}
