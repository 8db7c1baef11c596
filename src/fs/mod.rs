//! The filesystem: state shared by all requests and the helpers the
//! per-operation modules build on; each other module implements one family
//! of operations. How requests arrive is `crate::transport`'s business.

mod acl;
mod attr;
mod beneath;
mod control;
mod dir;
mod entry;
mod export;
mod file;
mod made;
pub mod ops;
mod rename;
pub mod reply;
mod routing;
mod unlink;
mod xattr;

use std::ffi::CStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use crate::config::{DeferUnlink, Settings};
use crate::graveyard::Graveyard;
use crate::handle::HandleTable;
use crate::inode::{Inode, InodeTable, ROOT_ID};
use crate::redirect::Area;
use crate::stats::{Extra, Stats};
use crate::sys::{self, Res};

pub use crate::creds::Caller;
pub use beneath::start_watch;
pub use control::CONTROL_NAME;
use routing::name_in_parent;

pub struct CasaFs {
    /// The settings the mount started with.
    settings: Settings,
    /// What a reload changes: rules, cache times, log level.
    live: crate::live::Live,
    inodes: InodeTable,
    handles: HandleTable,
    /// Areas, rules' areas, redirects: routing.rs.
    routing: routing::Routing,
    graveyard: Graveyard,
    /// Backing handles of objects the kernel let go of (export.rs).
    exports: crate::exports::Exports,
    /// The tree the table is kept for, and the lock held until it is
    /// written at unmount (`exports::hold`).
    exports_tree: crate::exports::Tree,
    exports_lock: parking_lot::Mutex<Option<OwnedFd>>,
    stats: Arc<Stats>,
    /// Unlinks of open files go through the graveyard.
    defer_unlink: bool,
    /// Devices (the tree's, areas') of local filesystems, where a
    /// descriptor keeps an unlinked object whole, reachable and invisible
    /// until it is closed (not FUSE or network filesystems, which show it
    /// as debris or lose it with its name).
    holds_unlinked: Vec<u64>,
    /// FUSE flush requests are answered (close(dup(fd)) on the backing file)
    /// only where close reports errors; elsewhere the first flush answers
    /// ENOSYS and the kernel stops sending them.
    flush_on_close: bool,
    /// The tree or an area is on a filesystem another process serves (a
    /// FUSE daemon such as ntfs-3g, a network server).
    backing_servers: bool,
    passthrough: AtomicBool,
    backing_types: Vec<(String, String)>,
    /// The FUSE connection's device, once mounted: backing ids for kernel
    /// passthrough are registered on it.
    dev: std::sync::OnceLock<Arc<OwnedFd>>,
    control: control::Snapshots,
    /// The mount's device number, once retention asked for it.
    mount_dev: std::sync::OnceLock<u64>,
    root: Arc<Inode>,
    /// Changes made beneath the mount (`beneath.rs`), where the kernel
    /// offers a watch.
    watch: Option<Arc<crate::watch::Watch>>,
}

/// Everything the daemon prepared before mounting.
pub struct Prepared {
    pub settings: Settings,
    pub root_fd: OwnedFd,
    pub areas: Vec<(std::path::PathBuf, OwnedFd)>,
    pub rule_area: Vec<usize>,
}

/// The watch of changes beneath the mount, unless both cache times are
/// fixed: nothing it tells would be used then, and it costs every process
/// on the watched filesystem an event per change. A reload back to
/// automatic times then keeps them short.
fn watch_if_used(
    live: &crate::live::Live,
    root: std::os::fd::RawFd,
) -> Option<Arc<crate::watch::Watch>> {
    if live.attr_timeout() != crate::config::AUTO_CACHE_TIME
        && live.entry_timeout() != crate::config::AUTO_CACHE_TIME
    {
        tracing::info!("changes beneath the mount are not watched: cache times are fixed");
        return None;
    }
    crate::watch::Watch::new(root).map(Arc::new)
}

impl CasaFs {
    /// The settings the mount started with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// What a reload changes.
    pub fn live(&self) -> &crate::live::Live {
        &self.live
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Whether requests may wait on another process: the tree or an area
    /// is on a FUSE filesystem (ntfs-3g) or a network filesystem.
    pub fn backing_has_servers(&self) -> bool {
        self.backing_servers
    }

    /// The FUSE connection's device, once mounted: kernel passthrough
    /// registers backing files on it.
    pub fn connect(&self, dev: Arc<OwnedFd>) {
        let _ = self.dev.set(dev);
    }

    pub fn device(&self) -> Option<Arc<OwnedFd>> {
        self.dev.get().cloned()
    }

    pub fn connected(&self) -> bool {
        self.dev.get().is_some()
    }

    /// INIT agreed on kernel passthrough.
    pub fn passthrough_agreed(&self) {
        self.passthrough.store(true, Ordering::Relaxed);
    }

    pub fn passthrough_on(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    /// Unlinks of open files go through the graveyard.
    pub fn defers_unlinks(&self) -> bool {
        self.defer_unlink
    }

    pub fn new(p: Prepared) -> Res<CasaFs> {
        let st = sys::fstat(p.root_fd.as_raw_fd())?;
        let root_ftype = sys::fstatfs_type(p.root_fd.as_raw_fd())?;
        let root = Inode::new_held(ROOT_ID, p.root_fd, &st, false);
        let root_raw = root.dir_fd()?;
        let (graveyard, cleaned) = Graveyard::open(
            root_raw.as_raw_fd(),
            &p.settings.host,
            p.settings.host_lease,
        )?;
        let exports_tree = crate::exports::Tree::of(&p.settings.source, &st);
        let exports_lock = crate::exports::hold(&exports_tree);
        let exports = crate::exports::load(&exports_tree);
        if cleaned > 0 {
            tracing::info!("emptied {cleaned} graveyard entries left by a stopped daemon");
        }
        let inodes = InodeTable::new(root.clone());
        let mut areas = Vec::new();
        let mut backing_types = vec![(
            "source".to_string(),
            crate::fstype::type_at(&p.settings.source, root_ftype),
        )];
        for (i, (path, fd)) in p.areas.into_iter().enumerate() {
            let st = sys::fstat(fd.as_raw_fd())?;
            let ft = sys::fstatfs_type(fd.as_raw_fd()).unwrap_or(0);
            let nodeid = crate::inode::area_id(i);
            backing_types.push((
                path.to_string_lossy().into_owned(),
                crate::fstype::type_at(&path, ft),
            ));
            let parent = name_in_parent(&fd, &st);
            areas.push(Area {
                path,
                inode: parking_lot::RwLock::new(Inode::new_held(nodeid, fd, &st, true)),
                fs_type: ft,
                parent,
                listing: Default::default(),
                place_lock: parking_lot::Mutex::new(()),
            });
        }
        // Passthrough I/O runs with the credentials of nobody (see
        // `creds::as_registrar`); a network filesystem judges those on
        // every open of the backing file, and would refuse them.
        let mut settings = p.settings;
        // As configured: a reload compares the new configuration with this,
        // not with what casafs chose below.
        let live = crate::live::Live::new(&settings);
        let watch = watch_if_used(&live, root_raw.as_raw_fd());
        if settings.passthrough
            && (crate::fstype::is_network(root_ftype)
                || areas.iter().any(|a| crate::fstype::is_network(a.fs_type)))
        {
            tracing::info!(
                "kernel passthrough off: the tree or an area is on a network filesystem"
            );
            settings.passthrough = false;
        }
        let defer_unlink = match settings.defer_unlink {
            DeferUnlink::Always => true,
            DeferUnlink::Never => false,
            DeferUnlink::Auto => crate::fstype::leaves_unlink_debris(root_ftype),
        };
        let backing_servers = crate::fstype::has_own_server(root_ftype)
            || areas
                .iter()
                .any(|a| crate::fstype::has_own_server(a.fs_type));
        let mut holds_unlinked = Vec::new();
        if !crate::fstype::leaves_unlink_debris(root_ftype) {
            holds_unlinked.push(st.st_dev);
        }
        for a in &areas {
            if !crate::fstype::leaves_unlink_debris(a.fs_type) {
                holds_unlinked.push(a.dir().dev);
            }
            // The graveyard lives on the source's filesystem: an open file
            // unlinked in an area elsewhere is unlinked as there.
            if a.dir().dev != st.st_dev && crate::fstype::leaves_unlink_debris(a.fs_type) {
                tracing::warn!(
                    "target area {} is on another filesystem ({}), which keeps unlinked open files as debris; casafs can defer unlinks only on the source's filesystem",
                    a.path.display(),
                    crate::fstype::type_at(&a.path, a.fs_type)
                );
            }
        }
        let rule_names: Vec<String> = settings
            .rules
            .rules
            .iter()
            .map(|r| r.name.clone())
            .collect();
        let fs = CasaFs {
            live,
            stats: Arc::new(Stats::new(&rule_names)),
            routing: routing::Routing::new(areas, p.rule_area, rule_names),
            inodes,
            handles: HandleTable::default(),
            graveyard,
            exports,
            exports_tree,
            exports_lock: parking_lot::Mutex::new(exports_lock),
            defer_unlink,
            holds_unlinked,
            flush_on_close: crate::fstype::reports_errors_at_close(root_ftype),
            backing_servers,
            passthrough: AtomicBool::new(false),
            backing_types,
            dev: std::sync::OnceLock::new(),
            control: control::Snapshots::default(),
            mount_dev: std::sync::OnceLock::new(),
            root,
            watch,
            settings,
        };
        let restored = fs.routing.redirects.restore(
            &fs.routing.areas,
            &fs.routing.rule_area,
            &fs.settings.rules,
            root_raw.as_raw_fd(),
        );
        if restored > 0 {
            tracing::info!(
                "{restored} redirects from before the restart restored from their origins"
            );
        }
        Ok(fs)
    }

    /// The connection ended (or never started): pending deferred unlinks
    /// are finished and the graveyard let go of.
    pub fn destroy(&self) {
        crate::creds::as_root(|| self.save_exports());
        if let Ok(fd) = self.root_fd() {
            self.graveyard.close(fd.as_raw_fd());
        }
    }

    /// Links as the caller should see them: graveyard names that hold an
    /// unlinked open file are not links of the tree (natively the unlink has
    /// already dropped them).
    fn visible_links(&self, nodeid: u64, nlink: u32) -> u32 {
        if self.stats.deferred_pending.load(Ordering::Relaxed) == 0 {
            return nlink;
        }
        match self.inodes.get(nodeid) {
            Ok(i) => nlink.saturating_sub(i.open.lock().buried.len() as u32),
            Err(_) => nlink,
        }
    }

    pub fn root_fd(&self) -> Res<Arc<OwnedFd>> {
        self.root.dir_fd()
    }

    /// How long the kernel may keep what casafs tells it, for a cache time
    /// `set` by the operator: `auto` is long where changes made beneath the
    /// mount are heard of (`watched`), short elsewhere.
    fn cache_time(set: Duration, watched: bool) -> Duration {
        const WATCHED: Duration = Duration::from_secs(3600);
        const UNWATCHED: Duration = Duration::from_secs(1);
        match set {
            // Not if a change beneath was applied while this request was
            // served: the reply may carry what it made stale.
            crate::config::AUTO_CACHE_TIME if watched && crate::watch::quiet_since_request() => {
                WATCHED
            }
            crate::config::AUTO_CACHE_TIME => UNWATCHED,
            d => d,
        }
    }

    /// How long the kernel may keep the attributes `st` of `node`. Never
    /// for a set-ID file: a write by an unprivileged user clears the bits
    /// on the backing (as the writer), which the kernel does not learn of
    /// by itself after an O_DIRECT or cached write.
    fn ttl_attr_of(&self, node: &Inode, st: &libc::stat) -> Duration {
        if st.st_mode & (libc::S_ISUID | libc::S_ISGID) != 0
            && st.st_mode & libc::S_IFMT == libc::S_IFREG
        {
            Duration::ZERO
        } else if st.st_nlink > 1 && node.fmt != libc::S_IFDIR {
            // Another name of it may be in a directory nobody watches.
            Self::cache_time(self.live.attr_timeout(), false)
        } else {
            self.attr_time(node)
        }
    }

    /// How long the kernel may keep the attributes of `node`, set-ID bits
    /// aside.
    fn attr_time(&self, node: &Inode) -> Duration {
        // A directory's own changes are reported to a watch on it, not on
        // its parent.
        let watched = if node.is_dir() {
            // Watched only now, after the stat this reply carries: a change
            // made in between went unheard.
            let before = node.names_watched.load(Ordering::Relaxed);
            self.names_watched(node) && before
        } else {
            self.watched(node)
        };
        Self::cache_time(self.live.attr_timeout(), watched)
    }

    /// How long the kernel may keep the name by which it found `node`.
    fn ttl_entry_of(&self, node: &Inode) -> Duration {
        Self::cache_time(self.live.entry_timeout(), self.watched(node))
    }

    /// How long the kernel may keep a name in `dir` that casafs has no
    /// node for (a negative entry), and listings of `dir`.
    fn ttl_names(&self, dir: &Inode) -> Duration {
        Self::cache_time(self.live.entry_timeout(), self.names_watched(dir))
    }

    /// How long attributes of what is in `dir` may be kept, for a listing.
    fn ttl_attr_in(&self, dir: &Inode) -> Duration {
        Self::cache_time(self.live.attr_timeout(), self.names_watched(dir))
    }

    /// A cache time for what casafs itself makes up (the control files'
    /// names): as where nothing is watched.
    fn ttl_own(&self) -> Duration {
        Self::cache_time(self.live.entry_timeout(), false)
    }

    /// The `st_ino` the kernel sees for a node id.
    pub fn attr_ino(&self, nodeid: u64, backing_ino: u64) -> u64 {
        if nodeid == ROOT_ID || crate::inode::is_alias(nodeid) {
            backing_ino
        } else {
            nodeid
        }
    }

    /// The attributes the kernel sees. `st_ino` is the backing inode number
    /// (the node id), except on foreign devices where it is the synthetic id.
    pub fn attr(&self, nodeid: u64, st: &libc::stat) -> FileAttr {
        let ino = self.attr_ino(nodeid, st.st_ino);
        FileAttr {
            ino: INodeNo(ino),
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: ts(st.st_atime, st.st_atime_nsec),
            mtime: ts(st.st_mtime, st.st_mtime_nsec),
            ctime: ts(st.st_ctime, st.st_ctime_nsec),
            crtime: UNIX_EPOCH,
            kind: kind_of(st.st_mode),
            perm: (st.st_mode & 0o7777) as u16,
            nlink: self.visible_links(nodeid, st.st_nlink as u32),
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
            flags: 0,
        }
    }

    pub fn extra(&self) -> Extra {
        self.routing.redirects.drop_gone(&self.routing.areas);
        Extra {
            backing: self.backing_types.clone(),
            deferred_pending_bytes: if self.stats.deferred_pending.load(Ordering::Relaxed) > 0 {
                self.graveyard.bytes()
            } else {
                0
            },
            redirects_live: self.routing.redirects.len(),
            inodes_cached: self.inodes.len(),
            dir_fds_cached: crate::inode::cached_dir_fds(),
            objects_pinned: crate::inode::pinned_objects(),
            passthrough_enabled: self.passthrough.load(Ordering::Relaxed),
            mountpoint: self.settings.mountpoint.to_string_lossy().into_owned(),
            host: self.settings.host.clone(),
            source: self.settings.source.to_string_lossy().into_owned(),
        }
    }

    /// The group a new object in `dir` gets from a setgid directory.
    fn setgid_of(&self, dir_fd: i32) -> Res<Option<u32>> {
        let st = sys::fstat(dir_fd)?;
        Ok(if st.st_mode & libc::S_ISGID != 0 {
            Some(st.st_gid)
        } else {
            None
        })
    }
}

pub fn is_reserved_root_name(name: &CStr) -> bool {
    let b = name.to_bytes();
    b == CONTROL_NAME.as_bytes() || b == crate::graveyard::GRAVEYARD_DIR.as_bytes()
}

fn ts(secs: i64, nsec: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

pub fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// Renews this daemon's lease on the shared tree (see `hosts`) for as
/// long as the filesystem lives.
pub fn start_lease(fs: std::sync::Weak<CasaFs>) {
    let Some(every) = fs
        .upgrade()
        .map(|f| crate::hosts::renew_every(f.settings.host_lease))
    else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("casafs-lease".into())
        .spawn(move || {
            while let Some(f) = fs.upgrade() {
                f.graveyard.renew_lease();
                drop(f);
                std::thread::sleep(every);
            }
        });
    if let Err(e) = spawned {
        tracing::error!("no lease on the shared tree: cannot start its thread: {e}");
    }
}

impl crate::retention::Mounted for CasaFs {
    fn routed_elsewhere_alive(&self, host: &str) -> bool {
        host != self.settings.host
            && self
                .root_fd()
                .is_ok_and(|fd| self.graveyard.host_alive(fd.as_raw_fd(), host))
    }

    fn area_dir(&self, area: usize) -> Option<Arc<OwnedFd>> {
        self.routing.area_now(area)
    }

    fn names_held(&self, area: usize, f: &mut dyn FnMut()) {
        match self.routing.areas.get(area) {
            Some(a) => {
                let _held = a.place_lock.lock();
                f()
            }
            None => f(),
        }
    }

    fn backing_ino(&self, ino: u64) -> Option<u64> {
        self.inodes.backing_ino(ino)
    }

    fn mount_dev(&self) -> Option<u64> {
        // Asked of the mount itself, from the retention thread (never a
        // serving one), once it is up.
        use std::os::unix::fs::MetadataExt;
        if let Some(d) = self.mount_dev.get() {
            return Some(*d);
        }
        let d = std::fs::metadata(&self.settings.mountpoint).ok()?.dev();
        Some(*self.mount_dev.get_or_init(|| d))
    }

    fn rule_now(&self, index: usize) -> Option<crate::rules::Rule> {
        self.live.rule(index)
    }
}
