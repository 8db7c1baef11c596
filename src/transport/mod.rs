//! How requests reach the filesystem: a `/dev/fuse` session (`devfuse`)
//! and, where the kernel agrees, FUSE over io_uring queues, one per CPU
//! (`uring`). Both hand each request to the handlers of `crate::fs`, which
//! never see either. The server owns the filesystem and the queues.

pub mod devfuse;
pub mod uring;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use crate::fs::CasaFs;

/// The filesystem and the transports serving it.
pub struct Server {
    pub fs: Arc<CasaFs>,
    /// INIT agreed on FUSE over io_uring: the queues serve requests.
    uring: AtomicBool,
    queues: parking_lot::Mutex<Option<uring::Queues>>,
}

impl Server {
    pub fn new(fs: Arc<CasaFs>) -> Arc<Server> {
        Arc::new(Server {
            fs,
            uring: AtomicBool::new(false),
            queues: parking_lot::Mutex::new(None),
        })
    }

    /// Once INIT is answered: if it agreed on io_uring, every request now
    /// waits for the CPU queues, which start here.
    pub fn start_queues(&self) {
        if self.uring.load(Relaxed) {
            *self.queues.lock() = uring::start(&self.fs);
        }
    }

    /// The connection ended: the queues finish what they serve (a last
    /// release) before the filesystem lets go of its graveyard.
    fn stop(&self) {
        if let Some(q) = self.queues.lock().take() {
            q.join(std::time::Duration::from_secs(10));
        }
        self.fs.destroy();
    }
}

/// Runs a handler so that a bug that panics costs only its own request:
/// the reply object is dropped on the way out, which answers EIO, and the
/// thread goes on serving. None: it panicked.
pub fn panic_guard<R>(f: impl FnOnce() -> R) -> Option<R> {
    // What this thread does, the kernel asked for and sees.
    crate::watch::request_starts();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(_) => {
            tracing::error!("a request handler panicked; the request was answered EIO");
            None
        }
    }
}
