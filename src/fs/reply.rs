//! What a request handler answers, independent of how the answer reaches
//! the kernel. The handlers in `ops.rs` are written once against these
//! traits; each transport's replies (`crate::transport`) implement them.

use std::ffi::OsStr;
use std::time::Duration;

use fuser::{FileAttr, FileType, FopenFlags};

use crate::sys::Errno;

pub trait Reply: Sized {
    fn error(self, e: Errno);
}

pub trait EmptyReply: Reply {
    fn ok(self);
}

pub trait EntryReply: Reply {
    fn entry(self, attr: &FileAttr, ttl_attr: Duration, ttl_entry: Duration, generation: u64);

    /// An entry whose node id is not its inode number (the root reached as
    /// a parent, a directory seen through an area's path): `attr` keeps the
    /// inode number. Where the transport cannot tell the two apart, the
    /// attributes carry the node id until they are next asked for.
    fn entry_node(
        self,
        nodeid: u64,
        attr: &FileAttr,
        ttl_attr: Duration,
        ttl_entry: Duration,
        generation: u64,
    ) where
        Self: Sized,
    {
        let mut a = *attr;
        a.ino = fuser::INodeNo(nodeid);
        self.entry(&a, ttl_attr, ttl_entry, generation)
    }
}

pub trait AttrReply: Reply {
    fn attr(self, attr: &FileAttr, ttl: Duration);
}

pub trait DataReply: Reply {
    fn data(self, data: &[u8]);
}

pub trait WriteReply: Reply {
    fn written(self, n: u32);
}

/// `backing` is a passthrough backing id (`crate::backing`).
pub trait OpenReply: Reply {
    fn opened(self, fh: u64, flags: FopenFlags, backing: Option<u32>);
}

pub trait CreateReply: Reply {
    fn created(
        self,
        attr: &FileAttr,
        ttl: Duration,
        generation: u64,
        fh: u64,
        flags: FopenFlags,
        backing: Option<u32>,
    );
}

pub trait StatfsReply: Reply {
    fn statfs(self, s: &libc::statvfs);
}

pub trait XattrReply: Reply {
    fn size(self, n: u32);
    fn data(self, data: &[u8]);
}

pub trait LseekReply: Reply {
    fn offset(self, off: i64);
}

/// A directory listing being filled; `add` answers true once full.
pub trait DirReply: Reply {
    fn add(&mut self, ino: u64, off: u64, kind: FileType, name: &OsStr) -> bool;
    fn ok(self);
}

/// Entries are numbered by their attributes' `ino`.
pub trait DirPlusReply: Reply {
    fn add(
        &mut self,
        off: u64,
        name: &OsStr,
        ttl: Duration,
        attr: &FileAttr,
        generation: u64,
    ) -> bool;
    /// An entry without attributes (node id 0: the kernel lists the name
    /// and leaves its caches as they are, as for a plain readdir). `None`
    /// where the transport cannot say so: the caller adds a full entry.
    fn add_name_only(&mut self, ino: u64, off: u64, kind: FileType, name: &OsStr) -> Option<bool>;
    /// `add` for an entry whose node id is not its inode number (as
    /// `EntryReply::entry_node`).
    fn add_node(
        &mut self,
        nodeid: u64,
        off: u64,
        name: &OsStr,
        ttl: Duration,
        attr: &FileAttr,
        generation: u64,
    ) -> bool {
        let mut a = *attr;
        a.ino = fuser::INodeNo(nodeid);
        self.add(off, name, ttl, &a, generation)
    }
    fn ok(self);
}
