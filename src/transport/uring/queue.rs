//! One queue thread: its own ring with one entry (a header buffer and a
//! payload buffer the kernel copies requests into), registered on the CPU
//! queue it serves, then: wait for a request, serve it, commit the reply
//! and fetch the next, until the connection goes away.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::reply::{Answer, RingReply};
use super::{Ring, Shared, abi, handoff, serve};

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
struct Entry {
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

    /// Gives the memory up for good: the kernel may still hold the
    /// addresses of an entry it did not hand back.
    fn abandon(self) {
        std::mem::forget(self);
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

/// How a thread's loop ended.
enum End {
    /// The connection went away: nothing left to serve.
    Disconnected,
    /// The ring or entry failed while the connection lives.
    Failed,
}

/// The thread body. `ready` hears whether the queue got its entry.
pub(super) fn run(
    shared: Arc<Shared>,
    qid: u16,
    ready: Option<mpsc::Sender<(u16, Result<(), String>)>>,
) {
    super::pin(qid as usize);
    let dev = shared.dev.as_raw_fd();
    let setup = || -> std::io::Result<(Ring, Entry)> {
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
        let ring = match IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(4)
        {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("queue {qid}: plain ring ({e} with DEFER_TASKRUN)");
                IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(4)?
            }
        };
        Ok((ring, Entry::new(shared.payload_len)?))
    };
    let (mut ring, entry) = match setup() {
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
    let mut entry = Some(entry);
    let member = shared.handoff.join();
    let ended = serve_loop(
        &shared,
        &mut ring,
        dev,
        qid,
        &mut entry,
        ready,
        member.as_ref(),
    );
    // Close the ring before the buffers go: the kernel copies into them
    // until the entry is cancelled.
    drop(ring);
    match ended {
        End::Disconnected => drop(entry),
        End::Failed => {
            if let Some(e) = entry {
                e.abandon();
            }
            shared.thread_lost(qid);
        }
    }
}

fn push(ring: &mut Ring, sqe: &squeue::Entry128) -> bool {
    if unsafe { ring.submission().push(sqe) }.is_ok() {
        return true;
    }
    // Full: one entry is outstanding at most, so this does not happen;
    // if it did, submitting makes room.
    ring.submit().is_ok() && unsafe { ring.submission().push(sqe) }.is_ok()
}

/// Serves requests until the connection goes away or the ring fails.
fn serve_loop(
    shared: &Arc<Shared>,
    ring: &mut Ring,
    dev: RawFd,
    qid: u16,
    entry: &mut Option<Entry>,
    ready: Option<mpsc::Sender<(u16, Result<(), String>)>>,
    handoff: Option<&handoff::Member>,
) -> End {
    let mut ready = ready;
    let Some(e) = entry.as_ref() else {
        return End::Failed;
    };
    let mut last = register_sqe(dev, qid, e.iov.as_ptr());
    let mut renewals = 0;
    let submitted = if push(ring, &last) {
        ring.submit().map(|_| ()).map_err(|e| e.to_string())
    } else {
        Err("cannot queue the registration".to_string())
    };
    if let Some(tx) = ready.take() {
        // The kernel refuses a bad registration with a completion, handled
        // below like any failed entry.
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
        let Some(cqe) = ring.completion().next() else {
            continue;
        };
        let res = cqe.result();
        if res >= 0 {
            let Some(e) = entry.as_ref() else {
                return End::Failed;
            };
            let commit_id = handle(shared, e);
            shared.fs.stats().ring_requests.fetch_add(1, Relaxed);
            last = commit_sqe(dev, qid, commit_id);
            if let Some(m) = handoff {
                m.before_reply();
            }
        } else if res == -libc::EAGAIN || res == -libc::EINTR {
            // Registered before the kernel finished INIT: the same again.
        } else if [libc::ENOTCONN, libc::ECONNABORTED, libc::ECANCELED].contains(&-res) {
            return End::Disconnected;
        } else {
            // The kernel gave this entry up (it refused the registration or
            // the commit): a new entry in new memory, the old one abandoned.
            tracing::error!(
                "queue {qid}: the kernel refused the ring entry: {}",
                std::io::Error::from_raw_os_error(-res)
            );
            renewals += 1;
            if renewals > 3 {
                shared.fs.stats().ring_queues.store(0, Relaxed);
                return End::Failed;
            }
            if let Some(old) = entry.take() {
                old.abandon();
            }
            let Ok(fresh) = Entry::new(shared.payload_len) else {
                return End::Failed;
            };
            last = register_sqe(dev, qid, fresh.iov.as_ptr());
            *entry = Some(fresh);
        }
        if !push(ring, &last) {
            return End::Failed;
        }
    }
}

/// Serves the request in the entry's buffers and writes the reply there.
/// Returns the commit id to hand the entry back with.
///
/// Handlers read their arguments (names, write data) from the payload
/// buffer, so a request that came with arguments is answered into the spare
/// buffer first and copied over once the handler is done. A handler that
/// panics answers EIO, and the thread goes on serving.
fn handle(shared: &Shared, e: &Entry) -> u64 {
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
