//! Kernel passthrough backing ids: a backing file registered with the FUSE
//! connection (`FUSE_DEV_IOC_BACKING_OPEN`) so the kernel serves an open
//! file's reads and writes itself. Owned here rather than through a reply
//! object so that both request transports (`/dev/fuse` and io_uring) share
//! one id per inode while any handle is open.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// `FUSE_DEV_IOC_BACKING_OPEN`: `_IOW(229, 1, struct fuse_backing_map)`.
const IOC_BACKING_OPEN: libc::c_ulong = ioc_w(1, 16);
/// `FUSE_DEV_IOC_BACKING_CLOSE`: `_IOW(229, 2, uint32_t)`.
const IOC_BACKING_CLOSE: libc::c_ulong = ioc_w(2, 4);

const fn ioc_w(nr: libc::c_ulong, size: libc::c_ulong) -> libc::c_ulong {
    // _IOC(_IOC_WRITE, 229, nr, size) on every architecture casafs builds for.
    (1 << 30) | (size << 16) | (229 << 8) | nr
}

#[repr(C)]
struct BackingMap {
    fd: i32,
    flags: u32,
    padding: u64,
}

/// A registered backing file; closed on drop.
#[derive(Debug)]
pub struct Backing {
    dev: Arc<OwnedFd>,
    id: u32,
}

impl Backing {
    /// Registers `fd` with the connection behind `dev`.
    pub fn open(dev: &Arc<OwnedFd>, fd: RawFd) -> std::io::Result<Backing> {
        let map = BackingMap {
            fd,
            flags: 0,
            padding: 0,
        };
        let rc = unsafe { libc::ioctl(dev.as_raw_fd(), IOC_BACKING_OPEN, &map) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Backing {
            dev: dev.clone(),
            id: rc as u32,
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        let id = self.id;
        // Fails only once the connection is gone, which dropped the id too.
        // The kernel asks for CAP_SYS_ADMIN, which the thread gave up if it
        // acts for an unprivileged caller.
        crate::creds::with_sys_admin(|| unsafe {
            libc::ioctl(self.dev.as_raw_fd(), IOC_BACKING_CLOSE, &id)
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        // Values of FUSE_DEV_IOC_BACKING_OPEN/CLOSE from linux/fuse.h.
        assert_eq!(super::IOC_BACKING_OPEN, 0x4010_e501);
        assert_eq!(super::IOC_BACKING_CLOSE, 0x4004_e502);
    }
}
