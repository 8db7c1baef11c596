//! Retention: a background thread that removes, per rule, objects in the
//! rule's target area that have not changed for longer than the rule's
//! `retention`. Nothing that is open is removed: not through the mount (the
//! daemon then holds the backing file), not directly, not as a process's
//! working directory, and not when anything inside a directory is open.
//! Every removal is logged with its path and size and counted.
//!
//! The area is reached through the filesystem's own descriptor of it, and
//! everything in it through descriptors opened from there, which never
//! resolve through the mount (an area inside a tree mounted over itself is
//! read from below) nor follow a symlink. The filesystem gives the area's
//! directory as it is now, so an area an operator made anew is emptied,
//! not the old one. What is inside a directory goes with the rights of
//! the user who routed it there, never root's.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::rules::{Kind, Rule};
use crate::stats::Stats;
use crate::{sys, tree};

/// One rule with a retention, and the area it empties.
pub struct Retention {
    /// Index of the rule in the statistics.
    pub index: usize,
    pub rule: Rule,
    pub age: Duration,
    /// The area's index in the filesystem's list.
    pub area: usize,
    /// For log lines only.
    pub area_path: PathBuf,
}

/// What retention asks of the mounted filesystem.
pub trait Mounted: Send + Sync {
    /// The area's directory as it is now.
    fn area_dir(&self, area: usize) -> Option<Arc<OwnedFd>>;
    /// The backing inode number behind an inode number the mount shows,
    /// where the two differ (objects on another filesystem than the
    /// tree's, such as an area on its own disk).
    fn backing_ino(&self, ino: u64) -> Option<u64>;
    /// The device number of the mount, as processes using it see it.
    fn mount_dev(&self) -> Option<u64>;
    /// The mount's rule `index` as it routes now (None: turned off).
    fn rule_now(&self, index: usize) -> Option<Rule>;
    /// Whether `host` is another host whose daemon is alive: what it
    /// routed is its own retention's (its processes are not seen here).
    fn routed_elsewhere_alive(&self, host: &str) -> bool;
    /// Runs `f` while no request of this daemon gives a name in the area
    /// to an object (routes one there, renames one onto a free name).
    fn names_held(&self, area: usize, f: &mut dyn FnMut());
}

/// Starts the thread if any rule has an area. Which rules keep a
/// retention, and how long, is asked anew before every pass (a reload
/// changes them). The thread lives as long as the daemon; it does not keep
/// the filesystem alive.
pub fn start(list: Vec<Retention>, stats: Arc<Stats>, fs: std::sync::Weak<dyn Mounted>) {
    if list.is_empty() {
        return;
    }
    // Checked this often whether a pass is due, so a retention a reload
    // shortened takes effect within that.
    const TICK: Duration = Duration::from_secs(5);
    let spawned = std::thread::Builder::new()
        .name("casafs-retention".into())
        .spawn(move || {
            let mut since = Duration::ZERO;
            loop {
                let Some(every) = fs.upgrade().and_then(|f| period(&now(&list, &*f))) else {
                    if fs.strong_count() == 0 {
                        return;
                    }
                    std::thread::sleep(TICK);
                    continue;
                };
                let step = every.saturating_sub(since).min(TICK);
                std::thread::sleep(step);
                since += step;
                if since < every {
                    continue;
                }
                since = Duration::ZERO;
                let Some(fs) = fs.upgrade() else {
                    return;
                };
                for r in now(&list, &*fs) {
                    pass(&r, &stats, &*fs);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("retention disabled: cannot start its thread: {e}");
    }
}

/// The rules with a retention now, as they are now.
fn now(list: &[Retention], fs: &dyn Mounted) -> Vec<Retention> {
    list.iter()
        .filter_map(|r| {
            let rule = fs.rule_now(r.index)?;
            let age = rule.retention?;
            Some(Retention {
                index: r.index,
                rule,
                age,
                area: r.area,
                area_path: r.area_path.clone(),
            })
        })
        .collect()
}

/// Often enough that nothing outlives its retention by much more than a
/// quarter of it; never a busy loop, never less often than every 5 min.
fn period(list: &[Retention]) -> Option<Duration> {
    let shortest = list.iter().map(|r| r.age).min()?;
    Some((shortest / 4).clamp(Duration::from_secs(1), Duration::from_secs(300)))
}

/// A candidate for removal: its name in the area, its size and what is in
/// it.
struct Expired {
    name: CString,
    is_dir: bool,
    bytes: u64,
    age: Duration,
    /// Everything in it, as `survey` saw it: (device, inode), the object
    /// itself first. Only these, for a table may hold millions.
    ids: Vec<(u64, u64)>,
    /// Who put it there: the user who routed it, else its owner.
    by: (u32, u32),
}

fn pass(r: &Retention, stats: &Stats, fs: &dyn Mounted) {
    let Some(area) = fs.area_dir(r.area) else {
        return;
    };
    let Ok(list) = sys::open_at(
        area.as_raw_fd(),
        c".",
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    ) else {
        return;
    };
    let now = SystemTime::now();
    let mut expired = Vec::new();
    // Asked once per host and pass: each answer lists the graveyards.
    let mut alive = std::collections::HashMap::new();
    for name in tree::list_dir(&list).unwrap_or_default() {
        // The rule's objects: by their name in the area, or, for one that
        // got a suffix there (`tmp12-2.ms` next to `tmp12.ms`), by the name
        // it was routed from, which must be that name without the suffix
        // (a table an operator renamed to keep it stays kept).
        let bytes = name.to_bytes();
        if !r.rule.matches_name(bytes)
            && !crate::redirect::uncandidate(bytes).is_some_and(|base| {
                r.rule.matches_name(&base)
                    && origin_name(&area, &name).as_deref() == Some(&base[..])
            })
        {
            continue;
        }
        let Ok(st) = sys::stat_at(area.as_raw_fd(), &name) else {
            continue;
        };
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if (r.rule.kind == Kind::File && is_dir) || (r.rule.kind == Kind::Dir && !is_dir) {
            continue;
        }
        let record = crate::redirect::record_of(&area, &name);
        let by = record.as_ref().map_or((st.st_uid, st.st_gid), |r| r.by);
        if let Some(host) = record.and_then(|r| r.host)
            && *alive
                .entry(host.clone())
                .or_insert_with(|| fs.routed_elsewhere_alive(&host))
        {
            tracing::debug!(
                "retention: {} was routed by host {host}, which is alive: kept",
                r.area_path.join(name.to_string_lossy().as_ref()).display()
            );
            continue;
        }
        let mut x = Expired {
            name,
            is_dir,
            bytes: 0,
            age: Duration::MAX,
            ids: Vec::new(),
            by,
        };
        let newest = survey(area.as_raw_fd(), &st, &mut x);
        let changed = UNIX_EPOCH + Duration::from_nanos(newest.max(0) as u64);
        x.age = now.duration_since(changed).unwrap_or_default();
        if x.age >= r.age {
            expired.push(x);
        }
    }
    if expired.is_empty() {
        return;
    }
    let held = held_inodes(fs, area.as_raw_fd());
    crate::fault::retention_judged();
    for x in expired {
        let shown = r.area_path.join(x.name.to_string_lossy().as_ref());
        if x.ids.iter().any(|&id| held.holds(id)) {
            tracing::debug!("retention: {} is open, kept", shown.display());
            continue;
        }
        match remove(fs, r.area, area.as_raw_fd(), &x) {
            Ok(()) => {
                stats.rules[r.index].retention_removed.fetch_add(1, Relaxed);
                tracing::info!(
                    "retention ({}): removed {} ({} bytes, unchanged for {}s)",
                    r.rule.name,
                    shown.display(),
                    x.bytes,
                    x.age.as_secs()
                );
            }
            Err(e) => tracing::warn!(
                "retention: cannot remove {} (with the rights of uid {}): {}",
                shown.display(),
                x.by.0,
                std::io::Error::from_raw_os_error(e.code())
            ),
        }
    }
}

/// Removes an expired object from the area. What is inside a directory
/// goes with the rights of the user who put it there, never more: what
/// that user could not remove stays, and so does the directory. The name
/// in the area is casafs's, and goes as root.
///
/// Only the object judged goes: a user may rename routed objects through
/// the mount, and so give its name in the area to another (a table still
/// in use) while it was judged, or while it was emptied, for as long as
/// its entries take (`ESTALE` then; that one is judged on its own at the
/// next pass). So the name is checked to be the object judged, then
/// removed, while no request may give a name in the area to an object
/// (`Mounted::names_held`).
fn remove(fs: &dyn Mounted, area_idx: usize, area: RawFd, x: &Expired) -> sys::Res<()> {
    let id = *x.ids.first().ok_or(sys::Errno::ESTALE)?;
    let flag = if x.is_dir {
        let dir = tree::open_dir_if_same(area, &x.name, id)?;
        crate::creds::as_user(x.by.0, || tree::empty(dir)).ok_or(sys::Errno::EPERM)?;
        crate::fault::retention_emptied();
        libc::AT_REMOVEDIR
    } else {
        0
    };
    let mut removed = Err(sys::Errno::ESTALE);
    fs.names_held(area_idx, &mut || {
        removed = match sys::stat_at(area, &x.name) {
            Ok(st) if (st.st_dev, st.st_ino) == id => sys::unlink_at(area, &x.name, flag),
            Ok(_) => Err(sys::Errno::ESTALE),
            Err(e) => Err(e),
        };
    });
    removed
}

/// The last component of the origin casafs recorded on a routed object.
fn origin_name(area: &Arc<OwnedFd>, name: &CStr) -> Option<Vec<u8>> {
    let (origin, _) = crate::redirect::recorded_place(area, name)?;
    Some(crate::redirect::last_name(&origin).to_vec())
}

/// Size, newest change time (nanoseconds since 1970) and inode numbers of
/// `x` (in the directory `area`, with attributes `st`) and what is in it,
/// without following symlinks.
fn survey(area: RawFd, st: &libc::stat, x: &mut Expired) -> i64 {
    let mut newest = 0i64;
    let mut note = |st: &libc::stat| {
        x.ids.push((st.st_dev, st.st_ino));
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        newest = newest
            .max(ns(st.st_mtime, st.st_mtime_nsec))
            .max(ns(st.st_ctime, st.st_ctime_nsec));
        if st.st_mode & libc::S_IFMT == libc::S_IFREG {
            x.bytes += st.st_size as u64;
        }
    };
    note(st);
    if x.is_dir
        && let Ok(dir) = sys::open_at(
            area,
            &x.name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
    {
        tree::walk(dir, &mut |_, _, st| note(st), &mut |_, _| {});
    }
    newest
}

/// Everything open, mapped or used as a working directory by any process.
/// casafs daemons' own O_PATH descriptors (their inode caches) are not
/// opens.
struct Held {
    /// Inode numbers of what is held on the area's own filesystem (its
    /// mount, or its device as `stat` or the mount table gives it, which
    /// differ on btrfs subvolumes).
    on_area: HashSet<u64>,
    /// What is held elsewhere, by device and inode number.
    objects: HashSet<(u64, u64)>,
    /// Inode numbers of what is held through the mount: the backing numbers
    /// (the node ids the mount shows are those, or ones
    /// `Mounted::backing_ino` translates), without their backing device,
    /// which the mount does not show.
    through_mount: HashSet<u64>,
}

impl Held {
    fn holds(&self, (dev, ino): (u64, u64)) -> bool {
        self.on_area.contains(&ino)
            || self.objects.contains(&(dev, ino))
            || self.through_mount.contains(&ino)
    }
}

/// The mount id of the filesystem object `fd` is.
fn mount_id(fd: RawFd) -> Option<u64> {
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            &mut stx,
        )
    };
    (rc == 0 && stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id)
}

fn held_inodes(fs: &dyn Mounted, area: RawFd) -> Held {
    let me = std::process::id().to_string();
    let my_exe = fs::read_link("/proc/self/exe").ok();
    let mount_dev = fs.mount_dev();
    let (devs, casafs_devs) = mount_devices();
    let area_mnt = mount_id(area);
    let mut area_devs: Vec<u64> = area_mnt
        .and_then(|m| devs.get(&m).copied())
        .into_iter()
        .collect();
    area_devs.extend(sys::fstat(area).ok().map(|st| st.st_dev));
    let mut held = Held {
        on_area: HashSet::new(),
        objects: HashSet::new(),
        through_mount: HashSet::new(),
    };
    let mut hold = |dev: u64, ino: u64, on_area: bool| {
        // Without the mount's device, anything could be held through it.
        // Through another casafs mount (of this tree or one sharing its
        // areas) it shows the backing's numbers too.
        if mount_dev.is_none_or(|m| m == dev) || casafs_devs.contains(&dev) {
            held.through_mount
                .insert(fs.backing_ino(ino).unwrap_or(ino));
        }
        if on_area || area_devs.contains(&dev) {
            held.on_area.insert(ino);
        } else if Some(dev) != mount_dev {
            held.objects.insert((dev, ino));
        }
    };
    for (pid, dir) in crate::procs::processes() {
        if let Ok(m) = fs::metadata(dir.join("cwd")) {
            hold(m.dev(), m.ino(), false);
        }
        // A mapping outlives the descriptor it was made through.
        let maps = fs::read_to_string(dir.join("maps")).unwrap_or_default();
        for ((dev, ino), _) in crate::procs::mapped_files(&maps) {
            hold(dev, ino, false);
        }
        let Ok(fds) = fs::read_dir(dir.join("fd")) else {
            continue;
        };
        // This daemon, or another one over the same tree (a second mount,
        // or on a shared tree the stand-in for another host).
        let daemon =
            pid == me || (my_exe.is_some() && fs::read_link(dir.join("exe")).ok() == my_exe);
        for fd in fds.flatten() {
            // fdinfo gives the inode and its mount without a stat that
            // could hang on a dead network mount.
            let info = fd_info(&dir, &fd.file_name());
            if daemon && info.flags & libc::O_PATH as i64 != 0 {
                continue;
            }
            let on_area = info.mnt.is_some() && info.mnt == area_mnt;
            let id = match (info.mnt.and_then(|m| devs.get(&m).copied()), info.ino) {
                (Some(dev), Some(ino)) => Some((dev, ino)),
                _ => fs::metadata(fd.path()).ok().map(|m| (m.dev(), m.ino())),
            };
            if let Some((dev, ino)) = id {
                hold(dev, ino, on_area);
            }
        }
    }
    held
}

/// The device of each mount, by mount id (this process's mount table).
fn mount_devices() -> (std::collections::HashMap<u64, u64>, HashSet<u64>) {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut devs = std::collections::HashMap::new();
    let mut casafs = HashSet::new();
    for l in text.lines() {
        let mut f = l.split(' ');
        let (Some(id), Some(dev)) = (f.next().and_then(|v| v.parse().ok()), f.nth(1)) else {
            continue;
        };
        let Some(dev) = dev
            .split_once(':')
            .and_then(|(a, b)| Some(libc::makedev(a.parse().ok()?, b.parse().ok()?)))
        else {
            continue;
        };
        devs.insert(id, dev);
        // Only root's: a user can name a FUSE mount of their own casafs.
        let mut sb = l.split(" - ").nth(1).unwrap_or_default().split(' ');
        if sb.next() == Some("fuse.casafs")
            && sb
                .nth(1)
                .is_some_and(|o| o.split(',').any(|o| o == "user_id=0"))
        {
            casafs.insert(dev);
        }
    }
    (devs, casafs)
}

/// What fdinfo says of a descriptor.
struct FdInfo {
    flags: i64,
    mnt: Option<u64>,
    ino: Option<u64>,
}

/// The open flags, mount and inode number of a descriptor, from fdinfo.
fn fd_info(proc_dir: &Path, fd: &std::ffi::OsStr) -> FdInfo {
    let info = fs::read_to_string(proc_dir.join("fdinfo").join(fd)).unwrap_or_default();
    let field = |k: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
    };
    FdInfo {
        flags: field("flags:")
            .and_then(|v| i64::from_str_radix(&v, 8).ok())
            .unwrap_or(0),
        mnt: field("mnt_id:").and_then(|v| v.parse().ok()),
        ino: field("ino:").and_then(|v| v.parse().ok()),
    }
}
