//! Directory streams: opendir, readdir(plus), releasedir.
//!
//! Offsets are the backing filesystem's own `d_off` cookies, so a stream
//! resumes exactly where the kernel left it even across concurrent changes.
//! `d_ino` is the same number `stat` reports. The root hides the control
//! directory and the graveyard.

use std::ffi::CStr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use fuser::FileType;
use parking_lot::Mutex;

use super::{CasaFs, is_reserved_root_name, kind_of};
use crate::handle::{Body, DirStream, Handle};
use crate::inode::{Inode, ROOT_ID};
use crate::sys::{self, Errno, Res};

const DIRBUF: usize = 32 * 1024;

/// What the kernel may do with a directory's listing (`listing_cache`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum ListingCache {
    /// Ask casafs every time.
    Off,
    /// Drop what it kept and keep the listing it gets now.
    Fresh,
    /// Use what it kept, if it has it all.
    Keep,
}

impl ListingCache {
    pub(super) fn open_flags(self) -> fuser::FopenFlags {
        use fuser::FopenFlags as F;
        match self {
            ListingCache::Off => F::empty(),
            ListingCache::Fresh => F::FOPEN_CACHE_DIR,
            ListingCache::Keep => F::FOPEN_CACHE_DIR | F::FOPEN_KEEP_CACHE,
        }
    }
}

/// What `emit` says of an entry (see `CasaFs::walk_dir`): `None` when it
/// did not fit the reply, else since when the name is fresh in the
/// kernel's cache (`DirStream::names_fresh_since`).
pub(super) type Emitted = Option<u64>;

/// The stream from `offset` through `emit` (see `CasaFs::walk_dir`); true
/// when it reached the end of the directory.
fn walk_stream(
    ds: &mut DirStream,
    offset: i64,
    is_root: bool,
    emit: &mut dyn FnMut(&RawEnt<'_>) -> Res<Emitted>,
) -> Res<bool> {
    if offset != ds.pos {
        sys::lseek(ds.fd.as_raw_fd(), offset, libc::SEEK_SET)?;
        ds.pos = offset;
        ds.len = 0;
        ds.at = 0;
        // From the top a new pass sends every name again; a jump elsewhere
        // leaves names of the earlier pass unaccounted for.
        ds.names_fresh_since = if offset == 0 { u64::MAX } else { 0 };
    }
    loop {
        if ds.at >= ds.len {
            if ds.buf.len() < DIRBUF {
                ds.buf.resize(DIRBUF, 0);
            }
            let fd = ds.fd.as_raw_fd();
            let n = sys::getdents(fd, &mut ds.buf)?;
            ds.len = n;
            ds.at = 0;
            if n == 0 {
                return Ok(true);
            }
        }
        let at = ds.at;
        let b = &ds.buf[at..ds.len];
        if b.len() < 19 {
            ds.at = ds.len;
            continue;
        }
        let ino = u64::from_ne_bytes(b[0..8].try_into().map_err(|_| Errno::EIO)?);
        let off = i64::from_ne_bytes(b[8..16].try_into().map_err(|_| Errno::EIO)?);
        let reclen = u16::from_ne_bytes([b[16], b[17]]) as usize;
        let dtype = b[18];
        if reclen < 19 || reclen > b.len() {
            return Err(Errno::EIO);
        }
        let name = CStr::from_bytes_until_nul(&b[19..reclen]).map_err(|_| Errno::EIO)?;
        let hidden = is_root && is_reserved_root_name(name);
        if !hidden {
            let Some(fresh_since) = emit(&RawEnt {
                ino,
                off,
                dtype,
                name,
            })?
            else {
                return Ok(false);
            };
            ds.names_fresh_since = ds.names_fresh_since.min(fresh_since);
        }
        ds.at = at + reclen;
        ds.pos = off;
    }
}

/// One raw entry from the backing directory.
pub(super) struct RawEnt<'a> {
    pub ino: u64,
    pub off: i64,
    pub dtype: u8,
    pub name: &'a CStr,
}

impl CasaFs {
    /// Also says what the kernel may do with this directory's listing
    /// (see `listing_cache`).
    pub(super) fn do_opendir(&self, ino: u64) -> Res<(u64, ListingCache)> {
        let inode = self.inodes.get(ino)?;
        self.handles.admit(crate::creds::request_caller().uid)?;
        let fd = inode.anchor()?.open(libc::O_RDONLY | libc::O_DIRECTORY)?;
        self.stats.open_handles.fetch_add(1, Relaxed);
        let cache = self.listing_cache(&inode);
        let fh = self.handles.insert(Handle {
            inode,
            body: Body::Dir(Mutex::new(DirStream {
                fd,
                pos: 0,
                buf: Vec::new(),
                len: 0,
                at: 0,
                names_fresh_since: u64::MAX,
            })),
            passthrough: false,
            writer: false,
            append: false,
            opener: crate::creds::request_caller(),
        });
        Ok((fh, cache))
    }

    /// The kernel can keep a listing it was given (FOPEN_CACHE_DIR) and
    /// hand it out again without asking until the directory changes:
    /// through the mount (the kernel sees every change made there) or
    /// beneath it (its mtime moves, which the kernel checks when a listing
    /// starts from the top once the attributes are older than
    /// attr_timeout, as for any stat; only because casafs asks for
    /// FUSE_AUTO_INVAL_DATA, and only as fine as the backing's mtime). `git
    /// status`, find and rm list the same directories again soon after;
    /// each listing is one to three round trips, and on a FUSE backing a
    /// stat per entry on top.
    ///
    /// A kept listing is only worth it while the names it gave are still
    /// fresh in the kernel: a listing from the cache refreshes no entry, so
    /// `ls -l` after the entry timeout would cost a lookup per name where a
    /// fresh readdirplus costs a round trip per few dozen. Hence: keep it
    /// only while every name of the last complete listing is younger in
    /// the kernel than both timeouts (`DirStream::names_fresh_since`),
    /// otherwise start a new one.
    ///
    /// Never for the areas (casafs puts routed objects there itself, which
    /// the kernel does not see happen), including one made again through
    /// the mount after a removal, nor when an operator asked for no caching
    /// (a zero timeout).
    fn listing_cache(&self, dir: &Inode) -> ListingCache {
        let ttl = self.ttl_attr_in(dir).min(self.ttl_names(dir));
        if dir.in_area || self.routing.is_area_dir(dir) || ttl.is_zero() {
            ListingCache::Off
        } else if dir.listed_within(ttl) {
            ListingCache::Keep
        } else {
            ListingCache::Fresh
        }
    }

    /// Walks the stream from `offset`, calling `emit` for each visible entry
    /// until it returns true (reply buffer full). The stream position only
    /// advances past entries that were emitted. A listing that reaches the
    /// end marks the directory with since when every name the stream
    /// handed out is fresh in the kernel.
    pub(super) fn walk_dir(
        &self,
        fh: u64,
        offset: u64,
        emit: &mut dyn FnMut(&RawEnt<'_>) -> Res<Emitted>,
    ) -> Res<()> {
        let h = self.handles.get(fh)?;
        let Body::Dir(ds) = &h.body else {
            return Err(Errno::EBADF);
        };
        let is_root = h.inode.nodeid == ROOT_ID;
        let mut ds = ds.lock();
        if walk_stream(&mut ds, offset as i64, is_root, emit)? {
            h.inode
                .mark_listed(ds.names_fresh_since.min(sys::coarse_now_ns()));
        }
        Ok(())
    }

    /// The entry's object when the kernel holds it and got its attributes
    /// from us less than `ttl` ago: a listing can leave them out.
    pub(super) fn recently_listed(&self, dir: &Inode, e: &RawEnt<'_>) -> Option<Arc<Inode>> {
        let known = self
            .inodes
            .get(self.inodes.peek_nodeid(dir.dev, e.ino))
            .ok()?;
        // Same device: an entry that is a mount point shows the covered
        // directory's number, not the mounted root's. Same type: a number
        // reused by another kind of object is not the one we know.
        let same_type = e.dtype == libc::DT_UNKNOWN || u32::from(e.dtype) << 12 == known.fmt;
        (known.dev == dir.dev
            && known.ino == e.ino
            && same_type
            && known.attrs_sent_within(self.attr_time(&known)))
        .then_some(known)
    }

    /// The `d_ino` the kernel should see: what `stat` reports for the entry.
    pub(super) fn d_ino(&self, dir_dev: u64, name: &CStr, ino: u64, dir_nodeid: u64) -> u64 {
        match name.to_bytes() {
            b"." if dir_nodeid == ROOT_ID => ino,
            _ => {
                let id = self.inodes.peek_nodeid(dir_dev, ino);
                if id == ROOT_ID { ino } else { id }
            }
        }
    }

    pub(super) fn dtype_kind(&self, dir_fd: i32, e: &RawEnt<'_>) -> FileType {
        match e.dtype {
            libc::DT_DIR => FileType::Directory,
            libc::DT_REG => FileType::RegularFile,
            libc::DT_LNK => FileType::Symlink,
            libc::DT_FIFO => FileType::NamedPipe,
            libc::DT_SOCK => FileType::Socket,
            libc::DT_CHR => FileType::CharDevice,
            libc::DT_BLK => FileType::BlockDevice,
            _ => sys::stat_at(dir_fd, e.name)
                .map(|st| kind_of(st.st_mode))
                .unwrap_or(FileType::RegularFile),
        }
    }

    pub(super) fn do_releasedir(&self, fh: u64) -> Res<()> {
        if self.handles.remove(fh).is_some() {
            self.stats.open_handles.fetch_sub(1, Relaxed);
        }
        Ok(())
    }

    pub(super) fn do_fsyncdir(&self, fh: u64, datasync: bool) -> Res<()> {
        let h = self.handles.get(fh)?;
        sys::fsync(h.fd()?, datasync)
    }
}
