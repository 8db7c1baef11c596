//! Shared test harness: real casafs mounts in unique temp directories,
//! unmounted on drop (also when a test panics).

#![allow(dead_code)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_casafs");

/// The binary the mounts run: this build's, or `CASAFS_BIN` to run the
/// same tests against another build (an older one, to show a test fails
/// there).
pub fn bin() -> String {
    std::env::var("CASAFS_BIN").unwrap_or_else(|_| BIN.to_string())
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let base = std::env::var_os("CASAFS_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        let p = base.join(format!(
            "casafs-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        // Other users (the multi-user tests) must be able to reach it.
        chmod(&p, 0o755);
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !is_mounted_below(&self.0) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()
}

/// The filesystem type mounted exactly at `p`, if any (topmost mount).
pub fn fstype_at(p: &Path) -> Option<String> {
    let want = p.to_string_lossy().replace(' ', "\\040");
    let mut found = None;
    for line in mountinfo().lines() {
        let mut halves = line.split(" - ");
        let (Some(a), Some(b)) = (halves.next(), halves.next()) else {
            continue;
        };
        if a.split(' ').nth(4) == Some(want.as_str()) {
            found = b.split(' ').next().map(str::to_string);
        }
    }
    found
}

fn is_mounted_below(p: &Path) -> bool {
    let want = p.to_string_lossy().to_string();
    mountinfo()
        .lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&want)))
}

pub fn umount(p: &Path, lazy: bool) -> i32 {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    unsafe { libc::umount2(c.as_ptr(), flags) }
}

/// A running casafs (foreground child) and its mount. Unmounts and reaps
/// the daemon on drop.
pub struct Mount {
    pub tmp: TempDir,
    pub source: PathBuf,
    pub mnt: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
    /// Set by `kill9`: the dead mount it left is still this guard's to
    /// clean up if the test fails before a takeover.
    crashed: bool,
}

pub struct MountBuilder {
    over_itself: bool,
    opts: Vec<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    tag: String,
    source: Option<PathBuf>,
    tmp: Option<TempDir>,
    nofile: Option<u64>,
}

impl MountBuilder {
    pub fn separate(mut self) -> Self {
        self.over_itself = false;
        self
    }
    pub fn opt(mut self, o: &str) -> Self {
        self.opts.push(o.to_string());
        self
    }
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }
    /// Holds the daemon to `n` descriptors (soft and hard limit), as a
    /// daemon without CAP_SYS_RESOURCE is held to its hard limit.
    pub fn nofile(mut self, n: u64) -> Self {
        self.nofile = Some(n);
        self
    }
    /// Use an existing backing directory (e.g. a ntfs-3g volume).
    pub fn source(mut self, p: &Path, tmp: TempDir) -> Self {
        self.source = Some(p.to_path_buf());
        self.tmp = Some(tmp);
        self
    }
    pub fn start(self) -> Mount {
        let tmp = self.tmp.unwrap_or_else(|| TempDir::new(&self.tag));
        let source = self.source.unwrap_or_else(|| tmp.path().join("tree"));
        // The source may be a dead mount (a takeover test): leave it be.
        if std::fs::create_dir_all(&source).is_ok() {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o755));
        }
        let mnt = if self.over_itself {
            source.clone()
        } else {
            let m = tmp.path().join("mnt");
            std::fs::create_dir_all(&m).unwrap();
            m
        };
        let log = tmp.path().join("casafs.log");
        let mut cmd = Command::new(bin());
        cmd.arg("mount").arg(&source).arg(&mnt).arg("-f");
        for o in &self.opts {
            cmd.arg("-o").arg(o);
        }
        cmd.args(&self.args);
        // The table of file handles kept at unmount goes with the test.
        cmd.env("CASAFS_STATE_DIR", tmp.path().join("state"));
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or("info".into()),
        );
        // The daemon says READY=1 only once everything serves (the io_uring
        // queues too): the mount answering is not enough.
        let ready = (!self.env.iter().any(|(k, _)| k == "NOTIFY_SOCKET")).then(|| {
            let path = tmp.path().join("notify.sock");
            let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
            cmd.env("NOTIFY_SOCKET", &path);
            sock
        });
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(n) = self.nofile {
            use std::os::unix::process::CommandExt;
            const CAP_SYS_RESOURCE: libc::c_ulong = 24;
            let rl = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // Only system calls between fork and exec. Without
            // CAP_SYS_RESOURCE in its bounding set, root's daemon cannot
            // raise the limit again.
            unsafe {
                cmd.pre_exec(move || {
                    let _ = libc::prctl(libc::PR_CAPBSET_DROP, CAP_SYS_RESOURCE, 0, 0, 0);
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = cmd.spawn().expect("spawn casafs");
        let mut m = Mount {
            tmp,
            source,
            mnt,
            child: Some(child),
            log,
            crashed: false,
        };
        m.wait_mounted();
        if let Some(sock) = ready {
            m.wait_ready(&sock);
        }
        m
    }
}

impl Mount {
    pub fn builder(tag: &str) -> MountBuilder {
        MountBuilder {
            over_itself: true,
            opts: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            tag: tag.to_string(),
            source: None,
            tmp: None,
            nofile: None,
        }
    }

    /// A mount of a fresh tree over itself.
    pub fn over_itself(tag: &str) -> Mount {
        Self::builder(tag).start()
    }

    /// A mount of a fresh tree on a separate mount point.
    pub fn separate(tag: &str) -> Mount {
        Self::builder(tag).separate().start()
    }

    fn wait_mounted(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // A dead mount also shows as fuse.casafs; only a live daemon
            // answers for its control directory.
            if fstype_at(&self.mnt).as_deref() == Some("fuse.casafs") {
                // On a thread: a daemon that accepts the mount but never
                // answers must fail the test, not hang it.
                let stats = self.mnt.join(".casafs/stats.json");
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let _ = tx.send(std::fs::read(stats).is_ok());
                });
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left.max(Duration::from_millis(100))) {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(_) => {
                        let log = self.log_text();
                        self.stop();
                        panic!("casafs mounted but did not answer within 20s: {log}");
                    }
                }
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                self.child = None;
                panic!("casafs exited before mounting ({st}): {log}");
            }
            if Instant::now() > deadline {
                panic!("casafs did not mount within 20s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_ready(&mut self, sock: &std::os::unix::net::UnixDatagram) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n]).contains("READY=1")
            {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                return;
            }
        }
        let log = self.log_text();
        self.stop();
        panic!("casafs mounted but never said READY=1 within 20s: {log}");
    }

    /// A path inside the mount.
    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The same path in the backing tree. For a mount over itself the
    /// backing tree is hidden; this reads it through /proc of the daemon,
    /// whose root descriptor sits below the mount.
    pub fn backing(&self, rel: &str) -> PathBuf {
        if self.source != self.mnt {
            return self.source.join(rel);
        }
        let pid = self.pid();
        // The daemon's cwd is irrelevant; find its root descriptor.
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
        for fd in fds.flatten() {
            if let Ok(t) = std::fs::read_link(fd.path())
                && t == self.source
            {
                let p = fd.path().join(rel);
                return p;
            }
        }
        panic!("backing root descriptor not found in /proc/{pid}/fd");
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stats(&self) -> serde_json::Value {
        let t = std::fs::read_to_string(self.p(".casafs/stats.json")).unwrap();
        serde_json::from_str(&t).unwrap()
    }

    /// `kill -9` of the daemon, leaving its dead mount behind, as a crash
    /// would. The guard no longer unmounts: the next mount must take over.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            self.crashed = true;
        }
    }

    /// Unmounts and waits for the daemon; returns its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        if fstype_at(&self.mnt).as_deref() == Some("fuse.casafs") && umount(&self.mnt, false) != 0 {
            umount(&self.mnt, true);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop();
        // A crash this guard caused and nobody took over: only a dead mount
        // is removed, never a live one started by someone else.
        if self.crashed
            && fstype_at(&self.mnt).as_deref() == Some("fuse.casafs")
            && is_dead_connection(std::fs::read_dir(&self.mnt).map(|_| ()))
        {
            umount(&self.mnt, true);
        }
    }
}

/// Waits up to 5 s for `cond`. For what follows a close(): the kernel sends
/// FUSE's release after close() has returned, so what the release does (a
/// deferred unlink completing, a counter going down) shows a moment later.
pub fn eventually(what: &str, cond: impl FnMut() -> bool) {
    eventually_within(what, 5, cond)
}

/// `eventually`, for what may take up to `secs` seconds (a reload, a
/// retention pass).
pub fn eventually_within(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "not within {secs} s: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a result is a FUSE mount's answer after its daemon died:
/// ENOTCONN, or for the first callers after a daemon that served through
/// io_uring died, ECONNABORTED or ECANCELED (requests the kernel had queued
/// for its rings).
pub fn is_dead_connection<T>(r: std::io::Result<T>) -> bool {
    matches!(
        r.err().and_then(|e| e.raw_os_error()),
        Some(libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED)
    )
}

/// Runs `sh -c script` as the given user (uid, gid), in `dir`.
pub fn sh_as(uid: u32, gid: u32, dir: &Path, script: &str) -> Output {
    let mut c = Command::new("sh");
    c.arg("-c").arg(script).current_dir(dir);
    if uid != 0 {
        // Drop root's supplementary groups too, as a login would.
        unsafe {
            c.pre_exec(move || {
                if libc::setgroups(1, &gid) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    c.output().expect("run sh")
}

pub fn sh(dir: &Path, script: &str) -> Output {
    sh_as(0, 0, dir, script)
}

pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "command failed ({}): stdout {} stderr {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn user_ids(name: &str) -> (u32, u32) {
    let c = CString::new(name).unwrap();
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    assert!(
        !pw.is_null(),
        "user {name} missing: the CI script creates it"
    );
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

pub fn group_id(name: &str) -> u32 {
    let c = CString::new(name).unwrap();
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    assert!(!gr.is_null(), "group {name} missing");
    unsafe { (*gr).gr_gid }
}

/// The groups the user database gives the user `name`.
pub fn supplementary_groups(name: &str) -> Vec<u32> {
    let out = Command::new("id").arg("-G").arg(name).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect()
}

/// How many `op` requests a stats.json snapshot counts.
pub fn op_count(stats: &serde_json::Value, op: &str) -> u64 {
    stats["operations"][op]["count"].as_u64().unwrap_or(0)
}

pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub fn stat(p: &Path) -> libc::stat {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::lstat(c.as_ptr(), &mut st) };
    assert_eq!(
        rc,
        0,
        "lstat {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    st
}

pub fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// A tmpfs mounted for a test with the given options, unmounted on drop.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn new(p: PathBuf, opts: &str) -> Tmpfs {
        std::fs::create_dir_all(&p).unwrap();
        ok(&sh(
            Path::new("/"),
            &format!("mount -t tmpfs -o {opts} casafs-test {}", p.display()),
        ));
        Tmpfs(p)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        umount(&self.0, true);
    }
}

/// A bind mount made for a test, unmounted on drop.
pub struct Bind(pub PathBuf);

impl Bind {
    pub fn new(from: &Path, to: &Path) -> Bind {
        std::fs::create_dir_all(to).unwrap();
        ok(&sh(
            Path::new("/"),
            &format!("mount --bind {} {}", from.display(), to.display()),
        ));
        Bind(to.to_path_buf())
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        umount(&self.0, true);
    }
}

/// A casafs mount a test made itself without `Mount` (the daemonized
/// forms): unmounted on drop, also when an assertion fails first, if casafs
/// still serves there.
pub struct MountedHere(pub PathBuf);

impl Drop for MountedHere {
    fn drop(&mut self) {
        if fstype_at(&self.0).as_deref() == Some("fuse.casafs") && umount(&self.0, false) != 0 {
            umount(&self.0, true);
        }
    }
}

/// A stand-in user of files: a shell script in the background that holds
/// them open or works in a directory, then sleeps. Killed on drop, also
/// when a test fails.
pub struct Holder(Child);

impl Holder {
    pub fn sh(script: &str) -> Holder {
        let h = Holder(Command::new("sh").arg("-c").arg(script).spawn().unwrap());
        let pid = h.pid();
        eventually("the holder is in place", || {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
        });
        h
    }

    /// A process that maps the whole file `p` with mmap(2) and closes the
    /// descriptor it mapped it through, as the dynamic loader and git's
    /// pack indexes do (Python's own mmap module would keep one).
    pub fn mapping(p: &Path) -> Holder {
        const MAP: &str = "import ctypes, os, sys, time
libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
fd = os.open(sys.argv[1], os.O_RDONLY)
assert libc.mmap(None, os.fstat(fd).st_size, 1, 1, fd, 0) not in (None, 2**64 - 1)
os.close(fd)
time.sleep(600)
";
        let child = Command::new("python3")
            .arg("-c")
            .arg(MAP)
            .arg(p)
            .spawn()
            .unwrap();
        let h = Holder(child);
        let pid = h.pid();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        eventually("the file is mapped, its descriptor closed", || {
            std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| m.contains(&name))
                && std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|d| {
                    d.flatten()
                        .all(|e| !std::fs::read_link(e.path()).is_ok_and(|t| t.ends_with(&name)))
                })
        });
        h
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the casafs binary with `args` (and `env`): exit code, stdout,
/// stderr.
pub fn casafs_with<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    env: &[(&str, &std::ffi::OsStr)],
) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Parses Prometheus text with the reference parser (prometheus_client);
/// one line per family: "name type samples".
pub fn prometheus_families(text: &str) -> String {
    use std::io::Write;
    let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\n\
for f in p(sys.stdin.read()):\n    print(f.name, f.type, len(f.samples))";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    ok(&child.wait_with_output().unwrap())
}

/// A 256 MiB NTFS image mounted with ntfs-3g (the users' own backing);
/// unmounted on drop, after anything stacked on it.
pub struct Ntfs {
    /// Holds the image.
    pub tmp: TempDir,
    pub dir: PathBuf,
}

impl Ntfs {
    pub fn new(tag: &str) -> Ntfs {
        Self::with_options(tag, "")
    }

    /// `opts`: extra ntfs-3g options, e.g. `-o permissions` for POSIX
    /// modes and owners.
    pub fn with_options(tag: &str, opts: &str) -> Ntfs {
        let tmp = TempDir::new(tag);
        let img = tmp.path().join("vol.img");
        let dir = tmp.path().join("vol");
        std::fs::create_dir_all(&dir).unwrap();
        ok(&sh(
            tmp.path(),
            &format!(
                "truncate -s 256M {img} && mkntfs -F -q -f {img} >/dev/null 2>&1 && ntfs-3g {opts} {img} {dir}",
                img = img.display(),
                dir = dir.display(),
                opts = opts
            ),
        ));
        assert_eq!(fstype_at(&dir).as_deref(), Some("fuse"), "ntfs-3g mounted");
        Ntfs { tmp, dir }
    }
}

impl Drop for Ntfs {
    fn drop(&mut self) {
        // Anything stacked on the volume goes first.
        while fstype_at(&self.dir).as_deref() == Some("fuse.casafs") {
            umount(&self.dir, true);
        }
        if umount(&self.dir, false) != 0 {
            umount(&self.dir, true);
        }
    }
}

/// Runs the calling thread on `cpu` only: its requests reach the daemon
/// through that CPU's queue.
pub fn pin_to(cpu: usize) {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

/// A stream of ordinary requests in `dir`: `n` files made, read back and
/// removed one after another.
pub fn create_read_remove(dir: &Path, n: usize) {
    for k in 0..n {
        let f = dir.join(format!("meanwhile{k}"));
        std::fs::write(&f, b"served").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"served");
        std::fs::remove_file(&f).unwrap();
    }
}
