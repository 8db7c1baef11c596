//! What a change made beneath the mount (`crate::watch`) makes the kernel
//! forget: the name that was made, removed or renamed, the attributes of
//! what changed. Where casafs hears of every such change, the kernel may
//! keep names and attributes long (`CasaFs::cache_time`).

use std::ffi::CStr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};

use super::CasaFs;
use crate::config::AUTO_CACHE_TIME;
use crate::inode::Inode;
use crate::sys;
use crate::watch::Change;

/// FUSE_NOTIFY_INVAL_INODE and FUSE_NOTIFY_INVAL_ENTRY (the kernel's
/// `fuse_notify_code`).
const INVAL_INODE: i32 = 2;
const INVAL_ENTRY: i32 = 3;

impl CasaFs {
    /// Whether casafs hears of every change made beneath the mount to the
    /// names in `dir`, watching it now if it can. Never in the areas:
    /// casafs routes objects there itself and retention removes them,
    /// neither of which the kernel sees happen.
    pub(super) fn names_watched(&self, dir: &Inode) -> bool {
        let Some(w) = &self.watch else {
            return false;
        };
        if dir.names_watched.load(Relaxed) {
            return w.running();
        }
        if !dir.is_dir()
            || dir.in_area
            || dir.area_view
            || dir.private
            || self.routing.is_area_dir(dir)
            || (self.live.entry_timeout() != AUTO_CACHE_TIME
                && self.live.attr_timeout() != AUTO_CACHE_TIME)
        {
            return false;
        }
        let watched = crate::creds::as_root(|| {
            dir.dir_fd()
                .is_ok_and(|fd| w.add_dir(dir.nodeid, dir.dev, fd.as_raw_fd()))
        });
        if watched {
            dir.names_watched.store(true, Relaxed);
        }
        watched
    }

    /// Whether changes beneath the mount to `node` (its name, its
    /// attributes) are heard of.
    pub(super) fn watched(&self, node: &Inode) -> bool {
        node.watched.load(Relaxed) && self.watch.as_ref().is_some_and(|w| w.running())
    }

    /// The kernel let go of `inode`: no name in it is cached any more, so
    /// changes there need not be heard of.
    pub(super) fn unwatch(&self, inode: &Inode) {
        if let Some(w) = &self.watch
            && inode.names_watched.swap(false, Relaxed)
        {
            crate::creds::as_root(|| {
                let fd = inode.dir_fd().ok();
                w.remove_dir(inode.nodeid, inode.dev, fd.as_ref().map(|f| f.as_raw_fd()));
            });
        }
    }

    /// Tells the kernel what `change` made stale.
    fn forget_stale(&self, change: Change<'_>) {
        match change {
            Change::Name { dir, name } => self.inval_entry(dir, name),
            Change::Attrs { dir, name, written } => {
                let Some(node) = self.node_named(dir, name) else {
                    return;
                };
                // A write through casafs goes to the backing file straight
                // from the writer (kernel passthrough): the kernel saw it.
                if written && node.open.lock().handles > 0 {
                    return;
                }
                self.inval_inode(node.nodeid);
            }
            Change::Dir(dir) => self.inval_inode(dir),
            Change::Lost => {
                tracing::error!(
                    "changes beneath the mount were lost; the kernel forgets every name and attribute casafs gave it (names it was told are missing stay so for the name cache time)"
                );
                for node in self.inodes.all() {
                    self.inval_inode(node.nodeid);
                    if let Some((parent, name)) = node.parent_name() {
                        self.inval_entry(parent.nodeid, &name);
                    }
                }
            }
        }
    }

    /// The node the kernel knows as `name` in directory node `dir`, if any.
    fn node_named(&self, dir: u64, name: &CStr) -> Option<Arc<Inode>> {
        let d = self.inodes.get(dir).ok()?;
        let fd = d.dir_fd().ok()?;
        let st = sys::stat_cached_at(fd.as_raw_fd(), name).ok()?;
        let node = self
            .inodes
            .get(self.inodes.peek_nodeid(st.st_dev, st.st_ino))
            .ok()?;
        node.same(&st).then_some(node)
    }

    fn inval_inode(&self, nodeid: u64) {
        // fuse_notify_inval_inode_out: the node, then offset and length;
        // a negative offset drops the attributes only (cached contents
        // are checked against the new mtime when the kernel next asks).
        let mut body = Vec::with_capacity(24);
        body.extend_from_slice(&nodeid.to_ne_bytes());
        body.extend_from_slice(&(-1i64).to_ne_bytes());
        body.extend_from_slice(&0i64.to_ne_bytes());
        self.notify(INVAL_INODE, &body);
    }

    fn inval_entry(&self, parent: u64, name: &CStr) {
        // fuse_notify_inval_entry_out: the parent, the name's length, flags;
        // then the name and its NUL.
        let name = name.to_bytes_with_nul();
        let mut body = Vec::with_capacity(16 + name.len());
        body.extend_from_slice(&parent.to_ne_bytes());
        body.extend_from_slice(&((name.len() - 1) as u32).to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        body.extend_from_slice(name);
        self.notify(INVAL_ENTRY, &body);
    }

    /// Writes a notification to the FUSE device: a fuse_out_header whose
    /// `unique` is 0 and whose `error` is the notification's code.
    fn notify(&self, code: i32, body: &[u8]) {
        let Some(dev) = self.dev.get() else {
            return;
        };
        let len = 16 + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&code.to_ne_bytes());
        msg.extend_from_slice(&0u64.to_ne_bytes());
        msg.extend_from_slice(body);
        let rc = unsafe { libc::write(dev.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
        // ENOENT: the kernel holds nothing of it (any more).
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::debug!("cannot tell the kernel of a change beneath the mount: {e}");
            }
        }
    }
}

/// Starts hearing of changes made beneath the mount, once the kernel is
/// connected.
pub fn start_watch(fs: Weak<CasaFs>) {
    let Some(f) = fs.upgrade() else {
        return;
    };
    let Some(watch) = f.watch.clone() else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("casafs-watch".into())
        .spawn(move || {
            watch.run(|change| {
                if let Some(f) = fs.upgrade() {
                    f.forget_stale(change);
                }
            })
        });
    if let Err(e) = spawned {
        tracing::error!("changes beneath the mount go unheard: cannot start their thread: {e}");
        if let Some(w) = &f.watch {
            w.stopped();
        }
        f.forget_stale(Change::Lost);
    }
}
