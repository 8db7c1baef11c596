//! The mount life cycle: check everything, take over a dead mount point,
//! open the backing tree and the target areas (before mounting, so a mount
//! over itself still reaches the backing), daemonize, mount, tell systemd,
//! serve, and stop cleanly on SIGTERM/SIGINT.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use fuser::{Config, MountOption, SessionACL};

use crate::config::{BadInput, Settings};
use crate::fs::{CasaFs, Prepared};

/// A failure after the input was judged good (exit 1), or bad input (2).
pub enum MountError {
    Bad(BadInput),
    Failed(String),
}

impl From<BadInput> for MountError {
    fn from(b: BadInput) -> Self {
        MountError::Bad(b)
    }
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

/// A mount point whose daemon died answers ENOTCONN; detach it so the new
/// daemon can mount there without manual steps.
///
/// Right after a daemon that served through io_uring died, a caller may
/// get ECONNABORTED or ECANCELED instead (requests the kernel had queued
/// for its rings) until the kernel has finished ending the connection: ask
/// again for a moment, and take over only once it says ENOTCONN, so a live
/// mount is never detached.
pub fn take_over_dead_mount(p: &Path) -> bool {
    let mut tries = 0;
    loop {
        // statfs always reaches the daemon; stat may be answered from the
        // kernel's attribute cache for a while after the daemon died.
        let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statfs(c(p).as_ptr(), &mut sfs) };
        let errno = (rc != 0).then(|| std::io::Error::last_os_error().raw_os_error());
        match errno.flatten() {
            Some(libc::ENOTCONN) => break,
            Some(libc::ECONNABORTED | libc::ECANCELED) if tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            _ => return false,
        }
    }
    let rc = unsafe { libc::umount2(c(p).as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        tracing::warn!(
            "{}: took over a dead casafs mount (transport endpoint was not connected)",
            p.display()
        );
    }
    rc == 0
}

fn open_dir(p: &Path) -> std::io::Result<OwnedFd> {
    let fd = unsafe {
        libc::open(
            c(p).as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Checks the source and every target area, creating missing areas, and
/// opens them. Everything that can be judged before mounting is judged here.
pub fn prepare(s: Settings) -> Result<Prepared, BadInput> {
    // Serving other users safely means acting as each of them.
    if s.allow_other && !crate::creds::enabled() {
        return Err(BadInput(
            "allow_other: casafs serves each user with that user's rights, which needs root (CAP_SETUID and CAP_SETGID); run it as root, or mount with noallow_other".into(),
        ));
    }
    // A live casafs is left alone: mounting over it would stack a second
    // daemon on the first one's view. Asked first, from a child process: a
    // stalled daemon would hold any request of this one for good.
    let shown = s.mountpoint.display();
    let wait = std::time::Duration::from_secs(5);
    match crate::health::probe(&s.mountpoint, wait) {
        crate::health::Health::Serving(Some(pid)) => {
            return Err(BadInput(format!(
                "{shown}: already mounted by casafs, pid {pid}"
            )));
        }
        crate::health::Health::Serving(None) => {
            return Err(BadInput(format!("{shown}: already mounted by casafs")));
        }
        crate::health::Health::Stalled => {
            return Err(BadInput(format!(
                "{shown}: already mounted by casafs, which is not answering (casafs check {shown})"
            )));
        }
        crate::health::Health::Dead => {
            take_over_dead_mount(&s.mountpoint);
        }
        crate::health::Health::NotCasafs => {}
    }
    if s.source != s.mountpoint
        && crate::health::probe(&s.source, wait) == crate::health::Health::Dead
    {
        take_over_dead_mount(&s.source);
    }
    let meta = std::fs::metadata(&s.source)
        .map_err(|e| BadInput(format!("source {}: {e}", s.source.display())))?;
    if !meta.is_dir() {
        return Err(BadInput(format!(
            "source {}: not a directory",
            s.source.display()
        )));
    }
    let mmeta = std::fs::metadata(&s.mountpoint)
        .map_err(|e| BadInput(format!("mount point {}: {e}", s.mountpoint.display())))?;
    if !mmeta.is_dir() {
        return Err(BadInput(format!(
            "mount point {}: not a directory",
            s.mountpoint.display()
        )));
    }
    // Beneath its own source, the mount would show itself inside itself:
    // listing the directory that holds the mount point asks casafs about
    // the mount point, which casafs could only answer through the mount.
    if let (Ok(src), Ok(mp)) = (
        std::fs::canonicalize(&s.source),
        std::fs::canonicalize(&s.mountpoint),
    ) && mp != src
        && mp.starts_with(&src)
    {
        return Err(BadInput(format!(
            "mount point {}: inside the source {} (the mount would show itself inside itself); mount it over the source or outside it",
            s.mountpoint.display(),
            s.source.display()
        )));
    }
    if let Some(m) = crate::boot::unmounted_under(&s.source) {
        return Err(BadInput(format!(
            "source {}: {}",
            s.source.display(),
            crate::boot::refusal(&m)
        )));
    }
    let source = std::fs::canonicalize(&s.source).unwrap_or_else(|_| s.source.clone());
    let mut root_fd =
        open_dir(&source).map_err(|e| BadInput(format!("source {}: {e}", s.source.display())))?;
    if let Some(attr) = crate::atime::wanted(&s.mount_flags) {
        match crate::atime::through_copy(&root_fd, attr) {
            Ok(fd) => root_fd = fd,
            Err(e) => tracing::warn!(
                "the access-time options cannot be kept ({e}; casafs needs root for them): access times follow the backing's own mount"
            ),
        }
    }

    // A graveyard a user made while casafs was not mounted is not casafs's:
    // it is moved aside (kept, for whoever made it), and a new one made.
    let gname = crate::graveyard::GRAVEYARD_CNAME;
    if let Ok(g) = crate::sys::open_at(
        root_fd.as_raw_fd(),
        gname,
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
    ) && let Err(e) = crate::areas::secure(g.as_raw_fd())
    {
        let aside = CString::new(format!(
            "{}.not-casafs.{}",
            crate::graveyard::GRAVEYARD_DIR,
            std::process::id()
        ))
        .map_err(|_| BadInput("graveyard name".into()))?;
        let shown = source.join(crate::graveyard::GRAVEYARD_DIR);
        crate::sys::rename_noreplace(root_fd.as_raw_fd(), gname, root_fd.as_raw_fd(), &aside)
            .map_err(|er| {
                BadInput(format!(
                    "graveyard {}: {}, and it cannot be moved aside: {}",
                    shown.display(),
                    e.0,
                    std::io::Error::from_raw_os_error(er.code())
                ))
            })?;
        tracing::warn!(
            "graveyard {}: {}; moved aside as {}",
            shown.display(),
            e.0,
            aside.to_string_lossy()
        );
    }
    let mut areas: Vec<(PathBuf, OwnedFd)> = Vec::new();
    let mut rule_area = Vec::new();
    // Directories made for the areas: bad input leaves nothing behind, so a
    // later area's failure removes them again.
    let mut made: Vec<PathBuf> = Vec::new();
    let undo = |made: &[PathBuf]| {
        for d in made.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    };
    for r in &s.rules.rules {
        if let Some(i) = areas.iter().position(|(p, _)| *p == r.target) {
            rule_area.push(i);
            continue;
        }
        let fail = |what: String| {
            BadInput(format!(
                "target area {} (rule '{}'): {what}",
                r.target.display(),
                r.name
            ))
        };
        let checked = (|| {
            if let Some(m) = crate::boot::unmounted_under(&r.target) {
                return Err(fail(crate::boot::refusal(&m)));
            }
            let fd = crate::areas::open_area(&r.target, &mut made).map_err(fail)?;
            match crate::areas::secure(fd.as_raw_fd()) {
                Ok(None) => {}
                // One casafs just made is closed as a matter of course.
                Ok(Some(_)) if made.contains(&r.target) => {}
                Ok(Some(note)) => tracing::warn!("target area {}: {note}", r.target.display()),
                Err(e) => return Err(fail(e.0)),
            }
            // Probe: a target nobody can create in would make every routed
            // creation fall back; refuse it now instead.
            let probe = CString::new(format!(".casafs-probe-{}", std::process::id()))
                .map_err(|_| fail("probe name".into()))?;
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
            crate::sys::open_at(fd.as_raw_fd(), &probe, flags, 0o600).map_err(|e| {
                fail(format!(
                    "not writable: {}",
                    std::io::Error::from_raw_os_error(e.code())
                ))
            })?;
            let _ = crate::sys::unlink_at(fd.as_raw_fd(), &probe, 0);
            Ok(fd)
        })();
        let fd = match checked {
            Ok(fd) => fd,
            Err(e) => {
                undo(&made);
                return Err(e);
            }
        };
        rule_area.push(areas.len());
        areas.push((r.target.clone(), fd));
    }
    Ok(Prepared {
        settings: s,
        root_fd,
        areas,
        rule_area,
    })
}

fn fuse_config(s: &Settings) -> Config {
    let mut cfg = Config::default();
    cfg.acl = if s.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    cfg.n_threads = Some(s.threads);
    cfg.clone_fd = true;
    cfg
}

/// Mounts with mount(2) and returns the /dev/fuse descriptor.
///
/// casafs mounts by itself rather than through fuser's mount helper so that
/// nothing ever unmounts by path on the way out: mounted over itself on a
/// mount point (the ntfs-3g volume), an unmount by path after ours would
/// take the volume below down too.
fn mount_fuse(s: &Settings, root_mode: u32) -> std::io::Result<OwnedFd> {
    let dev = unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if dev < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let dev = unsafe { OwnedFd::from_raw_fd(dev) };
    let flags = kernel_flags(s);
    let mut data = format!(
        "fd={},rootmode={:o},user_id={},group_id={},default_permissions",
        dev.as_raw_fd(),
        root_mode & libc::S_IFMT,
        unsafe { libc::geteuid() },
        unsafe { libc::getegid() },
    );
    if s.allow_other {
        data.push_str(",allow_other");
    }
    let fsname = s.fsname.replace(',', "_");
    let src = CString::new(fsname).unwrap_or_default();
    let data = CString::new(data).unwrap_or_default();
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            c(&s.mountpoint).as_ptr(),
            c"fuse.casafs".as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(dev)
}

/// The kernel flags of the mount: `nosuid,nodev` unless told otherwise.
fn kernel_flags(s: &Settings) -> libc::c_ulong {
    with_words(libc::MS_NOSUID | libc::MS_NODEV, s)
}

/// `flags` with the mount's flag words applied, the last word of a kind
/// winning.
fn with_words(mut flags: libc::c_ulong, s: &Settings) -> libc::c_ulong {
    for f in &s.mount_flags {
        match f {
            MountOption::RO => flags |= libc::MS_RDONLY,
            MountOption::RW => flags &= !libc::MS_RDONLY,
            MountOption::NoExec => flags |= libc::MS_NOEXEC,
            MountOption::Exec => flags &= !libc::MS_NOEXEC,
            MountOption::NoAtime => flags |= libc::MS_NOATIME,
            MountOption::Atime => flags &= !libc::MS_NOATIME,
            MountOption::Sync => flags |= libc::MS_SYNCHRONOUS,
            MountOption::DirSync => flags |= libc::MS_DIRSYNC,
            MountOption::Suid => flags &= !libc::MS_NOSUID,
            MountOption::NoSuid => flags |= libc::MS_NOSUID,
            MountOption::Dev => flags &= !libc::MS_NODEV,
            MountOption::NoDev => flags |= libc::MS_NODEV,
            MountOption::CUSTOM(w) => flags |= crate::atime::ms_flag(w),
            _ => {}
        }
    }
    flags
}

/// `-o remount`: the kernel flags of a live casafs mount changed in place
/// (`mount -o remount,ro`). Exit status as for a mount.
pub fn remount(s: &Settings) -> Result<(), BadInput> {
    let mp = &s.mountpoint;
    if crate::health::fstype_at(mp).as_deref() != Some("fuse.casafs") {
        return Err(BadInput(format!(
            "remount: {} is not a casafs mount",
            mp.display()
        )));
    }
    // A remount sets every flag of the mount: start from the ones it has,
    // and change only what was asked.
    let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c(mp).as_ptr(), &mut sv) } != 0 {
        return Err(BadInput(format!(
            "remount {}: {}",
            mp.display(),
            std::io::Error::last_os_error()
        )));
    }
    let now = [
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_SYNCHRONOUS, libc::MS_SYNCHRONOUS),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
        (0x2000, 0x100), // ST_NOSYMFOLLOW, MS_NOSYMFOLLOW
    ]
    .iter()
    .filter(|(st, _)| sv.f_flag & st != 0)
    .fold(0, |acc, (_, ms)| acc | ms);
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c(mp).as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | with_words(now, s),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(BadInput(format!(
            "remount {}: {}",
            mp.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// `sd_notify`: tells systemd (Type=notify) how the service is doing.
pub fn sd_notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_bytes();
    let addr = if let Some(abs) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(abs)
    } else {
        SocketAddr::from_pathname(Path::new(&path))
    };
    if let Ok(addr) = addr {
        let _ = sock.send_to_addr(msg.as_bytes(), &addr);
    }
}

fn block_stop_signals() -> libc::sigset_t {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Mounts and serves until unmounted. With `daemonize`, the parent returns
/// only once the mount is up (or failed), as mount(8) expects.
pub fn run(p: Prepared, args: crate::config::MountArgs) -> Result<(), MountError> {
    let foreground = p.settings.foreground;
    let mut report: Option<OwnedFd> = None;
    if !foreground {
        match crate::detach::detach() {
            Err(e) => return Err(MountError::Failed(e)),
            Ok(crate::detach::Side::Caller(done)) => return done.map_err(MountError::Failed),
            Ok(crate::detach::Side::Daemon(w)) => {
                crate::logsink::starting_detached();
                report = Some(w);
            }
        }
    }
    let tell = crate::detach::tell;

    set_umask_zero();
    let sigset = block_stop_signals();
    let mountpoint = p.settings.mountpoint.clone();
    let cfg = fuse_config(&p.settings);
    let acl = cfg.acl;
    let mp = c(&mountpoint);
    let retention = retention_list(&p);
    // Everything that reads the backing tree's mount table happens before
    // the mount, which would otherwise shadow it.
    let fs = match CasaFs::new(p) {
        Ok(fs) => fs,
        Err(e) => {
            let m = format!(
                "cannot start: {}",
                std::io::Error::from_raw_os_error(e.code())
            );
            tell(&mut report, &m);
            return Err(MountError::Failed(m));
        }
    };
    if fs.settings().io_uring
        && let Err(e) = crate::transport::uring::enable_in_kernel()
    {
        tracing::info!("FUSE over io_uring off, serving through /dev/fuse: {e}");
    }
    let dev = match mount_fuse(fs.settings(), libc::S_IFDIR) {
        Ok(d) => d,
        Err(e) => {
            fs.destroy();
            let m = format!("cannot mount on {}: {e}", mountpoint.display());
            tell(&mut report, &m);
            return Err(MountError::Failed(m));
        }
    };
    match dev.try_clone() {
        Ok(d) => {
            fs.connect(std::sync::Arc::new(d));
        }
        Err(e) => {
            tracing::warn!("kernel passthrough and io_uring off: cannot share the FUSE device: {e}")
        }
    }
    let stats = fs.stats().clone();
    let fs = std::sync::Arc::new(fs);
    let server = crate::transport::Server::new(fs.clone());
    let dispatch = crate::transport::devfuse::Dispatch(server.clone());
    let session = match fuser::Session::from_fd(dispatch, dev, acl, cfg) {
        Ok(s) => s,
        Err(e) => {
            unsafe { libc::umount2(mp.as_ptr(), libc::MNT_DETACH) };
            let m = format!("cannot start the session on {}: {e}", mountpoint.display());
            tell(&mut report, &m);
            return Err(MountError::Failed(m));
        }
    };
    server.start_queues();
    drop(server);
    let mounted: std::sync::Arc<dyn crate::retention::Mounted> = fs.clone();
    crate::retention::start(retention, stats, std::sync::Arc::downgrade(&mounted));
    drop(mounted);
    let detached = report.is_some();
    tell(&mut report, "OK\n");
    if detached {
        crate::logsink::leave_caller_stderr();
    }
    sd_notify(&format!(
        "READY=1\nSTATUS=mounted on {}\nMAINPID={}",
        mountpoint.display(),
        std::process::id()
    ));
    crate::health::start_watchdog(&mountpoint);
    crate::fs::start_lease(std::sync::Arc::downgrade(&fs));
    crate::fs::start_watch(std::sync::Arc::downgrade(&fs));
    if let Some(t) = fs.settings().textfile.clone() {
        crate::health::start_textfile(t, std::sync::Arc::downgrade(&fs));
    }

    let live = std::sync::Arc::downgrade(&fs);
    std::thread::Builder::new()
        .name("casafs-signals".into())
        .spawn(move || {
            let mut sig = 0;
            loop {
                if unsafe { libc::sigwait(&sigset, &mut sig) } != 0 {
                    continue;
                }
                if sig == libc::SIGHUP {
                    if let Some(fs) = live.upgrade() {
                        reload(&fs, &args);
                    }
                    continue;
                }
                tracing::info!("signal {sig}: unmounting {}", mp.to_string_lossy());
                crate::health::stopping();
                sd_notify("STOPPING=1");
                // A plain unmount first; if files are still open, detach
                // and keep serving them until they are closed.
                if unsafe { libc::umount2(mp.as_ptr(), 0) } != 0 {
                    unsafe { libc::umount2(mp.as_ptr(), libc::MNT_DETACH) };
                }
            }
        })
        .map_err(|e| MountError::Failed(format!("signal thread: {e}")))?;

    session
        .run()
        .map_err(|e| MountError::Failed(format!("session ended with an error: {e}")))?;
    tracing::info!("unmounted {}", mountpoint.display());
    // Metrics of a mount that is gone would be scraped as if it served.
    if let Some(t) = &fs.settings().textfile {
        let _ = std::fs::remove_file(t);
    }
    Ok(())
}

/// SIGHUP, `systemctl reload`: reads the configuration again and applies
/// what can change while mounted. A configuration that would be refused at
/// mount is refused whole, and the running one stays.
fn reload(fs: &CasaFs, args: &crate::config::MountArgs) {
    let now = {
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
    };
    sd_notify(&format!("RELOADING=1\nMONOTONIC_USEC={now}"));
    match crate::config::build(args) {
        Err(e) => tracing::error!("reload refused, the running configuration stays: {e}"),
        Ok(new) => {
            let done = fs.live().apply(fs.settings(), &new);
            fs.stats()
                .reloads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if done.changed.is_empty() {
                tracing::info!("reloaded: nothing that applies live changed");
            } else {
                tracing::info!("reloaded: {} now apply", done.changed.join(", "));
            }
            if !done.needs_remount.is_empty() {
                tracing::warn!(
                    "reload: left as mounted until a remount: {}",
                    done.needs_remount.join("; ")
                );
            }
        }
    }
    sd_notify("READY=1");
}

/// Every rule with its area: a reload may give any of them a retention.
fn retention_list(p: &Prepared) -> Vec<crate::retention::Retention> {
    let mut list = Vec::new();
    for (i, rule) in p.settings.rules.rules.iter().enumerate() {
        let age = rule.retention.unwrap_or(std::time::Duration::MAX);
        let Some((&area, (path, _))) = p.rule_area.get(i).and_then(|a| Some((a, p.areas.get(*a)?)))
        else {
            continue;
        };
        list.push(crate::retention::Retention {
            index: i,
            rule: rule.clone(),
            age,
            area,
            area_path: path.clone(),
        });
    }
    list
}

/// Raises the descriptor limit as far as it goes: one descriptor per open
/// file is unavoidable, for every user's files at once, and the default
/// soft limit (1024) is far too low. Root may go up to the kernel's
/// `fs.nr_open`; anyone else to the hard limit.
pub fn raise_nofile() {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok());
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return;
        }
        if let Some(n) = nr_open.filter(|n| *n > rl.rlim_max) {
            let all = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &all) == 0 {
                return;
            }
        }
        if rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

pub fn set_umask_zero() {
    // Modes from the kernel are already masked by the caller's umask.
    unsafe { libc::umask(0) };
}
