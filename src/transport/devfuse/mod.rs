//! The `fuser::Filesystem` impl for requests read from `/dev/fuse`: unpack
//! fuser's arguments and hand them to the filesystem's handlers
//! (`crate::fs::ops`). Nothing here decides anything.

mod reply;

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use fuser::{
    AccessFlags, CopyFileRangeFlags, FileHandle, Filesystem, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::{Server, panic_guard};
use crate::creds::Caller;
use crate::fs::CasaFs;
use crate::fs::ops::SetAttr;

/// Runs a handler of casafs's bookkeeping (release, forget), which takes
/// the rights it needs itself, without switching credentials.
fn guarded_bookkeeping(req: &Request, f: impl FnOnce()) {
    crate::creds::bookkeeping(&caller(req));
    panic_guard(f);
}

/// Runs a handler with the caller's credentials (`crate::creds`), so that
/// a bug that panics costs only its own request: the reply object is
/// dropped on the way out, which answers EIO, and the thread goes on
/// reading requests.
fn guarded(req: &Request, f: impl FnOnce()) {
    // Not served at all without the caller's credentials: the reply inside
    // `f` is dropped unanswered, which answers EIO.
    if !crate::creds::act_as(&caller(req)) {
        return;
    }
    crate::fault::stall_point();
    panic_guard(f);
}

/// Lowers this thread's priority, once. With io_uring a `/dev/fuse`
/// thread serves only forgets (and INIT, INTERRUPT), and a forget may
/// carry the heavy part of a removal: the backing frees a removed file
/// when casafs lets go of it (`CasaFs::remove_file`). At the normal
/// priority the forget thread, woken on the CPU where the remover waits,
/// runs before the request the remover sends next and holds it up; at
/// the lowest it runs in the time that is left. With every CPU saturated
/// forgets then wait, seconds at worst: what waits on them is bounded
/// (`fdbudget::freed_at_forget`, `fdbudget::cached_dirs`).
fn forgets_yield() {
    thread_local! {
        static YIELDS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !YIELDS.get() {
        YIELDS.set(true);
        // This thread only: Linux keeps a nice value per thread.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

/// What fuser serves: fuser owns the object it dispatches to, and the
/// io_uring queues share the same filesystem, hence a handle to it.
pub struct Dispatch(pub Arc<Server>);

impl std::ops::Deref for Dispatch {
    type Target = CasaFs;
    fn deref(&self) -> &CasaFs {
        &self.0.fs
    }
}

impl Filesystem for Dispatch {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Not FUSE_ATOMIC_O_TRUNC: with it, an open(O_TRUNC) is truncated
        // by casafs before the kernel checks whether the file is a running
        // program, which then fails with ETXTBSY after its bytes are gone.
        // Without it the kernel checks first and truncates with a setattr.
        // FUSE_AUTO_INVAL_DATA also makes the kernel check a kept listing
        // against the directory's mtime (dir.rs, `listing_cache`).
        for f in [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_CACHE_SYMLINKS,
            // File handles (NFS export, open_by_handle_at): fs/export.rs.
            InitFlags::FUSE_EXPORT_SUPPORT,
        ] {
            if let Err(f) = config.add_capabilities(f) {
                tracing::debug!("the kernel does not offer {f:?}");
            }
        }
        // KILLPRIV_V2 spares a GETXATTR of security.capability before
        // writes: casafs writes as the writer, so the backing clears set-ID
        // bits and capabilities where it would natively. POSIX_ACL makes
        // the kernel check ACLs, not only mode bits; DONT_MASK leaves the
        // umask to casafs, so that a default ACL replaces it as natively.
        for f in [
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
            InitFlags::FUSE_POSIX_ACL,
            InitFlags::FUSE_DONT_MASK,
        ] {
            let _ = config.add_capabilities(f);
        }
        if self.settings().passthrough
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough_agreed();
        }
        let _ = config.set_max_write(1 << 20);
        if let Err(max) = config.set_max_readahead(1 << 20) {
            let _ = config.set_max_readahead(max);
        }
        // Asked for only where this process can run the queues: once agreed,
        // every request waits until all CPU queues are registered.
        if self.settings().io_uring
            && self.connected()
            && crate::transport::uring::prepare()
            && config
                .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                .is_ok()
        {
            self.0.uring.store(true, Relaxed);
        }
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        let on_off = |b: bool| if b { "on" } else { "off" };
        tracing::info!(
            "mounted {} on {} (passthrough {}, deferred unlink {}, io_uring {})",
            self.settings().source.display(),
            self.settings().mountpoint.display(),
            on_off(self.passthrough_on()),
            on_off(self.defers_unlinks()),
            on_off(self.0.uring.load(Relaxed)),
        );
        Ok(())
    }

    fn destroy(&mut self) {
        self.0.stop();
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        guarded(req, || self.op_lookup(parent.0, name, reply))
    }

    fn forget(&self, req: &Request, ino: INodeNo, nlookup: u64) {
        if self.0.uring.load(Relaxed) {
            forgets_yield();
        }
        guarded_bookkeeping(req, || self.op_forget(ino.0, nlookup))
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        guarded(req, || self.op_getattr(ino.0, fh.map(|f| f.0), reply))
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let a = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(pre_epoch_fixed),
            mtime: mtime.map(pre_epoch_fixed),
            fh: fh.map(|f| f.0),
        };
        guarded(req, || self.op_setattr(ino.0, a, reply))
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        guarded(req, || self.op_readlink(ino.0, reply))
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        guarded(req, || {
            self.op_mknod(caller(req), parent.0, name, mode, umask, rdev, reply)
        })
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        guarded(req, || {
            self.op_mkdir(caller(req), parent.0, name, mode, umask, reply)
        })
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded(req, || self.op_unlink(parent.0, name, reply))
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded(req, || self.op_rmdir(parent.0, name, reply))
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        guarded(req, || {
            self.op_symlink(caller(req), parent.0, link_name, target, reply)
        })
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        guarded(req, || {
            self.op_rename(parent.0, name, newparent.0, newname, flags.bits(), reply)
        })
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        guarded(req, || self.op_link(ino.0, newparent.0, newname, reply))
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        guarded(req, || self.op_open(ino.0, flags.0, reply))
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        guarded(req, || self.op_read(fh.0, offset, size, reply))
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        guarded(req, || self.op_write(fh.0, offset, data, reply))
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        guarded(req, || self.op_flush(fh.0, reply))
    }

    fn release(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        guarded_bookkeeping(req, || self.op_release(fh.0, reply))
    }

    fn fsync(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        guarded(req, || self.op_fsync(fh.0, datasync, reply))
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        guarded(req, || self.op_opendir(ino.0, reply))
    }

    fn readdir(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        guarded(req, || self.op_readdir(fh.0, offset, reply))
    }

    fn readdirplus(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        guarded(req, || self.op_readdirplus(fh.0, offset, reply))
    }

    fn releasedir(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        guarded_bookkeeping(req, || self.op_releasedir(fh.0, reply))
    }

    fn fsyncdir(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        guarded(req, || self.op_fsyncdir(fh.0, datasync, reply))
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        guarded(req, || self.op_statfs(reply))
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        guarded(req, || self.op_setxattr(ino.0, name, value, flags, reply))
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        guarded(req, || self.op_getxattr(ino.0, name, size, reply))
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        guarded(req, || self.op_listxattr(ino.0, size, reply))
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded(req, || self.op_removexattr(ino.0, name, reply))
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        guarded(req, || self.op_access(ino.0, mask.bits(), reply))
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        guarded(req, || {
            self.op_create(caller(req), parent.0, name, mode, umask, flags, reply)
        })
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        guarded(req, || self.op_fallocate(fh.0, offset, length, mode, reply))
    }

    fn lseek(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        guarded(req, || self.op_lseek(fh.0, offset, whence, reply))
    }

    fn copy_file_range(
        &self,
        req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        guarded(req, || {
            self.op_copy_file_range(
                fh_in.0,
                offset_in,
                fh_out.0,
                offset_out,
                len,
                flags.bits() as u32,
                reply,
            )
        })
    }
}

/// fuser 0.18 reads a time before 1970 as seconds minus the fraction where
/// the kernel means seconds plus it (-1.5 s arrives as -2 s and 0.5 s, and
/// becomes -2.5 s). Undone here; FUSE over io_uring decodes times itself.
fn pre_epoch_fixed(t: TimeOrNow) -> TimeOrNow {
    use std::time::{Duration, UNIX_EPOCH};
    match t {
        TimeOrNow::SpecificTime(st) => match UNIX_EPOCH.duration_since(st) {
            Ok(d) if d.subsec_nanos() != 0 => TimeOrNow::SpecificTime(
                UNIX_EPOCH - Duration::from_secs(d.as_secs())
                    + Duration::from_nanos(u64::from(d.subsec_nanos())),
            ),
            _ => t,
        },
        now => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn times_before_1970_keep_their_fraction() {
        let at = |t: TimeOrNow| match t {
            TimeOrNow::SpecificTime(st) => st,
            TimeOrNow::Now => UNIX_EPOCH,
        };
        // The kernel's (-2 s, 0.5 s), i.e. -1.5 s, as fuser hands it over.
        let got = UNIX_EPOCH - Duration::new(2, 500_000_000);
        assert_eq!(
            at(pre_epoch_fixed(TimeOrNow::SpecificTime(got))),
            UNIX_EPOCH - Duration::from_millis(1500)
        );
        for t in [
            UNIX_EPOCH - Duration::from_secs(3),
            UNIX_EPOCH + Duration::new(5, 250),
            UNIX_EPOCH,
        ] {
            assert_eq!(at(pre_epoch_fixed(TimeOrNow::SpecificTime(t))), t);
        }
    }
}
