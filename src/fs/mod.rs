//! The filesystem: state shared by all requests and the helpers the
//! per-operation modules build on; each other module implements one family
//! of operations. How requests arrive is `crate::transport`'s business.

mod acl;
mod control;
mod dir;
mod entry;
mod file;
mod made;
pub mod ops;
pub mod reply;
mod xattr;

use std::ffi::CStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use crate::config::{DeferUnlink, Settings};
use crate::graveyard::Graveyard;
use crate::handle::HandleTable;
use crate::inode::{Inode, InodeTable, ROOT_ID};
use crate::redirect::{Area, RedirectTable};
use crate::stats::{Extra, Stats};
use crate::sys::{self, Res};

pub use crate::creds::Caller;
pub use control::CONTROL_NAME;

pub struct CasaFs {
    /// The settings the mount started with.
    pub settings: Settings,
    /// What a reload changes: rules, cache times, log level.
    pub live: crate::live::Live,
    pub inodes: InodeTable,
    pub handles: HandleTable,
    pub redirects: RedirectTable,
    pub areas: Vec<Area>,
    /// Rule index -> area index.
    pub rule_area: Vec<usize>,
    pub rule_names: Vec<String>,
    pub graveyard: Graveyard,
    pub stats: Arc<Stats>,
    /// Unlinks of open files go through the graveyard.
    pub defer_unlink: bool,
    /// FUSE flush requests are answered (close(dup(fd)) on the backing file)
    /// only where close reports errors; elsewhere the first flush answers
    /// ENOSYS and the kernel stops sending them.
    pub flush_on_close: bool,
    pub passthrough: AtomicBool,
    pub backing_types: Vec<(String, String)>,
    /// The FUSE connection's device, once mounted: backing ids for kernel
    /// passthrough are registered on it.
    pub dev: std::sync::OnceLock<Arc<OwnedFd>>,
    control: control::Snapshots,
    /// The mount's device number, once retention asked for it.
    mount_dev: std::sync::OnceLock<u64>,
    root: Arc<Inode>,
}

/// Everything the daemon prepared before mounting.
pub struct Prepared {
    pub settings: Settings,
    pub root_fd: OwnedFd,
    pub areas: Vec<(std::path::PathBuf, OwnedFd)>,
    pub rule_area: Vec<usize>,
}

impl CasaFs {
    pub fn new(p: Prepared) -> Res<CasaFs> {
        let st = sys::fstat(p.root_fd.as_raw_fd())?;
        let root_ftype = sys::fstatfs_type(p.root_fd.as_raw_fd())?;
        let root = Inode::new_anchor(ROOT_ID, p.root_fd, &st, false);
        let root_raw = root.dir_fd()?;
        let (graveyard, cleaned) = Graveyard::open(root_raw.as_raw_fd())?;
        if cleaned > 0 {
            tracing::info!("emptied {cleaned} graveyard entries left by a stopped daemon");
        }
        let inodes = InodeTable::new(root.clone());
        let mut areas = Vec::new();
        let mut backing_types = vec![(
            "source".to_string(),
            fs_type_of(&p.settings.source, root_ftype),
        )];
        for (i, (path, fd)) in p.areas.into_iter().enumerate() {
            let st = sys::fstat(fd.as_raw_fd())?;
            let ft = sys::fstatfs_type(fd.as_raw_fd()).unwrap_or(0);
            let nodeid = u64::MAX - 64 - i as u64;
            backing_types.push((path.to_string_lossy().into_owned(), fs_type_of(&path, ft)));
            let parent = name_in_parent(&fd, &st);
            areas.push(Area {
                path,
                inode: parking_lot::RwLock::new(Inode::new_anchor(nodeid, fd, &st, true)),
                fs_type: ft,
                parent,
                place_lock: parking_lot::Mutex::new(()),
            });
        }
        // Passthrough I/O runs with the credentials of nobody (see
        // `creds::as_registrar`); a network filesystem judges those on
        // every open of the backing file, and would refuse them.
        let mut settings = p.settings;
        if settings.passthrough
            && (sys::is_network(root_ftype) || areas.iter().any(|a| sys::is_network(a.fs_type)))
        {
            tracing::info!(
                "kernel passthrough off: the tree or an area is on a network filesystem"
            );
            settings.passthrough = false;
        }
        let defer_unlink = match settings.defer_unlink {
            DeferUnlink::Always => true,
            DeferUnlink::Never => false,
            DeferUnlink::Auto => sys::leaves_unlink_debris(root_ftype),
        };
        for a in &areas {
            // The graveyard lives on the source's filesystem: an open file
            // unlinked in an area elsewhere is unlinked as there.
            if a.dir().dev != st.st_dev && sys::leaves_unlink_debris(a.fs_type) {
                tracing::warn!(
                    "target area {} is on another filesystem ({}), which keeps unlinked open files as debris; casafs can defer unlinks only on the source's filesystem",
                    a.path.display(),
                    fs_type_of(&a.path, a.fs_type)
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
            live: crate::live::Live::new(&settings),
            stats: Arc::new(Stats::new(&rule_names)),
            rule_names,
            inodes,
            handles: HandleTable::default(),
            redirects: RedirectTable::default(),
            areas,
            rule_area: p.rule_area,
            graveyard,
            defer_unlink,
            flush_on_close: sys::reports_errors_at_close(root_ftype),
            passthrough: AtomicBool::new(false),
            backing_types,
            dev: std::sync::OnceLock::new(),
            control: control::Snapshots::default(),
            mount_dev: std::sync::OnceLock::new(),
            root,
            settings,
        };
        let restored = fs.redirects.restore(
            &fs.areas,
            &fs.rule_area,
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

    /// A target area whose name names another directory than the one in
    /// use, on the same filesystem (the old one was removed, or moved
    /// aside, and the operator made it again): use the new one. It is
    /// looked for by its name in the directory it was found in at start
    /// (`Area::parent`), never by a path, without following symlinks. True
    /// when the area changed to a live directory.
    pub(super) fn revive_area(&self, idx: usize) -> bool {
        crate::creds::as_root(|| self.revive_area_now(idx))
    }

    fn revive_area_now(&self, idx: usize) -> bool {
        let Some(area) = self.areas.get(idx) else {
            return false;
        };
        let Some((parent, name)) = &area.parent else {
            return false;
        };
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let Ok(fd) = sys::open_at(parent.as_raw_fd(), name, flags, 0) else {
            return false;
        };
        let Ok(st) = sys::fstat(fd.as_raw_fd()) else {
            return false;
        };
        // Only a directory on the area's own filesystem: anything else under
        // that name (something mounted there, this very mount) is not the
        // area an operator made again.
        let usable = |cur: &Inode| cur.dev == st.st_dev && cur.ino != st.st_ino;
        if st.st_nlink == 0 || !usable(&area.inode.read()) {
            return false;
        }
        // Made anew by an operator, not by a user who found the name free:
        // root's, and open to nobody else.
        if !crate::areas::adoptable(&st) {
            tracing::warn!(
                "target area {} is a new directory that is not root's alone (uid {}, mode {:04o}): not routing to it",
                area.path.display(),
                st.st_uid,
                st.st_mode & 0o7777
            );
            return false;
        }
        let mut cur = area.inode.write();
        if !usable(&cur) {
            return false;
        }
        if let Ok(Some(note)) = crate::areas::secure(fd.as_raw_fd()) {
            tracing::warn!("target area {}: {note}", area.path.display());
        }
        *cur = Inode::new_anchor(cur.nodeid, fd, &st, true);
        tracing::info!(
            "target area {} is a new directory: routing to it",
            area.path.display()
        );
        true
    }

    /// The area's directory, made anew if an operator replaced it (an area
    /// is looked for again at every routing, too).
    fn area_now(&self, idx: usize) -> Option<Arc<OwnedFd>> {
        self.revive_area(idx);
        self.areas.get(idx)?.dir().dir_fd().ok()
    }

    fn ttl_attr(&self) -> Duration {
        self.live.attr_timeout()
    }

    fn ttl_entry(&self) -> Duration {
        self.live.entry_timeout()
    }

    /// The `st_ino` the kernel sees for a node id.
    pub fn attr_ino(&self, nodeid: u64, backing_ino: u64) -> u64 {
        if nodeid == ROOT_ID {
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

    /// Whether `st` is the root of a target area (names below it are never
    /// routed again).
    fn is_area_root(&self, st: &libc::stat) -> bool {
        self.is_area(st.st_dev, st.st_ino)
    }

    /// Whether `dir` is an area's directory now. Unlike `in_target`, also
    /// true for an area directory made again after a removal, which was
    /// not known as one when it was created.
    fn is_area_dir(&self, dir: &Inode) -> bool {
        self.is_area(dir.dev, dir.ino)
    }

    fn is_area(&self, dev: u64, ino: u64) -> bool {
        self.areas.iter().any(|a| {
            let d = a.dir();
            d.dev == dev && d.ino == ino
        })
    }

    /// The rule that routes a new `name` in `dir`, if any. Never inside an
    /// area, judged by where `dir` is now (a directory routed there by a
    /// rename, or moved back out of it, keeps its `in_target` of old).
    fn route(&self, dir: &Inode, name: &CStr, is_dir: bool) -> Option<usize> {
        if dir.nodeid == ROOT_ID && is_reserved_root_name(name) {
            return None;
        }
        let rule = self.live.route(name.to_bytes(), is_dir)?;
        if self.is_area_dir(dir) {
            return None;
        }
        let mut up = dir.parent_name();
        // Bounded all the same: a chain of stale parents must not loop.
        for _ in 0..4096 {
            let Some((p, _)) = up else {
                break;
            };
            if self.is_area_dir(&p) {
                return None;
            }
            up = p.parent_name();
        }
        Some(rule)
    }

    pub fn extra(&self) -> Extra {
        self.redirects.drop_gone(&self.areas);
        Extra {
            backing: self.backing_types.clone(),
            deferred_pending_bytes: if self.stats.deferred_pending.load(Ordering::Relaxed) > 0 {
                self.graveyard.bytes()
            } else {
                0
            },
            redirects_live: self.redirects.len(),
            inodes_cached: self.inodes.len(),
            dir_fds_cached: crate::inode::cached_dir_fds(),
            passthrough_enabled: self.passthrough.load(Ordering::Relaxed),
            mountpoint: self.settings.mountpoint.to_string_lossy().into_owned(),
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

/// The directory `dir` (with attributes `st`) is in, and its name there:
/// where an area is looked for again when it is made anew. The name is the
/// one the directory has, which is not the last one of the configured path
/// where that ends in a symlink.
fn name_in_parent(dir: &OwnedFd, st: &libc::stat) -> Option<(OwnedFd, std::ffi::CString)> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY;
    let parent = sys::open_at(dir.as_raw_fd(), c"..", flags, 0).ok()?;
    let name = crate::tree::list_dir(&parent).ok()?.into_iter().find(|n| {
        sys::stat_at(parent.as_raw_fd(), n)
            .is_ok_and(|s| (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino))
    })?;
    let parent = sys::open_at(dir.as_raw_fd(), c"..", libc::O_PATH | libc::O_DIRECTORY, 0).ok()?;
    Some((parent, name))
}

fn fs_type_of(path: &Path, f_type: i64) -> String {
    // /proc/self/mountinfo knows fuseblk vs fuse and the subtype; the
    // magic number alone does not.
    if let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") {
        let mut best: Option<(usize, String)> = None;
        for line in text.lines() {
            let mut it = line.split(" - ");
            let (Some(a), Some(b)) = (it.next(), it.next()) else {
                continue;
            };
            let Some(mp) = a.split(' ').nth(4) else {
                continue;
            };
            let mp = mp.replace("\\040", " ");
            let Some(fstype) = b.split(' ').next() else {
                continue;
            };
            if path.starts_with(&mp) && best.as_ref().is_none_or(|(l, _)| mp.len() >= *l) {
                best = Some((mp.len(), fstype.to_string()));
            }
        }
        if let Some((_, t)) = best {
            return t;
        }
    }
    sys::fs_type_name(f_type)
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

impl crate::retention::Mounted for CasaFs {
    fn area_dir(&self, area: usize) -> Option<Arc<OwnedFd>> {
        self.area_now(area)
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
