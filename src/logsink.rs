//! Where the daemon's log lines go.
//!
//! Lines go to stderr: the terminal with `-f`, the journal under systemd.
//! A daemon started by `casafs mount` or mount(8) without `-f` must not keep
//! its caller's stderr open, or whoever waits for that output never sees
//! its end (`ssh host mount /data` and `out=$(mount -a 2>&1)` would hang for
//! as long as the mount lives). Once mounted, such a daemon lets go of
//! stderr and logs to syslog instead, as other FUSE daemons do; where
//! stderr already is the journal it keeps it.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;

use tracing::Level;

/// Unset: stderr. Set: syslog through the socket, or nowhere without one.
static SYSLOG: OnceLock<Option<UnixDatagram>> = OnceLock::new();

/// The syslog socket: `/dev/log`, or `CASAFS_SYSLOG` where set.
fn syslog_path() -> std::path::PathBuf {
    std::env::var_os("CASAFS_SYSLOG")
        .map(Into::into)
        .unwrap_or_else(|| "/dev/log".into())
}

/// The `tracing` writer for the whole process.
pub struct LogSink;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(Level::INFO)
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line {
        Line(*meta.level())
    }
}

/// One formatted event, of the given level.
pub struct Line(Level);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match SYSLOG.get() {
            None => std::io::stderr().write(buf),
            Some(None) => Ok(buf.len()),
            Some(Some(sock)) => {
                let _ = sock.send(&syslog_record(self.0, buf));
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if SYSLOG.get().is_none() {
            std::io::stderr().flush()?;
        }
        Ok(())
    }
}

/// `<PRI>casafs[PID]: message` (facility daemon) from a formatted line,
/// without its colours, time stamp and level: syslog adds its own.
fn syslog_record(level: Level, line: &[u8]) -> Vec<u8> {
    let severity = match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    };
    let text = strip_ansi(&String::from_utf8_lossy(line));
    let text = text.trim_end();
    // "2026-11-23T22:47:06.964689Z  INFO message"
    let message = text
        .split_once(' ')
        .map(|(_, rest)| rest.trim_start())
        .and_then(|rest| rest.split_once(' '))
        .map(|(_, m)| m.trim_start())
        .unwrap_or(text);
    format!(
        "<{}>casafs[{}]: {message}",
        3 * 8 + severity,
        std::process::id()
    )
    .into_bytes()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ parameters final-letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
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

/// For a daemon that has mounted: lets go of its caller's stderr, logging
/// to syslog from now on (to nowhere if there is none), unless stderr is
/// the journal.
pub fn leave_caller_stderr() {
    if stderr_is_journal() {
        return;
    }
    // Non-blocking: request threads log, and a stalled syslog daemon must
    // cost them a lost line, never a wait.
    let sock = UnixDatagram::unbound()
        .and_then(|s| s.connect(syslog_path()).map(|_| s))
        .and_then(|s| s.set_nonblocking(true).map(|_| s))
        .ok();
    let _ = SYSLOG.set(sock);
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        unsafe { libc::dup2(null.as_raw_fd(), 2) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_formatted_line_becomes_a_daemon_facility_record() {
        let line = b"2026-11-23T22:47:06.964689Z  INFO mounted /a on /a\n";
        let rec = String::from_utf8(syslog_record(Level::INFO, line)).unwrap();
        assert_eq!(
            rec,
            format!("<30>casafs[{}]: mounted /a on /a", std::process::id())
        );
        let line = b"\x1b[2m2026-11-23T22:47:06Z\x1b[0m \x1b[33m WARN\x1b[0m area unusable\n";
        let rec = String::from_utf8(syslog_record(Level::WARN, line)).unwrap();
        assert!(rec.starts_with("<28>casafs["), "{rec}");
        assert!(rec.ends_with("]: area unusable"), "{rec}");
    }
}
