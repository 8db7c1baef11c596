//! Decodes one request from a ring entry and hands it to the handlers in
//! `fs/ops.rs`, the same ones `/dev/fuse` requests reach.
//!
//! Since Linux 6.14 the kernel puts each opcode's fixed argument struct in
//! the header's `op_in` area and everything after it (names, xattr values,
//! write data) in the payload buffer.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use fuser::TimeOrNow;

use super::abi::{self, *};
use super::reply::RingReply;
use crate::fs::reply::Reply;
use crate::fs::{Caller, CasaFs, ops::SetAttr};
use crate::sys::Errno;

/// Splits a NUL-terminated string off the front of `b`.
fn cstr(b: &[u8]) -> Option<(&OsStr, &[u8])> {
    let end = b.iter().position(|&c| c == 0)?;
    Some((OsStr::from_bytes(&b[..end]), &b[end + 1..]))
}

fn time(set: bool, now: bool, secs: u64, nsec: u32) -> Option<TimeOrNow> {
    match (set, now) {
        (false, _) => None,
        (true, true) => Some(TimeOrNow::Now),
        (true, false) => Some(TimeOrNow::SpecificTime(abi::system_time(secs, nsec))),
    }
}

/// The size limit a reply has: what the kernel asked for, where it asks.
pub fn reply_limit(opcode: u32, op_in: &[u8]) -> usize {
    match opcode {
        READ | READDIR | READDIRPLUS => read::<IoIn>(op_in).size as usize,
        GETXATTR | LISTXATTR => read::<U32In>(op_in).value as usize,
        _ => usize::MAX,
    }
}

/// Serves one request. `payload` holds the request's trailing arguments.
/// `owner`: without `allow_other`, the one user served; others get EACCES
/// except for what the kernel may send on anyone's behalf, as fuser does
/// on `/dev/fuse`.
pub fn serve(
    fs: &CasaFs,
    owner: Option<u32>,
    h: &InHeader,
    op_in: &[u8],
    payload: &[u8],
    r: RingReply<'_>,
) {
    if owner.is_some_and(|o| o != h.uid)
        && !matches!(
            h.opcode,
            READ | READDIR
                | READDIRPLUS
                | WRITE
                | FSYNC
                | FSYNCDIR
                | RELEASE
                | RELEASEDIR
                | DESTROY
        )
    {
        return r.error(Errno::EACCES);
    }
    let who = Caller {
        uid: h.uid,
        gid: h.gid,
        pid: h.pid,
    };
    if matches!(h.opcode, RELEASE | RELEASEDIR) {
        // casafs's bookkeeping, which takes the rights it needs itself.
        crate::creds::bookkeeping(&who);
    } else if !crate::creds::act_as(&who) {
        return r.error(Errno::EIO);
    }
    crate::fault::stall_point();
    let ino = h.nodeid;
    macro_rules! name_or_einval {
        ($b:expr) => {
            match cstr($b) {
                Some(v) => v,
                None => return r.error(Errno::EINVAL),
            }
        };
    }
    match h.opcode {
        LOOKUP => {
            let (name, _) = name_or_einval!(payload);
            fs.op_lookup(ino, name, r)
        }
        GETATTR => {
            let a: GetattrIn = read(op_in);
            let fh = (a.getattr_flags & GETATTR_FH != 0).then_some(a.fh);
            fs.op_getattr(ino, fh, r)
        }
        SETATTR => {
            let a: SetattrIn = read(op_in);
            let v = a.valid;
            let set = SetAttr {
                mode: (v & FATTR_MODE != 0).then_some(a.mode),
                uid: (v & FATTR_UID != 0).then_some(a.uid),
                gid: (v & FATTR_GID != 0).then_some(a.gid),
                size: (v & FATTR_SIZE != 0).then_some(a.size),
                atime: time(
                    v & FATTR_ATIME != 0,
                    v & FATTR_ATIME_NOW != 0,
                    a.atime,
                    a.atimensec,
                ),
                mtime: time(
                    v & FATTR_MTIME != 0,
                    v & FATTR_MTIME_NOW != 0,
                    a.mtime,
                    a.mtimensec,
                ),
                fh: (v & FATTR_FH != 0).then_some(a.fh),
            };
            fs.op_setattr(ino, set, r)
        }
        READLINK => fs.op_readlink(ino, r),
        SYMLINK => {
            let (name, rest) = name_or_einval!(payload);
            let (target, _) = name_or_einval!(rest);
            fs.op_symlink(who, ino, name, Path::new(target), r)
        }
        MKNOD => {
            let a: MknodIn = read(op_in);
            let (name, _) = name_or_einval!(payload);
            fs.op_mknod(who, ino, name, a.mode, a.umask, a.rdev, r)
        }
        MKDIR => {
            let a: MkdirIn = read(op_in);
            let (name, _) = name_or_einval!(payload);
            fs.op_mkdir(who, ino, name, a.mode, a.umask, r)
        }
        UNLINK => {
            let (name, _) = name_or_einval!(payload);
            fs.op_unlink(ino, name, r)
        }
        RMDIR => {
            let (name, _) = name_or_einval!(payload);
            fs.op_rmdir(ino, name, r)
        }
        RENAME | RENAME2 => {
            let (newdir, flags) = if h.opcode == RENAME {
                (read::<RenameIn>(op_in).newdir, 0)
            } else {
                let a: Rename2In = read(op_in);
                (a.newdir, a.flags)
            };
            let (old, rest) = name_or_einval!(payload);
            let (new, _) = name_or_einval!(rest);
            fs.op_rename(ino, old, newdir, new, flags, r)
        }
        LINK => {
            let a: LinkIn = read(op_in);
            let (name, _) = name_or_einval!(payload);
            fs.op_link(a.oldnodeid, ino, name, r)
        }
        OPEN => fs.op_open(ino, read::<OpenIn>(op_in).flags as i32, r),
        READ => {
            let a: IoIn = read(op_in);
            fs.op_read(a.fh, a.offset, a.size, r)
        }
        WRITE => {
            let a: IoIn = read(op_in);
            let Some(data) = payload.get(..a.size as usize) else {
                return r.error(Errno::EINVAL);
            };
            fs.op_write(a.fh, a.offset, data, r)
        }
        STATFS => fs.op_statfs(r),
        RELEASE => fs.op_release(read::<ReleaseIn>(op_in).fh, r),
        FSYNC => {
            let a: FsyncIn = read(op_in);
            fs.op_fsync(a.fh, a.fsync_flags & FSYNC_FDATASYNC != 0, r)
        }
        SETXATTR => {
            let a: SetxattrIn = read(op_in);
            let (name, rest) = name_or_einval!(payload);
            let Some(value) = rest.get(..a.size as usize) else {
                return r.error(Errno::EINVAL);
            };
            fs.op_setxattr(ino, name, value, a.flags as i32, r)
        }
        GETXATTR => {
            let a: U32In = read(op_in);
            let (name, _) = name_or_einval!(payload);
            fs.op_getxattr(ino, name, a.value, r)
        }
        LISTXATTR => fs.op_listxattr(ino, read::<U32In>(op_in).value, r),
        REMOVEXATTR => {
            let (name, _) = name_or_einval!(payload);
            fs.op_removexattr(ino, name, r)
        }
        FLUSH => fs.op_flush(read::<FlushIn>(op_in).fh, r),
        OPENDIR => fs.op_opendir(ino, r),
        READDIR => {
            let a: IoIn = read(op_in);
            fs.op_readdir(a.fh, a.offset, r)
        }
        READDIRPLUS => {
            let a: IoIn = read(op_in);
            fs.op_readdirplus(a.fh, a.offset, r)
        }
        RELEASEDIR => fs.op_releasedir(read::<ReleaseIn>(op_in).fh, r),
        FSYNCDIR => {
            let a: FsyncIn = read(op_in);
            fs.op_fsyncdir(a.fh, a.fsync_flags & FSYNC_FDATASYNC != 0, r)
        }
        ACCESS => fs.op_access(ino, read::<U32In>(op_in).value as i32, r),
        CREATE => {
            let a: CreateIn = read(op_in);
            let (name, _) = name_or_einval!(payload);
            fs.op_create(who, ino, name, a.mode, a.umask, a.flags as i32, r)
        }
        // The kernel names the file "/"; it has no name until linked.
        TMPFILE => {
            let a: CreateIn = read(op_in);
            fs.op_tmpfile(who, ino, a.mode, a.umask, a.flags as i32, r)
        }
        FALLOCATE => {
            let a: FallocateIn = read(op_in);
            fs.op_fallocate(a.fh, a.offset, a.length, a.mode as i32, r)
        }
        LSEEK => {
            let a: LseekIn = read(op_in);
            fs.op_lseek(a.fh, a.offset as i64, a.whence as i32, r)
        }
        COPY_FILE_RANGE => {
            let a: CopyFileRangeIn = read(op_in);
            fs.op_copy_file_range(
                a.fh_in,
                a.off_in,
                a.fh_out,
                a.off_out,
                a.len,
                a.flags as u32,
                r,
            )
        }
        // Sent only for fuseblk mounts; the kernel's answer to a retrieve
        // notification (never sent by casafs) must still be committed.
        DESTROY | NOTIFY_REPLY => crate::fs::reply::EmptyReply::ok(r),
        // What fuser answers for operations casafs does not implement.
        _ => r.error(Errno::ENOSYS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_split_at_their_terminators() {
        let (a, rest) = cstr(b"old\0new\0").unwrap();
        let (b, rest) = cstr(rest).unwrap();
        assert_eq!(
            (a, b, rest),
            (OsStr::new("old"), OsStr::new("new"), &b""[..])
        );
        assert!(cstr(b"no terminator").is_none());
    }

    #[test]
    fn only_sized_requests_limit_the_reply() {
        let io = IoIn {
            size: 4096,
            ..Default::default()
        };
        assert_eq!(reply_limit(READDIR, abi::bytes(&io)), 4096);
        assert_eq!(reply_limit(LOOKUP, abi::bytes(&io)), usize::MAX);
    }
}
