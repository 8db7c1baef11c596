//! The `fuser::Filesystem` impl: decode, time, dispatch, reply. Nothing
//! here decides anything; every operation lives in its own module.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

use fuser::{
    AccessFlags, CopyFileRangeFlags, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::CasaFs;
use super::control::is_control;
use super::entry::Caller;
use super::xattr::XattrReply;
use crate::handle::Body;
use crate::inode::{CONTROL_DIR_ID, ROOT_ID};
use crate::stats::Op;
use crate::sys;

const GEN: Generation = Generation(0);

/// Times the request, counts its outcome, and replies.
macro_rules! serve {
    ($fs:ident, $op:expr, $reply:ident, $body:expr, |$v:pat_param| $ok:expr) => {{
        let t = $fs.stats.start($op);
        match $body {
            Ok($v) => {
                $fs.stats.finish(t, None);
                $ok
            }
            Err(e) => {
                $fs.stats.finish(t, Some(e.code()));
                $reply.error(e)
            }
        }
    }};
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

impl Filesystem for CasaFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        for f in [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_CACHE_SYMLINKS,
        ] {
            let _ = config.add_capabilities(f);
        }
        if config
            .add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2)
            .is_ok()
        {
            self.killpriv.store(true, Relaxed);
        }
        if self.settings.passthrough
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough.store(true, Relaxed);
        }
        let _ = config.set_max_write(1 << 20);
        if let Err(max) = config.set_max_readahead(1 << 20) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        tracing::info!(
            "mounted {} on {} (passthrough {}, deferred unlink {})",
            self.settings.source.display(),
            self.settings.mountpoint.display(),
            if self.passthrough.load(Relaxed) {
                "on"
            } else {
                "off"
            },
            if self.defer_unlink { "on" } else { "off" },
        );
        Ok(())
    }

    fn destroy(&mut self) {
        if let Ok(fd) = self.root_fd() {
            use std::os::fd::AsRawFd;
            self.graveyard.close(fd.as_raw_fd());
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if let Some(r) = self.control_lookup(parent.0, name.as_bytes()) {
            let ttl = self.ttl_entry();
            // Control files change on every read: never cache their attributes.
            return serve!(self, Op::Lookup, reply, r, |a| reply.entry_with_ttls(
                &std::time::Duration::ZERO,
                &ttl,
                &a,
                GEN
            ));
        }
        let t = self.stats.start(Op::Lookup);
        match self.do_lookup(parent.0, name) {
            Ok((i, st)) => {
                self.stats.finish(t, None);
                reply.entry_with_ttls(
                    &self.ttl_attr(),
                    &self.ttl_entry(),
                    &self.attr(i.nodeid, &st),
                    Generation(i.generation),
                )
            }
            Err(e) if e == sys::Errno::ENOENT => {
                self.stats.finish(t, Some(e.code()));
                // Node id 0 is a negative entry the kernel keeps for the
                // entry timeout: PATH and import searches, and the lookup
                // before every create, stop costing a round trip each.
                reply.entry_with_ttls(
                    &std::time::Duration::ZERO,
                    &self.ttl_entry(),
                    &self.attr(0, &sys::zeroed_stat()),
                    Generation(0),
                )
            }
            Err(e) => {
                self.stats.finish(t, Some(e.code()));
                reply.error(e)
            }
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let t = self.stats.start(Op::Forget);
        if !is_control(ino.0) {
            self.inodes.forget(ino.0, nlookup);
        }
        self.stats.finish(t, None);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if is_control(ino.0) {
            let a = self.control_attr(ino.0);
            return serve!(self, Op::Getattr, reply, Ok::<_, sys::Errno>(()), |_| reply
                .attr(&std::time::Duration::ZERO, &a));
        }
        serve!(
            self,
            Op::Getattr,
            reply,
            self.do_getattr(ino.0, fh.map(|f| f.0)),
            |st| reply.attr(&self.ttl_attr(), &self.attr(ino.0, &st))
        )
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
        serve!(
            self,
            Op::Setattr,
            reply,
            self.do_setattr(ino.0, mode, uid, gid, size, atime, mtime, fh.map(|f| f.0))
                .and_then(|st| self.after_truncate(caller(req), ino.0, size, st, fh.map(|f| f.0))),
            |st| reply.attr(&self.ttl_attr(), &self.attr(ino.0, &st))
        )
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        serve!(self, Op::Readlink, reply, self.do_readlink(ino.0), |d| {
            reply.data(&d)
        })
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        serve!(
            self,
            Op::Mknod,
            reply,
            self.do_mknod(caller(req), parent.0, name, mode, rdev),
            |(i, st)| self.reply_entry(reply, &i, &st)
        )
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        serve!(
            self,
            Op::Mkdir,
            reply,
            self.do_mkdir(caller(req), parent.0, name, mode),
            |(i, st)| self.reply_entry(reply, &i, &st)
        )
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        serve!(
            self,
            Op::Unlink,
            reply,
            self.do_unlink(parent.0, name),
            |_| reply.ok()
        )
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        serve!(
            self,
            Op::Rmdir,
            reply,
            self.do_rmdir(parent.0, name),
            |_| reply.ok()
        )
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        serve!(
            self,
            Op::Symlink,
            reply,
            self.do_symlink(caller(req), parent.0, link_name, target),
            |(i, st)| self.reply_entry(reply, &i, &st)
        )
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        serve!(
            self,
            Op::Rename,
            reply,
            self.do_rename(parent.0, name, newparent.0, newname, flags.bits()),
            |_| reply.ok()
        )
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        serve!(
            self,
            Op::Link,
            reply,
            self.do_link(caller(req), ino.0, newparent.0, newname),
            |(i, st)| self.reply_entry(reply, &i, &st)
        )
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if is_control(ino.0) {
            return serve!(
                self,
                Op::Open,
                reply,
                self.control_open(ino.0, flags.0),
                |fh| reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO)
            );
        }
        let opened = self
            .do_open(ino.0, flags.0)
            .and_then(|o| self.after_open_trunc(caller(req), flags.0, o));
        serve!(self, Op::Open, reply, opened, |o| {
            let (fh, backing) =
                self.register(o, flags.0, &|fd| reply.open_backing(sys::borrow(fd)));
            match backing {
                Some(b) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &b),
                None => reply.opened(FileHandle(fh), FopenFlags::empty()),
            }
        })
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        serve!(
            self,
            Op::Read,
            reply,
            self.do_read(fh.0, offset, size),
            |d| reply.data(&d)
        )
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill = write_flags
            .contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            .then(|| caller(req));
        serve!(
            self,
            Op::Write,
            reply,
            self.do_write(fh.0, offset, data, kill),
            |n| reply.written(n)
        )
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if !self.flush_on_close {
            // Not an error for the statistics: the kernel asks once.
            return reply.error(sys::Errno::ENOSYS);
        }
        serve!(self, Op::Flush, reply, self.do_flush(fh.0), |_| reply.ok())
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        serve!(self, Op::Release, reply, self.do_release(fh.0), |_| reply
            .ok())
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        serve!(
            self,
            Op::Fsync,
            reply,
            self.do_fsync(fh.0, datasync),
            |_| reply.ok()
        )
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        serve!(
            self,
            Op::Opendir,
            reply,
            if ino.0 == CONTROL_DIR_ID {
                self.control_opendir()
            } else {
                self.do_opendir(ino.0)
            },
            |fh| reply.opened(FileHandle(fh), FopenFlags::empty())
        )
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        serve!(
            self,
            Op::Readdir,
            reply,
            self.readdir_into(fh.0, offset, &mut reply),
            |_| reply.ok()
        )
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        serve!(
            self,
            Op::Readdirplus,
            reply,
            self.readdirplus_into(fh.0, offset, &mut reply),
            |_| reply.ok()
        )
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        serve!(
            self,
            Op::Releasedir,
            reply,
            self.do_releasedir(fh.0),
            |_| reply.ok()
        )
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        serve!(
            self,
            Op::Fsyncdir,
            reply,
            self.do_fsyncdir(fh.0, datasync),
            |_| reply.ok()
        )
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        serve!(self, Op::Statfs, reply, self.do_statfs(), |s| reply.statfs(
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_files,
            s.f_ffree,
            s.f_bsize as u32,
            s.f_namemax as u32,
            s.f_frsize as u32,
        ))
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        serve!(
            self,
            Op::Setxattr,
            reply,
            self.do_setxattr(ino.0, name, value, flags),
            |_| reply.ok()
        )
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if is_control(ino.0) {
            let r: sys::Res<()> = Err(sys::Errno::ENODATA);
            return serve!(self, Op::Getxattr, reply, r, |_| ());
        }
        serve!(
            self,
            Op::Getxattr,
            reply,
            self.do_getxattr(ino.0, name, size),
            |x| match x {
                XattrReply::Size(n) => reply.size(n),
                XattrReply::Data(d) => reply.data(&d),
            }
        )
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if is_control(ino.0) {
            return serve!(self, Op::Listxattr, reply, Ok::<_, sys::Errno>(()), |_| {
                reply.size(0)
            });
        }
        serve!(
            self,
            Op::Listxattr,
            reply,
            self.do_listxattr(ino.0, size),
            |x| match x {
                XattrReply::Size(n) => reply.size(n),
                XattrReply::Data(d) => reply.data(&d),
            }
        )
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        serve!(
            self,
            Op::Removexattr,
            reply,
            self.do_removexattr(ino.0, name),
            |_| reply.ok()
        )
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        serve!(
            self,
            Op::Access,
            reply,
            if is_control(ino.0) {
                Ok(())
            } else {
                self.do_access(ino.0, mask.bits())
            },
            |_| reply.ok()
        )
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        serve!(
            self,
            Op::Create,
            reply,
            self.do_create(caller(req), parent.0, name, mode, flags)
                .and_then(|o| self.after_open_trunc(caller(req), flags, o)),
            |o| {
                let nodeid = o.inode.nodeid;
                let gen_ = Generation(o.inode.generation);
                let attr = self.attr(nodeid, &o.st);
                let (fh, backing) =
                    self.register(o, flags, &|fd| reply.open_backing(sys::borrow(fd)));
                let ttl = self.ttl_entry();
                match backing {
                    Some(b) => reply.created_passthrough(
                        &ttl,
                        &attr,
                        gen_,
                        FileHandle(fh),
                        FopenFlags::empty(),
                        &b,
                    ),
                    None => reply.created(&ttl, &attr, gen_, FileHandle(fh), FopenFlags::empty()),
                }
            }
        )
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        serve!(
            self,
            Op::Fallocate,
            reply,
            self.do_fallocate(fh.0, offset, length, mode),
            |_| reply.ok()
        )
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        serve!(
            self,
            Op::Lseek,
            reply,
            self.do_lseek(fh.0, offset, whence),
            |o| reply.offset(o)
        )
    }

    fn copy_file_range(
        &self,
        _req: &Request,
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
        serve!(
            self,
            Op::CopyFileRange,
            reply,
            self.do_copy_file_range(
                fh_in.0,
                offset_in,
                fh_out.0,
                offset_out,
                len,
                flags.bits() as u32,
            ),
            |n| reply.written(n)
        )
    }
}

impl CasaFs {
    fn reply_entry(&self, reply: ReplyEntry, i: &crate::inode::Inode, st: &libc::stat) {
        reply.entry_with_ttls(
            &self.ttl_attr(),
            &self.ttl_entry(),
            &self.attr(i.nodeid, st),
            Generation(i.generation),
        )
    }

    fn readdir_into(&self, fh: u64, offset: u64, reply: &mut ReplyDirectory) -> sys::Res<()> {
        let h = self.handles.get(fh)?;
        if matches!(h.body, Body::ControlDir) {
            for (i, (ino, kind, name)) in self
                .control_entries()
                .into_iter()
                .enumerate()
                .skip(offset as usize)
            {
                if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                    break;
                }
            }
            return Ok(());
        }
        let dir = h.inode.clone();
        drop(h);
        let dfd = dir.dir_fd()?;
        use std::os::fd::AsRawFd;
        self.walk_dir(fh, offset, &mut |e| {
            let kind = self.dtype_kind(dfd.as_raw_fd(), e);
            let ino = self.d_ino(dir.dev, e.name, e.ino, dir.nodeid);
            Ok(reply.add(
                INodeNo(ino),
                e.off as u64,
                kind,
                OsStr::from_bytes(e.name.to_bytes()),
            ))
        })
    }

    fn readdirplus_into(
        &self,
        fh: u64,
        offset: u64,
        reply: &mut ReplyDirectoryPlus,
    ) -> sys::Res<()> {
        let h = self.handles.get(fh)?;
        let ttl_e = self.ttl_entry();
        let ttl_a = self.ttl_attr();
        if matches!(h.body, Body::ControlDir) {
            for (i, (ino, _kind, name)) in self
                .control_entries()
                .into_iter()
                .enumerate()
                .skip(offset as usize)
            {
                let attr = self.control_attr(if ino == ROOT_ID { CONTROL_DIR_ID } else { ino });
                if reply.add(INodeNo(ino), i as u64 + 1, name, &ttl_e, &attr, GEN) {
                    break;
                }
            }
            return Ok(());
        }
        let dir = h.inode.clone();
        drop(h);
        let dfd = dir.dir_fd()?;
        use std::os::fd::AsRawFd;
        let dst = sys::fstat(dfd.as_raw_fd())?;
        self.walk_dir(fh, offset, &mut |e| {
            let name = OsStr::from_bytes(e.name.to_bytes());
            if matches!(e.name.to_bytes(), b"." | b"..") {
                // The kernel takes no reference on these.
                let attr = self.attr(dir.nodeid, &dst);
                return Ok(reply.add(INodeNo(attr.ino.0), e.off as u64, name, &ttl_e, &attr, GEN));
            }
            let st = match sys::stat_at(dfd.as_raw_fd(), e.name) {
                Ok(st) => st,
                // Gone since getdents: skip it like a later readdir would.
                Err(sys::Errno::ENOENT) => return Ok(false),
                Err(err) => return Err(err),
            };
            let in_target = dir.in_target || self.is_area_root(&st);
            let inode = self.inodes.remember(&dir, e.name, &st, in_target);
            let attr = self.attr(inode.nodeid, &st);
            let full = reply.add(
                INodeNo(inode.nodeid),
                e.off as u64,
                name,
                &ttl_e,
                &attr,
                Generation(inode.generation),
            );
            if full {
                self.inodes.forget(inode.nodeid, 1);
            }
            let _ = ttl_a;
            Ok(full)
        })
    }
}
