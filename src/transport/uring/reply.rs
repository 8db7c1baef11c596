//! Replies written straight into a ring entry's payload buffer. The queue
//! thread then commits the entry with the error and length recorded here.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use fuser::{FileAttr, FileType, FopenFlags};

use super::abi::{self, Pod};
use crate::fs::reply::*;
use crate::sys::Errno;

/// What the handler answered: a negative errno or 0, and the reply length.
pub struct Answer {
    pub error: i32,
    pub len: usize,
}

impl Answer {
    /// Until a handler answers: a bug shows up as EIO, never as a hang.
    pub fn unanswered() -> Answer {
        Answer {
            error: -libc::EIO,
            len: 0,
        }
    }
}

/// One reply into a buffer of `cap` bytes. `limit` is the size the kernel
/// asked for where it asks for one (reads, listings, xattrs).
pub struct RingReply<'a> {
    out: *mut u8,
    cap: usize,
    limit: usize,
    used: usize,
    ans: &'a mut Answer,
}

impl<'a> RingReply<'a> {
    /// # Safety
    /// `out` must be valid for writes of `cap` bytes for the reply's life.
    pub unsafe fn new(out: *mut u8, cap: usize, limit: usize, ans: &'a mut Answer) -> Self {
        RingReply {
            out,
            cap,
            limit: limit.min(cap),
            used: 0,
            ans,
        }
    }

    fn put(&mut self, at: usize, b: &[u8]) -> bool {
        if at + b.len() > self.cap {
            return false;
        }
        // SAFETY: in bounds of the buffer (checked above), see `new`.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), self.out.add(at), b.len()) };
        true
    }

    fn answer(mut self, parts: &[&[u8]]) {
        let mut at = 0;
        for p in parts {
            if !self.put(at, p) {
                self.ans.error = -libc::EIO;
                self.ans.len = 0;
                return;
            }
            at += p.len();
        }
        self.ans.error = 0;
        self.ans.len = at;
    }

    fn answer_pod<T: Pod>(self, v: &T) {
        self.answer(&[abi::bytes(v)])
    }

    /// A directory entry, padded to 8 bytes; false when it does not fit.
    fn dirent(&mut self, head: &[&[u8]], name: &[u8]) -> bool {
        let fixed: usize = head.iter().map(|h| h.len()).sum();
        let len = (fixed + name.len() + 7) & !7;
        if self.used + len > self.limit {
            return false;
        }
        let mut at = self.used;
        for h in head {
            self.put(at, h);
            at += h.len();
        }
        self.put(at, name);
        at += name.len();
        while at < self.used + len {
            self.put(at, &[0]);
            at += 1;
        }
        self.used += len;
        true
    }
}

impl Reply for RingReply<'_> {
    fn error(self, e: Errno) {
        self.ans.error = -e.code();
        self.ans.len = 0;
    }
}

impl EmptyReply for RingReply<'_> {
    fn ok(self) {
        self.answer(&[])
    }
}

impl EntryReply for RingReply<'_> {
    fn entry(self, attr: &FileAttr, ttl_attr: Duration, ttl_entry: Duration, generation: u64) {
        self.answer_pod(&abi::entry_out(attr, ttl_attr, ttl_entry, generation))
    }

    fn entry_node(
        self,
        nodeid: u64,
        attr: &FileAttr,
        ttl_attr: Duration,
        ttl_entry: Duration,
        generation: u64,
    ) {
        let mut out = abi::entry_out(attr, ttl_attr, ttl_entry, generation);
        out.nodeid = nodeid;
        self.answer_pod(&out)
    }
}

impl AttrReply for RingReply<'_> {
    fn attr(self, attr: &FileAttr, ttl: Duration) {
        self.answer_pod(&abi::AttrOut {
            attr_valid: ttl.as_secs(),
            attr_valid_nsec: ttl.subsec_nanos(),
            dummy: 0,
            attr: abi::attr(attr),
        })
    }
}

impl DataReply for RingReply<'_> {
    fn data(self, data: &[u8]) {
        self.answer(&[data])
    }
}

impl WriteReply for RingReply<'_> {
    fn written(self, n: u32) {
        self.answer_pod(&abi::SizeOut {
            size: n,
            padding: 0,
        })
    }
}

fn open_out(fh: u64, flags: FopenFlags, backing: Option<u32>) -> abi::OpenOut {
    abi::OpenOut {
        fh,
        open_flags: flags.bits() | backing.map_or(0, |_| abi::FOPEN_PASSTHROUGH),
        backing_id: backing.map_or(0, |b| b as i32),
    }
}

impl OpenReply for RingReply<'_> {
    fn opened(self, fh: u64, flags: FopenFlags, backing: Option<u32>) {
        self.answer_pod(&open_out(fh, flags, backing))
    }
}

impl CreateReply for RingReply<'_> {
    fn created(
        self,
        attr: &FileAttr,
        ttl: Duration,
        generation: u64,
        fh: u64,
        flags: FopenFlags,
        backing: Option<u32>,
    ) {
        let e = abi::entry_out(attr, ttl, ttl, generation);
        let o = open_out(fh, flags, backing);
        self.answer(&[abi::bytes(&e), abi::bytes(&o)])
    }
}

impl StatfsReply for RingReply<'_> {
    fn statfs(self, s: &libc::statvfs) {
        self.answer_pod(&abi::StatfsOut {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namelen: s.f_namemax as u32,
            frsize: s.f_frsize as u32,
            padding: 0,
            spare: [0; 6],
        })
    }
}

impl XattrReply for RingReply<'_> {
    fn size(self, n: u32) {
        self.answer_pod(&abi::SizeOut {
            size: n,
            padding: 0,
        })
    }
    fn data(self, data: &[u8]) {
        if data.len() > self.limit {
            return Reply::error(self, Errno::ERANGE);
        }
        self.answer(&[data])
    }
}

impl LseekReply for RingReply<'_> {
    fn offset(self, off: i64) {
        self.answer(&[&off.to_ne_bytes()])
    }
}

impl DirReply for RingReply<'_> {
    fn add(&mut self, ino: u64, off: u64, kind: FileType, name: &OsStr) -> bool {
        let name = name.as_bytes();
        let d = abi::Dirent {
            ino,
            off,
            namelen: name.len() as u32,
            typ: abi::type_bits(kind) >> 12,
        };
        !self.dirent(&[abi::bytes(&d)], name)
    }
    fn ok(self) {
        let n = self.used;
        self.ans.error = 0;
        self.ans.len = n;
    }
}

impl DirPlusReply for RingReply<'_> {
    fn add(
        &mut self,
        off: u64,
        name: &OsStr,
        ttl: Duration,
        attr: &FileAttr,
        generation: u64,
    ) -> bool {
        self.add_node(attr.ino.0, off, name, ttl, attr, generation)
    }
    fn add_node(
        &mut self,
        nodeid: u64,
        off: u64,
        name: &OsStr,
        ttl: Duration,
        attr: &FileAttr,
        generation: u64,
    ) -> bool {
        let name = name.as_bytes();
        let mut e = abi::entry_out(attr, ttl, ttl, generation);
        e.nodeid = nodeid;
        let d = abi::Dirent {
            ino: attr.ino.0,
            off,
            namelen: name.len() as u32,
            typ: abi::type_bits(attr.kind) >> 12,
        };
        !self.dirent(&[abi::bytes(&e), abi::bytes(&d)], name)
    }
    fn add_name_only(&mut self, ino: u64, off: u64, kind: FileType, name: &OsStr) -> Option<bool> {
        let name = name.as_bytes();
        let e = abi::EntryOut::default();
        let d = abi::Dirent {
            ino,
            off,
            namelen: name.len() as u32,
            typ: abi::type_bits(kind) >> 12,
        };
        Some(!self.dirent(&[abi::bytes(&e), abi::bytes(&d)], name))
    }
    fn ok(self) {
        let n = self.used;
        self.ans.error = 0;
        self.ans.len = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr() -> FileAttr {
        FileAttr {
            ino: fuser::INodeNo(7),
            size: 3,
            blocks: 1,
            atime: std::time::UNIX_EPOCH,
            mtime: std::time::UNIX_EPOCH,
            ctime: std::time::UNIX_EPOCH,
            crtime: std::time::UNIX_EPOCH,
            kind: FileType::RegularFile,
            perm: 0o644,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    #[test]
    fn listings_stop_at_the_size_asked_for_and_pad_names() {
        let mut buf = vec![0u8; 4096];
        let mut ans = Answer::unanswered();
        let mut r = unsafe { RingReply::new(buf.as_mut_ptr(), buf.len(), 64, &mut ans) };
        // 24 + 5 -> 32 bytes each: two fit in 64, the third does not.
        assert!(!DirReply::add(
            &mut r,
            1,
            1,
            FileType::RegularFile,
            OsStr::new("aaaaa")
        ));
        assert!(!DirReply::add(
            &mut r,
            2,
            2,
            FileType::Directory,
            OsStr::new("bbbbb")
        ));
        assert!(DirReply::add(
            &mut r,
            3,
            3,
            FileType::Directory,
            OsStr::new("c")
        ));
        DirReply::ok(r);
        assert_eq!((ans.error, ans.len), (0, 64));
        assert_eq!(&buf[24..29], b"aaaaa");
        assert_eq!(&buf[29..32], &[0, 0, 0]);
        let d: abi::Dirent = abi::read(&buf[32..]);
        assert_eq!((d.ino, d.namelen, d.typ), (2, 5, libc::DT_DIR as u32));
    }

    #[test]
    fn create_answers_entry_and_open_out() {
        let mut buf = vec![0u8; 4096];
        let mut ans = Answer::unanswered();
        let r = unsafe { RingReply::new(buf.as_mut_ptr(), buf.len(), 0, &mut ans) };
        r.created(
            &attr(),
            Duration::from_secs(1),
            3,
            9,
            FopenFlags::empty(),
            Some(4),
        );
        assert_eq!((ans.error, ans.len), (0, 144));
        let e: abi::EntryOut = abi::read(&buf);
        assert_eq!((e.nodeid, e.generation, e.entry_valid), (7, 3, 1));
        assert_eq!(e.attr.mode, libc::S_IFREG | 0o644);
        let o: abi::OpenOut = abi::read(&buf[128..]);
        assert_eq!(
            (o.fh, o.open_flags, o.backing_id),
            (9, abi::FOPEN_PASSTHROUGH, 4)
        );
    }

    #[test]
    fn errors_are_negative_errnos_without_payload() {
        let mut buf = vec![0u8; 16];
        let mut ans = Answer::unanswered();
        let r = unsafe { RingReply::new(buf.as_mut_ptr(), buf.len(), 0, &mut ans) };
        Reply::error(r, Errno::ENOENT);
        assert_eq!((ans.error, ans.len), (-libc::ENOENT, 0));
    }

    #[test]
    fn a_reply_larger_than_the_buffer_becomes_eio() {
        let mut buf = vec![0u8; 16];
        let mut ans = Answer::unanswered();
        let r = unsafe { RingReply::new(buf.as_mut_ptr(), buf.len(), 0, &mut ans) };
        r.entry(&attr(), Duration::ZERO, Duration::ZERO, 0);
        assert_eq!((ans.error, ans.len), (-libc::EIO, 0));
    }
}
