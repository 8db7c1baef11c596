//! Detaching from the caller, as mount(8) expects of a FUSE daemon: the
//! command returns only once the mount is up (or failed, with the reason),
//! and the daemon goes on in its own session, holding none of the caller's
//! terminal or pipes.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Which side of the fork this is.
pub enum Side {
    /// The caller: the daemon's report, OK or why not.
    Caller(Result<(), String>),
    /// The daemon, with the pipe to report through (`tell`).
    Daemon(OwnedFd),
}

pub fn detach() -> Result<Side, String> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
        0 => {
            drop(r);
            unsafe { libc::setsid() };
            if let Ok(null) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                unsafe {
                    libc::dup2(null.as_raw_fd(), 0);
                    libc::dup2(null.as_raw_fd(), 1);
                }
            }
            Ok(Side::Daemon(w))
        }
        _child => {
            drop(w);
            let mut f = std::fs::File::from(r);
            let mut msg = String::new();
            let _ = f.read_to_string(&mut msg);
            if msg.starts_with("OK") {
                return Ok(Side::Caller(Ok(())));
            }
            let msg = msg.trim();
            Ok(Side::Caller(Err(if msg.is_empty() {
                "the daemon exited before mounting".into()
            } else {
                msg.to_string()
            })))
        }
    }
}

/// Reports to the waiting caller, once: "OK", or why the mount failed.
pub fn tell(report: &mut Option<OwnedFd>, msg: &str) {
    if let Some(fd) = report.take() {
        let mut f = std::fs::File::from(fd);
        let _ = f.write_all(msg.as_bytes());
    }
}
