//! Thin, safe wrappers over the `*at()` system calls casafs is built on.
//!
//! Every call works relative to a directory descriptor the daemon holds and
//! never follows a symlink in the last component unless the caller asks, so a
//! link planted in the backing tree cannot redirect an operation elsewhere.
//! Failures come back as the `Errno` the kernel gave, ready for the reply.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

pub use fuser::Errno;

pub type Res<T> = Result<T, Errno>;

/// The errno of the last failed libc call on this thread.
pub fn last_errno() -> Errno {
    Errno::from_i32(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

fn check(rc: libc::c_int) -> Res<libc::c_int> {
    if rc < 0 { Err(last_errno()) } else { Ok(rc) }
}

fn check_size(rc: libc::ssize_t) -> Res<usize> {
    if rc < 0 {
        Err(last_errno())
    } else {
        Ok(rc as usize)
    }
}

/// A file name from the kernel as a C string; names never contain NUL, but a
/// request that claims otherwise gets EINVAL rather than a panic.
pub fn cname(name: &OsStr) -> Res<CString> {
    CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

pub fn cpath(p: &std::path::Path) -> Res<CString> {
    cname(p.as_os_str())
}

/// `/proc/self/fd/N`: reopens an `O_PATH` descriptor with real access modes.
pub fn proc_path(fd: RawFd) -> CString {
    // An integer never contains NUL.
    CString::new(format!("/proc/self/fd/{fd}")).unwrap_or_default()
}

/// `/proc/self/fd/N/name`: a path for the few calls that have no `*at()` form
/// (the `l*xattr` family), still anchored on a descriptor we hold.
pub fn proc_child_path(dir: RawFd, name: &CStr) -> Res<CString> {
    let mut v = format!("/proc/self/fd/{dir}/").into_bytes();
    v.extend_from_slice(name.to_bytes());
    CString::new(v).map_err(|_| Errno::EINVAL)
}

/// The `*xattrat(2)` calls (Linux 6.13) on `name` in `dir`, never following a
/// final symlink: the answers the `l*xattr` calls give on `proc_child_path`,
/// without the walk through /proc (getxattr 1.8 against 4.5 µs here, and the
/// kernel asks for security.capability before the first write of every
/// file). Each returns `None` where its call is missing (an old kernel, or a
/// seccomp filter that does not know it), and the caller takes the /proc
/// path instead.
pub(crate) mod xattr_at {
    use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

    use super::*;

    // One number on every architecture since the tables were unified (5.1).
    pub const SET: usize = 0;
    pub const GET: usize = 1;
    pub const LIST: usize = 2;
    pub const REMOVE: usize = 3;
    const NR: [libc::c_long; 4] = [463, 464, 465, 466];

    const UNKNOWN: u8 = 0;
    const PRESENT: u8 = 1;
    const MISSING: u8 = 2;
    static STATE: [AtomicU8; 4] = [const { AtomicU8::new(UNKNOWN) }; 4];

    /// The `struct xattr_args` of set/getxattrat.
    #[repr(C)]
    pub struct Args {
        pub value: u64,
        pub size: u32,
        pub flags: u32,
    }

    /// Whether call `op` exists, found out once per call: asked with a bad
    /// descriptor, a kernel that has it answers EBADF (or EINVAL, EFAULT),
    /// while a missing call or a seccomp filter answers something else
    /// (ENOSYS, EPERM, whatever the filter chose). An error from a real
    /// call is never mistaken for a missing one, so an EPERM a filesystem
    /// gives (an immutable file, trusted.* for a non-root daemon) does not
    /// turn the fast path off.
    pub fn present(op: usize) -> bool {
        match STATE[op].load(Relaxed) {
            PRESENT => return true,
            MISSING => return false,
            _ => {}
        }
        let mut args = Args {
            value: 0,
            size: 0,
            flags: 0,
        };
        let args_ptr = &mut args as *mut Args;
        let size = std::mem::size_of::<Args>();
        let (x, bad) = (c"x".as_ptr(), -1 as libc::c_int);
        let rc = unsafe {
            match op {
                SET | GET => libc::syscall(NR[op], bad, x, 0, x, args_ptr, size),
                LIST => libc::syscall(NR[op], bad, x, 0, std::ptr::null_mut::<u8>(), 0usize),
                _ => libc::syscall(NR[op], bad, x, 0, x),
            }
        };
        let missing =
            rc >= 0 || !matches!(last_errno(), Errno::EBADF | Errno::EINVAL | Errno::EFAULT);
        STATE[op].store(if missing { MISSING } else { PRESENT }, Relaxed);
        !missing
    }

    /// Makes every call look missing, as on a kernel before 6.13.
    #[cfg(test)]
    pub fn pretend_missing() {
        for s in &STATE {
            s.store(MISSING, Relaxed);
        }
    }

    /// Call `op` on `name` in `dir`, never following a final symlink, with
    /// its own arguments after that (a call ignores the ones it lacks).
    pub fn run(op: usize, dir: RawFd, name: &CStr, args: [usize; 3]) -> Option<Res<usize>> {
        if !present(op) {
            return None;
        }
        let [a, b, c] = args;
        let rc = unsafe {
            libc::syscall(
                NR[op],
                dir,
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                a,
                b,
                c,
            )
        };
        Some(if rc < 0 {
            Err(last_errno())
        } else {
            Ok(rc as usize)
        })
    }

    /// The `struct xattr_args` for a value buffer, and the size the call
    /// takes with it.
    pub fn args(value: *const u8, len: usize, flags: i32) -> (Args, usize) {
        let a = Args {
            value: value as u64,
            size: u32::try_from(len).unwrap_or(u32::MAX),
            flags: flags as u32,
        };
        (a, std::mem::size_of::<Args>())
    }
}

pub fn getxattr_at(dir: RawFd, name: &CStr, attr: &CStr, buf: &mut [u8]) -> Option<Res<usize>> {
    use xattr_at::*;
    let (mut a, size) = args(buf.as_mut_ptr(), buf.len(), 0);
    let ptr = &mut a as *mut Args as usize;
    run(GET, dir, name, [attr.as_ptr() as usize, ptr, size])
}

pub fn setxattr_at(
    dir: RawFd,
    name: &CStr,
    attr: &CStr,
    val: &[u8],
    flags: i32,
) -> Option<Res<()>> {
    use xattr_at::*;
    let (a, size) = args(val.as_ptr(), val.len(), flags);
    let ptr = &a as *const Args as usize;
    run(SET, dir, name, [attr.as_ptr() as usize, ptr, size]).map(|r| r.map(drop))
}

pub fn listxattr_at(dir: RawFd, name: &CStr, buf: &mut [u8]) -> Option<Res<usize>> {
    use xattr_at::*;
    run(LIST, dir, name, [buf.as_mut_ptr() as usize, buf.len(), 0])
}

pub fn removexattr_at(dir: RawFd, name: &CStr, attr: &CStr) -> Option<Res<()>> {
    use xattr_at::*;
    run(REMOVE, dir, name, [attr.as_ptr() as usize, 0, 0]).map(|r| r.map(drop))
}

pub fn open_at(dir: RawFd, name: &CStr, flags: i32, mode: u32) -> Res<OwnedFd> {
    let fd = check(unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub const RESOLVE_NO_XDEV: u64 = 0x01;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;

/// `openat2(2)` with the `resolve` restrictions.
pub fn openat2(dir: RawFd, path: &CStr, flags: i32, mode: u32, resolve: u64) -> Res<OwnedFd> {
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: mode as u64,
        resolve,
    };
    let rc = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if rc < 0 {
        return Err(last_errno());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
}

/// Opens a path strictly beneath `dir` with `openat2(RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS)`: no component can be a planted symlink nor `..`
/// out of it. Falls back to plain `openat` on kernels without openat2.
pub fn open_beneath(dir: RawFd, path: &CStr, flags: i32, mode: u32) -> Res<OwnedFd> {
    let resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_BENEATH;
    match openat2(dir, path, flags, mode, resolve) {
        Err(Errno::ENOSYS) => open_at(dir, path, flags | libc::O_NOFOLLOW, mode),
        r => r,
    }
}

pub fn stat_at(dir: RawFd, name: &CStr) -> Res<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

/// `stat_at` answered from the kernel's cache where the backing filesystem
/// keeps one of its own (FUSE, network filesystems: `AT_STATX_DONT_SYNC`),
/// so that it costs no round trip to ntfs-3g or a server; local filesystems
/// ignore the flag. For when only which object a name holds matters (type,
/// device and inode number cannot go stale), or when the backing's reply to
/// a change this daemon just made has refreshed that cache.
pub fn stat_cached_at(dir: RawFd, name: &CStr) -> Res<libc::stat> {
    stat_flags(
        dir,
        name,
        libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_DONT_SYNC,
    )
}

/// `stat_at` that asks the backing filesystem itself, past any cache of
/// its own (`AT_STATX_FORCE_SYNC`).
pub fn stat_fresh_at(dir: RawFd, name: &CStr) -> Res<libc::stat> {
    stat_flags(
        dir,
        name,
        libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_FORCE_SYNC,
    )
}

/// `fstat`, answered from the backing's cache as `stat_cached_at`. Through
/// statx: the kernel turns an fstatat of an empty path into a plain fstat,
/// which drops `AT_STATX_DONT_SYNC` (a FUSE backing is asked again).
pub fn fstat_cached(fd: RawFd) -> Res<libc::stat> {
    let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_DONT_SYNC;
    let mut x: libc::statx = unsafe { std::mem::zeroed() };
    check(unsafe { libc::statx(fd, c"".as_ptr(), flags, libc::STATX_BASIC_STATS, &mut x) })?;
    let mut st = zeroed_stat();
    st.st_dev = libc::makedev(x.stx_dev_major, x.stx_dev_minor);
    st.st_ino = x.stx_ino;
    st.st_nlink = x.stx_nlink as _;
    st.st_mode = u32::from(x.stx_mode);
    st.st_uid = x.stx_uid;
    st.st_gid = x.stx_gid;
    st.st_rdev = libc::makedev(x.stx_rdev_major, x.stx_rdev_minor);
    st.st_size = x.stx_size as _;
    st.st_blksize = x.stx_blksize as _;
    st.st_blocks = x.stx_blocks as _;
    st.st_atime = x.stx_atime.tv_sec;
    st.st_atime_nsec = x.stx_atime.tv_nsec as _;
    st.st_mtime = x.stx_mtime.tv_sec;
    st.st_mtime_nsec = x.stx_mtime.tv_nsec as _;
    st.st_ctime = x.stx_ctime.tv_sec;
    st.st_ctime_nsec = x.stx_ctime.tv_nsec as _;
    Ok(st)
}

fn stat_flags(dir: RawFd, name: &CStr, flags: i32) -> Res<libc::stat> {
    let mut st = zeroed_stat();
    check(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, flags) })?;
    Ok(st)
}

/// A generation number for the object `name` in `dir` (`dir` itself for an
/// empty name), from its birth time: a number the backing reuses for a new
/// object gets another generation, and the same object gets the same one
/// in every mount, which is what file handles need to tell them apart.
/// None where the backing keeps no birth times. Asked of the backing's
/// cache (a FUSE backing answers without a round trip).
pub fn birth_generation(dir: RawFd, name: &CStr) -> Option<u64> {
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let mut flags = libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_DONT_SYNC;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    let rc = unsafe { libc::statx(dir, name.as_ptr(), flags, libc::STATX_BTIME, &mut stx) };
    if rc != 0 || stx.stx_mask & libc::STATX_BTIME == 0 {
        return None;
    }
    let ns = (stx.stx_btime.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(stx.stx_btime.tv_nsec as u64);
    // The kernel keeps 32 bits of it.
    Some(ns & 0xffff_ffff)
}

/// The attributes of `fd` that `mask` asks for, as the filesystem has them
/// now: past a network filesystem's attribute cache (NFS may keep a
/// directory's for up to a minute), where another host's change shows.
pub fn statx_synced(fd: RawFd, mask: u32) -> Option<libc::statx> {
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let flags = libc::AT_EMPTY_PATH | libc::AT_STATX_FORCE_SYNC;
    let rc = unsafe { libc::statx(fd, c"".as_ptr(), flags, mask, &mut stx) };
    (rc == 0).then_some(stx)
}

/// A statx time in nanoseconds since 1970.
pub fn statx_ns(t: libc::statx_timestamp) -> i128 {
    t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128
}

/// `fstat` that also works on `O_PATH` descriptors.
pub fn fstat(fd: RawFd) -> Res<libc::stat> {
    stat_flags(fd, c"", libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW)
}

pub fn mkdir_at(dir: RawFd, name: &CStr, mode: u32) -> Res<()> {
    check(unsafe { libc::mkdirat(dir, name.as_ptr(), mode) }).map(drop)
}

pub fn mknod_at(dir: RawFd, name: &CStr, mode: u32, rdev: u64) -> Res<()> {
    check(unsafe { libc::mknodat(dir, name.as_ptr(), mode, rdev) }).map(drop)
}

pub fn symlink_at(target: &CStr, dir: RawFd, name: &CStr) -> Res<()> {
    check(unsafe { libc::symlinkat(target.as_ptr(), dir, name.as_ptr()) }).map(drop)
}

pub fn link_at(odir: RawFd, oname: &CStr, ndir: RawFd, nname: &CStr, flags: i32) -> Res<()> {
    check(unsafe { libc::linkat(odir, oname.as_ptr(), ndir, nname.as_ptr(), flags) }).map(drop)
}

pub fn unlink_at(dir: RawFd, name: &CStr, flags: i32) -> Res<()> {
    check(unsafe { libc::unlinkat(dir, name.as_ptr(), flags) }).map(drop)
}

pub fn rename_at2(odir: RawFd, oname: &CStr, ndir: RawFd, nname: &CStr, flags: u32) -> Res<()> {
    check(unsafe {
        libc::renameat2(
            odir,
            oname.as_ptr(),
            ndir,
            nname.as_ptr(),
            flags as libc::c_uint,
        )
    })
    .map(drop)
}

/// `renameat2(RENAME_NOREPLACE)`, emulated where the backing filesystem
/// does not support the flag (ntfs-3g answers EINVAL): check, then rename.
/// The emulation can race only with a concurrent creator of the same name
/// outside casafs.
pub fn rename_noreplace(odir: RawFd, oname: &CStr, ndir: RawFd, nname: &CStr) -> Res<()> {
    match rename_at2(odir, oname, ndir, nname, libc::RENAME_NOREPLACE) {
        Err(Errno::EINVAL) => {}
        r => return r,
    }
    rename_by_placeholder(odir, oname, ndir, nname)
}

/// A rename onto a name nobody else makes (a daemon's own, unique name in
/// its own graveyard): `RENAME_NOREPLACE` where the filesystem has it, else
/// a plain rename. No placeholder, which would stand under the name,
/// unlocked and empty, for a moment.
pub fn rename_unique(odir: RawFd, oname: &CStr, ndir: RawFd, nname: &CStr) -> Res<()> {
    match rename_at2(odir, oname, ndir, nname, libc::RENAME_NOREPLACE) {
        Err(Errno::EINVAL) => rename_at2(odir, oname, ndir, nname, 0),
        r => r,
    }
}

/// A rename that never replaces, where the filesystem has no
/// `RENAME_NOREPLACE` (ntfs-3g, NFS): the new name is taken first by an
/// empty placeholder made with `O_EXCL` or `mkdir`, which fail on a taken
/// name atomically on every filesystem, shared ones across hosts too; the
/// rename then replaces only that placeholder. (A look at the name and
/// then a rename would let another host take the name in between, and the
/// rename replace its object.)
pub fn rename_by_placeholder(odir: RawFd, oname: &CStr, ndir: RawFd, nname: &CStr) -> Res<()> {
    rename_taking(odir, oname, ndir, nname, &|| {})
}

/// `rename_by_placeholder`, with `between` run once the name is taken and
/// before the rename (where a test lets another host race it).
fn rename_taking(
    odir: RawFd,
    oname: &CStr,
    ndir: RawFd,
    nname: &CStr,
    between: &dyn Fn(),
) -> Res<()> {
    let st = stat_at(odir, oname)?;
    let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
    if is_dir {
        mkdir_at(ndir, nname, 0)?;
    } else {
        let flags = libc::O_RDONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        drop(open_at(ndir, nname, flags, 0)?);
    }
    between();
    let placeholder = stat_at(ndir, nname).map(|p| (p.st_dev, p.st_ino));
    match rename_at2(odir, oname, ndir, nname, 0) {
        Ok(()) => Ok(()),
        // Something was put inside a directory placeholder meanwhile (a
        // backing without modes lets anyone): the name is taken.
        Err(Errno::ENOTEMPTY) => Err(Errno::EEXIST),
        Err(e) => {
            // Only our placeholder goes: whatever else has the name now
            // is someone else's.
            if let Ok(ours) = placeholder
                && stat_at(ndir, nname).is_ok_and(|n| (n.st_dev, n.st_ino) == ours)
            {
                let flag = if is_dir { libc::AT_REMOVEDIR } else { 0 };
                let _ = unlink_at(ndir, nname, flag);
            }
            Err(e)
        }
    }
}

pub fn readlink_at(dir: RawFd, name: &CStr) -> Res<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    let n = check_size(unsafe {
        libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    })?;
    buf.truncate(n);
    Ok(buf)
}

pub fn chown_at(dir: RawFd, name: &CStr, uid: u32, gid: u32, flags: i32) -> Res<()> {
    check(unsafe { libc::fchownat(dir, name.as_ptr(), uid, gid, flags) }).map(drop)
}

/// chmod of `name` in `dir`, never of what a symlink there points at:
/// `fchmodat2` refuses a symlink (EOPNOTSUPP) where plain `fchmodat`
/// would follow it. Kernels before 6.6 lack it and follow.
pub fn chmod_at(dir: RawFd, name: &CStr, mode: u32) -> Res<()> {
    const SYS_FCHMODAT2: libc::c_long = 452;
    let rc = unsafe {
        libc::syscall(
            SYS_FCHMODAT2,
            dir,
            name.as_ptr(),
            mode,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    match last_errno() {
        Errno::ENOSYS => check(unsafe { libc::fchmodat(dir, name.as_ptr(), mode, 0) }).map(drop),
        e => Err(e),
    }
}

/// chmod of the object an `O_PATH` descriptor stands for, through its
/// /proc magic link (which `fchmod` cannot take).
pub fn chmod_fd(fd: RawFd, mode: u32) -> Res<()> {
    let path = proc_path(fd);
    check(unsafe { libc::fchmodat(libc::AT_FDCWD, path.as_ptr(), mode, 0) }).map(drop)
}

/// Whether the thread's filesystem credentials may access `name` in `dir`
/// (`""`: `dir` itself) as `mode` asks (`W_OK`, ...), ACLs included.
pub fn access_at(dir: RawFd, name: &CStr, mode: i32) -> Res<()> {
    let flags = libc::AT_EACCESS
        | if name.is_empty() {
            libc::AT_EMPTY_PATH
        } else {
            libc::AT_SYMLINK_NOFOLLOW
        };
    let rc = unsafe { libc::syscall(libc::SYS_faccessat2, dir, name.as_ptr(), mode, flags) };
    check(rc as libc::c_int).map(drop)
}

pub fn fchmod(fd: RawFd, mode: u32) -> Res<()> {
    check(unsafe { libc::fchmod(fd, mode) }).map(drop)
}

pub fn utimens_at(dir: RawFd, name: &CStr, times: &[libc::timespec; 2], flags: i32) -> Res<()> {
    check(unsafe { libc::utimensat(dir, name.as_ptr(), times.as_ptr(), flags) }).map(drop)
}

pub fn futimens(fd: RawFd, times: &[libc::timespec; 2]) -> Res<()> {
    check(unsafe { libc::futimens(fd, times.as_ptr()) }).map(drop)
}

pub fn ftruncate(fd: RawFd, size: u64) -> Res<()> {
    let size = i64::try_from(size).map_err(|_| Errno::EFBIG)?;
    check(unsafe { libc::ftruncate(fd, size) }).map(drop)
}

pub fn pread(fd: RawFd, buf: &mut [u8], off: u64) -> Res<usize> {
    let off = i64::try_from(off).map_err(|_| Errno::EINVAL)?;
    check_size(unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), off) })
}

pub fn pwrite(fd: RawFd, buf: &[u8], off: u64) -> Res<usize> {
    let off = i64::try_from(off).map_err(|_| Errno::EINVAL)?;
    check_size(unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), off) })
}

/// `write` at the descriptor's own offset: the right call for `O_APPEND`
/// handles, where the kernel picks the end of file atomically.
pub fn write(fd: RawFd, buf: &[u8]) -> Res<usize> {
    check_size(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })
}

pub fn fsync(fd: RawFd, datasync: bool) -> Res<()> {
    let rc = if datasync {
        unsafe { libc::fdatasync(fd) }
    } else {
        unsafe { libc::fsync(fd) }
    };
    check(rc).map(drop)
}

pub fn fallocate(fd: RawFd, mode: i32, off: u64, len: u64) -> Res<()> {
    let off = i64::try_from(off).map_err(|_| Errno::EINVAL)?;
    let len = i64::try_from(len).map_err(|_| Errno::EINVAL)?;
    check(unsafe { libc::fallocate(fd, mode, off, len) }).map(drop)
}

pub fn lseek(fd: RawFd, off: i64, whence: i32) -> Res<i64> {
    let rc = unsafe { libc::lseek(fd, off, whence) };
    if rc < 0 { Err(last_errno()) } else { Ok(rc) }
}

pub fn copy_file_range(
    fd_in: RawFd,
    off_in: u64,
    fd_out: RawFd,
    off_out: u64,
    len: u64,
    flags: u32,
) -> Res<usize> {
    let mut oi = i64::try_from(off_in).map_err(|_| Errno::EINVAL)?;
    let mut oo = i64::try_from(off_out).map_err(|_| Errno::EINVAL)?;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    check_size(unsafe { libc::copy_file_range(fd_in, &mut oi, fd_out, &mut oo, len, flags) })
}

pub fn fstatvfs(fd: RawFd) -> Res<libc::statvfs> {
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstatvfs(fd, &mut st) })?;
    Ok(st)
}

pub fn fstatfs_type(fd: RawFd) -> Res<i64> {
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstatfs(fd, &mut st) })?;
    Ok(st.f_type as i64)
}

pub fn getdents(fd: RawFd, buf: &mut [u8]) -> Res<usize> {
    let rc = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
    if rc < 0 {
        Err(last_errno())
    } else {
        Ok(rc as usize)
    }
}

/// The `l*xattr` calls on a path; `follow` picks the non-`l` variant, which
/// is what reaching an object through `/proc/self/fd/N` needs.
pub fn getxattr(path: &CStr, name: &CStr, buf: &mut [u8], follow: bool) -> Res<usize> {
    let f = if follow {
        libc::getxattr
    } else {
        libc::lgetxattr
    };
    check_size(unsafe {
        f(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })
}

pub fn listxattr(path: &CStr, buf: &mut [u8], follow: bool) -> Res<usize> {
    let f = if follow {
        libc::listxattr
    } else {
        libc::llistxattr
    };
    check_size(unsafe { f(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

pub fn setxattr(path: &CStr, name: &CStr, val: &[u8], flags: i32, follow: bool) -> Res<()> {
    let f = if follow {
        libc::setxattr
    } else {
        libc::lsetxattr
    };
    check(unsafe {
        f(
            path.as_ptr(),
            name.as_ptr(),
            val.as_ptr().cast(),
            val.len(),
            flags,
        )
    })
    .map(drop)
}

pub fn removexattr(path: &CStr, name: &CStr, follow: bool) -> Res<()> {
    let f = if follow {
        libc::removexattr
    } else {
        libc::lremovexattr
    };
    check(unsafe { f(path.as_ptr(), name.as_ptr()) }).map(drop)
}

pub fn fsetxattr(fd: RawFd, name: &CStr, val: &[u8]) -> Res<()> {
    check(unsafe { libc::fsetxattr(fd, name.as_ptr(), val.as_ptr().cast(), val.len(), 0) })
        .map(drop)
}

pub fn fgetxattr(fd: RawFd, name: &CStr) -> Res<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let n =
        check_size(unsafe { libc::fgetxattr(fd, name.as_ptr(), buf.as_mut_ptr().cast(), 4096) })?;
    buf.truncate(n);
    Ok(buf)
}

/// A monotonic clock in nanoseconds, to a few milliseconds: cheap enough
/// for every request.
pub fn coarse_now_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// A stat with every field zero (the attributes of a negative entry).
pub fn zeroed_stat() -> libc::stat {
    // SAFETY: libc::stat is plain integers; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

pub fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    // Only used for descriptors whose owner outlives the borrow (the reply
    // call that registers a passthrough backing file).
    unsafe { BorrowedFd::borrow_raw(fd) }
}

pub fn raw(fd: &OwnedFd) -> RawFd {
    fd.as_raw_fd()
}

/// A unit test's scratch directory, removed on drop (also when the test
/// fails).
#[cfg(test)]
pub struct TestDir(pub std::path::PathBuf);

#[cfg(test)]
impl TestDir {
    pub fn new(tag: &str) -> TestDir {
        let p = std::env::temp_dir().join(format!("casafs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TestDir(p)
    }

    /// `rel` beneath it (`""`: itself), opened with `flags`.
    pub fn open(&self, rel: &str, flags: i32) -> OwnedFd {
        let c = CString::new(self.0.join(rel).as_os_str().as_encoded_bytes()).unwrap();
        open_at(libc::AT_FDCWD, &c, flags, 0).unwrap()
    }
}

#[cfg(test)]
impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// 64 random bits from the kernel; should it have none to give, the time
/// and this process, which no other user foresees to the nanosecond.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return t ^ (u64::from(std::process::id()) << 40);
    }
    u64::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same_stat(a: &libc::stat, b: &libc::stat) -> bool {
        let key = |s: &libc::stat| {
            (
                (
                    s.st_dev, s.st_ino, s.st_nlink, s.st_mode, s.st_uid, s.st_gid,
                ),
                (s.st_rdev, s.st_size, s.st_blksize, s.st_blocks),
                (s.st_atime, s.st_atime_nsec, s.st_mtime, s.st_mtime_nsec),
                (s.st_ctime, s.st_ctime_nsec),
            )
        };
        key(a) == key(b)
    }

    /// The cached fstat (through statx) says what fstat says, field by
    /// field, of a file, a directory, a device and a symlink.
    #[test]
    fn the_cached_fstat_is_the_fstat() {
        let dir = TestDir::new("sys-fstat");
        std::fs::write(dir.0.join("f"), b"some bytes").unwrap();
        std::os::unix::fs::symlink("f", dir.0.join("l")).unwrap();
        let path = libc::O_PATH | libc::O_NOFOLLOW;
        let fds = [
            dir.open("f", libc::O_RDONLY),
            dir.open("", libc::O_RDONLY | libc::O_DIRECTORY),
            dir.open("l", path),
            open_at(libc::AT_FDCWD, c"/dev/null", path, 0).unwrap(),
        ];
        for fd in &fds {
            let (a, b) = (
                fstat(fd.as_raw_fd()).unwrap(),
                fstat_cached(fd.as_raw_fd()).unwrap(),
            );
            assert!(same_stat(&a, &b), "{:?}", (a.st_mode, b.st_mode));
        }
    }

    /// Two hosts rename their own file onto one free name at the same
    /// moment, on a backing without RENAME_NOREPLACE: one wins, the other
    /// is told EEXIST, and neither file is lost.
    #[test]
    fn two_renames_onto_one_name_never_replace_each_other() {
        let dir = TestDir::new("sys-noreplace");
        let base = &dir.0;
        std::fs::create_dir_all(base.join("area")).unwrap();
        std::fs::create_dir_all(base.join("a/TMPPOINTINGx")).unwrap();
        std::fs::write(base.join("a/TMPPOINTINGx/table.f0"), b"host a").unwrap();
        std::fs::write(base.join("b"), b"host b").unwrap();
        let root = dir.open("", libc::O_RDONLY | libc::O_DIRECTORY);
        let r = root.as_raw_fd();
        let area = open_at(r, c"area", libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
        let ar = area.as_raw_fd();
        std::fs::create_dir_all(base.join("c")).unwrap();
        for (from, to) in [(c"a/TMPPOINTINGx", c"TMPPOINTING1"), (c"b", c"casa-1.log")] {
            std::fs::write(base.join("c/mine"), b"host c").unwrap();
            let barrier = std::sync::Barrier::new(2);
            let results: Vec<Res<()>> = std::thread::scope(|s| {
                // One host is still between taking the name and renaming
                // when the other one looks.
                let first = s.spawn(|| {
                    rename_taking(r, from, ar, to, &|| {
                        barrier.wait();
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    })
                });
                let second = s.spawn(|| {
                    barrier.wait();
                    rename_taking(r, c"c/mine", ar, to, &|| {})
                });
                vec![first.join().unwrap(), second.join().unwrap()]
            });
            assert_eq!(results[0], Ok(()), "{to:?}");
            assert_eq!(results[1], Err(Errno::EEXIST), "{to:?}");
            assert_eq!(
                std::fs::read(base.join("c/mine")).unwrap(),
                b"host c",
                "kept"
            );
            std::fs::remove_file(base.join("c/mine")).unwrap();
        }
        assert_eq!(
            std::fs::read(base.join("area/TMPPOINTING1/table.f0")).unwrap(),
            b"host a"
        );
        assert_eq!(
            std::fs::read(base.join("area/casa-1.log")).unwrap(),
            b"host b"
        );
    }
}
