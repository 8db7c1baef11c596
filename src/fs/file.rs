//! File operations: open/create, the data path (when kernel passthrough is
//! not serving it), and release (whose deferred unlinks unlink.rs completes).

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::CasaFs;
use super::made::Made;
use crate::creds;
use crate::handle::{Body, Handle};
use crate::inode::{Anchor, Inode};
use crate::sys::{self, Errno, Res, cname};

/// A file opened on the backing store, before it is registered.
pub(super) struct Opened {
    pub inode: Arc<Inode>,
    pub fd: OwnedFd,
    pub st: libc::stat,
    /// The inode's handle count already includes this open.
    pub counted: bool,
}

/// The kernel's mark on the open of a program it is about to run
/// (`__FMODE_EXEC`); no open(2) can set it.
const FMODE_EXEC: i32 = 0x20;

/// A program the caller may run but not read (mode `--x`): natively exec
/// needs only the execute permission, which the kernel has checked
/// (`default_permissions`), and the caller never gets the descriptor. casafs
/// opens it as root, through the object's own descriptor, checked to be the
/// inode the kernel meant and a regular file before anything is opened
/// for reading.
fn open_to_execute(inode: &Inode, a: &Anchor) -> Res<OwnedFd> {
    creds::as_root(|| {
        let obj = match a {
            Anchor::Fd(fd) => fd.clone(),
            Anchor::At(dir, name) => Arc::new(sys::open_at(
                dir.as_raw_fd(),
                name,
                libc::O_PATH | libc::O_NOFOLLOW,
                0,
            )?),
        };
        let st = sys::fstat(obj.as_raw_fd())?;
        if !inode.same(&st) || st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Errno::EACCES);
        }
        Anchor::Fd(obj).open(libc::O_RDONLY)
    })
}

impl CasaFs {
    /// Opens an existing file. Its handle is counted before the backing
    /// file is opened: an unlink meanwhile must find it open (and bury it
    /// where that matters) rather than unlink a file casafs is about to
    /// hold open, which ntfs-3g would keep as `.fuse_hidden*`.
    pub(super) fn do_open(&self, ino: u64, flags: i32) -> Res<Opened> {
        let inode = self.inodes.get(ino)?;
        self.handles.admit(creds::request_caller().uid)?;
        inode.open.lock().handles += 1;
        let opened = inode.anchor().and_then(|a| {
            let fd = match a.open(flags) {
                Err(Errno::EACCES) if flags & FMODE_EXEC != 0 => open_to_execute(&inode, &a)?,
                r => r?,
            };
            let st = sys::fstat(fd.as_raw_fd())?;
            if !inode.same(&st) {
                return Err(Errno::ENOENT);
            }
            Ok((fd, st))
        });
        match opened {
            Ok((fd, st)) => Ok(Opened {
                inode,
                fd,
                st,
                counted: true,
            }),
            Err(e) => {
                self.handle_closed(&inode);
                Err(e)
            }
        }
    }

    /// `open(O_TMPFILE)`: a file without a name in `parent`, made as the
    /// caller, which a later link(2) of its descriptor may name. Nothing
    /// is routed: it has no name to route by.
    pub(super) fn do_tmpfile(&self, made: Made, parent: u64, flags: i32) -> Res<Opened> {
        let p = self.inodes.get(parent)?;
        if p.private {
            return Err(Errno::EACCES);
        }
        self.handles.admit(creds::request_caller().uid)?;
        let pfd = p.dir_fd()?;
        let made = Made {
            mode: libc::S_IFREG | (made.mode & 0o7777),
            ..made
        };
        let keep = !(libc::O_CREAT | libc::O_TRUNC | libc::O_TMPFILE | libc::O_NOFOLLOW);
        let fd = sys::open_at(
            pfd.as_raw_fd(),
            c".",
            (flags & keep) | libc::O_TMPFILE,
            made.in_place_mode() & 0o7777,
        )?;
        let st = sys::fstat(fd.as_raw_fd())?;
        // The object's own descriptor is its only way back: it has no name.
        let anchor = sys::open_at(
            libc::AT_FDCWD,
            &sys::proc_path(fd.as_raw_fd()),
            libc::O_PATH,
            0,
        )?;
        let inode = self.inodes.remember_nameless(anchor, &st, p.in_area, true);
        Ok(Opened {
            inode,
            fd,
            st,
            counted: false,
        })
    }

    /// `open(O_CREAT)` of a name the kernel does not know. Routed names,
    /// existing redirects (CASA reopening its log by path) and names that
    /// exist after all (a race) are all handled here.
    pub(super) fn do_create(
        &self,
        made: Made,
        parent: u64,
        name: &OsStr,
        flags: i32,
    ) -> Res<Opened> {
        let p = self.inodes.get(parent)?;
        self.handles.admit(creds::request_caller().uid)?;
        let name = cname(name)?;
        let excl = flags & libc::O_EXCL != 0;
        // The name already exists in the original directory's view.
        let existing = |dir: &Arc<Inode>, n: &CStr| -> Res<Opened> {
            if excl {
                return Err(Errno::EEXIST);
            }
            let dfd = dir.dir_fd()?;
            // A name in an area is casafs's: its object is reached through a
            // descriptor casafs opens, and opened as the caller through it.
            let anchor = if dir.private {
                let obj = creds::as_root(|| {
                    sys::open_at(dfd.as_raw_fd(), n, libc::O_PATH | libc::O_NOFOLLOW, 0)
                })?;
                Anchor::Fd(Arc::new(obj))
            } else {
                Anchor::At(dfd.clone(), n.to_owned())
            };
            let fd = anchor.open(flags & !(libc::O_CREAT | libc::O_EXCL))?;
            let st = sys::fstat(fd.as_raw_fd())?;
            match st.st_mode & libc::S_IFMT {
                libc::S_IFREG => {}
                libc::S_IFDIR => return Err(Errno::EISDIR),
                // Swapped in behind the kernel's back (it saw no name).
                _ => return Err(Errno::ENXIO),
            }
            let in_area = dir.in_area || self.routing.is_area_root(&st);
            let inode = self.inodes.remember(dir, n, &st, in_area);
            Ok(Opened {
                inode,
                fd,
                st,
                counted: false,
            })
        };
        let loc = self.locate(&p, &name)?;
        if loc.redirect.is_some() {
            return existing(&loc.dir, &loc.name);
        }
        let mk = |d: RawFd, n: &CStr, mode: u32| {
            sys::open_at(
                d,
                n,
                flags | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                mode & 0o7777,
            )
        };
        let made = Made {
            mode: libc::S_IFREG | (made.mode & 0o7777),
            ..made
        };
        match self.new_entry(Some(made), &p, &name, false, &mk) {
            Ok((inode, st, fd)) => Ok(Opened {
                inode,
                fd,
                st,
                counted: false,
            }),
            // Where it is now: another host may have just routed it.
            Err(Errno::EEXIST) if !excl => {
                let loc = self.locate(&p, &name)?;
                existing(&loc.dir, &loc.name)
            }
            Err(e) => Err(e),
        }
    }

    /// Registers an open file: counts the handle on its inode and, when
    /// kernel passthrough is on, hands back the inode's backing id to reply
    /// with (one per inode while any handle is open).
    pub(super) fn register(&self, o: Opened, flags: i32) -> (u64, Option<u32>) {
        let is_reg = o.st.st_mode & libc::S_IFMT == libc::S_IFREG;
        let mut backing = None;
        let writer;
        {
            let mut open = o.inode.open.lock();
            if !o.counted {
                open.handles += 1;
            }
            if is_reg && self.passthrough.load(Relaxed) {
                if let Some(b) = &open.backing {
                    backing = Some(b.id());
                } else if holds_privileges(&o.st) {
                    // Passthrough writes run with the registrar's rights,
                    // which are nobody's (`creds::as_registrar`): writes to
                    // a set-ID file go through casafs as their writer, so
                    // that an unprivileged one clears the bits and root's
                    // keeps them, as natively.
                    tracing::debug!("no passthrough for a set-ID file");
                } else if let Some(dev) = self.dev.get() {
                    let fd = o.fd.as_raw_fd();
                    match creds::as_registrar(|| crate::backing::Backing::open(dev, fd)) {
                        Ok(b) => {
                            backing = Some(b.id());
                            open.backing = Some(Arc::new(b));
                        }
                        Err(e) => {
                            tracing::debug!("passthrough unavailable for this file: {e}");
                        }
                    }
                }
            }
            // Only a readable descriptor can be mapped (mmap(2): EACCES
            // otherwise): files written through write-only opens, as
            // unpacked or copied ones, are unlinked at once.
            open.mapped |= backing.is_some() && flags & libc::O_ACCMODE != libc::O_WRONLY;
            let pid = creds::request_caller().pid;
            writer = backing.is_some() && flags & libc::O_ACCMODE != libc::O_RDONLY && pid != 0;
            if writer {
                o.inode.last_writer.store(pid, Relaxed);
                open.writers += 1;
            }
        }
        self.stats.open_handles.fetch_add(1, Relaxed);
        if backing.is_some() {
            self.stats.passthrough_opens.fetch_add(1, Relaxed);
        }
        let fh = self.handles.insert(Handle {
            inode: o.inode,
            body: Body::File(o.fd),
            passthrough: backing.is_some(),
            append: flags & libc::O_APPEND != 0,
            writer,
            opener: crate::creds::request_caller(),
        });
        (fh, backing)
    }

    pub(super) fn do_read(&self, fh: u64, off: u64, size: u32) -> Res<Vec<u8>> {
        let h = self.handles.get(fh)?;
        if let Body::Control { data, .. } = &h.body {
            let start = (off as usize).min(data.len());
            let end = start.saturating_add(size as usize).min(data.len());
            return Ok(data[start..end].to_vec());
        }
        let fd = h.fd()?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            let n = sys::pread(fd, &mut buf[done..], off + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        self.stats.bytes_read.fetch_add(done as u64, Relaxed);
        Ok(buf)
    }

    /// A write through casafs runs as the writer: the backing clears set-ID
    /// bits for an unprivileged one, as it does natively.
    pub(super) fn do_write(&self, fh: u64, off: u64, data: &[u8]) -> Res<u32> {
        let h = self.handles.get(fh)?;
        let fd = h.fd()?;
        // The kernel writes back a shared mapping's pages on its own
        // behalf (no caller: pid 0): as the one who opened the file, who
        // made them dirty, never as root.
        if creds::request_caller().pid == 0 && !creds::act_as(&h.opener) {
            return Err(Errno::EIO);
        }
        let n = if h.append {
            // The backing descriptor is O_APPEND: the backing filesystem
            // picks the end atomically, also against other writers.
            sys::write(fd, data)?
        } else {
            sys::pwrite(fd, data, off)?
        };
        self.stats.bytes_written.fetch_add(n as u64, Relaxed);
        Ok(n as u32)
    }

    pub(super) fn do_flush(&self, fh: u64) -> Res<()> {
        let h = self.handles.get(fh)?;
        let Ok(fd) = h.fd() else {
            return Ok(());
        };
        // close(dup(fd)) gives the backing filesystem the close it would
        // see natively (NFS flushes on close and reports errors there).
        let d = unsafe { libc::dup(fd) };
        if d < 0 {
            return Err(sys::last_errno());
        }
        if unsafe { libc::close(d) } < 0 {
            return Err(sys::last_errno());
        }
        Ok(())
    }

    /// Drops a handle. On the inode's last handle the passthrough backing id
    /// is closed and buried names are deleted, in that order: the backing
    /// filesystem must see no open file when the name goes.
    pub(super) fn do_release(&self, fh: u64) -> Res<()> {
        let Some(h) = self.handles.remove(fh) else {
            return Err(Errno::EBADF);
        };
        self.stats.open_handles.fetch_sub(1, Relaxed);
        match &h.body {
            Body::Control { reader, data } => {
                self.control.closed(*reader, data.len());
                return Ok(());
            }
            Body::ControlDir => return Ok(()),
            _ => {}
        }
        let inode = h.inode.clone();
        let is_file = matches!(h.body, Body::File(_));
        if h.writer {
            let mut open = inode.open.lock();
            open.writers = open.writers.saturating_sub(1);
            inode.closed_at.store(sys::coarse_now_ns(), Relaxed);
        }
        drop(h);
        if is_file {
            self.handle_closed(&inode);
        }
        Ok(())
    }

    pub(super) fn do_fsync(&self, fh: u64, datasync: bool) -> Res<()> {
        let h = self.handles.get(fh)?;
        crate::fault::fsync_starts();
        sys::fsync(h.fd()?, datasync)
    }

    pub(super) fn do_fallocate(&self, fh: u64, off: u64, len: u64, mode: i32) -> Res<()> {
        let h = self.handles.get(fh)?;
        sys::fallocate(h.fd()?, mode, off, len)
    }

    pub(super) fn do_lseek(&self, fh: u64, off: i64, whence: i32) -> Res<i64> {
        let h = self.handles.get(fh)?;
        sys::lseek(h.fd()?, off, whence)
    }

    pub(super) fn do_copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
        flags: u32,
    ) -> Res<u32> {
        let hi = self.handles.get(fh_in)?;
        let ho = self.handles.get(fh_out)?;
        // A short copy is a complete answer (callers loop, as for any
        // copy_file_range): one request never holds a serving thread for
        // gigabytes.
        let len = len.min(COPY_CHUNK);
        let n = sys::copy_file_range(hi.fd()?, off_in, ho.fd()?, off_out, len, flags)?;
        Ok(n as u32)
    }
}

/// The most one copy_file_range request copies.
const COPY_CHUNK: u64 = 16 << 20;

/// Whether the file has set-ID bits, which a write keeps or clears by
/// who writes.
fn holds_privileges(st: &libc::stat) -> bool {
    st.st_mode & (libc::S_ISUID | libc::S_ISGID) != 0
}
