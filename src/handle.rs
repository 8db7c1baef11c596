//! The handle table: every open file and directory the kernel holds a file
//! handle (`fh`) for, with the backing descriptor that serves it.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::inode::Inode;
use crate::sys::{Errno, Res};

/// A directory stream: the backing descriptor and where the kernel's last
/// readdir left it.
pub struct DirStream {
    pub fd: OwnedFd,
    /// The offset the descriptor is at, to skip the `lseek` on sequential
    /// reads.
    pub pos: i64,
    pub buf: Vec<u8>,
    pub len: usize,
    pub at: usize,
    /// Since when every name this stream handed out is fresh in the
    /// kernel's cache (`sys::coarse_now_ns`): a name given with attributes
    /// from the moment it went out, a name given bare (readdirplus without
    /// attributes) from when the kernel last got it. 0 once a plain
    /// readdir handed out a name, which refreshes nothing, or the stream
    /// jumped; `u64::MAX` while nothing went out.
    pub names_fresh_since: u64,
}

pub enum Body {
    File(OwnedFd),
    Dir(Mutex<DirStream>),
    /// A control file: its content frozen at open, so a reader sees one
    /// consistent snapshot; `reader` is the uid that opened it.
    Control {
        data: Arc<[u8]>,
        reader: u32,
    },
    ControlDir,
}

pub struct Handle {
    pub inode: Arc<Inode>,
    pub body: Body,
    /// Who opened it: the handle counts against that user's share of the
    /// daemon's descriptors, and writes the kernel makes on its own behalf
    /// (write-back of a shared mapping) run with its rights.
    pub opener: crate::creds::Caller,
    /// Kernel passthrough serves this handle's I/O.
    pub passthrough: bool,
    pub append: bool,
    /// Open for writing with kernel passthrough (`OpenState::writers`).
    pub writer: bool,
}

impl Handle {
    pub fn fd(&self) -> Res<RawFd> {
        match &self.body {
            Body::File(fd) => Ok(fd.as_raw_fd()),
            Body::Dir(d) => Ok(d.lock().fd.as_raw_fd()),
            Body::Control { .. } | Body::ControlDir => Err(Errno::EBADF),
        }
    }
}

#[derive(Default)]
pub struct HandleTable {
    map: DashMap<u64, Arc<Handle>>,
    next: AtomicU64,
    /// Handles each user holds.
    per_user: DashMap<u32, usize>,
    /// Handles all users but root hold.
    of_users: AtomicUsize,
}

impl HandleTable {
    /// Whether `uid` may open one more handle: within its own share
    /// (`EMFILE` past it) and the users' share together (`ENFILE`, as a
    /// full system file table). Root always may: it is the operator's.
    pub fn admit(&self, uid: u32) -> Res<()> {
        if uid == 0 {
            return Ok(());
        }
        if self
            .per_user
            .get(&uid)
            .is_some_and(|n| *n >= crate::fdbudget::handles_per_user())
        {
            return Err(Errno::EMFILE);
        }
        if self.of_users.load(Ordering::Relaxed) >= crate::fdbudget::handles_of_users() {
            return Err(Errno::ENFILE);
        }
        Ok(())
    }

    pub fn insert(&self, h: Handle) -> u64 {
        if h.opener.uid != 0 {
            self.of_users.fetch_add(1, Ordering::Relaxed);
        }
        *self.per_user.entry(h.opener.uid).or_default() += 1;
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.map.insert(fh, Arc::new(h));
        fh
    }

    pub fn get(&self, fh: u64) -> Res<Arc<Handle>> {
        self.map.get(&fh).map(|h| h.clone()).ok_or(Errno::EBADF)
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<Handle>> {
        let h = self.map.remove(&fh).map(|(_, h)| h)?;
        if h.opener.uid != 0 {
            self.of_users.fetch_sub(1, Ordering::Relaxed);
        }
        if let dashmap::mapref::entry::Entry::Occupied(mut e) = self.per_user.entry(h.opener.uid) {
            *e.get_mut() = e.get().saturating_sub(1);
            if *e.get() == 0 {
                e.remove();
            }
        }
        Some(h)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
