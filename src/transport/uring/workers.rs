//! Workers for the requests that may wait on the disk for as long as it
//! takes (an fsync, a copy of a large range): a queue thread hands them
//! over and goes on serving its CPU, and commits each reply once a worker
//! has written it into the ring entry.
//!
//! Why: on local filesystems one thread serves each CPU queue (a second
//! one costs switches between the two), so a request that blocks it would
//! hold every other request of that CPU.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::Shared;
use super::abi;
use super::queue::{self, EntryRef};

/// At most this many workers: past it requests wait for one in turn, while
/// their queue threads go on serving everything else.
const MAX_WORKERS: usize = 16;

/// Requests whose time is the disk's, not casafs's: flushing to stable
/// storage, allocating or copying ranges, and reads and writes that the
/// kernel did not pass through to the backing file.
pub(super) fn may_wait_long(opcode: u32) -> bool {
    matches!(
        opcode,
        abi::FSYNC | abi::FSYNCDIR | abi::FALLOCATE | abi::COPY_FILE_RANGE | abi::READ | abi::WRITE
    )
}

/// Where a queue thread hears of the replies its workers wrote: the entry
/// and its commit id, and a count on an eventfd its ring reads.
pub(super) struct Done {
    ready: Mutex<Vec<(usize, u64)>>,
    pub(super) efd: OwnedFd,
}

impl Done {
    pub(super) fn new() -> std::io::Result<Arc<Done>> {
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Arc::new(Done {
            ready: Mutex::new(Vec::new()),
            efd: unsafe { OwnedFd::from_raw_fd(fd) },
        }))
    }

    fn finished(&self, idx: usize, commit_id: u64) {
        self.ready.lock().push((idx, commit_id));
        let one = 1u64;
        // Fails only if the counter would overflow, which a read resets
        // long before: the queue thread reads it after every wake.
        unsafe { libc::write(self.efd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// The replies written since the last call.
    pub(super) fn take(&self) -> Vec<(usize, u64)> {
        std::mem::take(&mut *self.ready.lock())
    }
}

struct Job {
    shared: Arc<Shared>,
    entry: EntryRef,
    idx: usize,
    done: Arc<Done>,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    idle: usize,
    threads: usize,
    closed: bool,
}

/// The workers of one connection, started as requests need them.
#[derive(Default)]
pub(crate) struct Workers {
    state: Mutex<State>,
    wake: Condvar,
}

impl Workers {
    /// Hands entry `idx`'s request to a worker, starting one if none is
    /// idle. False if none can take it: the caller serves it itself.
    pub(super) fn hand(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        entry: EntryRef,
        idx: usize,
        done: &Arc<Done>,
    ) -> bool {
        let mut st = self.state.lock();
        if st.closed {
            return false;
        }
        // Every idle worker has a job waiting already: one more, if allowed.
        if st.idle <= st.jobs.len() && st.threads < MAX_WORKERS && self.start_one() {
            st.threads += 1;
        }
        if st.threads == 0 {
            return false;
        }
        st.jobs.push_back(Job {
            shared: shared.clone(),
            entry,
            idx,
            done: done.clone(),
        });
        drop(st);
        self.wake.notify_one();
        true
    }

    fn start_one(self: &Arc<Self>) -> bool {
        let me = self.clone();
        // As root: a thread starts with the credentials of the one spawning
        // it, which is serving a user.
        crate::creds::as_root(|| {
            std::thread::Builder::new()
                .name("casafs-worker".into())
                .stack_size(512 * 1024)
                .spawn(move || me.work())
        })
        .is_ok()
    }

    fn work(&self) {
        loop {
            let job = {
                let mut st = self.state.lock();
                loop {
                    if let Some(j) = st.jobs.pop_front() {
                        break j;
                    }
                    if st.closed {
                        st.threads -= 1;
                        return;
                    }
                    st.idle += 1;
                    self.wake.wait(&mut st);
                    st.idle -= 1;
                }
            };
            // SAFETY: the queue thread neither reuses nor frees an entry
            // it handed over until the commit id comes back through `done`
            // (`queue::serve_loop`), and abandons its entries if it ends
            // with one still here.
            let commit_id = queue::handle(&job.shared, unsafe { job.entry.get() });
            job.done.finished(job.idx, commit_id);
        }
    }

    /// Lets idle workers end; busy ones end after their request.
    pub(super) fn close(&self) {
        self.state.lock().closed = true;
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_that_wait_on_the_disk_go_to_workers() {
        for op in [
            abi::FSYNC,
            abi::FSYNCDIR,
            abi::FALLOCATE,
            abi::COPY_FILE_RANGE,
        ] {
            assert!(may_wait_long(op));
        }
        for op in [
            abi::LOOKUP,
            abi::GETATTR,
            abi::UNLINK,
            abi::CREATE,
            abi::READDIRPLUS,
        ] {
            assert!(!may_wait_long(op));
        }
    }

    #[test]
    fn a_finished_reply_is_counted_on_the_eventfd() {
        let d = Done::new().unwrap();
        d.finished(3, 42);
        d.finished(1, 7);
        let mut n = 0u64;
        let r = unsafe { libc::read(d.efd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
        assert_eq!((r, n), (8, 2));
        assert_eq!(d.take(), vec![(3, 42), (1, 7)]);
        assert!(d.take().is_empty());
    }
}
