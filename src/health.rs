//! Whether a casafs mount is serving: one probe through the serving path
//! (open and read `.casafs/stats.json`, which every casafs answers itself
//! and the kernel never answers from a cache), used by `casafs check`, by
//! the systemd watchdog, and by a mount that finds casafs already there.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a probe of a mount point found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// casafs answered; its daemon's pid, where it says.
    Serving(Option<u32>),
    /// A casafs mount that did not answer within the time given.
    Stalled,
    /// A casafs mount whose daemon is gone (the kernel answers ENOTCONN).
    Dead,
    /// No casafs mount at that path.
    NotCasafs,
}

/// The file system type of the topmost mount at exactly `p` (its
/// canonical form), from /proc/self/mountinfo.
pub fn fstype_at(p: &Path) -> Option<String> {
    let want = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found = None;
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mp) = left.split(' ').nth(4) else {
            continue;
        };
        if Path::new(&unescape(mp)) == want {
            found = right.split(' ').next().map(str::to_string);
        }
    }
    found
}

/// mountinfo and fstab escape space, tab, newline and backslash as octal.
pub fn unescape(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Probes the casafs mount at `mountpoint`, waiting at most `timeout` for
/// its answer. The read runs in a child process: a process whose request
/// the daemon holds cannot even exit until it is answered, and the caller
/// must (a stalled child is left to finish on its own).
pub fn probe(mountpoint: &Path, timeout: Duration) -> Health {
    if fstype_at(mountpoint).as_deref() != Some("fuse.casafs") {
        return Health::NotCasafs;
    }
    let Ok(path) = std::ffi::CString::new(
        mountpoint
            .join(".casafs/stats.json")
            .into_os_string()
            .into_encoded_bytes(),
    ) else {
        return Health::NotCasafs;
    };
    match read_in_child(&path, timeout) {
        None => Health::Stalled,
        Some(Ok(bytes)) => Health::Serving(pid_in(&bytes)),
        // ECONNABORTED and ECANCELED: a dead io_uring connection ending.
        Some(Err(libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED)) => Health::Dead,
        // Any other answer is the daemon's, or the kernel's on its behalf
        // (EACCES: another user's mount without allow_other): it serves.
        Some(Err(_)) => Health::Serving(None),
    }
}

/// Reads `path` in a forked child, which sends `O` and the contents, or
/// `E` and the errno, through a pipe. None: no whole answer in time.
fn read_in_child(path: &std::ffi::CStr, timeout: Duration) -> Option<Result<Vec<u8>, i32>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    let (r, mut w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The child closes 0-2 (below); a caller started without them may have
    // been given one of those numbers for the pipe.
    if w.as_raw_fd() < 3 {
        let high = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
        if high < 0 {
            return None;
        }
        w = unsafe { OwnedFd::from_raw_fd(high) };
    }
    // Everything the child uses is ready before the fork: it only makes
    // system calls.
    let mut buf = vec![0u8; 1 << 16];
    let child = unsafe { libc::fork() };
    if child < 0 {
        return None;
    }
    if child == 0 {
        unsafe {
            // A caller reading this command's output (`$(casafs check)`)
            // waits for every holder of the pipe: a stalled child must not
            // hold it.
            for std_fd in 0..3 {
                libc::close(std_fd);
            }
            let w = w.as_raw_fd();
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                let e = *libc::__errno_location();
                let msg = [b'E', (e & 0xff) as u8, ((e >> 8) & 0xff) as u8];
                libc::write(w, msg.as_ptr().cast(), msg.len());
                libc::_exit(0);
            }
            libc::write(w, b"O".as_ptr().cast(), 1);
            loop {
                let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                if n <= 0 || libc::write(w, buf.as_ptr().cast(), n as usize) != n {
                    break;
                }
            }
            libc::_exit(0);
        }
    }
    drop(w);
    let deadline = std::time::Instant::now() + timeout;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut pfd = libc::pollfd {
            fd: r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if rc <= 0 {
            return None;
        }
        let n = unsafe { libc::read(r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return None;
        }
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n as usize]);
        if got.len() > STATS_MAX {
            return None;
        }
    }
    // The child has written everything and is exiting.
    unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
    match got.split_first() {
        Some((b'O', rest)) => Some(Ok(rest.to_vec())),
        Some((b'E', e)) if e.len() == 2 => Some(Err(e[0] as i32 | (e[1] as i32) << 8)),
        _ => None,
    }
}

fn pid_in(stats: &[u8]) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_slice(stats).ok()?;
    v.get("pid")?.as_u64().and_then(|p| u32::try_from(p).ok())
}

/// `casafs check MOUNTPOINT`: one line, exit 0 when serving, 1 otherwise.
pub fn check(mountpoint: &Path, timeout: Duration) -> i32 {
    let shown = mountpoint.display();
    match probe(mountpoint, timeout) {
        Health::Serving(Some(pid)) => {
            println!("{shown}: serving (pid {pid})");
            0
        }
        Health::Serving(None) => {
            println!("{shown}: serving");
            0
        }
        Health::Stalled => {
            println!("{shown}: not answering within {:?}", timeout);
            1
        }
        Health::Dead => {
            println!("{shown}: casafs is gone (transport endpoint is not connected)");
            1
        }
        Health::NotCasafs => {
            println!("{shown}: not a casafs mount");
            1
        }
    }
}

/// The systemd watchdog: where the service manager asks for one
/// (`WATCHDOG_USEC`, for this process), `WATCHDOG=1` goes out every half
/// period, and only after a probe through the mount answered. A daemon
/// whose serving threads are stuck stops pinging, and systemd restarts it.
pub fn start_watchdog(mountpoint: &Path) {
    let Some(period) = watchdog_period() else {
        return;
    };
    // The mount's own root, held: after an unmount (a lazy one keeps
    // serving open files) the path would lead to the tree beneath, where
    // anyone who may write it could put anything under that name.
    let root = match std::fs::File::open(mountpoint) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("systemd watchdog off: {}: {e}", mountpoint.display());
            return;
        }
    };
    let every = period / 2;
    let spawned = std::thread::Builder::new()
        .name("casafs-watchdog".into())
        .spawn(move || {
            use std::os::fd::AsRawFd;
            let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
            let mut buf = vec![0u8; STATS_MAX];
            while !STOPPING.load(std::sync::atomic::Ordering::Relaxed) {
                // Blocking: a probe that never returns stops the pings,
                // which is the point.
                let answered =
                    crate::sys::open_at(root.as_raw_fd(), c".casafs/stats.json", flags, 0)
                        .is_ok_and(|fd| unsafe {
                            libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) > 0
                        });
                if answered && !STOPPING.load(std::sync::atomic::Ordering::Relaxed) {
                    crate::daemon::sd_notify("WATCHDOG=1");
                }
                std::thread::sleep(every);
            }
        });
    match spawned {
        Ok(_) => tracing::info!("systemd watchdog: a probe every {every:?}"),
        Err(e) => tracing::warn!("systemd watchdog off: {e}"),
    }
}

/// The most a probe reads of an answer (stats.json is a few KiB).
const STATS_MAX: usize = 1 << 16;

/// Set once the daemon starts to unmount: the watchdog stops pinging.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn stopping() {
    STOPPING.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Keeps `path` a copy of the metrics, rewritten every 5 s through a
/// temporary file renamed over it, so a reader never sees half of one. The
/// text comes from the daemon's memory, never through the mount.
pub fn start_textfile(path: PathBuf, fs: std::sync::Weak<crate::fs::CasaFs>) {
    let spawned = std::thread::Builder::new()
        .name("casafs-textfile".into())
        .spawn(move || {
            let mut failing = false;
            loop {
                let Some(fs) = fs.upgrade() else {
                    return;
                };
                let text = fs.metrics_text();
                drop(fs);
                match write_whole(&path, text.as_bytes()) {
                    Err(e) if !failing => {
                        tracing::warn!("textfile {}: {e}", path.display());
                        failing = true;
                    }
                    Ok(()) => failing = false,
                    Err(_) => {}
                }
                std::thread::sleep(Duration::from_secs(5));
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("textfile off: {e}");
    }
}

/// Writes `path` whole or not at all: a new file of mode 0644 (readable by
/// the collector, writable by root alone) made under a name nobody else can
/// have taken or linked (O_EXCL, no symlink followed), then renamed over it.
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // A name someone else took (a link planted there) is passed over.
    let mut attempt = 0;
    let (tmp, mut f) = loop {
        let mut tmp = path.as_os_str().to_owned();
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tmp.push(format!(".{}.{n}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 64 => {
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    };
    let done = f
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .and_then(|()| f.write_all(bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok()
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b\011c\134d"), PathBuf::from("/a b\tc\\d"));
        assert_eq!(unescape(r"/a\134"), PathBuf::from("/a\\"));
        assert_eq!(unescape(r"/x\04"), PathBuf::from(r"/x\04"));
    }

    #[test]
    fn the_pid_is_read_from_stats() {
        assert_eq!(pid_in(br#"{"pid": 42, "version": "1"}"#), Some(42));
        assert_eq!(pid_in(b"{}"), None);
        assert_eq!(pid_in(b"not json"), None);
    }
}
