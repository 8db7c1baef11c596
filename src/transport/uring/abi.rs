//! The FUSE wire format as it appears in io_uring ring buffers
//! (`linux/fuse.h`): request and reply structs, opcodes, and the ring
//! entry's header layout. Only what casafs negotiates is here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType};

// Opcodes.
pub const LOOKUP: u32 = 1;
pub const GETATTR: u32 = 3;
pub const SETATTR: u32 = 4;
pub const READLINK: u32 = 5;
pub const SYMLINK: u32 = 6;
pub const MKNOD: u32 = 8;
pub const MKDIR: u32 = 9;
pub const UNLINK: u32 = 10;
pub const RMDIR: u32 = 11;
pub const RENAME: u32 = 12;
pub const LINK: u32 = 13;
pub const OPEN: u32 = 14;
pub const READ: u32 = 15;
pub const WRITE: u32 = 16;
pub const STATFS: u32 = 17;
pub const RELEASE: u32 = 18;
pub const FSYNC: u32 = 20;
pub const SETXATTR: u32 = 21;
pub const GETXATTR: u32 = 22;
pub const LISTXATTR: u32 = 23;
pub const REMOVEXATTR: u32 = 24;
pub const FLUSH: u32 = 25;
pub const OPENDIR: u32 = 27;
pub const READDIR: u32 = 28;
pub const RELEASEDIR: u32 = 29;
pub const FSYNCDIR: u32 = 30;
pub const ACCESS: u32 = 34;
pub const CREATE: u32 = 35;
pub const DESTROY: u32 = 38;
pub const NOTIFY_REPLY: u32 = 41;
pub const FALLOCATE: u32 = 43;
pub const READDIRPLUS: u32 = 44;
pub const RENAME2: u32 = 45;
pub const LSEEK: u32 = 46;
pub const COPY_FILE_RANGE: u32 = 47;
pub const TMPFILE: u32 = 51;

// setattr `valid` bits.
pub const FATTR_MODE: u32 = 1 << 0;
pub const FATTR_UID: u32 = 1 << 1;
pub const FATTR_GID: u32 = 1 << 2;
pub const FATTR_SIZE: u32 = 1 << 3;
pub const FATTR_ATIME: u32 = 1 << 4;
pub const FATTR_MTIME: u32 = 1 << 5;
pub const FATTR_FH: u32 = 1 << 6;
pub const FATTR_ATIME_NOW: u32 = 1 << 7;
pub const FATTR_MTIME_NOW: u32 = 1 << 8;

pub const GETATTR_FH: u32 = 1;
pub const FSYNC_FDATASYNC: u32 = 1;
pub const WRITE_KILL_SUIDGID: u32 = 1 << 2;
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7;

// The ring entry's header buffer (`struct fuse_uring_req_header`):
// in_out (128 bytes: fuse_in_header in, fuse_out_header out), op_in (128
// bytes: the opcode's first argument), then `fuse_uring_ent_in_out`.
pub const HEADER_SIZE: usize = 288;
pub const OP_IN: usize = 128;
pub const ENT_COMMIT_ID: usize = 264;
pub const ENT_PAYLOAD_SZ: usize = 272;

pub const IN_HEADER_SIZE: usize = 40;

/// `struct fuse_in_header`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub total_extlen: u16,
    pub padding: u16,
}

/// `struct fuse_out_header`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct OutHeader {
    pub len: u32,
    pub error: i32,
    pub unique: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct GetattrIn {
    pub getattr_flags: u32,
    pub dummy: u32,
    pub fh: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct SetattrIn {
    pub valid: u32,
    pub padding: u32,
    pub fh: u64,
    pub size: u64,
    pub lock_owner: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    pub atimensec: u32,
    pub mtimensec: u32,
    pub ctimensec: u32,
    pub mode: u32,
    pub unused4: u32,
    pub uid: u32,
    pub gid: u32,
    pub unused5: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct MknodIn {
    pub mode: u32,
    pub rdev: u32,
    pub umask: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct MkdirIn {
    pub mode: u32,
    pub umask: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct RenameIn {
    pub newdir: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Rename2In {
    pub newdir: u64,
    pub flags: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct LinkIn {
    pub oldnodeid: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct OpenIn {
    pub flags: u32,
    pub open_flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct CreateIn {
    pub flags: u32,
    pub mode: u32,
    pub umask: u32,
    pub open_flags: u32,
}

/// `fuse_read_in`, also `fuse_write_in` (same layout, `read_flags` being
/// `write_flags` there).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct IoIn {
    pub fh: u64,
    pub offset: u64,
    pub size: u32,
    pub io_flags: u32,
    pub lock_owner: u64,
    pub flags: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct ReleaseIn {
    pub fh: u64,
    pub flags: u32,
    pub release_flags: u32,
    pub lock_owner: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct FlushIn {
    pub fh: u64,
    pub unused: u32,
    pub padding: u32,
    pub lock_owner: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct FsyncIn {
    pub fh: u64,
    pub fsync_flags: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct SetxattrIn {
    pub size: u32,
    pub flags: u32,
}

/// `fuse_getxattr_in`, also `fuse_access_in` (a mask and padding).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct U32In {
    pub value: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct FallocateIn {
    pub fh: u64,
    pub offset: u64,
    pub length: u64,
    pub mode: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct LseekIn {
    pub fh: u64,
    pub offset: u64,
    pub whence: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct CopyFileRangeIn {
    pub fh_in: u64,
    pub off_in: u64,
    pub nodeid_out: u64,
    pub fh_out: u64,
    pub off_out: u64,
    pub len: u64,
    pub flags: u64,
}

/// `struct fuse_attr`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    pub atimensec: u32,
    pub mtimensec: u32,
    pub ctimensec: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct EntryOut {
    pub nodeid: u64,
    pub generation: u64,
    pub entry_valid: u64,
    pub attr_valid: u64,
    pub entry_valid_nsec: u32,
    pub attr_valid_nsec: u32,
    pub attr: Attr,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct AttrOut {
    pub attr_valid: u64,
    pub attr_valid_nsec: u32,
    pub dummy: u32,
    pub attr: Attr,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct OpenOut {
    pub fh: u64,
    pub open_flags: u32,
    pub backing_id: i32,
}

/// `fuse_write_out`, also `fuse_getxattr_out` (a size and padding).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct SizeOut {
    pub size: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct StatfsOut {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
    pub padding: u32,
    pub spare: [u32; 6],
}

/// The fixed part of `struct fuse_dirent`; the name follows, padded to 8.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Dirent {
    pub ino: u64,
    pub off: u64,
    pub namelen: u32,
    pub typ: u32,
}

/// Marks the plain-old-data structs above: any bit pattern is a valid value,
/// so they may be read from and written to raw ring buffers.
///
/// # Safety
/// Only for `repr(C)` structs of integers without padding bytes.
pub unsafe trait Pod: Copy + Default {}

macro_rules! pod {
    ($($t:ty),*) => {$(unsafe impl Pod for $t {})*};
}

unsafe impl Pod for u32 {}
unsafe impl Pod for u64 {}

pod!(
    InHeader,
    OutHeader,
    GetattrIn,
    SetattrIn,
    MknodIn,
    MkdirIn,
    RenameIn,
    Rename2In,
    LinkIn,
    OpenIn,
    CreateIn,
    IoIn,
    ReleaseIn,
    FlushIn,
    FsyncIn,
    SetxattrIn,
    U32In,
    FallocateIn,
    LseekIn,
    CopyFileRangeIn,
    Attr,
    EntryOut,
    AttrOut,
    OpenOut,
    SizeOut,
    StatfsOut,
    Dirent
);

/// Reads a `T` from the start of `bytes`, zero-filling what is missing (the
/// kernel sends older, shorter versions of some structs).
pub fn read<T: Pod>(bytes: &[u8]) -> T {
    let mut v = T::default();
    let n = bytes.len().min(std::mem::size_of::<T>());
    // SAFETY: T is Pod (any bytes are a valid T) and n is within both.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut v as *mut T).cast::<u8>(), n);
    }
    v
}

/// The bytes of a `T`.
pub fn bytes<T: Pod>(v: &T) -> &[u8] {
    // SAFETY: T is Pod: plain integers without padding.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

pub fn time_parts(t: SystemTime) -> (u64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs(), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            // Wrapping: the earliest time there is, 2^63 seconds before
            // the epoch, is i64::MIN, whose negation wraps back to it.
            let s = (d.as_secs() as i64).wrapping_neg();
            let n = d.subsec_nanos();
            if n == 0 {
                (s as u64, 0)
            } else {
                (s.wrapping_sub(1) as u64, 1_000_000_000 - n)
            }
        }
    }
}

pub fn system_time(secs: u64, nsec: u32) -> SystemTime {
    let secs = secs as i64;
    let nsec = Duration::from_nanos(u64::from(nsec.min(999_999_999)));
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64) + nsec
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nsec
    }
}

pub fn type_bits(kind: FileType) -> u32 {
    match kind {
        FileType::NamedPipe => libc::S_IFIFO,
        FileType::CharDevice => libc::S_IFCHR,
        FileType::BlockDevice => libc::S_IFBLK,
        FileType::Directory => libc::S_IFDIR,
        FileType::RegularFile => libc::S_IFREG,
        FileType::Symlink => libc::S_IFLNK,
        FileType::Socket => libc::S_IFSOCK,
    }
}

pub fn attr(a: &FileAttr) -> Attr {
    let (atime, atimensec) = time_parts(a.atime);
    let (mtime, mtimensec) = time_parts(a.mtime);
    let (ctime, ctimensec) = time_parts(a.ctime);
    Attr {
        ino: a.ino.0,
        size: a.size,
        blocks: a.blocks,
        atime,
        mtime,
        ctime,
        atimensec,
        mtimensec,
        ctimensec,
        mode: type_bits(a.kind) | u32::from(a.perm),
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        // FUSE_ATTR_* bits (submount, DAX) on Linux: none apply.
        flags: 0,
    }
}

pub fn entry_out(
    a: &FileAttr,
    ttl_attr: Duration,
    ttl_entry: Duration,
    generation: u64,
) -> EntryOut {
    EntryOut {
        nodeid: a.ino.0,
        generation,
        entry_valid: ttl_entry.as_secs(),
        attr_valid: ttl_attr.as_secs(),
        entry_valid_nsec: ttl_entry.subsec_nanos(),
        attr_valid_nsec: ttl_attr.subsec_nanos(),
        attr: attr(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_kernel_abi() {
        use std::mem::size_of;
        assert_eq!(size_of::<InHeader>(), IN_HEADER_SIZE);
        assert_eq!(size_of::<OutHeader>(), 16);
        assert_eq!(size_of::<SetattrIn>(), 88);
        assert_eq!(size_of::<IoIn>(), 40);
        assert_eq!(size_of::<CreateIn>(), 16);
        assert_eq!(size_of::<ReleaseIn>(), 24);
        assert_eq!(size_of::<FallocateIn>(), 32);
        assert_eq!(size_of::<CopyFileRangeIn>(), 56);
        assert_eq!(size_of::<Attr>(), 88);
        assert_eq!(size_of::<EntryOut>(), 128);
        assert_eq!(size_of::<AttrOut>(), 104);
        assert_eq!(size_of::<OpenOut>(), 16);
        assert_eq!(size_of::<StatfsOut>(), 80);
        assert_eq!(size_of::<Dirent>(), 24);
    }

    #[test]
    fn times_round_trip_on_both_sides_of_the_epoch() {
        let earliest = [(i64::MIN, 0), (i64::MIN, 1), (i64::MAX, 999_999_999)];
        for (s, n) in [(0i64, 0u32), (1_700_000_000, 5), (-1, 0), (-2, 500_000_000)]
            .into_iter()
            .chain(earliest)
        {
            let t = system_time(s as u64, n);
            assert_eq!(time_parts(t), (s as u64, n));
        }
    }

    #[test]
    fn short_input_is_zero_filled() {
        let v: Rename2In = read(&[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!((v.newdir, v.flags), (1, 0));
    }
}
