//! One queue thread: its own ring with a few entries (each a header buffer
//! and a payload buffer the kernel copies requests into), registered on the
//! CPU queue it serves, then: wait for requests, serve each (or hand it to
//! a worker if it may wait on the disk), commit the reply and fetch the
//! next, until the connection goes away.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::reply::{Answer, RingReply};
use super::{Ring, Shared, abi, handoff, serve, workers};

const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

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

/// A ring entry's memory: the header and payload buffers the kernel knows
/// by address, and a spare buffer replies are built in when the request's
/// arguments still occupy the payload buffer.
pub(super) struct Entry {
    header: Buf,
    payload: Buf,
    spare: Buf,
    iov: Box<[libc::iovec; 2]>,
}

impl Entry {
    fn new(payload_len: usize) -> std::io::Result<Entry> {
        let header = Buf::new(4096)?;
        let payload = Buf::new(payload_len)?;
        let spare = Buf::new(payload_len)?;
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
        Ok(Entry {
            header,
            payload,
            spare,
            iov,
        })
    }

    /// Gives the memory up for good, the entry itself included: the kernel
    /// may still hold the addresses of an entry it did not hand back, and
    /// a worker the entry it was handed.
    fn abandon(self: Box<Self>) {
        Box::leak(self);
    }
}

fn cmd_area(qid: u16, commit_id: u64) -> [u8; 80] {
    // struct fuse_uring_cmd_req: flags u64, commit_id u64, qid u16.
    let mut c = [0u8; 80];
    c[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    c[16..18].copy_from_slice(&qid.to_ne_bytes());
    c
}

pub(super) fn register_sqe(dev: RawFd, qid: u16, iov: *const libc::iovec) -> squeue::Entry128 {
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

/// A ring entry handed to a worker, which writes its reply into it.
pub(super) struct EntryRef(*const Entry);

// SAFETY: the entry's buffers are the worker's alone between the hand-over
// and the commit id coming back (see `serve_loop`).
unsafe impl Send for EntryRef {}

impl EntryRef {
    /// # Safety
    /// Only while the entry is handed over: its queue thread neither frees
    /// nor touches it until the worker reports it done.
    pub(super) unsafe fn get(&self) -> &Entry {
        unsafe { &*self.0 }
    }
}

/// How a thread's loop ended.
enum End {
    /// The connection went away: nothing left to serve.
    Disconnected,
    /// The ring or an entry failed while the connection lives.
    Failed,
}

/// The `user_data` of the read of the workers' eventfd; an entry's is its
/// index.
const WORKERS_DONE: u64 = u64::MAX;

/// The thread body. `ready` hears whether the queue got its entries.
pub(super) fn run(
    shared: Arc<Shared>,
    qid: u16,
    ready: Option<mpsc::Sender<(u16, Result<(), String>)>>,
) {
    super::pin(qid as usize);
    let dev = shared.dev.as_raw_fd();
    let setup = || -> std::io::Result<(Ring, Vec<Box<Entry>>, Arc<workers::Done>)> {
        if crate::fault::queue_fails(qid) {
            return Err(std::io::Error::other(
                "fault injected by CASAFS_FAULT_QUEUE",
            ));
        }
        // One thread submits and waits on this ring, so the kernel may run
        // the work that hands it a request in that thread's own wait
        // (DEFER_TASKRUN) rather than interrupting it: 0.5 µs of a ~14 µs
        // round trip here. Where the flags are refused (a filter on
        // io_uring_setup), a plain ring works the same, a little slower.
        let size = 2 * shared.entries as u32 + 2;
        let ring = match IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(size)
        {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("queue {qid}: plain ring ({e} with DEFER_TASKRUN)");
                IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(size)?
            }
        };
        let entries = (0..shared.entries)
            .map(|_| Entry::new(shared.payload_len).map(Box::new))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok((ring, entries, workers::Done::new()?))
    };
    let (mut ring, entries, done) = match setup() {
        Ok(v) => v,
        Err(e) => {
            match ready {
                // At start: `start` decides whether the queue has a thread.
                Some(tx) => {
                    shared.live[qid as usize].fetch_sub(1, Relaxed);
                    let _ = tx.send((qid, Err(format!("queue {qid}: {e}"))));
                }
                // A replacement: the same budget as any failed thread.
                None => {
                    tracing::error!("queue {qid}: {e}");
                    shared.thread_lost(qid);
                }
            }
            return;
        }
    };
    let mut q = Queue {
        shared: &shared,
        dev,
        qid,
        entries,
        at_worker: vec![false; shared.entries],
        done,
        count: Box::new(0),
    };
    let member = shared.handoff.join();
    let ended = q.serve_loop(&mut ring, ready, member.as_ref());
    // A thread that fails while workers hold requests commits their
    // replies first: no one else knows their commit ids, and their callers
    // would wait for ever. Where even that fails, the connection ends, so
    // they get errors instead.
    if matches!(ended, End::Failed) && !q.commit_handed_over(&mut ring) {
        shared.abort_connection();
    }
    // Close the ring before the buffers go: the kernel copies into them
    // until the entries are cancelled.
    drop(ring);
    let handed_over = q.at_worker.iter().any(|&w| w);
    let entries = std::mem::take(&mut q.entries);
    if matches!(ended, End::Failed) || handed_over {
        // The kernel may still hold the addresses of an entry it did not
        // hand back, and a worker may still write into one.
        entries.into_iter().for_each(Entry::abandon);
    }
    if matches!(ended, End::Failed) {
        shared.thread_lost(qid);
    }
}

/// A queue thread's entries and where each one is.
struct Queue<'a> {
    shared: &'a Arc<Shared>,
    dev: RawFd,
    qid: u16,
    /// Boxed: a worker holds the address of the entry it was handed, which
    /// must outlive this Vec when the thread ends without it.
    #[allow(clippy::vec_box)]
    entries: Vec<Box<Entry>>,
    /// Handed to a worker, whose commit id comes back through `done`.
    at_worker: Vec<bool>,
    done: Arc<workers::Done>,
    /// Where the ring reads the workers' eventfd count into.
    count: Box<u64>,
}

fn push(ring: &mut Ring, sqe: &squeue::Entry128) -> bool {
    if unsafe { ring.submission().push(sqe) }.is_ok() {
        return true;
    }
    // Full: the ring has room for every entry and the eventfd read twice
    // over, so this does not happen; if it did, submitting makes room.
    ring.submit().is_ok() && unsafe { ring.submission().push(sqe) }.is_ok()
}

impl Queue<'_> {
    fn read_done_sqe(&mut self) -> squeue::Entry128 {
        let count: *mut u64 = &mut *self.count;
        opcode::Read::new(types::Fd(self.done.efd.as_raw_fd()), count.cast(), 8)
            .build()
            .user_data(WORKERS_DONE)
            .into()
    }

    fn register(&self, idx: usize) -> squeue::Entry128 {
        register_sqe(self.dev, self.qid, self.entries[idx].iov.as_ptr()).user_data(idx as u64)
    }

    fn commit(&self, idx: usize, commit_id: u64) -> squeue::Entry128 {
        commit_sqe(self.dev, self.qid, commit_id).user_data(idx as u64)
    }

    /// Serves requests until the connection goes away or the ring fails.
    fn serve_loop(
        &mut self,
        ring: &mut Ring,
        ready: Option<mpsc::Sender<(u16, Result<(), String>)>>,
        handoff: Option<&handoff::Member>,
    ) -> End {
        let qid = self.qid;
        // What each entry last asked of the kernel, to ask again on EINTR.
        let mut last: Vec<squeue::Entry128> =
            (0..self.entries.len()).map(|i| self.register(i)).collect();
        let mut renewals = 0;
        let read_done = self.read_done_sqe();
        let queued = last.iter().all(|s| push(ring, s)) && push(ring, &read_done);
        let submitted = if queued {
            ring.submit().map(|_| ()).map_err(|e| e.to_string())
        } else {
            Err("cannot queue the registration".to_string())
        };
        if let Some(tx) = ready {
            // The kernel refuses a bad registration with a completion,
            // handled below like any failed entry.
            let _ = tx.send((
                qid,
                submitted.clone().map_err(|e| format!("queue {qid}: {e}")),
            ));
        }
        if submitted.is_err() {
            return End::Failed;
        }
        loop {
            match ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EAGAIN | libc::EBUSY | libc::ENOMEM)
                    ) =>
                {
                    // Short of memory or completion room for a moment.
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    continue;
                }
                Err(e) => {
                    tracing::error!("queue {qid}: io_uring_enter: {e}");
                    return End::Failed;
                }
            }
            let mut replied = false;
            loop {
                let Some((tag, res)) = ring
                    .completion()
                    .next()
                    .map(|c| (c.user_data(), c.result()))
                else {
                    break;
                };
                if tag == WORKERS_DONE {
                    if res < 0 && res != -libc::EINTR && res != -libc::EAGAIN {
                        tracing::error!(
                            "queue {qid}: reading the workers' eventfd: {}",
                            std::io::Error::from_raw_os_error(-res)
                        );
                        return End::Failed;
                    }
                    for (idx, commit_id) in self.done.take() {
                        self.at_worker[idx] = false;
                        last[idx] = self.commit(idx, commit_id);
                        if !push(ring, &last[idx]) {
                            return End::Failed;
                        }
                        replied = true;
                    }
                    let again = self.read_done_sqe();
                    if !push(ring, &again) {
                        return End::Failed;
                    }
                    continue;
                }
                let idx = tag as usize;
                if idx >= self.entries.len() {
                    continue;
                }
                if res >= 0 {
                    if let Some(commit_id) = self.serve_or_hand_over(idx) {
                        last[idx] = self.commit(idx, commit_id);
                        replied = true;
                    } else {
                        continue;
                    }
                } else if res == -libc::EAGAIN || res == -libc::EINTR {
                    // Registered before the kernel finished INIT: the same
                    // again.
                } else if [libc::ENOTCONN, libc::ECONNABORTED, libc::ECANCELED].contains(&-res) {
                    return End::Disconnected;
                } else {
                    // The kernel gave this entry up (it refused the
                    // registration or the commit): a new entry in new
                    // memory, the old one abandoned.
                    tracing::error!(
                        "queue {qid}: the kernel refused a ring entry: {}",
                        std::io::Error::from_raw_os_error(-res)
                    );
                    renewals += 1;
                    if renewals > 3 {
                        self.shared.fs.stats().ring_queues.store(0, Relaxed);
                        return End::Failed;
                    }
                    let Ok(fresh) = Entry::new(self.shared.payload_len).map(Box::new) else {
                        return End::Failed;
                    };
                    std::mem::replace(&mut self.entries[idx], fresh).abandon();
                    last[idx] = self.register(idx);
                }
                if !push(ring, &last[idx]) {
                    return End::Failed;
                }
            }
            if replied && let Some(m) = handoff {
                m.before_reply();
            }
        }
    }

    /// Waits for the replies of the requests workers hold and commits
    /// them; false if they could not be committed.
    fn commit_handed_over(&mut self, ring: &mut Ring) -> bool {
        let mut pushed = true;
        while self.at_worker.iter().any(|&w| w) {
            let mut n = 0u64;
            // Blocking: the ring that would report it is failing.
            let r =
                unsafe { libc::read(self.done.efd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
            if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return false;
            }
            for (idx, commit_id) in self.done.take() {
                self.at_worker[idx] = false;
                pushed &= push(ring, &self.commit(idx, commit_id));
            }
        }
        pushed && ring.submit().is_ok()
    }

    /// Serves entry `idx`'s request and returns its commit id, or hands it
    /// to a worker (None) if it may wait on the disk.
    fn serve_or_hand_over(&mut self, idx: usize) -> Option<u64> {
        let e = &self.entries[idx];
        // SAFETY: the header is the kernel's until the CQE, ours after.
        let opcode = unsafe { e.header.ptr.add(4).cast::<u32>().read_unaligned() };
        if workers::may_wait_long(opcode)
            && self
                .shared
                .workers
                .hand(self.shared, EntryRef(&**e), idx, &self.done)
        {
            self.at_worker[idx] = true;
            return None;
        }
        Some(handle(self.shared, e))
    }
}

/// Serves the request in the entry's buffers and writes the reply there.
/// Returns the commit id to hand the entry back with.
///
/// Handlers read their arguments (names, write data) from the payload
/// buffer, so a request that came with arguments is answered into the spare
/// buffer first and copied over once the handler is done. A handler that
/// panics answers EIO, and the thread goes on serving.
pub(super) fn handle(shared: &Shared, e: &Entry) -> u64 {
    let (header, payload, spare) = (&e.header, &e.payload, &e.spare);
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
    let served = crate::transport::panic_guard(|| {
        // SAFETY: see above; `out` is not the buffer `args` lives in unless
        // there are no arguments.
        let args = unsafe { std::slice::from_raw_parts(payload.ptr, sz) };
        let r = unsafe { RingReply::new(out.ptr, out.len, limit, &mut ans) };
        serve::serve(&shared.fs, shared.owner, &h, op_in, args, r);
    });
    if served.is_none() {
        ans = Answer::unanswered();
    }
    shared.fs.stats().ring_requests.fetch_add(1, Relaxed);
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

    #[test]
    fn commit_entries_carry_the_commit_id() {
        let sqe = super::commit_sqe(5, 1, 0xabcd);
        let raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        assert_eq!(u32::from_ne_bytes(raw[8..12].try_into().unwrap()), 2);
        assert_eq!(
            u64::from_ne_bytes(raw[48 + 8..48 + 16].try_into().unwrap()),
            0xabcd
        );
    }
}
