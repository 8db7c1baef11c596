//! What a change made beneath the mount (`crate::watch`) makes the kernel
//! forget: the name that was made, removed or renamed, the attributes of
//! what changed. Where casafs hears of every such change, the kernel may
//! keep names and attributes long (`CasaFs::cache_time`).

use std::ffi::CStr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
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
/// FUSE_NOTIFY_INC_EPOCH (Linux 6.16): every cached name is to be asked
/// for again.
const INC_EPOCH: i32 = 8;

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
            || self.dev.get().is_none()
            || self.routing.is_area_dir(dir)
            || (self.live.entry_timeout() != AUTO_CACHE_TIME
                && self.live.attr_timeout() != AUTO_CACHE_TIME)
        {
            return false;
        }
        let Ok(fd) = crate::creds::as_root(|| dir.dir_fd()) else {
            return false;
        };
        let _held = w.registry.lock();
        if dir.names_watched.load(Relaxed) {
            return w.running();
        }
        let watched = crate::creds::as_root(|| w.add_dir(dir.nodeid, dir.dev, fd.as_raw_fd()));
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
        let Some(w) = &self.watch else {
            return;
        };
        if !inode.names_watched.load(Relaxed) {
            return;
        }
        let fd = crate::creds::as_root(|| inode.dir_fd().ok());
        let _held = w.registry.lock();
        // Unwatched first, then looked at again: a lookup that came
        // meanwhile either finds it unwatched (and watches it again, after
        // this) or is seen here and keeps it watched.
        if !inode.names_watched.swap(false, SeqCst) {
            return;
        }
        if inode.lookups.load(SeqCst) > 0 {
            inode.names_watched.store(true, SeqCst);
            return;
        }
        crate::creds::as_root(|| {
            w.remove_dir(inode.nodeid, inode.dev, fd.as_ref().map(|f| f.as_raw_fd()))
        });
    }

    /// `st` was just routed into an area as `name` in directory node
    /// `parent`: its attributes now change where casafs acts (retention,
    /// and users through the area), and the kernel, which keeps the name's
    /// old expiry across a rename, is to ask for it again soon. A routed
    /// directory stays watched: what changes in it beneath (retention, a
    /// user in the scratch area) is heard of.
    pub(super) fn routed_away(&self, st: &libc::stat, parent: u64, name: &CStr) {
        let Some(w) = &self.watch else {
            return;
        };
        if let Ok(i) = self
            .inodes
            .get(self.inodes.nodeid_for(st.st_dev, st.st_ino))
            && i.same(st)
        {
            i.watched.store(false, Relaxed);
        }
        // From the thread that reads events: the kernel holds this
        // rename's locks until it is answered.
        w.expire_later(parent, name);
    }

    /// Tells the kernel what `change` made stale.
    fn forget_stale(&self, change: Change<'_>) {
        match change {
            Change::Name { dir, name } => {
                crate::watch::applying();
                self.inval_entry(dir, name, false);
                // The directory's size and times changed, and a listing the
                // kernel kept is wrong now.
                self.inval_inode(dir, 0);
                if let Ok(d) = self.inodes.get(dir) {
                    d.mark_listed(0);
                }
            }
            Change::Object {
                object,
                dir,
                name,
                written,
                only_written,
                by,
            } => {
                let node = match (&object, dir) {
                    (Some(fd), _) => sys::fstat(fd.as_raw_fd()).ok().and_then(|st| {
                        let n = self
                            .inodes
                            .get(self.inodes.peek_nodeid(st.st_dev, st.st_ino))
                            .ok()?;
                        n.same(&st).then_some(n)
                    }),
                    (None, Some(d)) if name.is_empty() || name.to_bytes() == b"." => {
                        self.inodes.get(d).ok()
                    }
                    (None, Some(d)) => self.node_named(d, name),
                    (None, None) => None,
                };
                let Some(node) = node else {
                    return;
                };
                // Nothing but a write, by the thread that opened it for
                // writing with kernel passthrough, while that handle is
                // open or a moment after (events are read a moment after
                // the write): the caller's own write, which the kernel saw.
                // An event read later than that is applied anyway, which
                // costs the kernel one more look, never a stale size.
                if only_written
                    && by != 0
                    && node.last_writer.load(Relaxed) == by
                    && (node.open.lock().writers > 0
                        || sys::coarse_now_ns().saturating_sub(node.closed_at.load(Relaxed))
                            < 200_000_000)
                {
                    return;
                }
                crate::watch::applying();
                // A write: cached pages go too (a rewrite that keeps size
                // and mtime is not caught by comparing them).
                let told = self.inval_inode(node.nodeid, if written { 0 } else { -1 });
                // Not held by the kernel (yet?): a reply with what the
                // change made stale may be on its way; told again then.
                if told == Told::NotHeld
                    && let Some(w) = &self.watch
                {
                    w.again_later(node.nodeid);
                }
            }
            Change::Again(node) => {
                crate::watch::applying();
                self.inval_inode(node, -1);
            }
            Change::Expire { dir, name } => {
                crate::watch::applying();
                self.inval_entry(dir, &name, true);
            }
            Change::Lost => {
                crate::watch::applying();
                if !self.watch.as_ref().is_some_and(|w| w.lost()) {
                    return;
                }
                tracing::warn!(
                    "changes beneath the mount were lost (too many at once); the kernel asks for every name and attribute again"
                );
                // FUSE_NOTIFY_INC_EPOCH: every name the kernel holds, the
                // missing ones too, is asked for again.
                let epoch = self.notify(INC_EPOCH, &[]) == Told::Done;
                for node in self.inodes.all() {
                    self.inval_inode(node.nodeid, -1);
                    node.mark_listed(0);
                    if !epoch && let Some((parent, name)) = node.parent_name() {
                        self.inval_entry(parent.nodeid, &name, true);
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

    /// FUSE_NOTIFY_INVAL_INODE: the attributes of `nodeid`, and its cached
    /// pages from `offset` on (none if negative; the kernel then compares
    /// the new mtime with the pages' when it next asks).
    fn inval_inode(&self, nodeid: u64, offset: i64) -> Told {
        let mut body = Vec::with_capacity(24);
        body.extend_from_slice(&nodeid.to_ne_bytes());
        body.extend_from_slice(&offset.to_ne_bytes());
        body.extend_from_slice(&0i64.to_ne_bytes());
        self.notify(INVAL_INODE, &body)
    }

    /// FUSE_NOTIFY_INVAL_ENTRY: `name` in `parent` is dropped, or with
    /// `expire_only` marked for asking again (what a mount on it keeps).
    fn inval_entry(&self, parent: u64, name: &CStr, expire_only: bool) {
        let name = name.to_bytes_with_nul();
        let mut body = Vec::with_capacity(16 + name.len());
        body.extend_from_slice(&parent.to_ne_bytes());
        body.extend_from_slice(&((name.len() - 1) as u32).to_ne_bytes());
        body.extend_from_slice(&u32::from(expire_only).to_ne_bytes());
        body.extend_from_slice(name);
        self.notify(INVAL_ENTRY, &body);
    }

    /// Writes a notification to the FUSE device: a fuse_out_header whose
    /// `unique` is 0 and whose `error` is the notification's code.
    fn notify(&self, code: i32, body: &[u8]) -> Told {
        let Some(dev) = self.dev.get() else {
            return Told::Failed;
        };
        let len = 16 + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&code.to_ne_bytes());
        msg.extend_from_slice(&0u64.to_ne_bytes());
        msg.extend_from_slice(body);
        if unsafe { libc::write(dev.as_raw_fd(), msg.as_ptr().cast(), msg.len()) } >= 0 {
            return Told::Done;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Told::NotHeld;
        }
        tracing::debug!("cannot tell the kernel of a change beneath the mount: {e}");
        Told::Failed
    }
}

/// What became of a notification.
#[derive(PartialEq, Eq)]
enum Told {
    Done,
    /// The kernel holds nothing of it (ENOENT).
    NotHeld,
    Failed,
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
