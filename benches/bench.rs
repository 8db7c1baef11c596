//! The casafs benchmark suite: every workload on the native directory, on
//! casafs mounted over itself, and on bindfs, mergerfs and libfuse's
//! passthrough_hp when installed (passthrough_hp: `tests/peers/build.sh`),
//! interleaved (each repetition runs every filesystem once, in a shuffled
//! order) so that drift of the machine hits all of them alike. Reported as
//! the median ratio of wall time to the native directory, with min-max.
//!
//! ```sh
//! cargo bench --bench bench                        # the table (as root)
//! cargo bench --bench bench -- --reps 7 --gib 1    # more repetitions
//! cargo bench --bench bench -- --only metadata,tree # some workloads only
//! cargo bench --bench bench -- --also io_uring=never  # a casafs column with other options
//! cargo bench --bench bench -- --walk 1000000      # daemon RSS and fds after a walk
//! cargo bench --bench bench -- --stats-overhead    # cost of counting per request
//! cargo bench --bench bench -- --as-user tests     # workloads run by that user
//! cargo bench --bench bench -- --also-bin /tmp/casafs-before  # a column for another build
//! ```
//!
//! `--as-user` runs every workload with that user's rights (the thread's
//! filesystem ids, and `setpriv` for the commands it runs), so casafs serves
//! an unprivileged caller, as on a shared machine, and not root.
//!
//! `CASAFS_BENCH_DIR` picks the directory the native runs and the backing
//! trees live in (default `/var/tmp`); it should be the disk under test.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CASAFS: &str = env!("CARGO_BIN_EXE_casafs");

struct Opts {
    reps: usize,
    gib: u64,
    walk: Option<u64>,
    stats_overhead: bool,
    only: Option<String>,
    /// Extra casafs columns, each mounted with these `-o` options.
    also: Vec<String>,
    /// Extra casafs columns, each another build of casafs (default options).
    also_bin: Vec<String>,
    /// Workloads run as this (uid, gid).
    as_user: Option<(u32, u32)>,
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        reps: 5,
        gib: 1,
        walk: None,
        stats_overhead: false,
        only: None,
        also: Vec::new(),
        also_bin: Vec::new(),
        as_user: None,
    };
    let mut args = std::env::args().skip(1);
    // cargo passes `--bench`; anything unknown is ignored for that reason.
    while let Some(a) = args.next() {
        let num = |v: Option<String>| v.and_then(|s| s.parse::<u64>().ok());
        match a.as_str() {
            "--reps" => o.reps = num(args.next()).unwrap_or(5).max(1) as usize,
            "--gib" => o.gib = num(args.next()).unwrap_or(1).max(1),
            "--walk" => o.walk = num(args.next()),
            "--stats-overhead" => o.stats_overhead = true,
            "--only" => o.only = args.next(),
            "--also" => o.also.extend(args.next()),
            "--also-bin" => o.also_bin.extend(args.next()),
            "--as-user" => o.as_user = args.next().map(|u| user_ids(&u)),
            _ => {}
        }
    }
    o
}

fn dev(p: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(p).ok().map(|m| m.dev())
}

fn umount(p: &Path, flags: i32) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    unsafe { libc::umount2(c.as_ptr(), flags) == 0 }
}

/// A FUSE filesystem this benchmark started in the foreground. Unmounted and
/// reaped on drop, also when a workload panics.
struct Mounted {
    mnt: PathBuf,
    child: Child,
}

impl Mounted {
    fn start(cmd: &mut Command, mnt: &Path) -> Mounted {
        // A new mount is a new device; the filesystem type would not do,
        // as the backing directory may itself be FUSE (ntfs-3g).
        let before = dev(mnt);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let mut m = Mounted {
            mnt: mnt.to_path_buf(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while dev(mnt).is_none_or(|d| Some(d) == before) {
            if let Ok(Some(st)) = m.child.try_wait() {
                panic!("{cmd:?} exited before mounting: {st}");
            }
            assert!(Instant::now() < deadline, "{cmd:?} did not mount in 20s");
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let parent = self.mnt.parent().and_then(dev);
        if dev(&self.mnt).is_some_and(|d| Some(d) != parent) && !umount(&self.mnt, 0) {
            umount(&self.mnt, libc::MNT_DETACH);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// casafs in its production shape: over itself, default options (plus
/// `opts` for the extra columns of `--also`).
fn mount_casafs(tree: &Path, opts: Option<&str>) -> Mounted {
    mount_casafs_bin(CASAFS, tree, opts)
}

fn mount_casafs_bin(bin: &str, tree: &Path, opts: Option<&str>) -> Mounted {
    let mut cmd = Command::new(bin);
    cmd.arg("mount").arg(tree).arg(tree).arg("-f");
    if let Some(o) = opts {
        cmd.arg("-o").arg(o);
    }
    Mounted::start(&mut cmd, tree)
}

/// One filesystem under test: where workloads run, and its mount if any.
struct Target {
    name: String,
    dir: PathBuf,
    mount: Option<Mounted>,
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn targets(base: &Path, also: &[String], also_bin: &[String]) -> Vec<Target> {
    let mut v = Vec::new();
    let native = base.join("native");
    fs::create_dir_all(&native).expect("create native dir");
    v.push(Target {
        name: "native".into(),
        dir: native,
        mount: None,
    });
    let tree = base.join("casafs");
    fs::create_dir_all(&tree).expect("create casafs tree");
    let m = mount_casafs(&tree, None);
    v.push(Target {
        name: "casafs".into(),
        dir: tree,
        mount: Some(m),
    });
    for (i, opts) in also.iter().enumerate() {
        let tree = base.join(format!("casafs-also-{i}"));
        fs::create_dir_all(&tree).expect("create casafs tree");
        let m = mount_casafs(&tree, Some(opts));
        v.push(Target {
            name: format!("casafs -o {opts}"),
            dir: tree,
            mount: Some(m),
        });
    }
    for (i, bin) in also_bin.iter().enumerate() {
        let tree = base.join(format!("casafs-bin-{i}"));
        fs::create_dir_all(&tree).expect("create casafs tree");
        let m = mount_casafs_bin(bin, &tree, None);
        v.push(Target {
            name: format!("casafs {bin}"),
            dir: tree,
            mount: Some(m),
        });
    }
    // libfuse's own example, as it is meant to run: FUSE over io_uring and
    // kernel passthrough, other users let in, and so the kernel checking
    // their permissions (`default_permissions`), as it does for casafs.
    let peers = std::env::var_os("CASAFS_PEERS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/peers"),
        PathBuf::from,
    );
    let hp = peers.join("passthrough_hp");
    if hp.exists() {
        let src = base.join("passthrough_hp-src");
        let mnt = base.join("passthrough_hp-mnt");
        fs::create_dir_all(&src).expect("create peer source");
        fs::create_dir_all(&mnt).expect("create peer mount point");
        let m = Mounted::start(
            Command::new(&hp)
                .arg("--foreground")
                .arg("-o")
                .arg("io_uring,allow_other,default_permissions")
                .arg(&src)
                .arg(&mnt),
            &mnt,
        );
        v.push(Target {
            name: "passthrough_hp".into(),
            dir: mnt,
            mount: Some(m),
        });
    } else {
        eprintln!(
            "passthrough_hp is not built ({}; tests/peers/build.sh passthrough_hp): its column is left out",
            hp.display()
        );
    }
    for (name, tool) in [("bindfs", "bindfs"), ("mergerfs", "mergerfs")] {
        if !have(tool) {
            eprintln!("{tool} is not installed: its column is left out");
            continue;
        }
        let src = base.join(format!("{name}-src"));
        let mnt = base.join(format!("{name}-mnt"));
        fs::create_dir_all(&src).expect("create peer source");
        fs::create_dir_all(&mnt).expect("create peer mount point");
        let m = Mounted::start(Command::new(tool).arg("-f").arg(&src).arg(&mnt), &mnt);
        v.push(Target {
            name: name.into(),
            dir: mnt,
            mount: Some(m),
        });
    }
    v
}

/// xorshift64*: reproducible offsets and sizes without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn drop_caches() {
    unsafe { libc::sync() };
    // Needs root; without it the "cold" read is as warm as the other one.
    as_root(|| {
        let _ = fs::write("/proc/sys/vm/drop_caches", "3");
    });
}

fn user_ids(name: &str) -> (u32, u32) {
    let c = CString::new(name).expect("user name");
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    assert!(!pw.is_null(), "no user {name}");
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

thread_local! {
    /// The user this thread's workloads run as (`--as-user`).
    static USER: std::cell::Cell<Option<(u32, u32)>> = const { std::cell::Cell::new(None) };
}

/// Gives this thread the filesystem ids of `user` (or root's back), with
/// the raw system calls: glibc's would change every thread. The threads a
/// workload starts inherit them.
fn take_ids(user: Option<(u32, u32)>) {
    let (uid, gid) = user.unwrap_or((0, 0));
    unsafe {
        libc::syscall(libc::SYS_setgroups, 1, &gid as *const u32);
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
    }
    USER.with(|u| u.set(user));
}

fn as_root(f: impl FnOnce()) {
    let user = USER.with(|u| u.get());
    take_ids(None);
    f();
    take_ids(user);
}

/// A command run by the workloads' user.
fn command(program: &str) -> Command {
    match USER.with(|u| u.get()) {
        None => Command::new(program),
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg(program);
            c
        }
    }
}

fn seq_write(d: &Path, gib: u64) -> f64 {
    let p = d.join("seq-write");
    let buf = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut f = File::create(&p).expect("create");
    for _ in 0..(gib << 10) {
        f.write_all(&buf).expect("write");
    }
    f.sync_all().expect("fsync");
    drop(f);
    let e = secs(t.elapsed());
    fs::remove_file(&p).expect("remove");
    e
}

fn prepare_big(d: &Path, gib: u64) {
    let p = d.join("seq-read");
    if fs::metadata(&p).is_ok_and(|m| m.len() == gib << 30) {
        return;
    }
    let mut f = File::create(&p).expect("create");
    let buf = vec![0xa5u8; 1 << 20];
    for _ in 0..(gib << 10) {
        f.write_all(&buf).expect("write");
    }
    f.sync_all().expect("fsync");
}

fn read_all(p: &Path) -> u64 {
    let mut f = File::open(p).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0;
    loop {
        match f.read(&mut buf).expect("read") {
            0 => return n,
            k => n += k as u64,
        }
    }
}

fn seq_read_warm(d: &Path) -> f64 {
    let p = d.join("seq-read");
    read_all(&p);
    let t = Instant::now();
    read_all(&p);
    secs(t.elapsed())
}

fn seq_read_cold(d: &Path) -> f64 {
    let p = d.join("seq-read");
    drop_caches();
    let t = Instant::now();
    read_all(&p);
    secs(t.elapsed())
}

/// create + 4 KiB write + close + stat + unlink, `n` times, in `dir`.
fn meta_loop_in(dir: &Path, n: usize) {
    fs::create_dir_all(dir).expect("mkdir");
    let block = [7u8; 4096];
    for i in 0..n {
        let p = dir.join(format!("f{i}"));
        let mut f = File::create(&p).expect("create");
        f.write_all(&block).expect("write");
        drop(f);
        fs::metadata(&p).expect("stat");
        fs::remove_file(&p).expect("unlink");
    }
}

fn meta_loop(d: &Path) -> f64 {
    let dir = d.join("meta");
    let t = Instant::now();
    meta_loop_in(&dir, 5000);
    secs(t.elapsed())
}

fn two_clients(d: &Path) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for c in 0..2 {
            let dir = d.join(format!("client{c}"));
            s.spawn(move || meta_loop_in(&dir, 5000));
        }
    });
    secs(t.elapsed())
}

/// Requests of one run: in all, and by operation.
type Counted = (u64, Vec<(String, u64)>);

/// The daemon's request counts by operation, from the control file.
fn op_counts(d: &Path) -> Vec<(String, u64)> {
    let text = fs::read_to_string(d.join(".casafs/stats.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v.get("operations")
        .and_then(|o| o.as_object())
        .map(|o| {
            o.iter()
                .map(|(k, x)| (k.clone(), x["count"].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// Requests between two counts: their sum, and by operation, most first.
fn diff_counts(a: &[(String, u64)], b: &[(String, u64)]) -> Counted {
    let mut by: Vec<(String, u64)> = b
        .iter()
        .map(|(k, n)| {
            let was = a.iter().find(|(ka, _)| ka == k).map_or(0, |x| x.1);
            (k.clone(), n - was.min(*n))
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    by.sort_by_key(|x| std::cmp::Reverse(x.1));
    (by.iter().map(|x| x.1).sum(), by)
}

/// A source tree of ~5,000 files in ~250 directories, as a tar archive made
/// once on the native disk.
fn make_archive(base: &Path) -> PathBuf {
    let tar = base.join("tree.tar");
    if tar.exists() {
        return tar;
    }
    let gen_dir = base.join("tree-gen");
    let root = gen_dir.join("src");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for a in 0..10 {
        for b in 0..25 {
            let dir = root.join(format!("mod{a}/sub{b}"));
            fs::create_dir_all(&dir).expect("mkdir");
            for f in 0..20 {
                let len = 512 + (rng.next() % (16 << 10)) as usize;
                let body: Vec<u8> = (0..len).map(|i| b"abcdefgh\n"[i % 9]).collect();
                fs::write(dir.join(format!("file{f}.rs")), body).expect("write");
            }
        }
    }
    let st = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&gen_dir)
        .arg("src")
        .status()
        .expect("tar");
    assert!(st.success(), "tar -cf failed");
    fs::remove_dir_all(&gen_dir).expect("remove generated tree");
    tar
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, dirs: &mut Vec<PathBuf>) {
    dirs.push(dir.to_path_buf());
    for e in fs::read_dir(dir).expect("readdir").flatten() {
        let p = e.path();
        let m = fs::symlink_metadata(&p).expect("lstat");
        if m.is_dir() {
            walk(&p, out, dirs);
        } else {
            out.push(p);
        }
    }
}

/// Unpack, stat-walk, a `git status`-like scan (lstat every indexed file,
/// list every directory for untracked files), remove. One time per phase.
fn source_tree(d: &Path, tar: &Path) -> [f64; 4] {
    let dest = d.join("tree");
    fs::create_dir_all(&dest).expect("mkdir");
    let t = Instant::now();
    let st = command("tar")
        .arg("-xf")
        .arg(tar)
        .arg("-C")
        .arg(&dest)
        .status()
        .expect("tar");
    assert!(st.success(), "tar -xf failed in {}", dest.display());
    let unpack = secs(t.elapsed());

    let t = Instant::now();
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    walk(&dest, &mut files, &mut dirs);
    let stat_walk = secs(t.elapsed());
    assert_eq!(files.len(), 5000, "the unpacked tree");

    let t = Instant::now();
    for f in &files {
        fs::symlink_metadata(f).expect("lstat");
    }
    for dir in &dirs {
        let n = fs::read_dir(dir).expect("readdir").count();
        std::hint::black_box(n);
    }
    let scan = secs(t.elapsed());

    let t = Instant::now();
    fs::remove_dir_all(&dest).expect("rm -r");
    let remove = secs(t.elapsed());
    [unpack, stat_walk, scan, remove]
}

/// The Python this machine has (Debian's), whose standard library is the
/// real source tree: (interpreter, its stdlib directory, "X.Y").
fn python() -> Option<(PathBuf, PathBuf, String)> {
    let py = PathBuf::from("/usr/bin/python3");
    let out = Command::new(&py)
        .arg("-c")
        .arg("import sys, sysconfig; print(sysconfig.get_paths()['stdlib']); print('%d.%d' % sys.version_info[:2])")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let mut lines = text.lines();
    let lib = PathBuf::from(lines.next()?);
    let ver = lines.next()?.to_string();
    (out.status.success() && lib.is_dir() && have("git")).then_some((py, lib, ver))
}

/// A real source tree: CPython's standard library as this machine's Python
/// ships it, every module compiled (`__pycache__`), committed to a git
/// repository; laid out as a Python home (`lib/pythonX.Y`) so the
/// interpreter can import from it. As a tar archive made once.
fn make_stdlib_archive(base: &Path) -> Option<PathBuf> {
    let (py, lib, ver) = python()?;
    let tar = base.join("stdlib.tar");
    if tar.exists() {
        return Some(tar);
    }
    let gen_dir = base.join("stdlib-gen");
    let home = gen_dir.join("lib");
    fs::create_dir_all(&home).expect("mkdir");
    let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
    let dest = home.join(format!("python{ver}"));
    assert!(
        ok(Command::new("cp").arg("-a").arg(&lib).arg(&dest)),
        "cp stdlib"
    );
    for p in ["site-packages", "dist-packages"] {
        let _ = fs::remove_dir_all(dest.join(p));
    }
    // Some test modules do not compile on purpose: the status is not ours.
    let _ = Command::new(&py)
        .args(["-m", "compileall", "-q", "-j0"])
        .arg(&dest)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let git = |args: &[&str]| {
        ok(Command::new("git")
            .arg("-C")
            .arg(&gen_dir)
            .args(["-c", "user.name=bench", "-c", "user.email=bench@casafs"])
            .args(args)
            .stdout(Stdio::null()))
    };
    assert!(git(&["init", "-q"]) && git(&["add", "-A"]) && git(&["commit", "-qm", "stdlib"]));
    assert!(
        ok(Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&gen_dir)
            .arg(".")),
        "tar stdlib"
    );
    fs::remove_dir_all(&gen_dir).expect("remove generated stdlib");
    Some(tar)
}

/// The modules a data-reduction script starts with, imported from the tree.
const IMPORTS: &str = "import json, email.parser, http.client, xml.dom.minidom, unittest, \
    asyncio, logging.handlers, argparse, decimal, csv, tarfile, zipfile, urllib.request, \
    multiprocessing, concurrent.futures, sqlite3, typing, dataclasses, pathlib, shutil";

/// Unpack (tar), stat walk (find), git status, Python imports, remove (rm -r)
/// of the real tree; one time per phase.
fn stdlib_tree(d: &Path, tar: &Path) -> [f64; 5] {
    let dest = d.join("stdlib");
    fs::create_dir_all(&dest).expect("mkdir");
    let run = |c: &mut Command, what: &str| {
        let t = Instant::now();
        let st = c.stdout(Stdio::null()).status().expect(what);
        assert!(st.success(), "{what} failed in {}", dest.display());
        secs(t.elapsed())
    };
    let unpack = run(
        command("tar").arg("-xf").arg(tar).arg("-C").arg(&dest),
        "tar -x",
    );
    let walk = run(command("find").arg(&dest).arg("-ls"), "find -ls");
    // The index learns the new inode numbers once (as after a checkout);
    // `git status` then is the scan a developer repeats.
    let _ = command("git")
        .arg("-C")
        .arg(&dest)
        .args(["update-index", "-q", "--refresh"])
        .stdout(Stdio::null())
        .status();
    let status = run(
        command("git")
            .arg("-C")
            .arg(&dest)
            .args(["status", "--porcelain"]),
        "git status",
    );
    let imports = run(
        command("/usr/bin/python3")
            .env("PYTHONHOME", &dest)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .arg("-c")
            .arg(IMPORTS),
        "python imports",
    );
    let remove = run(command("rm").arg("-rf").arg(&dest), "rm -r");
    [unpack, walk, status, imports, remove]
}

const TABLE_FILES: usize = 300;
const TABLE_FILE_SIZE: u64 = 256 << 10;

fn prepare_table(d: &Path) {
    let dir = d.join("table");
    fs::create_dir_all(&dir).expect("mkdir");
    let buf = vec![0u8; TABLE_FILE_SIZE as usize];
    for i in 0..TABLE_FILES {
        let p = dir.join(format!("table.f{i}"));
        if !fs::metadata(&p).is_ok_and(|m| m.len() == TABLE_FILE_SIZE) {
            fs::write(&p, &buf).expect("write");
        }
    }
}

/// The shape of a CASA table update: open each column file, 64 writes of
/// 4 KiB at random aligned offsets, close.
fn small_random_writes(d: &Path, seed: u64) -> f64 {
    let dir = d.join("table");
    let mut rng = Rng(seed | 1);
    let block = [3u8; 4096];
    let t = Instant::now();
    for k in 0..TABLE_FILES {
        let i = (k * 7 + seed as usize) % TABLE_FILES;
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(format!("table.f{i}")))
            .expect("open");
        for _ in 0..64 {
            let off = (rng.next() % (TABLE_FILE_SIZE / 4096)) * 4096;
            f.write_all_at(&block, off).expect("pwrite");
        }
    }
    secs(t.elapsed())
}

const WORKLOADS: &[&str] = &[
    "seq write 1 GiB + fsync",
    "seq read 1 GiB, warm",
    "seq read 1 GiB, cold",
    "metadata loop x5000",
    "tree: unpack 5000 files",
    "tree: stat-walk",
    "tree: git-status scan",
    "tree: remove",
    "tree: all four phases",
    "small random writes (300 files)",
    "two clients, metadata x5000 each",
    "stdlib: unpack (tar x)",
    "stdlib: stat walk (find -ls)",
    "stdlib: git status",
    "stdlib: python imports",
    "stdlib: remove (rm -r)",
];

/// The first row of the real tree's phases.
const STDLIB: usize = 11;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn summary(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    let med = median(&mut s);
    (med, s[0], s[s.len() - 1])
}

/// The device under `dir` when it is ext4 mounted without a journal: the
/// kernel's name of the device that holds it (`dm-0`, not a
/// `/dev/mapper/...` link) has `/proc/fs/ext4/NAME` but no
/// `/proc/fs/jbd2/NAME-8`.
fn ext4_without_journal(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(dir).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let link = fs::read_link(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    let name = link.file_name()?.to_str()?;
    let ext4 = Path::new("/proc/fs/ext4").join(name).exists();
    let journal = Path::new("/proc/fs/jbd2")
        .join(format!("{name}-8"))
        .exists();
    (ext4 && !journal).then(|| format!("/dev/{name}"))
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let out = |c: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(c)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    format!(
        "{} · {} CPUs ({cpu}) · {} RAM · kernel {} · backing {}",
        out("date -u +%Y-%m-%d"),
        out("nproc"),
        out("free -g | awk '/Mem:/{print $2\" GiB\"}'"),
        out("uname -r"),
        out("df -T \"${CASAFS_BENCH_DIR:-/var/tmp}\" | awk 'NR==2{print $2\" on \"$1}'"),
    )
}

/// Gives the workloads' user what the preparation made.
fn give_to(dir: &Path, uid: u32, gid: u32) {
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(dir)
        .status()
        .expect("chown");
    assert!(st.success(), "chown -R {}", dir.display());
}

fn chmod_for_all(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut cur = Some(p);
    while let Some(d) = cur {
        if let Ok(m) = fs::metadata(d) {
            let _ = fs::set_permissions(
                d,
                fs::Permissions::from_mode(m.permissions().mode() | 0o005),
            );
        }
        cur = d.parent();
    }
}

fn run_table(base: &Path, o: &Opts) {
    let tar = make_archive(base);
    let stdlib = make_stdlib_archive(base);
    if stdlib.is_none() {
        eprintln!(
            "no /usr/bin/python3 with its standard library, or no git: the stdlib rows are left out"
        );
    }
    let want = |w: usize| {
        o.only
            .as_ref()
            .is_none_or(|f| f.split(',').any(|p| WORKLOADS[w].contains(p)))
    };
    // The big file is written only for the rows that read it: it needs
    // that much free space per filesystem.
    let reads_big = (0..WORKLOADS.len()).any(|w| want(w) && WORKLOADS[w].starts_with("seq read"));
    let ts = targets(base, &o.also, &o.also_bin);
    for t in &ts {
        if reads_big {
            prepare_big(&t.dir, o.gib);
        }
        prepare_table(&t.dir);
        if let Some((uid, gid)) = o.as_user {
            give_to(&t.dir, uid, gid);
        }
    }
    if o.as_user.is_some() {
        chmod_for_all(&tar);
        if let Some(t) = &stdlib {
            chmod_for_all(t);
        }
    }
    take_ids(o.as_user);
    let gib_label = |s: &str| s.replace("1 GiB", &format!("{} GiB", o.gib));
    // times[workload][target][rep]
    let mut times = vec![vec![Vec::new(); ts.len()]; WORKLOADS.len()];
    // Requests casafs received per workload run: requests[workload][rep].
    let mut requests: Vec<Vec<Counted>> = vec![Vec::new(); WORKLOADS.len()];
    for rep in 0..o.reps {
        // A fresh order each repetition: in a rotation each filesystem would
        // always follow the same one, and inherit its leftovers (write-back,
        // freed blocks) every time.
        let mut order: Vec<usize> = (0..ts.len()).collect();
        let mut rng = Rng(0x5eed ^ (rep as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        let names: Vec<&str> = order.iter().map(|&i| ts[i].name.as_str()).collect();
        eprintln!("repetition {}/{}: {}", rep + 1, o.reps, names.join(", "));
        for ti in order {
            let d = &ts[ti].dir;
            // Write-back left by the previous filesystem is not this one's.
            let settle = || unsafe { libc::sync() };
            let counted = ti == 1;
            let mut put = |w: usize, v: f64| times[w][ti].push(v);
            if want(0) {
                settle();
                put(0, seq_write(d, o.gib));
            }
            if want(1) {
                settle();
                put(1, seq_read_warm(d));
            }
            if want(2) {
                settle();
                put(2, seq_read_cold(d));
            }
            let count =
                |counts: &mut Vec<Vec<Counted>>, w: usize, a: Option<Vec<(String, u64)>>| {
                    if let Some(a) = a {
                        counts[w].push(diff_counts(&a, &op_counts(d)));
                    }
                };
            let at = || counted.then(|| op_counts(d));
            if want(3) {
                settle();
                let a = at();
                put(3, meta_loop(d));
                count(&mut requests, 3, a);
            }
            if (4..=8).any(want) {
                settle();
                let a = at();
                let ph = source_tree(d, &tar);
                count(&mut requests, 8, a);
                for (i, v) in ph.iter().enumerate() {
                    put(4 + i, *v);
                }
                put(8, ph.iter().sum());
            }
            if want(9) {
                settle();
                put(9, small_random_writes(d, rep as u64 * 1000 + 17));
            }
            if want(10) {
                settle();
                put(10, two_clients(d));
            }
            if let Some(tar) = stdlib.as_ref().filter(|_| (STDLIB..STDLIB + 5).any(want)) {
                settle();
                let a = at();
                let ph = stdlib_tree(d, tar);
                // One count for the five phases together.
                count(&mut requests, STDLIB, a);
                for (i, v) in ph.iter().enumerate() {
                    put(STDLIB + i, *v);
                }
            }
        }
    }

    take_ids(None);
    if let Some((uid, _)) = o.as_user {
        println!("\nworkloads run as uid {uid}");
    }
    println!("\n{}\n", machine());
    println!(
        "Median wall-time ratio to the native directory [min-max] over {} interleaved repetitions:\n",
        o.reps
    );
    let names: Vec<&str> = ts.iter().map(|t| t.name.as_str()).collect();
    print!("| workload | native (s) |");
    for n in &names[1..] {
        print!(" {n} |");
    }
    println!();
    println!("|---|---:|{}", "---:|".repeat(names.len() - 1));
    let ratios = |w: usize, a: usize, b: usize| -> Vec<f64> {
        times[w][a]
            .iter()
            .zip(&times[w][b])
            .map(|(x, y)| x / y)
            .collect()
    };
    for (w, label) in WORKLOADS.iter().enumerate() {
        if times[w][0].is_empty() {
            continue;
        }
        let (nat, _, _) = summary(&times[w][0]);
        print!("| {} | {nat:.3} |", gib_label(label));
        for ti in 1..ts.len() {
            let (m, lo, hi) = summary(&ratios(w, ti, 0));
            print!(" {m:.2} [{lo:.2}-{hi:.2}] |");
        }
        println!();
    }
    let peers: Vec<usize> = (2..ts.len()).collect();
    if !peers.is_empty() {
        println!("\ncasafs time as a ratio of each peer's (below 1: casafs is faster):\n");
        print!("| workload |");
        for &p in &peers {
            print!(" casafs / {} |", names[p]);
        }
        println!();
        println!("|---|{}", "---:|".repeat(peers.len()));
        for (w, label) in WORKLOADS.iter().enumerate() {
            if times[w][0].is_empty() {
                continue;
            }
            print!("| {} |", gib_label(label));
            for &p in &peers {
                let (m, lo, hi) = summary(&ratios(w, 1, p));
                print!(" {m:.2} [{lo:.2}-{hi:.2}] |");
            }
            println!();
        }
    }
    if !times[3][0].is_empty() && !times[10][0].is_empty() {
        println!(
            "\nTwo clients against one (metadata loop): work per second of two at once \
             over one alone (above 1: two clients get ahead):\n"
        );
        println!("| filesystem | speed-up |");
        println!("|---|---:|");
        for (ti, n) in names.iter().enumerate() {
            let v: Vec<f64> = times[3][ti]
                .iter()
                .zip(&times[10][ti])
                .map(|(one, two)| 2.0 * one / two)
                .collect();
            let (m, lo, hi) = summary(&v);
            println!("| {n} | {m:.2} [{lo:.2}-{hi:.2}] |");
        }
    }
    if requests.iter().any(|r| !r.is_empty()) {
        println!(
            "\nRequests casafs received per run (median over the repetitions), by operation \
             (of the first run):\n"
        );
        for (w, runs) in requests.iter().enumerate() {
            if runs.is_empty() {
                continue;
            }
            let label = match w {
                8 => "generated tree, four phases",
                STDLIB => "stdlib, five phases",
                _ => WORKLOADS[w],
            };
            let mut totals: Vec<f64> = runs.iter().map(|r| r.0 as f64).collect();
            let med = median(&mut totals);
            let by: Vec<String> = runs[0]
                .1
                .iter()
                .take(10)
                .map(|(op, n)| format!("{op} {n}"))
                .collect();
            println!("- {label}: {med:.0} requests ({})", by.join(", "));
        }
    }
    if let Some(m) = ts[1].mount.as_ref() {
        let st = fs::read_to_string(ts[1].dir.join(".casafs/stats.json")).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&st).unwrap_or_default();
        println!(
            "\ncasafs daemon (pid {}): passthrough {}, {} opens with passthrough",
            m.pid(),
            v.pointer("/passthrough")
                .unwrap_or(&serde_json::Value::Null),
            v.pointer("/passthrough_opens")
                .unwrap_or(&serde_json::Value::Null),
        );
    }
    drop(ts);
}

fn proc_status(pid: u32, key: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Daemon memory and descriptors after a walk (lstat of every entry) of a
/// tree of `n` files, 1,000 per directory, made natively beforehand.
fn run_walk(base: &Path, n: u64) {
    let tree = base.join("walk");
    let per_dir = 1000;
    let t = Instant::now();
    for d in 0..n.div_ceil(per_dir) {
        let dir = tree.join(format!("d{d}"));
        fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..per_dir.min(n - d * per_dir) {
            File::create(dir.join(format!("f{f}"))).expect("create");
        }
    }
    eprintln!("made {n} files in {:.0}s", t.elapsed().as_secs_f64());
    let m = mount_casafs(&tree, None);
    let pid = m.pid();
    let rss0 = proc_status(pid, "VmRSS:");
    let t = Instant::now();
    let mut seen = 0u64;
    for d in fs::read_dir(&tree).expect("readdir").flatten() {
        if !d.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        for f in fs::read_dir(d.path()).expect("readdir").flatten() {
            fs::symlink_metadata(f.path()).expect("lstat");
            seen += 1;
        }
    }
    let walk_s = t.elapsed().as_secs_f64();
    let rss = proc_status(pid, "VmRSS:");
    let hwm = proc_status(pid, "VmHWM:");
    let fds = fd_count(pid);
    println!("\n{}\n", machine());
    println!(
        "walk of {seen} files through casafs in {walk_s:.1}s: daemon RSS {:.1} MiB \
         (was {:.1} MiB before the walk; peak {:.1} MiB; {:.0} bytes per cached inode), \
         {fds} descriptors open",
        rss as f64 / 1024.0,
        rss0 as f64 / 1024.0,
        hwm as f64 / 1024.0,
        (rss.saturating_sub(rss0) * 1024) as f64 / seen.max(1) as f64,
    );
    drop(m);
    let t = Instant::now();
    fs::remove_dir_all(&tree).expect("remove walk tree");
    eprintln!("removed in {:.0}s", t.elapsed().as_secs_f64());
}

/// The cost of counting one request (start + finish of the statistics), on
/// one thread and on two threads bumping the same counters at once.
fn run_stats_overhead() {
    use casafs::stats::{Op, Stats};
    let stats = Stats::new(&["casa-logs".into(), "tmppointing".into()]);
    let n = 10_000_000u64;
    let one = |s: &Stats| {
        let t = Instant::now();
        for _ in 0..n {
            let tm = s.start(std::hint::black_box(Op::Getattr));
            s.finish(tm, None);
        }
        t.elapsed().as_nanos() as f64 / n as f64
    };
    let single = one(&stats);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| one(&stats));
        }
    });
    let contended = t.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "\nstatistics per request: {single:.1} ns on one thread, {contended:.1} ns with two \
         threads on the same counters (a FUSE request round trip is tens of microseconds)"
    );
}

fn main() {
    let o = parse_opts();
    if o.stats_overhead {
        run_stats_overhead();
        return;
    }
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the benchmarks mount filesystems: run them as root");
        std::process::exit(2);
    }
    let root =
        std::env::var_os("CASAFS_BENCH_DIR").map_or(PathBuf::from("/var/tmp"), PathBuf::from);
    let base = root.join(format!("casafs-bench-{}", std::process::id()));
    fs::create_dir_all(&base).expect("create bench dir");
    if let Some(dev) = ext4_without_journal(&base) {
        eprintln!(
            "warning: {} is on ext4 without a journal ({dev}): its inode allocator \
             skips every inode freed in the last minutes, so creating files after a \
             mass delete slows down by up to 10x depending on where a directory \
             lands, natively too; the tree and metadata rows measure that more \
             than the filesystem under test. README (Speed) shows how to bench on \
             a journaled ext4 image.",
            root.display()
        );
    }
    let result = std::panic::catch_unwind(|| match o.walk {
        Some(n) => run_walk(&base, n),
        None => {
            run_table(&base, &o);
            run_stats_overhead();
        }
    });
    // Every mount was dropped by now (guards); the trees can go.
    let _ = fs::remove_dir_all(&base);
    if result.is_err() {
        std::process::exit(1);
    }
}
