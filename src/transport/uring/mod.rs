//! FUSE over io_uring (Linux 6.14+): the kernel hands each request to a
//! queue of the CPU the calling process runs on, and casafs serves every
//! queue with threads pinned to that CPU.
//!
//! Why: with `/dev/fuse`, the kernel wakes whichever daemon thread waits
//! longest, and the scheduler runs it on another CPU than the caller. Each
//! request then costs two cross-CPU wake-ups, which on virtual machines
//! dominate everything else a metadata operation costs (measured here: a
//! round trip of ~30 µs against ~11 µs with per-CPU queues). With a queue
//! per CPU both wake-ups stay on the caller's CPU.
//!
//! `/dev/fuse` stays in use alongside: the kernel sends INIT, FORGET and
//! INTERRUPT there, and falls back to it for everything if a queue fails
//! to register.
//!
//! On local filesystems one thread serves each queue, through a ring with
//! eight entries (`queue.rs`): requests that arrive while it is busy wait
//! in the other entries, and are served without a switch to another
//! thread. Where the tree or an area is on a filesystem another process
//! serves (ntfs-3g, a network server), nearly every request waits for a
//! round trip to that server, and the next request of the same CPU (often
//! another process's) should not wait behind it: there two threads of one
//! entry each serve every queue. Either way a request that may wait on the
//! disk (an fsync on a busy disk) goes to a worker (`workers.rs`), so it
//! holds only its entry, not the CPU's queue.

pub mod abi;
mod handoff;
mod queue;
mod reply;
mod serve;
mod workers;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc;

use io_uring::{IoUring, cqueue, squeue};
use parking_lot::Mutex;

use crate::fs::CasaFs;

/// How often a queue may lose a thread to an unexpected error and get a new
/// one before casafs gives up on the connection.
const MAX_RESTARTS: usize = 8;

/// The kernel's switch for FUSE over io_uring (off by default).
pub const ENABLE_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

type Ring = IoUring<squeue::Entry128, cqueue::Entry>;

/// A ring made before INIT is answered, kept to tell the kernel to fall
/// back to `/dev/fuse` if the queues cannot start: by then the system may
/// refuse new rings for the very reason the queues failed.
static FALLBACK_RING: Mutex<Option<Ring>> = Mutex::new(None);

/// Makes sure the kernel will offer io_uring to this mount: the module
/// parameter must be on before the mount's INIT. Root may turn it on; it
/// only lets servers that ask for io_uring use it.
pub fn enable_in_kernel() -> Result<(), String> {
    let cur = std::fs::read_to_string(ENABLE_PARAM)
        .map_err(|e| format!("{ENABLE_PARAM}: {e} (kernel without FUSE over io_uring)"))?;
    if cur.trim() == "Y" {
        return Ok(());
    }
    std::fs::write(ENABLE_PARAM, "Y").map_err(|e| format!("cannot turn on {ENABLE_PARAM}: {e}"))?;
    tracing::info!("turned on FUSE over io_uring in the kernel ({ENABLE_PARAM} = Y)");
    Ok(())
}

/// Whether this process may use io_uring (it can be turned off by
/// `kernel.io_uring_disabled` or a seccomp filter), keeping the ring that
/// proves it for the fall back. Asked before INIT is answered: once
/// io_uring is agreed, requests wait for the queues.
pub fn prepare() -> bool {
    match IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(2) {
        Ok(r) => {
            *FALLBACK_RING.lock() = Some(r);
            true
        }
        Err(e) => {
            tracing::info!("FUSE over io_uring off, serving through /dev/fuse: io_uring: {e}");
            false
        }
    }
}

/// The queue count the kernel expects: one per possible CPU.
fn possible_cpus() -> usize {
    let counted = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            let mut n = 0;
            for part in s.trim().split(',') {
                n += match part.split_once('-') {
                    Some((a, b)) => b.parse::<usize>().ok()? + 1 - a.parse::<usize>().ok()?,
                    None => part.parse::<usize>().map(|_| 1).ok()?,
                };
            }
            Some(n)
        });
    counted.unwrap_or_else(|| unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as usize)
}

/// This mount's connection number under `/sys/fs/fuse/connections`: the
/// minor device number of the topmost `fuse.casafs` mount on `mountpoint`.
fn connection_of(mountpoint: &Path) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mountpoint.to_string_lossy().replace(' ', "\\040");
    text.lines()
        .rev()
        .filter(|l| {
            let mut halves = l.split(" - ");
            let (a, b) = (halves.next().unwrap_or(""), halves.next().unwrap_or(""));
            a.split(' ').nth(4) == Some(want.as_str()) && b.starts_with("fuse.casafs ")
        })
        .find_map(|l| l.split(' ').nth(2)?.split(':').nth(1)?.parse().ok())
}

/// What the queue threads share.
pub(crate) struct Shared {
    fs: Arc<CasaFs>,
    dev: Arc<OwnedFd>,
    payload_len: usize,
    /// Without `allow_other`: the only user served, as fuser does.
    owner: Option<u32>,
    /// Threads serving each queue now, and how often each was restarted.
    live: Vec<AtomicUsize>,
    restarts: Vec<AtomicUsize>,
    connection: Option<u32>,
    handoff: Arc<handoff::Handoff>,
    workers: Arc<workers::Workers>,
    /// Ring entries each queue thread registers.
    entries: usize,
}

/// Threads per CPU queue and ring entries per thread. On local filesystems
/// one thread of eight entries, as libfuse (four measured the same within
/// the noise). Where requests wait on another server, two threads of one
/// entry: one thread of eight serialised the round trips of two processes
/// on one CPU (two clients on ntfs-3g took 1.23-1.30 times as long), and a
/// request held up by that server would hold every other of its CPU.
const LOCAL_LAYOUT: (usize, usize) = (1, 8);
const SERVED_LAYOUT: (usize, usize) = (2, 1);

impl Shared {
    /// A thread of queue `qid` ended while the connection lives. Another
    /// takes its place; past the limit the connection is ended, so callers
    /// get errors instead of waiting on a queue nobody serves.
    fn thread_lost(self: &Arc<Self>, qid: u16) {
        let q = qid as usize;
        let left = self.live[q].fetch_sub(1, Relaxed) - 1;
        if self.restarts[q].fetch_add(1, Relaxed) < MAX_RESTARTS {
            tracing::warn!("queue {qid}: starting a new thread in place of a failed one");
            if spawn_thread(self, qid, None).is_ok() {
                return;
            }
        }
        tracing::warn!("queue {qid}: {left} threads left");
        if left == 0 {
            tracing::error!(
                "queue {qid} has no thread left: ending the connection so that callers get errors"
            );
            self.abort_connection();
        }
    }

    fn abort_connection(&self) {
        let done = self.connection.is_some_and(|c| {
            std::fs::write(format!("/sys/fs/fuse/connections/{c}/abort"), "1").is_ok()
        });
        if !done {
            tracing::error!("cannot end the FUSE connection (is fusectl mounted?)");
        }
    }
}

fn spawn_thread(
    shared: &Arc<Shared>,
    qid: u16,
    ready: Option<mpsc::Sender<(u16, Result<(), String>)>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let s = shared.clone();
    shared.live[qid as usize].fetch_add(1, Relaxed);
    // As root: a thread starts with the credentials of the one spawning it,
    // which may be serving a user (a queue thread replacing a lost one).
    let spawned = crate::creds::as_root(|| {
        std::thread::Builder::new()
            .name(format!("casafs-q{qid}"))
            .stack_size(512 * 1024)
            .spawn(move || queue::run(s, qid, ready))
    });
    if spawned.is_err() {
        shared.live[qid as usize].fetch_sub(1, Relaxed);
    }
    spawned
}

/// The running queues.
pub struct Queues {
    threads: Vec<std::thread::JoinHandle<()>>,
    workers: Arc<workers::Workers>,
}

impl Queues {
    /// Waits for the queue threads, which end when the connection goes
    /// away, for at most `limit`: a thread still inside a request is left
    /// to the process's exit.
    pub fn join(self, limit: std::time::Duration) {
        self.workers.close();
        let deadline = std::time::Instant::now() + limit;
        while self.threads.iter().any(|t| !t.is_finished()) && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for t in self.threads {
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!("a queue thread is still busy at exit");
            }
        }
    }
}

/// A ring entry's payload buffer: at least the largest request or reply the
/// kernel may put there (1 MiB writes and reads, as negotiated in INIT).
const PAYLOAD_LEN: usize = (1 << 20) + 4096;

/// Starts the queue threads once INIT agreed on io_uring (which it only
/// does once the FUSE device is shared: `None` otherwise). If a queue gets
/// no thread at all, the kernel is made to fall back to `/dev/fuse` (a
/// failed registration does that) so no request waits for a queue that
/// never comes.
pub fn start(fs: &Arc<CasaFs>) -> Option<Queues> {
    let dev = fs.device()?;
    let fs = fs.clone();
    let n = possible_cpus();
    let owner = (!fs.settings().allow_other).then(|| unsafe { libc::geteuid() });
    let connection = connection_of(&fs.settings().mountpoint);
    let handoff = handoff::Handoff::new(fs.settings().handoff, fs.stats().clone());
    let (threads_per_queue, entries) = if fs.backing_has_servers() {
        SERVED_LAYOUT
    } else {
        LOCAL_LAYOUT
    };
    let shared = Arc::new(Shared {
        fs,
        dev,
        payload_len: PAYLOAD_LEN,
        owner,
        live: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        restarts: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        connection,
        handoff,
        workers: Arc::default(),
        entries,
    });
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    let mut started = vec![0usize; n];
    let mut why = None;
    for qid in 0..n {
        for _ in 0..threads_per_queue {
            match spawn_thread(&shared, qid as u16, Some(tx.clone())) {
                Ok(t) => threads.push(t),
                Err(e) => why = Some(format!("cannot start a queue thread: {e}")),
            }
        }
    }
    drop(tx);
    for _ in 0..threads.len() {
        match rx.recv() {
            Ok((qid, Ok(()))) => started[qid as usize] += 1,
            Ok((_, Err(e))) => why = Some(e),
            Err(_) => break,
        }
    }
    match started.iter().position(|&k| k == 0) {
        Some(q) => {
            let why = why.unwrap_or_default();
            tracing::warn!(
                "FUSE over io_uring unavailable, serving through /dev/fuse: queue {q} did not start: {why}"
            );
            force_fallback(&shared);
        }
        None => {
            shared.fs.stats().ring_queues.store(n as u64, Relaxed);
            // Only now: after a fallback to /dev/fuse there is no handoff.
            let on = shared.handoff.enabled();
            shared.fs.stats().ring_handoff.store(on, Relaxed);
            if let Some(e) = why {
                tracing::warn!("a queue thread did not start: {e}");
            }
            let handoff = if on { "on" } else { "off" };
            tracing::info!(
                "serving through FUSE over io_uring: {n} CPU queues, each served by {threads_per_queue} thread(s) of {entries} ring entries, CPU handoff {handoff}"
            );
        }
    }
    let workers = shared.workers.clone();
    Some(Queues { threads, workers })
}

/// A registration the kernel refuses (a queue that does not exist) turns
/// io_uring off for the connection: requests flow through `/dev/fuse`.
/// Where even that cannot be sent, the connection is ended rather than
/// left with requests waiting forever.
fn force_fallback(shared: &Shared) {
    let sent = FALLBACK_RING.lock().take().is_some_and(|mut ring| {
        let iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 2];
        let sqe = queue::register_sqe(shared.dev.as_raw_fd(), u16::MAX, iov.as_ptr());
        unsafe { ring.submission().push(&sqe) }.is_ok() && ring.submit_and_wait(1).is_ok()
    });
    if !sent {
        tracing::error!("cannot switch the connection back to /dev/fuse");
        shared.abort_connection();
    }
}

/// Pins the calling thread to `cpu` where allowed: the point is to run on
/// the CPU whose callers this queue serves. Where not allowed (a cpuset, an
/// offline CPU) the thread runs anywhere; it still serves its queue.
fn pin(cpu: usize) {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return;
        }
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_machines_possible_cpus_are_counted() {
        let n = super::possible_cpus();
        assert!(n >= std::thread::available_parallelism().unwrap().get());
    }
}
