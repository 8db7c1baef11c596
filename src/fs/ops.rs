//! The request handlers: time the operation, run it, count the outcome and
//! answer. Written once for every transport (`crate::transport`); nothing
//! here knows how a request arrived or how its reply travels.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use fuser::{FileType, FopenFlags, TimeOrNow};

use super::CasaFs;
use super::control::is_control;
use super::dir::{ListingCache, RawEnt};
use super::made::Made;
use super::reply::*;
use super::xattr::XattrAnswer;
use crate::creds::Caller;
use crate::handle::Body;
use crate::inode::{CONTROL_DIR_ID, ROOT_ID};
use crate::stats::Op;
use crate::sys::{self, Errno, Res};

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

/// The attributes of a setattr request.
#[derive(Default, Clone, Copy)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    pub fh: Option<u64>,
}

impl CasaFs {
    /// The answer for a hard-linked object that casafs can no longer reach
    /// where it last saw it: that name went through another link, and a
    /// path-based backing such as ntfs-3g cannot follow the descriptor
    /// casafs kept past that. ESTALE makes the kernel look the path up
    /// once more, which finds the object under the name the caller used.
    /// Anything else missing stays ENOENT (the kernel's retry would not
    /// look a removed working directory up again).
    fn lost(&self, ino: u64, e: Errno) -> Errno {
        if e != Errno::ENOENT {
            return e;
        }
        match self.inodes.get(ino) {
            Ok(i) if i.is_pinned() && !i.is_dead() => Errno::ESTALE,
            _ => e,
        }
    }

    pub fn op_lookup(&self, parent: u64, name: &OsStr, reply: impl EntryReply) {
        crate::fault::on_lookup(name.as_bytes());
        if let Some(r) = self.control_lookup(parent, name.as_bytes()) {
            // Control files change on every read: never cache their attributes.
            let ttl = self.ttl_own();
            return serve!(self, Op::Lookup, reply, r, |a| reply.entry(
                &a,
                Duration::ZERO,
                ttl,
                0
            ));
        }
        // Watched before the name is looked for: a change made beneath the
        // mount after this is heard of.
        let negative = match self.inodes.get(parent) {
            Ok(p) => self.ttl_names(&p),
            Err(_) => Duration::ZERO,
        };
        let t = self.stats.start(Op::Lookup);
        match self.do_lookup(parent, name) {
            Ok((i, st)) => {
                self.stats.finish(t, None);
                self.reply_entry(reply, &i, &st)
            }
            Err(e) if e == Errno::ENOENT => {
                self.stats.finish(t, Some(e.code()));
                // Node id 0 is a negative entry the kernel keeps for the
                // entry timeout: PATH and import searches stop costing a
                // round trip each.
                // A name a rule routes may appear through another mount or
                // host routing it, with no change to this directory.
                let ttl = if self.live.rules_naming(name.as_bytes()).is_empty() {
                    negative
                } else {
                    negative.min(self.ttl_own())
                };
                reply.entry(&self.attr(0, &sys::zeroed_stat()), Duration::ZERO, ttl, 0)
            }
            Err(e) => {
                self.stats.finish(t, Some(e.code()));
                reply.error(e)
            }
        }
    }

    pub fn op_forget(&self, ino: u64, nlookup: u64) {
        let t = self.stats.start(Op::Forget);
        if !is_control(ino) {
            self.inodes.forget(ino, nlookup, |inode| {
                self.kernel_let_go(inode);
                crate::creds::as_root(|| self.keep_handle(inode));
            });
        }
        self.stats.finish(t, None);
    }

    pub fn op_getattr(&self, ino: u64, fh: Option<u64>, reply: impl AttrReply) {
        if is_control(ino) {
            let a = self.control_attr(ino);
            return serve!(self, Op::Getattr, reply, Ok::<_, Errno>(()), |_| reply
                .attr(&a, Duration::ZERO));
        }
        serve!(
            self,
            Op::Getattr,
            reply,
            self.do_getattr(ino, fh).map_err(|e| self.lost(ino, e)),
            |(st, i)| reply.attr(&self.attr(ino, &st), self.ttl_attr_of(&i, &st))
        )
    }

    pub fn op_setattr(&self, ino: u64, a: SetAttr, reply: impl AttrReply) {
        serve!(
            self,
            Op::Setattr,
            reply,
            self.do_setattr(ino, a.mode, a.uid, a.gid, a.size, a.atime, a.mtime, a.fh)
                .map_err(|e| self.lost(ino, e)),
            |(st, i)| reply.attr(&self.attr(ino, &st), self.ttl_attr_of(&i, &st))
        )
    }

    pub fn op_readlink(&self, ino: u64, reply: impl DataReply) {
        serve!(
            self,
            Op::Readlink,
            reply,
            self.do_readlink(ino).map_err(|e| self.lost(ino, e)),
            |d| reply.data(&d)
        )
    }

    /// An object's entry: its node id, and its attributes with the inode
    /// number the user sees (which differs for the root and the
    /// directories seen through an area's path).
    fn reply_entry(&self, reply: impl EntryReply, i: &crate::inode::Inode, st: &libc::stat) {
        let attr = self.attr(i.nodeid, st);
        let (ttl_attr, ttl_entry) = (self.ttl_attr_of(i, st), self.ttl_entry_of(i));
        if attr.ino.0 == i.nodeid {
            reply.entry(&attr, ttl_attr, ttl_entry, i.generation)
        } else {
            reply.entry_node(i.nodeid, &attr, ttl_attr, ttl_entry, i.generation)
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn op_mknod(
        &self,
        who: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: impl EntryReply,
    ) {
        let made = Made { who, mode, umask };
        serve!(
            self,
            Op::Mknod,
            reply,
            self.do_mknod(made, parent, name, rdev),
            |(i, st)| self.reply_entry(reply, &i, &st)
        )
    }

    pub fn op_mkdir(
        &self,
        who: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: impl EntryReply,
    ) {
        let made = Made { who, mode, umask };
        serve!(
            self,
            Op::Mkdir,
            reply,
            self.do_mkdir(made, parent, name),
            |(i, st)| self.reply_entry(reply, &i, &st)
        )
    }

    pub fn op_unlink(&self, parent: u64, name: &OsStr, reply: impl EmptyReply) {
        serve!(
            self,
            Op::Unlink,
            reply,
            self.do_unlink(parent, name),
            |_| reply.ok()
        )
    }

    pub fn op_rmdir(&self, parent: u64, name: &OsStr, reply: impl EmptyReply) {
        serve!(self, Op::Rmdir, reply, self.do_rmdir(parent, name), |_| {
            reply.ok()
        })
    }

    pub fn op_symlink(
        &self,
        who: Caller,
        parent: u64,
        name: &OsStr,
        target: &Path,
        reply: impl EntryReply,
    ) {
        serve!(
            self,
            Op::Symlink,
            reply,
            self.do_symlink(who, parent, name, target),
            |(i, st)| self.reply_entry(reply, &i, &st)
        )
    }

    pub fn op_rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: impl EmptyReply,
    ) {
        serve!(
            self,
            Op::Rename,
            reply,
            self.do_rename(parent, name, newparent, newname, flags),
            |_| reply.ok()
        )
    }

    pub fn op_link(&self, ino: u64, newparent: u64, newname: &OsStr, reply: impl EntryReply) {
        serve!(
            self,
            Op::Link,
            reply,
            self.do_link(ino, newparent, newname),
            |(i, st)| self.reply_entry(reply, &i, &st)
        )
    }

    pub fn op_open(&self, ino: u64, flags: i32, reply: impl OpenReply) {
        if is_control(ino) {
            return serve!(self, Op::Open, reply, self.control_open(ino, flags), |fh| {
                reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO, None)
            });
        }
        serve!(
            self,
            Op::Open,
            reply,
            self.do_open(ino, flags).map_err(|e| self.lost(ino, e)),
            |o| {
                let (fh, backing) = self.register(o, flags);
                reply.opened(fh, FopenFlags::empty(), backing)
            }
        )
    }

    pub fn op_read(&self, fh: u64, offset: u64, size: u32, reply: impl DataReply) {
        serve!(self, Op::Read, reply, self.do_read(fh, offset, size), |d| {
            reply.data(&d)
        })
    }

    /// The kernel's `kill_suidgid` flag needs nothing: the write runs as
    /// the writer, and the backing clears what it clears natively.
    pub fn op_write(&self, fh: u64, offset: u64, data: &[u8], reply: impl WriteReply) {
        serve!(
            self,
            Op::Write,
            reply,
            self.do_write(fh, offset, data),
            |n| reply.written(n)
        )
    }

    pub fn op_flush(&self, fh: u64, reply: impl EmptyReply) {
        if !self.flush_on_close {
            // Not an error for the statistics: the kernel asks once.
            return reply.error(Errno::ENOSYS);
        }
        serve!(self, Op::Flush, reply, self.do_flush(fh), |_| reply.ok())
    }

    pub fn op_release(&self, fh: u64, reply: impl EmptyReply) {
        serve!(self, Op::Release, reply, self.do_release(fh), |_| reply
            .ok())
    }

    pub fn op_fsync(&self, fh: u64, datasync: bool, reply: impl EmptyReply) {
        serve!(self, Op::Fsync, reply, self.do_fsync(fh, datasync), |_| {
            reply.ok()
        })
    }

    pub fn op_opendir(&self, ino: u64, reply: impl OpenReply) {
        serve!(
            self,
            Op::Opendir,
            reply,
            if ino == CONTROL_DIR_ID {
                self.control_opendir().map(|fh| (fh, ListingCache::Off))
            } else {
                self.do_opendir(ino).map_err(|e| self.lost(ino, e))
            },
            |(fh, cache)| reply.opened(fh, cache.open_flags(), None)
        )
    }

    pub fn op_readdir<R: DirReply>(&self, fh: u64, offset: u64, mut reply: R) {
        serve!(
            self,
            Op::Readdir,
            reply,
            self.readdir_into(fh, offset, &mut reply),
            |_| reply.ok()
        )
    }

    pub fn op_readdirplus<R: DirPlusReply>(&self, fh: u64, offset: u64, mut reply: R) {
        serve!(
            self,
            Op::Readdirplus,
            reply,
            self.readdirplus_into(fh, offset, &mut reply),
            |_| reply.ok()
        )
    }

    pub fn op_releasedir(&self, fh: u64, reply: impl EmptyReply) {
        serve!(self, Op::Releasedir, reply, self.do_releasedir(fh), |_| {
            reply.ok()
        })
    }

    pub fn op_fsyncdir(&self, fh: u64, datasync: bool, reply: impl EmptyReply) {
        serve!(
            self,
            Op::Fsyncdir,
            reply,
            self.do_fsyncdir(fh, datasync),
            |_| reply.ok()
        )
    }

    pub fn op_statfs(&self, reply: impl StatfsReply) {
        serve!(self, Op::Statfs, reply, self.do_statfs(), |s| reply
            .statfs(&s))
    }

    pub fn op_setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        reply: impl EmptyReply,
    ) {
        serve!(
            self,
            Op::Setxattr,
            reply,
            self.do_setxattr(ino, name, value, flags)
                .map_err(|e| self.lost(ino, e)),
            |_| reply.ok()
        )
    }

    pub fn op_getxattr(&self, ino: u64, name: &OsStr, size: u32, reply: impl XattrReply) {
        // The work goes inside `serve!`, which times it.
        let body = || {
            if is_control(ino) {
                Err(Errno::ENODATA)
            } else {
                self.do_getxattr(ino, name, size)
                    .map_err(|e| self.lost(ino, e))
            }
        };
        serve!(self, Op::Getxattr, reply, body(), |x| match x {
            XattrAnswer::Size(n) => reply.size(n),
            XattrAnswer::Data(d) => reply.data(&d),
        })
    }

    pub fn op_listxattr(&self, ino: u64, size: u32, reply: impl XattrReply) {
        let body = || {
            if !is_control(ino) {
                self.do_listxattr(ino, size).map_err(|e| self.lost(ino, e))
            } else if size == 0 {
                // No attributes: a size of 0, or an empty list.
                Ok(XattrAnswer::Size(0))
            } else {
                Ok(XattrAnswer::Data(Vec::new()))
            }
        };
        serve!(self, Op::Listxattr, reply, body(), |x| match x {
            XattrAnswer::Size(n) => reply.size(n),
            XattrAnswer::Data(d) => reply.data(&d),
        })
    }

    pub fn op_removexattr(&self, ino: u64, name: &OsStr, reply: impl EmptyReply) {
        serve!(
            self,
            Op::Removexattr,
            reply,
            self.do_removexattr(ino, name)
                .map_err(|e| self.lost(ino, e)),
            |_| reply.ok()
        )
    }

    pub fn op_access(&self, ino: u64, mask: i32, reply: impl EmptyReply) {
        serve!(
            self,
            Op::Access,
            reply,
            if is_control(ino) {
                Ok(())
            } else {
                self.do_access(ino, mask).map_err(|e| self.lost(ino, e))
            },
            |_| reply.ok()
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn op_create(
        &self,
        who: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: impl CreateReply,
    ) {
        let made = Made { who, mode, umask };
        serve!(
            self,
            Op::Create,
            reply,
            self.do_create(made, parent, name, flags),
            |o| self.reply_created(o, flags, reply)
        )
    }

    /// A created file's entry and its open handle.
    fn reply_created(&self, o: super::file::Opened, flags: i32, reply: impl CreateReply) {
        let attr = self.attr(o.inode.nodeid, &o.st);
        let ttl = self
            .ttl_entry_of(&o.inode)
            .min(self.ttl_attr_of(&o.inode, &o.st));
        let generation = o.inode.generation;
        let (fh, backing) = self.register(o, flags);
        reply.created(&attr, ttl, generation, fh, FopenFlags::empty(), backing)
    }

    /// `open(O_TMPFILE)`, counted as a create.
    pub fn op_tmpfile(
        &self,
        who: Caller,
        parent: u64,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: impl CreateReply,
    ) {
        let made = Made { who, mode, umask };
        serve!(
            self,
            Op::Create,
            reply,
            self.do_tmpfile(made, parent, flags),
            |o| self.reply_created(o, flags, reply)
        )
    }

    pub fn op_fallocate(
        &self,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
        reply: impl EmptyReply,
    ) {
        serve!(
            self,
            Op::Fallocate,
            reply,
            self.do_fallocate(fh, offset, length, mode),
            |_| reply.ok()
        )
    }

    pub fn op_lseek(&self, fh: u64, offset: i64, whence: i32, reply: impl LseekReply) {
        serve!(
            self,
            Op::Lseek,
            reply,
            self.do_lseek(fh, offset, whence),
            |o| reply.offset(o)
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn op_copy_file_range(
        &self,
        fh_in: u64,
        offset_in: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
        flags: u32,
        reply: impl WriteReply,
    ) {
        serve!(
            self,
            Op::CopyFileRange,
            reply,
            self.do_copy_file_range(fh_in, offset_in, fh_out, offset_out, len, flags),
            |n| reply.written(n)
        )
    }

    fn readdir_into(&self, fh: u64, offset: u64, reply: &mut impl DirReply) -> Res<()> {
        let h = self.handles.get(fh)?;
        if matches!(h.body, Body::ControlDir) {
            for (i, (ino, kind, name)) in self
                .control_entries()
                .into_iter()
                .enumerate()
                .skip(offset as usize)
            {
                if reply.add(ino, i as u64 + 1, kind, OsStr::new(&name)) {
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
            let name = OsStr::from_bytes(e.name.to_bytes());
            if reply.add(ino, e.off as u64, kind, name) {
                return Ok(None);
            }
            // A plain listing refreshes none of the kernel's names: each is
            // as fresh as the kernel's own copy of it, if it has one. (The
            // kernel lists the rest of a large directory this way once its
            // names were not looked up: counted as stale, such a directory
            // would be listed afresh every time.)
            if is_dot(e) {
                return Ok(Some(u64::MAX));
            }
            Ok(Some(
                self.recently_listed(&dir, e)
                    .map_or(0, |known| known.attrs_sent_ns()),
            ))
        })
    }

    fn readdirplus_into(&self, fh: u64, offset: u64, reply: &mut impl DirPlusReply) -> Res<()> {
        let h = self.handles.get(fh)?;
        if matches!(h.body, Body::ControlDir) {
            let ttl = self.ttl_own();
            for (i, (ino, _kind, name)) in self
                .control_entries()
                .into_iter()
                .enumerate()
                .skip(offset as usize)
            {
                let attr = self.control_attr(if ino == ROOT_ID { CONTROL_DIR_ID } else { ino });
                if reply.add(i as u64 + 1, OsStr::new(&name), ttl, &attr, 0) {
                    break;
                }
            }
            return Ok(());
        }
        let dir = h.inode.clone();
        drop(h);
        let ttl = self.ttl_names(&dir);
        let dfd = dir.dir_fd()?;
        use std::os::fd::AsRawFd;
        let now = sys::coarse_now_ns();
        let sent = |full: bool, since: u64| Ok((!full).then_some(since));
        self.walk_dir(fh, offset, &mut |e| {
            let name = OsStr::from_bytes(e.name.to_bytes());
            if is_dot(e) {
                // The kernel takes no reference on these and ignores their
                // attributes: only the number counts, the same as readdir's.
                let ino = self.d_ino(dir.dev, e.name, e.ino, dir.nodeid);
                if let Some(full) =
                    reply.add_name_only(ino, e.off as u64, FileType::Directory, name)
                {
                    return sent(full, u64::MAX);
                }
                let mut st = sys::zeroed_stat();
                st.st_mode = libc::S_IFDIR;
                let attr = self.attr(ino, &st);
                return sent(reply.add(e.off as u64, name, ttl, &attr, 0), u64::MAX);
            }
            // Listed again while the kernel still has the attributes (rm
            // opens every directory twice): no stat, which on a FUSE or
            // network backing is a round trip per entry.
            if let Some(known) = self.recently_listed(&dir, e)
                && let Some(full) = reply.add_name_only(
                    self.attr_ino(known.nodeid, known.ino),
                    e.off as u64,
                    super::kind_of(known.fmt),
                    name,
                )
            {
                return sent(full, known.attrs_sent_ns());
            }
            let (st, cap, since) = match sys::stat_at(dfd.as_raw_fd(), e.name) {
                Ok(st) => (st, ttl, now),
                // Gone since getdents: skip it like a later readdir would.
                Err(Errno::ENOENT) => return Ok(Some(u64::MAX)),
                // One entry the backing cannot stat (a damaged record on
                // NTFS, say): listed by name as a plain readdir would, the
                // error left for whoever looks it up, the rest of the
                // directory listed. The kernel never had its attributes,
                // so the listing is not kept.
                Err(err) => {
                    tracing::debug!(
                        "listing {}: cannot stat {}: {err:?}",
                        self.inodes.rel_path(&dir),
                        e.name.to_string_lossy()
                    );
                    let ino = self.d_ino(dir.dev, e.name, e.ino, dir.nodeid);
                    let kind = self.dtype_kind(dfd.as_raw_fd(), e);
                    if let Some(full) = reply.add_name_only(ino, e.off as u64, kind, name) {
                        return sent(full, 0);
                    }
                    // Where the transport cannot send a bare name: an entry
                    // with the little getdents knows, expired at once, so
                    // that any use of it asks again and gets the error. Not
                    // for a file open through casafs: made-up attributes
                    // would cut the size the kernel has for it, and with it
                    // its cached pages; left out instead.
                    if self
                        .inodes
                        .get(self.inodes.peek_nodeid(dir.dev, e.ino))
                        .is_ok_and(|i| i.open.lock().handles > 0)
                    {
                        return Ok(Some(0));
                    }
                    let mut st = sys::zeroed_stat();
                    st.st_dev = dir.dev;
                    st.st_ino = e.ino;
                    st.st_nlink = 1;
                    st.st_mode = match u32::from(e.dtype) << 12 {
                        0 => libc::S_IFREG,
                        m => m,
                    };
                    (st, std::time::Duration::ZERO, 0)
                }
            };
            let in_area = dir.in_area || self.routing.is_area_root(&st);
            let inode = self.inodes.remember(&dir, e.name, &st, in_area);
            let attr = self.attr(inode.nodeid, &st);
            let ttl = cap
                .min(self.ttl_entry_of(&inode))
                .min(self.ttl_attr_of(&inode, &st));
            let full = if attr.ino.0 == inode.nodeid {
                reply.add(e.off as u64, name, ttl, &attr, inode.generation)
            } else {
                reply.add_node(
                    inode.nodeid,
                    e.off as u64,
                    name,
                    ttl,
                    &attr,
                    inode.generation,
                )
            };
            if full {
                // Not sent after all: the kernel's copy is as old as it was.
                inode.attrs_not_sent();
                self.inodes
                    .forget(inode.nodeid, 1, |i| self.kernel_let_go(i));
            }
            sent(full, since)
        })
    }
}

fn is_dot(e: &RawEnt<'_>) -> bool {
    matches!(e.name.to_bytes(), b"." | b"..")
}
