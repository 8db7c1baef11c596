//! Fault injection for the tests, from the environment of the daemon:
//!
//! - `CASAFS_FAULT_QUEUE=N`: io_uring queue N fails to start, as a thread
//!   or ring the system refuses would.
//! - `CASAFS_FAULT_PANIC=NAME`: a lookup of NAME panics inside its handler,
//!   as a bug would; the caller must get EIO and the daemon keep serving.
//!
//! - `CASAFS_FAULT_CREATE_STAT=NAME`: the stat that follows the creation of
//!   NAME fails with EIO, as a backing that dies at that moment would.
//!
//! - `CASAFS_FAULT_RENAME=NAME`: the backing rename onto NAME fails with
//!   EIO, as a backing that dies at that moment would.
//!
//! - `CASAFS_FAULT_STALL=NAME`: a lookup of NAME makes every request wait
//!   for 4 s (`CASAFS_FAULT_STALL_SECS`) from then on, as serving threads
//!   stuck in a hung backing would (the watchdog and `casafs check` must
//!   notice).
//!
//! - `CASAFS_FAULT_SLOW_LOOKUP=NAME`: a lookup of NAME waits 4 s
//!   (`CASAFS_FAULT_STALL_SECS`) inside its handler, as one waiting on a
//!   busy backing server (ntfs-3g) would; only that request waits.
//!
//! - `CASAFS_FAULT_SLOW_FSYNC=MS`: every fsync of a file waits MS ms
//!   first, as one on a disk busy with other writes would.
//!
//! - `CASAFS_FAULT_SLOW_STOP=MS`: a daemon that stops waits MS ms before
//!   writing its table of file handles, as one on a slow disk would.
//!
//! - `CASAFS_FAULT_SLOW_RETENTION=MS`: retention waits MS ms between
//!   judging what expired and removing it (logged), as one whose look at
//!   every process's open files takes long would.
//!
//! - `CASAFS_FAULT_SLOW_EMPTYING=MS`: retention waits MS ms after
//!   emptying an expired directory, before removing it, as it would
//!   emptying one of many entries.
//!
//! - `CASAFS_FAULT_SLOW_SWEEP_MOVE=MS`: `casafs sweep` waits MS ms before
//!   it renames an object into an area, and again after, as one that
//!   judged many objects would (the time a user has to swap names).
//!
//! - `CASAFS_FAULT_NO_TRUSTED_XATTRS=1`: the backing keeps no `trusted.*`
//!   xattrs, as NFS keeps none: origin records go to `user.*`.
//!
//! Read once; unset (production), each check is a load and a compare.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Faults {
    queue: Option<u16>,
    panic_name: Option<Vec<u8>>,
    create_stat_name: Option<Vec<u8>>,
    rename_name: Option<Vec<u8>>,
    stall_name: Option<Vec<u8>>,
    slow_lookup_name: Option<Vec<u8>>,
    stall: Duration,
    slow_stop: Option<Duration>,
    slow_fsync: Option<Duration>,
    slow_retention: Option<Duration>,
    slow_emptying: Option<Duration>,
    slow_sweep_move: Option<Duration>,
    no_trusted: bool,
    no_watch: bool,
}

/// A fault variable holding a wait in milliseconds.
fn millis(var: &str) -> Option<Duration> {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
}

fn faults() -> &'static Faults {
    static F: OnceLock<Faults> = OnceLock::new();
    F.get_or_init(|| Faults {
        queue: std::env::var("CASAFS_FAULT_QUEUE")
            .ok()
            .and_then(|v| v.parse().ok()),
        no_trusted: std::env::var_os("CASAFS_FAULT_NO_TRUSTED_XATTRS").is_some(),
        no_watch: std::env::var_os("CASAFS_FAULT_NO_WATCH").is_some(),
        slow_stop: millis("CASAFS_FAULT_SLOW_STOP"),
        slow_retention: millis("CASAFS_FAULT_SLOW_RETENTION"),
        slow_emptying: millis("CASAFS_FAULT_SLOW_EMPTYING"),
        slow_sweep_move: millis("CASAFS_FAULT_SLOW_SWEEP_MOVE"),
        slow_fsync: millis("CASAFS_FAULT_SLOW_FSYNC"),
        panic_name: std::env::var_os("CASAFS_FAULT_PANIC")
            .map(std::os::unix::ffi::OsStringExt::into_vec),
        create_stat_name: std::env::var_os("CASAFS_FAULT_CREATE_STAT")
            .map(std::os::unix::ffi::OsStringExt::into_vec),
        rename_name: std::env::var_os("CASAFS_FAULT_RENAME")
            .map(std::os::unix::ffi::OsStringExt::into_vec),
        stall_name: std::env::var_os("CASAFS_FAULT_STALL")
            .map(std::os::unix::ffi::OsStringExt::into_vec),
        slow_lookup_name: std::env::var_os("CASAFS_FAULT_SLOW_LOOKUP")
            .map(std::os::unix::ffi::OsStringExt::into_vec),
        stall: std::env::var("CASAFS_FAULT_STALL_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(4)),
    })
}

pub fn queue_fails(qid: u16) -> bool {
    faults().queue == Some(qid)
}

/// Milliseconds after `epoch()` until which every request waits.
static STALL_UNTIL: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

/// As a lookup of `name` starts: the faults named after it
/// (`CASAFS_FAULT_PANIC`, `_STALL`, `_SLOW_LOOKUP`).
pub fn on_lookup(name: &[u8]) {
    let f = faults();
    if f.panic_name.as_deref() == Some(name) {
        panic!("fault injected by CASAFS_FAULT_PANIC");
    }
    if f.stall_name.as_deref() == Some(name) {
        let until = epoch().elapsed() + f.stall;
        STALL_UNTIL.store(until.as_millis() as u64, Ordering::Relaxed);
    }
    if f.slow_lookup_name.as_deref() == Some(name) {
        std::thread::sleep(f.stall);
    }
}

/// Called as each request starts: waits while a stall is on.
pub fn stall_point() {
    // One relaxed load per request; zero unless a stall was ever started.
    if STALL_UNTIL.load(Ordering::Relaxed) == 0 {
        return;
    }
    while (epoch().elapsed().as_millis() as u64) < STALL_UNTIL.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn stat_after_create(name: &[u8]) -> crate::sys::Res<()> {
    if faults().create_stat_name.as_deref() == Some(name) {
        return Err(crate::sys::Errno::EIO);
    }
    Ok(())
}

pub fn rename_onto(name: &[u8]) -> crate::sys::Res<()> {
    if faults().rename_name.as_deref() == Some(name) {
        return Err(crate::sys::Errno::EIO);
    }
    Ok(())
}

/// As an fsync of a file starts.
pub fn fsync_starts() {
    if let Some(d) = faults().slow_fsync {
        std::thread::sleep(d);
    }
}

/// Between retention's judgement and its removals.
pub fn retention_judged() {
    if let Some(d) = faults().slow_retention {
        tracing::info!("retention: judged, removing in {} ms", d.as_millis());
        std::thread::sleep(d);
    }
}

/// After retention emptied an expired directory, before it removes it.
pub fn retention_emptied() {
    if let Some(d) = faults().slow_emptying {
        tracing::info!("retention: emptied, removing in {} ms", d.as_millis());
        std::thread::sleep(d);
    }
}

/// Before and after sweep renames an object into an area.
pub fn sweep_moving() {
    if let Some(d) = faults().slow_sweep_move {
        std::thread::sleep(d);
    }
}

/// Before a stopping daemon writes its table of file handles.
pub fn stopping() {
    if let Some(d) = faults().slow_stop {
        std::thread::sleep(d);
    }
}

/// Whether the kernel is to be taken as offering no watch of the
/// filesystems beneath (`crate::watch`).
pub fn no_watch() -> bool {
    faults().no_watch
}

/// Whether `trusted.*` xattrs are to be taken as unsupported.
pub fn no_trusted_xattrs() -> bool {
    faults().no_trusted
}
