//! The statistics: lock-free counters bumped on every request and rendered on
//! demand as JSON (`.casafs/stats.json`) and Prometheus text (`.casafs/metrics`).
//!
//! The hot path does two relaxed atomic adds per request (count and a latency
//! bucket) and reads the clock twice; nothing allocates or locks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

macro_rules! ops {
    ($($v:ident => $s:literal),* $(,)?) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Op { $($v),* }
        pub const OP_NAMES: &[&str] = &[$($s),*];
    };
}

ops! {
    Lookup => "lookup", Forget => "forget", Getattr => "getattr", Setattr => "setattr",
    Readlink => "readlink", Mknod => "mknod", Mkdir => "mkdir", Unlink => "unlink",
    Rmdir => "rmdir", Symlink => "symlink", Rename => "rename", Link => "link",
    Open => "open", Read => "read", Write => "write", Flush => "flush",
    Release => "release", Fsync => "fsync", Opendir => "opendir", Readdir => "readdir",
    Readdirplus => "readdirplus", Releasedir => "releasedir", Fsyncdir => "fsyncdir",
    Statfs => "statfs", Setxattr => "setxattr", Getxattr => "getxattr",
    Listxattr => "listxattr", Removexattr => "removexattr", Access => "access",
    Create => "create", Fallocate => "fallocate", Lseek => "lseek",
    CopyFileRange => "copy_file_range", Ioctl => "ioctl", Poll => "poll",
}

const N_OPS: usize = OP_NAMES.len();
/// Latency buckets: 4 per power of two of nanoseconds, up to ~2^40 ns.
const SUB: usize = 4;
const N_BUCKETS: usize = 41 * SUB;
const N_ERRNO: usize = 160;

struct OpStats {
    count: AtomicU64,
    errors: AtomicU64,
    /// Total time in the daemon, for the summary's `_sum` (averages).
    sum_ns: AtomicU64,
    buckets: [AtomicU64; N_BUCKETS],
}

impl OpStats {
    fn new() -> OpStats {
        OpStats {
            count: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

fn bucket_of(ns: u64) -> usize {
    let ns = ns.max(1);
    let log = 63 - ns.leading_zeros() as usize;
    let frac = if log >= 2 {
        ((ns >> (log - 2)) & 3) as usize
    } else {
        0
    };
    (log * SUB + frac).min(N_BUCKETS - 1)
}

/// The upper edge, in nanoseconds, of a bucket.
fn bucket_upper(b: usize) -> f64 {
    let log = b / SUB;
    let frac = b % SUB;
    if log < 2 {
        // Below 4 ns there are no sub-buckets: the next power of two.
        return (1u64 << (log + 1)) as f64;
    }
    (1u64 << log) as f64 * (1.0 + (frac as f64 + 1.0) / SUB as f64)
}

pub struct RuleCounters {
    pub name: String,
    pub routed: AtomicU64,
    pub fail_open: AtomicU64,
    pub retention_removed: AtomicU64,
}

pub struct Stats {
    started: Instant,
    started_wall: SystemTime,
    ops: Vec<OpStats>,
    errnos: Vec<AtomicU64>,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub rules: Vec<RuleCounters>,
    pub deferred_pending: AtomicU64,
    pub deferred_completed: AtomicU64,
    pub deferred_completed_bytes: AtomicU64,
    pub direct_unlinks_open: AtomicU64,
    pub open_handles: AtomicU64,
    pub passthrough_opens: AtomicU64,
    /// Configurations read again (SIGHUP) and applied.
    pub reloads: AtomicU64,
    /// CPU queues of FUSE over io_uring in use (0: requests come through
    /// `/dev/fuse`).
    pub ring_queues: AtomicU64,
    pub ring_requests: AtomicU64,
    /// Queue threads hand their CPU to the caller they answer.
    pub ring_handoff: AtomicBool,
    /// Times the handoff watchdog took a queue thread back from a busy CPU.
    pub ring_handoff_revoked: AtomicU64,
}

/// A request in flight: which operation and when it started.
pub struct Timer {
    op: Op,
    start: Instant,
}

impl Stats {
    pub fn new(rule_names: &[String]) -> Stats {
        Stats {
            started: Instant::now(),
            started_wall: SystemTime::now(),
            ops: (0..N_OPS).map(|_| OpStats::new()).collect(),
            errnos: (0..N_ERRNO).map(|_| AtomicU64::new(0)).collect(),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            rules: rule_names
                .iter()
                .map(|n| RuleCounters {
                    name: n.clone(),
                    routed: AtomicU64::new(0),
                    fail_open: AtomicU64::new(0),
                    retention_removed: AtomicU64::new(0),
                })
                .collect(),
            deferred_pending: AtomicU64::new(0),
            deferred_completed: AtomicU64::new(0),
            deferred_completed_bytes: AtomicU64::new(0),
            direct_unlinks_open: AtomicU64::new(0),
            open_handles: AtomicU64::new(0),
            passthrough_opens: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            ring_queues: AtomicU64::new(0),
            ring_requests: AtomicU64::new(0),
            ring_handoff: AtomicBool::new(false),
            ring_handoff_revoked: AtomicU64::new(0),
        }
    }

    #[inline]
    pub fn start(&self, op: Op) -> Timer {
        Timer {
            op,
            start: Instant::now(),
        }
    }

    #[inline]
    pub fn finish(&self, t: Timer, err: Option<i32>) {
        let ns = t.start.elapsed().as_nanos() as u64;
        let s = &self.ops[t.op as usize];
        s.count.fetch_add(1, Relaxed);
        s.sum_ns.fetch_add(ns, Relaxed);
        s.buckets[bucket_of(ns)].fetch_add(1, Relaxed);
        if let Some(e) = err {
            s.errors.fetch_add(1, Relaxed);
            let i = (e.max(0) as usize).min(N_ERRNO - 1);
            self.errnos[i].fetch_add(1, Relaxed);
        }
    }

    pub fn op_count(&self, op: Op) -> u64 {
        self.ops[op as usize].count.load(Relaxed)
    }

    fn percentile(&self, op: usize, q: f64) -> Option<f64> {
        let b: Vec<u64> = self.ops[op]
            .buckets
            .iter()
            .map(|b| b.load(Relaxed))
            .collect();
        let total: u64 = b.iter().sum();
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil().max(1.0) as u64;
        let mut acc = 0;
        for (i, n) in b.iter().enumerate() {
            acc += n;
            if acc >= want {
                return Some(bucket_upper(i) / 1000.0);
            }
        }
        None
    }

    pub fn uptime_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// Values that live outside `Stats` but belong in the report.
pub struct Extra {
    pub backing: Vec<(String, String)>,
    /// What the graveyard holds now (a file unlinked while open may still
    /// be growing).
    pub deferred_pending_bytes: u64,
    pub redirects_live: usize,
    pub inodes_cached: usize,
    pub dir_fds_cached: usize,
    /// Objects without a name kept reachable by a descriptor.
    pub objects_pinned: usize,
    pub passthrough_enabled: bool,
    pub mountpoint: String,
    pub source: String,
    /// This daemon's host identity.
    pub host: String,
}

fn errno_name(e: usize) -> String {
    let s = std::io::Error::from_raw_os_error(e as i32).kind();
    let name = match e as i32 {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ELOOP => "ELOOP",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ESTALE => "ESTALE",
        libc::ERANGE => "ERANGE",
        libc::ENOTCONN => "ENOTCONN",
        libc::EBUSY => "EBUSY",
        libc::EFBIG => "EFBIG",
        libc::EMLINK => "EMLINK",
        libc::ETXTBSY => "ETXTBSY",
        libc::ENXIO => "ENXIO",
        libc::EAGAIN => "EAGAIN",
        libc::EINTR => "EINTR",
        _ => return format!("E{e}_{s:?}"),
    };
    name.to_string()
}

impl Stats {
    pub fn to_json(&self, x: &Extra) -> serde_json::Value {
        use serde_json::{Map, Value, json};
        let mut ops = Map::new();
        let mut lat = Map::new();
        for (i, name) in OP_NAMES.iter().enumerate() {
            let c = self.ops[i].count.load(Relaxed);
            if c == 0 {
                continue;
            }
            ops.insert(
                name.to_string(),
                json!({"count": c, "errors": self.ops[i].errors.load(Relaxed)}),
            );
            lat.insert(
                name.to_string(),
                json!({
                    "p50": self.percentile(i, 0.50),
                    "p90": self.percentile(i, 0.90),
                    "p99": self.percentile(i, 0.99),
                    "max_bucket": self.percentile(i, 1.0),
                }),
            );
        }
        let mut errs = Map::new();
        for (i, n) in self.errnos.iter().enumerate() {
            let n = n.load(Relaxed);
            if n > 0 {
                errs.insert(errno_name(i), Value::from(n));
            }
        }
        let rules: Map<String, Value> = self
            .rules
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    json!({
                        "redirects": r.routed.load(Relaxed),
                        "fail_open": r.fail_open.load(Relaxed),
                        "retention_removed": r.retention_removed.load(Relaxed),
                    }),
                )
            })
            .collect();
        let fail_open: u64 = self.rules.iter().map(|r| r.fail_open.load(Relaxed)).sum();
        let backing: Map<String, Value> = x
            .backing
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect();
        let started = self
            .started_wall
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "source": x.source,
            "mountpoint": x.mountpoint,
            "host": x.host,
            "started_unix": started,
            "uptime_seconds": self.uptime_secs(),
            "operations": ops,
            "errors": errs,
            "bytes_read": self.bytes_read.load(Relaxed),
            "bytes_written": self.bytes_written.load(Relaxed),
            "passthrough": x.passthrough_enabled,
            "passthrough_opens": self.passthrough_opens.load(Relaxed),
            "reloads": self.reloads.load(Relaxed),
            "transport": {
                "kind": if self.ring_queues.load(Relaxed) > 0 { "io_uring" } else { "dev_fuse" },
                "io_uring_queues": self.ring_queues.load(Relaxed),
                "io_uring_requests": self.ring_requests.load(Relaxed),
                "io_uring_handoff": self.ring_handoff.load(Relaxed),
                "io_uring_handoff_revoked": self.ring_handoff_revoked.load(Relaxed),
            },
            "redirects": rules,
            "redirects_live": x.redirects_live,
            "fail_open": fail_open,
            "open_handles": self.open_handles.load(Relaxed),
            "deferred_unlinks": {
                "pending": self.deferred_pending.load(Relaxed),
                "pending_bytes": x.deferred_pending_bytes,
                "completed": self.deferred_completed.load(Relaxed),
                "completed_bytes": self.deferred_completed_bytes.load(Relaxed),
                "direct_unlinks_of_open_files": self.direct_unlinks_open.load(Relaxed),
            },
            "latency_us": lat,
            "inodes_cached": x.inodes_cached,
            "dir_fds_cached": x.dir_fds_cached,
            "objects_pinned": x.objects_pinned,
            "backing_fs": backing,
        })
    }

    pub fn to_prometheus(&self, x: &Extra) -> String {
        use std::fmt::Write;
        let mut o = String::with_capacity(8192);
        let mp = escape_label(&x.mountpoint);
        let l = format!("mountpoint=\"{mp}\"");
        let family = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP casafs_{name} {help}");
            let _ = writeln!(o, "# TYPE casafs_{name} {kind}");
        };
        family(
            &mut o,
            "build_info",
            "gauge",
            "The build serving this mount (always 1).",
        );
        let _ = writeln!(
            o,
            "casafs_build_info{{{l},version=\"{}\",host=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            escape_label(&x.host)
        );
        family(
            &mut o,
            "start_time_seconds",
            "gauge",
            "When the filesystem was mounted, in seconds since the epoch.",
        );
        let started = self
            .started_wall
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let _ = writeln!(o, "casafs_start_time_seconds{{{l}}} {started:.3}");
        family(
            &mut o,
            "uptime_seconds",
            "gauge",
            "Seconds since the filesystem was mounted.",
        );
        let _ = writeln!(o, "casafs_uptime_seconds{{{l}}} {:.3}", self.uptime_secs());
        family(
            &mut o,
            "operations_total",
            "counter",
            "FUSE requests served, by operation.",
        );
        for (i, name) in OP_NAMES.iter().enumerate() {
            let c = self.ops[i].count.load(Relaxed);
            let _ = writeln!(o, "casafs_operations_total{{{l},op=\"{name}\"}} {c}");
        }
        family(
            &mut o,
            "operation_errors_total",
            "counter",
            "FUSE requests answered with an error, by operation.",
        );
        for (i, name) in OP_NAMES.iter().enumerate() {
            let c = self.ops[i].errors.load(Relaxed);
            let _ = writeln!(o, "casafs_operation_errors_total{{{l},op=\"{name}\"}} {c}");
        }
        family(
            &mut o,
            "errors_total",
            "counter",
            "Errors returned, by errno.",
        );
        for (i, n) in self.errnos.iter().enumerate() {
            let n = n.load(Relaxed);
            if n > 0 {
                let _ = writeln!(
                    o,
                    "casafs_errors_total{{{l},errno=\"{}\"}} {n}",
                    errno_name(i)
                );
            }
        }
        family(
            &mut o,
            "read_bytes_total",
            "counter",
            "Bytes read through the daemon (passthrough reads bypass it).",
        );
        let _ = writeln!(
            o,
            "casafs_read_bytes_total{{{l}}} {}",
            self.bytes_read.load(Relaxed)
        );
        family(
            &mut o,
            "written_bytes_total",
            "counter",
            "Bytes written through the daemon (passthrough writes bypass it).",
        );
        let _ = writeln!(
            o,
            "casafs_written_bytes_total{{{l}}} {}",
            self.bytes_written.load(Relaxed)
        );
        family(
            &mut o,
            "io_uring_queues",
            "gauge",
            "CPU queues of FUSE over io_uring in use (0: requests come through /dev/fuse).",
        );
        let _ = writeln!(
            o,
            "casafs_io_uring_queues{{{l}}} {}",
            self.ring_queues.load(Relaxed)
        );
        family(
            &mut o,
            "io_uring_requests_total",
            "counter",
            "Requests served through FUSE over io_uring.",
        );
        let _ = writeln!(
            o,
            "casafs_io_uring_requests_total{{{l}}} {}",
            self.ring_requests.load(Relaxed)
        );
        family(
            &mut o,
            "io_uring_handoff_revoked_total",
            "counter",
            "Times a queue thread was taken back from handing its CPU to a caller, because the CPU was busy.",
        );
        let _ = writeln!(
            o,
            "casafs_io_uring_handoff_revoked_total{{{l}}} {}",
            self.ring_handoff_revoked.load(Relaxed)
        );
        let per_rule = |o: &mut String, name: &str, help: &str, v: fn(&RuleCounters) -> u64| {
            family(o, name, "counter", help);
            for r in &self.rules {
                let _ = writeln!(
                    o,
                    "casafs_{name}{{{l},rule=\"{}\"}} {}",
                    escape_label(&r.name),
                    v(r)
                );
            }
        };
        per_rule(
            &mut o,
            "redirects_total",
            "Objects routed to a target area, by rule.",
            |r| r.routed.load(Relaxed),
        );
        per_rule(
            &mut o,
            "fail_open_total",
            "Routed creations and renames done in place because the target area was unusable, by rule.",
            |r| r.fail_open.load(Relaxed),
        );
        per_rule(
            &mut o,
            "retention_removed_total",
            "Objects removed from a target area by the rule's retention, by rule.",
            |r| r.retention_removed.load(Relaxed),
        );
        family(
            &mut o,
            "redirects_live",
            "gauge",
            "Redirected objects reachable through their original path.",
        );
        let _ = writeln!(o, "casafs_redirects_live{{{l}}} {}", x.redirects_live);
        family(
            &mut o,
            "open_handles",
            "gauge",
            "Open file and directory handles.",
        );
        let _ = writeln!(
            o,
            "casafs_open_handles{{{l}}} {}",
            self.open_handles.load(Relaxed)
        );
        family(
            &mut o,
            "deferred_unlinks_pending",
            "gauge",
            "Unlinked files held in the graveyard until their last close.",
        );
        let _ = writeln!(
            o,
            "casafs_deferred_unlinks_pending{{{l}}} {}",
            self.deferred_pending.load(Relaxed)
        );
        family(
            &mut o,
            "deferred_unlinks_pending_bytes",
            "gauge",
            "Bytes held by pending deferred unlinks.",
        );
        let _ = writeln!(
            o,
            "casafs_deferred_unlinks_pending_bytes{{{l}}} {}",
            x.deferred_pending_bytes
        );
        family(
            &mut o,
            "deferred_unlinks_completed_total",
            "counter",
            "Deferred unlinks finished at last close.",
        );
        let _ = writeln!(
            o,
            "casafs_deferred_unlinks_completed_total{{{l}}} {}",
            self.deferred_completed.load(Relaxed)
        );
        family(
            &mut o,
            "deferred_unlinks_completed_bytes_total",
            "counter",
            "Bytes freed by deferred unlinks.",
        );
        let _ = writeln!(
            o,
            "casafs_deferred_unlinks_completed_bytes_total{{{l}}} {}",
            self.deferred_completed_bytes.load(Relaxed)
        );
        family(
            &mut o,
            "direct_unlinks_of_open_files_total",
            "counter",
            "Open files unlinked (or replaced) where the backing needs no deferring.",
        );
        let _ = writeln!(
            o,
            "casafs_direct_unlinks_of_open_files_total{{{l}}} {}",
            self.direct_unlinks_open.load(Relaxed)
        );
        family(
            &mut o,
            "passthrough_opens_total",
            "counter",
            "Opens whose reads and writes the kernel passes to the backing file.",
        );
        let _ = writeln!(
            o,
            "casafs_passthrough_opens_total{{{l}}} {}",
            self.passthrough_opens.load(Relaxed)
        );
        family(
            &mut o,
            "reloads_total",
            "counter",
            "Configurations read again (SIGHUP) and applied.",
        );
        let _ = writeln!(
            o,
            "casafs_reloads_total{{{l}}} {}",
            self.reloads.load(Relaxed)
        );
        family(
            &mut o,
            "inodes_cached",
            "gauge",
            "Inodes the kernel holds references to.",
        );
        let _ = writeln!(o, "casafs_inodes_cached{{{l}}} {}", x.inodes_cached);
        family(
            &mut o,
            "objects_pinned",
            "gauge",
            "Objects without a name kept reachable by a descriptor.",
        );
        let _ = writeln!(o, "casafs_objects_pinned{{{l}}} {}", x.objects_pinned);
        family(
            &mut o,
            "operation_latency_microseconds",
            "summary",
            "Request latency in the daemon, by operation.",
        );
        for (i, name) in OP_NAMES.iter().enumerate() {
            let c = self.ops[i].count.load(Relaxed);
            if c == 0 {
                continue;
            }
            for q in [0.5, 0.9, 0.99] {
                let v = self.percentile(i, q).unwrap_or(0.0);
                let _ = writeln!(
                    o,
                    "casafs_operation_latency_microseconds{{{l},op=\"{name}\",quantile=\"{q}\"}} {v:.3}"
                );
            }
            let sum_us = self.ops[i].sum_ns.load(Relaxed) as f64 / 1000.0;
            let _ = writeln!(
                o,
                "casafs_operation_latency_microseconds_sum{{{l},op=\"{name}\"}} {sum_us:.3}"
            );
            let _ = writeln!(
                o,
                "casafs_operation_latency_microseconds_count{{{l},op=\"{name}\"}} {c}"
            );
        }
        family(
            &mut o,
            "operation_duration_seconds",
            "histogram",
            "Request latency in the daemon, by operation (the buckets casafs keeps, at each power of two of nanoseconds).",
        );
        for (i, name) in OP_NAMES.iter().enumerate() {
            let c = self.ops[i].count.load(Relaxed);
            if c == 0 {
                continue;
            }
            let counts: Vec<u64> = self.ops[i]
                .buckets
                .iter()
                .map(|b| b.load(Relaxed))
                .collect();
            let mut cum = 0;
            for log in 0..N_BUCKETS / SUB {
                cum += counts[log * SUB..(log + 1) * SUB].iter().sum::<u64>();
                // From 1 us to about 70 s; below, everything is in the first.
                if !(9..=35).contains(&log) {
                    continue;
                }
                let le = (1u64 << (log + 1)) as f64 / 1e9;
                let _ = writeln!(
                    o,
                    "casafs_operation_duration_seconds_bucket{{{l},op=\"{name}\",le=\"{le:e}\"}} {cum}"
                );
            }
            // Counted apart from the buckets: the total is the count.
            let total: u64 = counts.iter().sum::<u64>().max(c);
            let _ = writeln!(
                o,
                "casafs_operation_duration_seconds_bucket{{{l},op=\"{name}\",le=\"+Inf\"}} {total}"
            );
            let sum_s = self.ops[i].sum_ns.load(Relaxed) as f64 / 1e9;
            let _ = writeln!(
                o,
                "casafs_operation_duration_seconds_sum{{{l},op=\"{name}\"}} {sum_s:.9}"
            );
            let _ = writeln!(
                o,
                "casafs_operation_duration_seconds_count{{{l},op=\"{name}\"}} {total}"
            );
        }
        family(
            &mut o,
            "backing_filesystem_info",
            "gauge",
            "Filesystem type of each backing area.",
        );
        for (k, v) in &x.backing {
            let _ = writeln!(
                o,
                "casafs_backing_filesystem_info{{{l},area=\"{}\",fstype=\"{}\"}} 1",
                escape_label(k),
                escape_label(v)
            );
        }
        o
    }
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bound_the_value() {
        let mut last = 0;
        for ns in [1u64, 2, 3, 5, 100, 1000, 1500, 123_456, 10_000_000_000] {
            let b = bucket_of(ns);
            assert!(b >= last);
            last = b;
            assert!(bucket_upper(b) >= ns as f64, "{ns} {b} {}", bucket_upper(b));
            assert!(bucket_upper(b) <= ns as f64 * 1.5 + 2.0, "{ns}");
        }
    }

    #[test]
    fn counters_and_percentiles() {
        let s = Stats::new(&["casa-logs".into()]);
        for _ in 0..10 {
            let t = s.start(Op::Lookup);
            s.finish(t, None);
        }
        let t = s.start(Op::Lookup);
        s.finish(t, Some(libc::ENOENT));
        assert_eq!(s.op_count(Op::Lookup), 11);
        let x = Extra {
            deferred_pending_bytes: 0,
            backing: vec![("source".into(), "ext4".into())],
            redirects_live: 0,
            inodes_cached: 1,
            dir_fds_cached: 0,
            objects_pinned: 0,
            passthrough_enabled: false,
            mountpoint: "/m".into(),
            source: "/s".into(),
            host: "node-1".into(),
        };
        let j = s.to_json(&x);
        assert_eq!(j["operations"]["lookup"]["count"], 11);
        assert_eq!(j["errors"]["ENOENT"], 1);
        assert_eq!(j["host"], "node-1");
        assert!(j["latency_us"]["lookup"]["p50"].as_f64().is_some());
        let p = s.to_prometheus(&x);
        assert!(p.contains("casafs_operations_total{mountpoint=\"/m\",op=\"lookup\"} 11"));
    }
}
