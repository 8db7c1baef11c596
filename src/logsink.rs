//! Where the daemon's log lines go.
//!
//! Lines go to stderr: the terminal with `-f`, the journal under systemd.
//! A daemon started by `casafs mount` or mount(8) without `-f` must not keep
//! its caller's stderr open, or whoever waits for that output never sees
//! its end (`ssh host mount /data` and `out=$(mount -a 2>&1)` would hang for
//! as long as the mount lives). Once mounted, such a daemon lets go of
//! stderr and logs to syslog instead, as other FUSE daemons do; where
//! stderr already is the journal it keeps it. While such a daemon is still
//! mounting, its caller sees only warnings and errors: a mount that works
//! is silent, as mount(8) helpers are (its lines go to syslog).

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::Level;

/// Unset: stderr. Set: syslog, through a socket that reconnects when the
/// syslog daemon comes back.
static SYSLOG: OnceLock<UnixDatagram> = OnceLock::new();

type LevelHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// The filter in use, replaced by `log_level` (at mount and on reload).
static LEVEL: OnceLock<LevelHandle> = OnceLock::new();

/// The daemon is starting in the background: the caller's stderr takes
/// only warnings and errors, syslog everything.
static STARTING_DETACHED: AtomicBool = AtomicBool::new(false);

/// stderr is the journal: each line starts with its priority (`<4>`), which
/// journald takes and strips, so `journalctl -p warning` finds warnings.
static JOURNAL: OnceLock<bool> = OnceLock::new();

/// Whether `spec` is a filter casafs can log by (`info`, `casafs=debug`).
pub fn check_level(spec: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::try_new(spec)
        .map(|_| ())
        .map_err(|e| format!("invalid log filter '{spec}': {e}"))
}

/// Logs by `spec` from now on.
pub fn set_level(spec: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(spec)
        .map_err(|e| format!("invalid log filter '{spec}': {e}"))?;
    match LEVEL.get() {
        Some(h) => h.reload(filter).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

/// The syslog socket: `/dev/log`, or `CASAFS_SYSLOG` where set.
fn syslog_path() -> std::path::PathBuf {
    std::env::var_os("CASAFS_SYSLOG")
        .map(Into::into)
        .unwrap_or_else(|| "/dev/log".into())
}

/// Sets up logging for the process: `RUST_LOG` or info, one formatting for
/// stderr (time stamp, level, colours on a terminal) and one for syslog
/// (which adds its own time stamp and takes the level as the priority).
pub fn init() {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let _ = LEVEL.set(handle);
    let _ = JOURNAL.set(stderr_is_journal());
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(Sink::Stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let syslog = tracing_subscriber::fmt::layer()
        .with_writer(Sink::Syslog)
        .with_target(false)
        .with_ansi(false)
        .with_level(false)
        .without_time();
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(syslog)
        .init();
}

/// The two `tracing` writers: each takes the lines while it is the one in
/// use and drops them otherwise.
#[derive(Clone, Copy)]
enum Sink {
    Stderr,
    Syslog,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Sink {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(*self, Level::INFO)
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line {
        Line(*self, *meta.level())
    }
}

/// One formatted event, of the given level.
struct Line(Sink, Level);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match (self.0, SYSLOG.get()) {
            (Sink::Stderr, None) if JOURNAL.get() == Some(&true) => {
                let mut rec = format!("<{}>", severity(self.1)).into_bytes();
                rec.extend_from_slice(buf);
                std::io::stderr().write_all(&rec)?;
                Ok(buf.len())
            }
            (Sink::Stderr, None) => std::io::stderr().write(buf),
            (Sink::Stderr, Some(_))
                if self.1 <= Level::WARN && STARTING_DETACHED.load(Ordering::Relaxed) =>
            {
                std::io::stderr().write(buf)
            }
            (Sink::Syslog, Some(sock)) => {
                send(sock, &syslog_record(self.1, buf), syslog_path);
                Ok(buf.len())
            }
            _ => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let (Sink::Stderr, None) = (self.0, SYSLOG.get()) {
            std::io::stderr().flush()?;
        }
        Ok(())
    }
}

/// Sends a record, connecting again to `path` when the socket is refused
/// or not connected: syslogd restarted (a new socket at the same path) or
/// was not there at mount time. A full socket loses the record.
fn send(sock: &UnixDatagram, rec: &[u8], path: impl FnOnce() -> std::path::PathBuf) {
    if let Err(e) = sock.send(rec)
        && e.kind() != std::io::ErrorKind::WouldBlock
        && sock.connect(path()).is_ok()
    {
        let _ = sock.send(rec);
    }
}

/// `<PRI>casafs[PID]: message` (facility daemon).
fn syslog_record(level: Level, message: &[u8]) -> Vec<u8> {
    let mut rec = format!(
        "<{}>casafs[{}]: ",
        3 * 8 + severity(level),
        std::process::id()
    )
    .into_bytes();
    rec.extend_from_slice(message.trim_ascii_end());
    rec
}

/// syslog's severity of a level.
fn severity(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Whether stderr is the systemd journal (`JOURNAL_STREAM` names it).
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let v = v.to_string_lossy();
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(st) = crate::sys::fstat(2) else {
        return false;
    };
    dev.parse() == Ok(st.st_dev) && ino.parse() == Ok(st.st_ino)
}

/// For a daemon that has just left its caller to mount in the background:
/// from now on its caller sees only warnings and errors.
pub fn starting_detached() {
    if stderr_is_journal() {
        return;
    }
    STARTING_DETACHED.store(true, Ordering::Relaxed);
    to_syslog();
}

fn to_syslog() {
    // Non-blocking: request threads log, and a stalled syslog daemon must
    // cost them a lost line, never a wait. Not connected yet is fine: each
    // line tries again.
    if SYSLOG.get().is_none()
        && let Ok(sock) = UnixDatagram::unbound()
    {
        let _ = sock.set_nonblocking(true);
        let _ = sock.connect(syslog_path());
        let _ = SYSLOG.set(sock);
    }
}

/// For a daemon that has mounted: lets go of its caller's stderr, logging
/// to syslog from now on (to nowhere if there is none), unless stderr is
/// the journal.
pub fn leave_caller_stderr() {
    if stderr_is_journal() {
        return;
    }
    to_syslog();
    STARTING_DETACHED.store(false, Ordering::Relaxed);
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        unsafe { libc::dup2(null.as_raw_fd(), 2) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_becomes_a_daemon_facility_record() {
        let rec = String::from_utf8(syslog_record(Level::INFO, b"mounted /a on /a\n")).unwrap();
        assert_eq!(
            rec,
            format!("<30>casafs[{}]: mounted /a on /a", std::process::id())
        );
        let rec = syslog_record(Level::WARN, b"area unusable\n");
        assert!(rec.starts_with(b"<28>casafs["));
        assert!(rec.ends_with(b"]: area unusable"));
    }

    /// A syslog daemon that restarts (its socket replaced at the same
    /// path) still gets the lines that follow.
    #[test]
    fn lines_reach_a_restarted_syslog() {
        let dir = std::env::temp_dir().join(format!("casafs-syslog-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("log");
        let listen = || {
            let _ = std::fs::remove_file(&path);
            let l = UnixDatagram::bind(&path).unwrap();
            l.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            l
        };
        let sock = UnixDatagram::unbound().unwrap();
        sock.set_nonblocking(true).unwrap();
        assert!(sock.connect(&path).is_err());
        let send = |text: &[u8]| send(&sock, &syslog_record(Level::INFO, text), || path.clone());
        let recv = |l: &UnixDatagram| {
            let mut buf = [0u8; 256];
            let n = l.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        // Not there yet: the line is lost, and the next finds the socket.
        send(b"zero");
        let first = listen();
        send(b"one");
        assert!(recv(&first).ends_with("]: one"));
        drop(first);
        let second = listen();
        send(b"two");
        assert!(recv(&second).ends_with("]: two"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
