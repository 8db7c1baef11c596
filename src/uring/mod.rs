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
//! INTERRUPT there, and falls back to it for everything if any queue fails
//! to register.
//!
//! Each thread owns one ring with one entry, so a slow request (an fsync
//! on a busy disk) only holds its own thread: the kernel gives the next
//! request of that CPU to another idle entry.

pub mod abi;
mod reply;
mod serve;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use crate::fs::CasaFs;
use reply::{Answer, RingReply};

const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

/// Threads (each with one ring entry) per CPU queue.
pub const THREADS_PER_QUEUE: usize = 2;

/// The kernel's switch for FUSE over io_uring (off by default).
const ENABLE_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

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

/// Whether this process may create io_uring instances (they can be turned
/// off by `kernel.io_uring_disabled` or a seccomp filter). Asked before INIT
/// is answered: once io_uring is agreed, requests wait for the queues.
pub fn usable() -> bool {
    IoUring::<squeue::Entry128, cqueue::Entry>::builder()
        .build(2)
        .is_ok()
}

/// The queue count the kernel expects: one per possible CPU.
fn possible_cpus() -> usize {
    let parsed = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            let last = s.trim().rsplit([',', '-']).next()?.parse::<usize>().ok()?;
            Some(last + 1)
        });
    parsed.unwrap_or_else(|| unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as usize)
}

/// A page-aligned anonymous mapping the kernel copies requests into. Pages
/// are only backed once touched.
struct Buf {
    ptr: *mut u8,
    len: usize,
}

impl Buf {
    fn new(len: usize) -> std::io::Result<Buf> {
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Buf { ptr: p.cast(), len })
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn cmd_area(qid: u16, commit_id: u64) -> [u8; 80] {
    // struct fuse_uring_cmd_req: flags u64, commit_id u64, qid u16.
    let mut c = [0u8; 80];
    c[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    c[16..18].copy_from_slice(&qid.to_ne_bytes());
    c
}

fn register_sqe(dev: RawFd, qid: u16, iov: *const libc::iovec) -> squeue::Entry128 {
    let sqe = opcode::UringCmd80::new(types::Fd(dev), CMD_REGISTER)
        .cmd(cmd_area(qid, 0))
        .addr(Some(iov as u64))
        .build();
    // The crate has no setter for `len`: the kernel wants the iovec count
    // (header and payload) there, at byte 24 of the entry.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

fn commit_sqe(dev: RawFd, qid: u16, commit_id: u64) -> squeue::Entry128 {
    opcode::UringCmd80::new(types::Fd(dev), CMD_COMMIT_AND_FETCH)
        .cmd(cmd_area(qid, commit_id))
        .build()
}

/// The running queues.
pub struct Queues {
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Queues {
    /// Waits for the queue threads, which end when the connection goes
    /// away, for at most `limit`: a thread still inside a request is left
    /// to the process's exit.
    pub fn join(self, limit: std::time::Duration) {
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

/// Starts the queue threads once INIT agreed on io_uring. If any queue
/// cannot start, the kernel is made to fall back to `/dev/fuse` (a failed
/// registration does that) so no request waits for a queue that never
/// comes.
pub fn start(fs: Arc<CasaFs>, dev: Arc<OwnedFd>, payload_len: usize) -> Queues {
    let n = possible_cpus();
    let (tx, rx) = mpsc::channel::<Result<(), String>>();
    let mut threads = Vec::new();
    let mut failed: Option<String> = None;
    for qid in 0..n {
        for k in 0..THREADS_PER_QUEUE {
            let (fs, dev, tx) = (fs.clone(), dev.clone(), tx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("casafs-q{qid}.{k}"))
                .stack_size(512 * 1024)
                .spawn(move || queue_thread(&fs, &dev, qid as u16, payload_len, &tx));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => failed = Some(format!("cannot start a queue thread: {e}")),
            }
        }
    }
    drop(tx);
    for _ in 0..threads.len() {
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = Some(e),
            Err(_) => break,
        }
    }
    match failed {
        Some(e) => {
            tracing::warn!("FUSE over io_uring unavailable, serving through /dev/fuse: {e}");
            force_fallback(dev.as_raw_fd());
        }
        None => {
            fs.stats.ring_queues.store(n as u64, Relaxed);
            tracing::info!(
                "serving through FUSE over io_uring: {n} CPU queues, {THREADS_PER_QUEUE} threads each"
            );
        }
    }
    Queues { threads }
}

/// A registration the kernel refuses (a queue that does not exist) turns
/// io_uring off for the connection: requests flow through `/dev/fuse`.
fn force_fallback(dev: RawFd) {
    let Ok(mut ring) = IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(2) else {
        return;
    };
    let iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; 2];
    let sqe = register_sqe(dev, u16::MAX, iov.as_ptr());
    if unsafe { ring.submission().push(&sqe) }.is_ok() {
        let _ = ring.submit_and_wait(1);
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

type Ring = IoUring<squeue::Entry128, cqueue::Entry>;

/// Fault injection for the tests: `CASAFS_FAULT_QUEUE=N` makes queue N fail
/// to start, as a thread or ring the system refuses would.
fn injected_fault(qid: u16) -> bool {
    std::env::var("CASAFS_FAULT_QUEUE").is_ok_and(|v| v.parse() == Ok(qid))
}

fn queue_thread(
    fs: &CasaFs,
    dev: &OwnedFd,
    qid: u16,
    payload_len: usize,
    ready: &mpsc::Sender<Result<(), String>>,
) {
    pin(qid as usize);
    let setup = || -> std::io::Result<(Ring, Buf, Buf, Buf)> {
        if injected_fault(qid) {
            return Err(std::io::Error::other(
                "fault injected by CASAFS_FAULT_QUEUE",
            ));
        }
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(4)?;
        let bufs = (
            Buf::new(4096)?,
            Buf::new(payload_len)?,
            Buf::new(payload_len)?,
        );
        Ok((ring, bufs.0, bufs.1, bufs.2))
    };
    let (mut ring, header, payload, spare) = match setup() {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(format!("queue {qid}: {e}")));
            return;
        }
    };
    let iov = Box::new([
        libc::iovec {
            iov_base: header.ptr.cast(),
            iov_len: abi::HEADER_SIZE,
        },
        libc::iovec {
            iov_base: payload.ptr.cast(),
            iov_len: payload.len,
        },
    ]);
    let dev = dev.as_raw_fd();
    let register = register_sqe(dev, qid, iov.as_ptr());
    let submitted = unsafe { ring.submission().push(&register) }
        .map_err(|_| "submission queue full".to_string())
        .and_then(|_| ring.submit().map_err(|e| e.to_string()));
    if let Err(e) = submitted {
        let _ = ready.send(Err(format!("queue {qid}: {e}")));
        return;
    }
    let _ = ready.send(Ok(()));

    let clean = serve_loop(
        fs,
        &mut ring,
        dev,
        qid,
        [&header, &payload, &spare],
        &register,
    );
    // Close the ring before the buffers go: the kernel copies into them
    // until the entry is cancelled.
    drop(ring);
    drop(iov);
    if !clean {
        // The kernel may still hold the entry's buffer addresses.
        std::mem::forget(header);
        std::mem::forget(payload);
    }
}

/// Serves requests until the connection goes away (true) or the ring fails
/// (false).
fn serve_loop(
    fs: &CasaFs,
    ring: &mut Ring,
    dev: RawFd,
    qid: u16,
    [header, payload, spare]: [&Buf; 3],
    register: &squeue::Entry128,
) -> bool {
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => {
                tracing::error!("queue {qid}: io_uring_enter: {e}");
                return false;
            }
        }
        let Some(cqe) = ring.completion().next() else {
            continue;
        };
        let res = cqe.result();
        if res == -libc::EAGAIN || res == -libc::EINTR {
            // Registered before the kernel finished INIT: register again.
            if unsafe { ring.submission().push(register) }.is_err() {
                return false;
            }
            continue;
        }
        if res < 0 {
            if ![libc::ENOTCONN, libc::ECONNABORTED, libc::ECANCELED].contains(&-res) {
                fs.stats.ring_queues.store(0, Relaxed);
                tracing::error!(
                    "queue {qid}: the kernel refused the ring entry: {}",
                    std::io::Error::from_raw_os_error(-res)
                );
            }
            return true;
        }
        let commit_id = handle(fs, header, payload, spare);
        fs.stats.ring_requests.fetch_add(1, Relaxed);
        let sqe = commit_sqe(dev, qid, commit_id);
        if unsafe { ring.submission().push(&sqe) }.is_err() {
            return false;
        }
    }
}

/// Serves the request in the entry's buffers and writes the reply there.
/// Returns the commit id to hand the entry back with.
///
/// Handlers read their arguments (names, write data) from the payload
/// buffer, so a request that came with arguments is answered into `spare`
/// first and copied over once the handler is done.
fn handle(fs: &CasaFs, header: &Buf, payload: &Buf, spare: &Buf) -> u64 {
    let mut head = [0u8; abi::HEADER_SIZE];
    // SAFETY: between a request's CQE and its commit the entry's buffers
    // belong to this thread alone; the header area is HEADER_SIZE bytes.
    unsafe { std::ptr::copy_nonoverlapping(header.ptr, head.as_mut_ptr(), abi::HEADER_SIZE) };
    let h: abi::InHeader = abi::read(&head);
    let op_in = &head[abi::OP_IN..abi::OP_IN + 128];
    let commit_id = abi::read::<u64>(&head[abi::ENT_COMMIT_ID..]);
    let sz = (abi::read::<u32>(&head[abi::ENT_PAYLOAD_SZ..]) as usize).min(payload.len);
    let out = if sz == 0 { payload } else { spare };
    let mut ans = Answer::unanswered();
    let limit = serve::reply_limit(h.opcode, op_in);
    {
        // SAFETY: see above; `out` is not the buffer `args` lives in unless
        // there are no arguments.
        let args = unsafe { std::slice::from_raw_parts(payload.ptr, sz) };
        let r = unsafe { RingReply::new(out.ptr, out.len, limit, &mut ans) };
        serve::serve(fs, &h, op_in, args, r);
    }
    let len = ans.len.min(payload.len);
    let out_header = abi::OutHeader {
        len: (16 + len) as u32,
        error: ans.error,
        unique: h.unique,
    };
    // SAFETY: both buffers are ours until the commit and large enough.
    unsafe {
        if sz != 0 && len > 0 {
            std::ptr::copy_nonoverlapping(spare.ptr, payload.ptr, len);
        }
        std::ptr::copy_nonoverlapping(abi::bytes(&out_header).as_ptr(), header.ptr, 16);
        std::ptr::copy_nonoverlapping(
            (len as u32).to_ne_bytes().as_ptr(),
            header.ptr.add(abi::ENT_PAYLOAD_SZ),
            4,
        );
    }
    commit_id
}

#[cfg(test)]
mod tests {
    #[test]
    fn register_entries_carry_two_iovecs_and_the_queue() {
        let iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 2];
        let sqe = super::register_sqe(5, 3, iov.as_ptr());
        let raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        assert_eq!(raw[0], 46, "IORING_OP_URING_CMD");
        assert_eq!(i32::from_ne_bytes(raw[4..8].try_into().unwrap()), 5);
        assert_eq!(u32::from_ne_bytes(raw[8..12].try_into().unwrap()), 1);
        assert_eq!(
            u64::from_ne_bytes(raw[16..24].try_into().unwrap()),
            iov.as_ptr() as u64
        );
        assert_eq!(u32::from_ne_bytes(raw[24..28].try_into().unwrap()), 2);
        assert_eq!(
            u16::from_ne_bytes(raw[48 + 16..48 + 18].try_into().unwrap()),
            3
        );
    }
}
