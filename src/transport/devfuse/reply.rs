//! fuser's reply objects answer as the filesystem's reply traits say.

use std::ffi::OsStr;
use std::time::Duration;

use fuser::{FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo};

use crate::fs::reply::*;
use crate::sys::Errno;

macro_rules! fuser_error {
    ($($t:ty),*) => {$(
        impl Reply for $t {
            fn error(self, e: Errno) {
                <$t>::error(self, e)
            }
        }
    )*};
}

fuser_error!(
    fuser::ReplyEmpty,
    fuser::ReplyEntry,
    fuser::ReplyAttr,
    fuser::ReplyData,
    fuser::ReplyWrite,
    fuser::ReplyOpen,
    fuser::ReplyCreate,
    fuser::ReplyStatfs,
    fuser::ReplyXattr,
    fuser::ReplyLseek,
    fuser::ReplyDirectory,
    fuser::ReplyDirectoryPlus
);

impl EmptyReply for fuser::ReplyEmpty {
    fn ok(self) {
        fuser::ReplyEmpty::ok(self)
    }
}

impl EntryReply for fuser::ReplyEntry {
    fn entry(self, attr: &FileAttr, ttl_attr: Duration, ttl_entry: Duration, generation: u64) {
        self.entry_with_ttls(&ttl_attr, &ttl_entry, attr, Generation(generation))
    }
}

impl AttrReply for fuser::ReplyAttr {
    fn attr(self, attr: &FileAttr, ttl: Duration) {
        fuser::ReplyAttr::attr(self, &ttl, attr)
    }
}

impl DataReply for fuser::ReplyData {
    fn data(self, data: &[u8]) {
        fuser::ReplyData::data(self, data)
    }
}

impl WriteReply for fuser::ReplyWrite {
    fn written(self, n: u32) {
        fuser::ReplyWrite::written(self, n)
    }
}

impl OpenReply for fuser::ReplyOpen {
    fn opened(self, fh: u64, flags: FopenFlags, backing: Option<u32>) {
        match backing {
            Some(id) => {
                // The id stays owned by `crate::backing::Backing`: the
                // wrapper must not close it.
                let b = unsafe { self.wrap_backing(id) };
                self.opened_passthrough(FileHandle(fh), flags, &b);
                let _ = b.into_raw();
            }
            None => fuser::ReplyOpen::opened(self, FileHandle(fh), flags),
        }
    }
}

impl CreateReply for fuser::ReplyCreate {
    fn created(
        self,
        attr: &FileAttr,
        ttl: Duration,
        generation: u64,
        fh: u64,
        flags: FopenFlags,
        backing: Option<u32>,
    ) {
        let g = Generation(generation);
        match backing {
            Some(id) => {
                let b = unsafe { self.wrap_backing(id) };
                self.created_passthrough(&ttl, attr, g, FileHandle(fh), flags, &b);
                let _ = b.into_raw();
            }
            None => fuser::ReplyCreate::created(self, &ttl, attr, g, FileHandle(fh), flags),
        }
    }
}

impl StatfsReply for fuser::ReplyStatfs {
    fn statfs(self, s: &libc::statvfs) {
        fuser::ReplyStatfs::statfs(
            self,
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_files,
            s.f_ffree,
            s.f_bsize as u32,
            s.f_namemax as u32,
            s.f_frsize as u32,
        )
    }
}

impl XattrReply for fuser::ReplyXattr {
    fn size(self, n: u32) {
        fuser::ReplyXattr::size(self, n)
    }
    fn data(self, data: &[u8]) {
        fuser::ReplyXattr::data(self, data)
    }
}

impl LseekReply for fuser::ReplyLseek {
    fn offset(self, off: i64) {
        fuser::ReplyLseek::offset(self, off)
    }
}

impl DirReply for fuser::ReplyDirectory {
    fn add(&mut self, ino: u64, off: u64, kind: FileType, name: &OsStr) -> bool {
        fuser::ReplyDirectory::add(self, INodeNo(ino), off, kind, name)
    }
    fn ok(self) {
        fuser::ReplyDirectory::ok(self)
    }
}

impl DirPlusReply for fuser::ReplyDirectoryPlus {
    fn add(
        &mut self,
        off: u64,
        name: &OsStr,
        ttl: Duration,
        attr: &FileAttr,
        generation: u64,
    ) -> bool {
        fuser::ReplyDirectoryPlus::add(
            self,
            attr.ino,
            off,
            name,
            &ttl,
            attr,
            Generation(generation),
        )
    }
    /// fuser numbers the entry by its node id, which would show as d_ino 0.
    fn add_name_only(&mut self, _: u64, _: u64, _: FileType, _: &OsStr) -> Option<bool> {
        None
    }
    fn ok(self) {
        fuser::ReplyDirectoryPlus::ok(self)
    }
}
