//! Operations: mount(8)/fstab, daemon life cycle, systemd
//! readiness, SIGTERM, takeover of a dead mount, the sweep, and bad input.

mod common;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn mount8_with_fuse_casafs_type_and_umount8() {
    // A private mount namespace puts this build at /usr/local/bin/casafs
    // (where mount.fuse3 looks) without touching the machine.
    let tmp = TempDir::new("mount8");
    let bin = tmp.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("casafs")).unwrap();
    let src = tmp.path().join("src");
    let mnt = tmp.path().join("mnt");
    let logs = tmp.path().join("logs");
    fs::create_dir_all(src.join("repo")).unwrap();
    fs::create_dir_all(&mnt).unwrap();
    let script = format!(
        r#"set -e
mount --bind {bin} /usr/local/bin
mount -t fuse.casafs {src} {mnt} -o logs={logs},nosuid,nodev,nofail,_netdev,x-systemd.automount
grep " {mnt} fuse.casafs " /proc/self/mounts
echo hello > {mnt}/repo/casa-20260101-000000.log
echo "repo: [$(ls -A {mnt}/repo)] logs: [$(ls -A {logs})]"
pid=$(pgrep -f "^casafs {src} {mnt}")
umount {mnt}
for i in $(seq 50); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
kill -0 $pid 2>/dev/null && echo "daemon still running" || echo "daemon exited"
grep -c " {mnt} " /proc/self/mounts || true
"#,
        bin = bin.display(),
        src = src.display(),
        mnt = mnt.display(),
        logs = logs.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let text = ok(&out);
    assert!(
        text.contains("fuse.casafs nosuid,nodev") || text.contains("fuse.casafs rw,nosuid,nodev"),
        "{text}"
    );
    assert!(
        text.contains("repo: [] logs: [casa-20260101-000000.log]"),
        "{text}"
    );
    assert!(text.contains("daemon exited"), "{text}");
    assert!(text.trim_end().ends_with('0'), "unmounted: {text}");
    assert_eq!(
        fs::read(logs.join("casa-20260101-000000.log")).unwrap(),
        b"hello\n"
    );
}

#[test]
fn daemonizes_once_mounted_and_umount_ends_it() {
    let tmp = TempDir::new("daemon");
    let src = tmp.path().join("tree");
    fs::create_dir_all(&src).unwrap();
    let sock_path = tmp.path().join("log.sock");
    let syslog = UnixDatagram::bind(&sock_path).unwrap();
    syslog
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = Command::new(BIN)
        .arg("mount")
        .arg(&src)
        .arg(&src)
        .env("CASAFS_SYSLOG", &sock_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let _guard = MountedHere(src.clone());
    assert!(child.wait().unwrap().success());
    // Mounted by the time the command returned.
    assert_eq!(fstype_at(&src).as_deref(), Some("fuse.casafs"));
    assert!(src.join(".casafs/stats.json").exists());
    // The daemon keeps neither of its caller's outputs: whoever reads them
    // (ssh, `$(mount -a 2>&1)`) sees their end while the mount lives.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        let _ = err.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    let ended = rx.recv_timeout(Duration::from_secs(20));
    if ended.is_err() {
        umount(&src, true);
    }
    assert!(
        ended.is_ok(),
        "the daemon still holds its caller's stdout or stderr"
    );
    // A mount that works says nothing to its caller (mount(8) helpers are
    // silent; xfstests compares a test's whole output).
    assert_eq!(ended.as_deref().unwrap_or(""), "");
    assert_eq!(fstype_at(&src).as_deref(), Some("fuse.casafs"));
    // Its messages go to syslog instead, from the start.
    fs::write(src.join("casa-20260101-000000.log"), b"x").unwrap();
    let mut records = Vec::new();
    let mut buf = [0u8; 4096];
    while !records
        .iter()
        .any(|r: &String| r.contains("casa-20260101-000000.log"))
    {
        let Ok(n) = syslog.recv(&mut buf) else { break };
        records.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(umount(&src, false), 0);
    assert_eq!(fstype_at(&src), None);
    assert!(
        records.iter().any(|r| r.contains("]: mounted ")),
        "{records:?}"
    );
    let routed = records
        .iter()
        .find(|r| r.contains("casa-20260101-000000.log"))
        .unwrap_or_else(|| panic!("no syslog record of the routed log: {records:?}"));
    assert!(routed.starts_with("<30>casafs["), "{routed}");
}

#[test]
fn notifies_systemd_when_ready_and_exits_0_on_sigterm() {
    let tmp = TempDir::new("notify");
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let src = tmp.path().join("tree");
    fs::create_dir_all(&src).unwrap();
    let mut child = Command::new(BIN)
        .arg("mount")
        .arg(&src)
        .arg(&src)
        .arg("-f")
        .arg("-o")
        .arg("defer_unlink=always")
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("READY=1 from casafs");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.contains("READY=1"), "{msg}");
    // Ready means mounted.
    assert_eq!(fstype_at(&src).as_deref(), Some("fuse.casafs"));
    // A pending deferred unlink, released before the stop.
    let f = fs::File::create(src.join("held")).unwrap();
    fs::remove_file(src.join("held")).unwrap();
    drop(f);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert!(st.success(), "exit status after SIGTERM: {st}");
    let n = sock.recv(&mut buf).unwrap_or(0);
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert_eq!(fstype_at(&src), None, "unmounted");
    assert!(!src.join(".casafs-graveyard").exists(), "graveyard flushed");
}

#[test]
fn sigterm_with_open_files_keeps_serving_them_until_closed() {
    let mut m = Mount::builder("sigterm-busy")
        .opt("defer_unlink=always")
        .start();
    fs::write(m.p("busy"), b"still here").unwrap();
    let f = fs::File::open(m.p("busy")).unwrap();
    fs::remove_file(m.p("busy")).unwrap();
    let pid = m.pid();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    // Detached from the namespace at once ...
    for _ in 0..100 {
        if fstype_at(&m.mnt).is_none() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fstype_at(&m.mnt), None);
    // ... but the open file still works, and the daemon waits for it.
    let mut s = String::new();
    use std::io::Read;
    (&f).read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    let child = m.child.as_mut().unwrap();
    assert!(child.try_wait().unwrap().is_none(), "daemon still serving");
    drop(f);
    let st = m.stop().unwrap();
    assert!(st.success(), "{st}");
    assert!(!m.source.join(".casafs-graveyard").exists());
}

#[test]
fn a_dead_mount_is_taken_over_by_the_next_mount() {
    let tmp = TempDir::new("takeover");
    let tree = tmp.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("data"), b"safe").unwrap();
    let mut m = Mount::builder("takeover").source(&tree, tmp).start();
    fs::write(m.p("synced"), b"fsynced").unwrap();
    fs::File::open(m.p("synced")).unwrap().sync_all().unwrap();
    m.kill9();
    let e = fs::read_dir(&tree).map(|_| ());
    let shown = format!("{e:?}");
    assert!(is_dead_connection(e), "the dead mount point: {shown}");
    let m2 = Mount::builder("takeover2")
        .source(&tree, TempDir::new("takeover2"))
        .start();
    let data = fs::read(m2.p("data"));
    assert!(
        data.is_ok(),
        "{data:?} {} {:?}",
        m2.log_text(),
        fstype_at(&tree)
    );
    assert_eq!(data.unwrap(), b"safe");
    assert_eq!(fs::read(m2.p("synced")).unwrap(), b"fsynced");
    assert!(m2.log_text().contains("took over a dead casafs mount"));
    drop(m2);
    // Nothing stacked is left behind.
    assert_eq!(fstype_at(&tree), None);
}

fn run(args: &[&str]) -> (i32, String, String) {
    casafs_with(args, &[])
}

#[test]
fn bad_input_is_one_line_exit_2_and_nothing_mounted() {
    let tmp = TempDir::new("badinput");
    let src = tmp.path().join("tree");
    fs::create_dir_all(src.join("view")).unwrap();
    let s = src.to_str().unwrap();
    let bad_toml = tmp.path().join("bad.toml");
    fs::write(&bad_toml, "logs = [\n").unwrap();
    let bad_re = tmp.path().join("re.toml");
    fs::write(
        &bad_re,
        "[[rule]]\nname = \"x\"\nregex = \"casa-(\"\ntarget = \"/tmp\"\n",
    )
    .unwrap();
    let unknown_key = tmp.path().join("key.toml");
    fs::write(&unknown_key, "scratchh = \"/tmp\"\n").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "mount".into(),
                s.into(),
                s.into(),
                "-o".into(),
                "logs=/tmp/x,colour=blue".into(),
            ],
            "colour=blue",
        ),
        (
            vec![
                "mount".into(),
                s.into(),
                s.into(),
                "--config".into(),
                bad_toml.to_string_lossy().into(),
            ],
            "bad.toml",
        ),
        (
            vec![
                "mount".into(),
                s.into(),
                s.into(),
                "--config".into(),
                bad_re.to_string_lossy().into(),
            ],
            "casa-(",
        ),
        (
            vec![
                "mount".into(),
                s.into(),
                s.into(),
                "-o".into(),
                format!("config={}", unknown_key.display()),
            ],
            "scratchh",
        ),
        (
            vec!["mount".into(), "/nonexistent/source".into(), s.into()],
            "/nonexistent/source",
        ),
        // Beneath its own source the mount would show itself inside
        // itself (a listing of the source's top would wait for good).
        (
            vec!["mount".into(), s.into(), format!("{s}/view")],
            "inside the source",
        ),
        (
            vec![
                "mount".into(),
                s.into(),
                s.into(),
                "-o".into(),
                "scratch=/tmp/TMPPOINTING_area".into(),
            ],
            "TMPPOINTING_area",
        ),
        (
            vec![
                "mount".into(),
                s.into(),
                s.into(),
                "-o".into(),
                "logs=/proc/version/logs".into(),
            ],
            "/proc/version/logs",
        ),
        (
            vec![
                "mount".into(),
                s.into(),
                s.into(),
                "-o".into(),
                "defer_unlink=maybe".into(),
            ],
            "defer_unlink",
        ),
        (
            vec![
                "mount".into(),
                s.into(),
                s.into(),
                "-o".into(),
                "threads=0".into(),
            ],
            "threads",
        ),
        (
            vec![
                "mount".into(),
                s.into(),
                s.into(),
                "-o".into(),
                "logs=".into(),
            ],
            "'logs'",
        ),
        // The logs area is fine (and made), scratch is not: the logs
        // area's new directories go again, and with the default logs area
        // (inside the tree) nothing is made in the tree.
        (
            vec![
                "mount".into(),
                s.into(),
                s.into(),
                "-o".into(),
                format!(
                    "logs={}/newlogs/casa,scratch=/proc/version/x",
                    tmp.path().display()
                ),
            ],
            "/proc/version/x",
        ),
        (
            vec![
                "mount".into(),
                s.into(),
                s.into(),
                "-o".into(),
                "scratch=/proc/version/x".into(),
            ],
            "/proc/version/x",
        ),
    ];
    for (args, culprit) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _out, err) = run(&a);
        // Taken down before any assertion, so a failing case leaves no
        // mount behind.
        let mounted = fstype_at(&src).or_else(|| fstype_at(&src.join("view")));
        for at in [src.clone(), src.join("view")] {
            if fstype_at(&at).is_some() {
                umount(&at, true);
            }
        }
        assert_eq!(code, 2, "{a:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains(culprit), "{a:?} names {culprit}: {err}");
        assert_eq!(mounted, None, "nothing mounted for {a:?}");
    }
    // Bad input never touches the data, nor leaves directories behind.
    assert_eq!(names(&src), vec!["view".to_string()]);
    assert!(!tmp.path().join("newlogs").exists());
}

#[test]
fn sweep_moves_old_debris_and_reports_holders() {
    let tmp = TempDir::new("sweep");
    let t = tmp.path().join("tree");
    fs::create_dir_all(t.join("repo/scripts")).unwrap();
    fs::create_dir_all(t.join("obs/TMPPOINTING1700000000.5")).unwrap();
    fs::create_dir_all(t.join("state/logs/casa")).unwrap();
    fs::write(t.join("repo/scripts/casa-20250101-000000.log"), b"new").unwrap();
    fs::write(t.join("state/logs/casa/casa-20250101-000000.log"), b"old").unwrap();
    fs::write(t.join("obs/TMPPOINTING1700000000.5/table.f0"), b"rows").unwrap();
    fs::write(t.join("obs/.fuse_hidden0000000200000001"), vec![0u8; 1000]).unwrap();
    fs::write(t.join("obs/.fuse_hidden0000000300000002"), vec![0u8; 2000]).unwrap();
    // A live process holds one of them open.
    let held = t.join("obs/.fuse_hidden0000000300000002");
    let holder = Holder::sh(&format!("exec 3<'{}'; exec sleep 600", held.display()));
    let ts = t.to_str().unwrap();
    let (code, out, err) = run(&["sweep", ts, "--dry-run", "--min-age", "0s"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("move") && out.contains("casa-20250101-000000.log"),
        "{out}"
    );
    assert!(
        out.contains(&format!("held open by {}", holder.pid())),
        "{out}"
    );
    assert!(out.contains("dry run"), "{out}");
    assert!(
        t.join("repo/scripts/casa-20250101-000000.log").exists(),
        "dry run changes nothing"
    );

    let (code, out, err) = run(&["sweep", ts, "--remove-debris", "--min-age", "0s"]);
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(names(&t.join("repo/scripts")), Vec::<String>::new());
    assert_eq!(
        names(&t.join("state/logs/casa")),
        ["casa-20250101-000000-2.log", "casa-20250101-000000.log"],
        "no overwrite"
    );
    assert_eq!(
        fs::read(t.join("state/logs/casa/casa-20250101-000000.log")).unwrap(),
        b"old"
    );
    assert_eq!(
        fs::read(t.join("state/logs/casa/casa-20250101-000000-2.log")).unwrap(),
        b"new"
    );
    assert_eq!(
        fs::read(t.join("state/scratch/tmppointing/TMPPOINTING1700000000.5/table.f0")).unwrap(),
        b"rows"
    );
    assert_eq!(
        names(&t.join("obs")),
        [".fuse_hidden0000000300000002"],
        "only the held one stays"
    );
    assert!(out.contains("removed 1 debris"), "{out}");
    drop(holder);
}

#[test]
fn sweep_leaves_what_is_in_use_and_never_walks_into_its_areas() {
    let tmp = TempDir::new("sweep-in-use");
    let t = tmp.path().join("tree");
    fs::create_dir_all(t.join("proj")).unwrap();
    fs::create_dir_all(t.join("ms/TMPPOINTING1")).unwrap();
    fs::create_dir_all(t.join("ms/TMPPOINTING2")).unwrap();
    fs::create_dir_all(t.join("ms/TMPPOINTING3")).unwrap();
    fs::create_dir_all(t.join("state/logs/casa")).unwrap();
    fs::write(t.join("proj/casa-20250101-000000.log"), b"being written").unwrap();
    fs::write(t.join("proj/casa-20250101-000001.log"), b"done").unwrap();
    fs::write(t.join("ms/TMPPOINTING1/table.f1"), b"open").unwrap();
    fs::write(t.join("ms/TMPPOINTING3/table.f1"), b"idle").unwrap();
    fs::write(t.join("state/logs/casa/casa-20250101-000002.log"), b"old").unwrap();
    // CASA writing its log, a concat with a table file open, a process
    // working inside another table.
    let users = Holder::sh(&format!(
        "exec 3>>'{}' 4<'{}'; cd '{}' && exec sleep 600",
        t.join("proj/casa-20250101-000000.log").display(),
        t.join("ms/TMPPOINTING1/table.f1").display(),
        t.join("ms/TMPPOINTING2").display()
    ));
    let pid = users.pid();
    // Relative area paths, from inside the tree.
    let out = Command::new(BIN)
        .current_dir(&t)
        .args(["sweep", ".", "--logs", "state/logs/casa", "--min-age", "0s"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("held open by {pid} (sleep)")),
        "{text}"
    );
    assert!(text.contains("left 3 in use"), "{text}");
    assert_eq!(names(&t.join("proj")), ["casa-20250101-000000.log"]);
    assert_eq!(names(&t.join("ms")), ["TMPPOINTING1", "TMPPOINTING2"]);
    assert_eq!(
        names(&t.join("state/logs/casa")),
        ["casa-20250101-000001.log", "casa-20250101-000002.log"],
        "the area's own file is not swept again"
    );
    assert_eq!(
        fs::read(t.join("state/scratch/tmppointing/TMPPOINTING3/table.f1")).unwrap(),
        b"idle"
    );
    // Young tables wait for --min-age (default 1h) even when nobody holds them.
    drop(users);
    let (code, out, err) = run(&["sweep", t.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("move    ") && out.contains("casa-20250101-000000.log"),
        "{out}"
    );
    assert_eq!(names(&t.join("ms")), ["TMPPOINTING1", "TMPPOINTING2"]);
}

#[test]
fn sweep_through_the_mount_is_not_stopped_by_the_daemon() {
    // casafs keeps descriptors of the directories it serves (O_PATH ones,
    // and a listing's until its release, which the kernel sends late): they
    // are no use of a table.
    let m = Mount::over_itself("sweep-through");
    fs::create_dir_all(m.backing("ms/TMPPOINTING1")).unwrap();
    fs::write(m.backing("ms/TMPPOINTING1/table.f1"), b"rows").unwrap();
    assert_eq!(names(&m.p("ms/TMPPOINTING1")), ["table.f1"]);
    let (code, out, err) = run(&["sweep", m.mnt.to_str().unwrap(), "--min-age", "0s"]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(
        out.contains("moved 1") && out.contains("left 0 in use"),
        "{out}"
    );
    assert_eq!(
        fs::read(m.backing("state/scratch/tmppointing/TMPPOINTING1/table.f1")).unwrap(),
        b"rows"
    );
}

#[test]
fn systemd_unit_verifies() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("systemd-analyze missing: install systemd (the CI script does)");
    }
    let tmp = TempDir::new("unit");
    // The template is verified as an instance (a tree's escaped path).
    for (file, verify) in [
        ("casafs.service", "casafs.service"),
        ("casafs@.service", "casafs@data-dsa110\\x2dcontimg.service"),
    ] {
        let unit = fs::read_to_string(Path::new(REPO).join("mount-scripts").join(file)).unwrap();
        let unit = unit.replace("/usr/local/bin/casafs", BIN);
        fs::write(tmp.path().join(file), unit).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(tmp.path().join(verify))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "{file}: {err}"
        );
    }
}

/// Sets a file's access and modification times (seconds since the epoch).
fn set_times(p: &Path, atime: i64, mtime: i64) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let t = [
        libc::timespec {
            tv_sec: atime,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
    ];
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), t.as_ptr(), 0) },
        0
    );
}

/// The access-time options act on the backing as on a native mount with
/// them: `noatime` and `ro` change no access time, `strictatime` changes it
/// on every read (relatime, the backing's, would not), `nodiratime` leaves
/// directories alone. Read on the backing disk itself.
#[test]
fn access_time_options_act_as_on_a_native_mount() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let read_all = |m: &Mount, rel: &str| drop(fs::read(m.p(rel)).unwrap());
    for (opts, what) in [
        ("noatime", "noatime"),
        ("ro", "ro"),
        ("strictatime", "strictatime"),
        ("nodiratime", "nodiratime"),
        ("", "default"),
    ] {
        let tmp = TempDir::new("atime");
        let src = tmp.path().join("tree");
        fs::create_dir_all(src.join("d")).unwrap();
        fs::write(src.join("old"), b"x").unwrap();
        fs::write(src.join("fresh"), b"y").unwrap();
        fs::write(src.join("d/f"), b"z").unwrap();
        let (old, fresh, dir) = (src.join("old"), src.join("fresh"), src.join("d"));
        // `old`: read long ago, written since: relatime updates it.
        set_times(&old, 1_000_000_000, now - 100);
        set_times(&fresh, 1_000_000_000, now - 100);
        set_times(&dir, 1_000_000_000, now - 100);
        let mut b = Mount::builder("atime").separate().source(&src, tmp);
        if !opts.is_empty() {
            b = b.opt(opts);
        }
        let m = b.start();
        read_all(&m, "old");
        read_all(&m, "fresh");
        let _ = names(&m.p("d"));
        let first = (stat(&old).st_atime, stat(&fresh).st_atime);
        let dir_atime = stat(&dir).st_atime;
        // `fresh` read again a second later, having been read since its
        // last change: relatime leaves it, strictatime updates it.
        let ctime = stat(&fresh).st_ctime;
        std::thread::sleep(Duration::from_millis(1100));
        read_all(&m, "fresh");
        let again = stat(&fresh).st_atime;
        assert_eq!(
            stat(&fresh).st_ctime,
            ctime,
            "{what}: a read changes no ctime"
        );
        match what {
            "noatime" | "ro" => {
                assert_eq!(first, (1_000_000_000, 1_000_000_000), "{what}");
                assert_eq!(again, 1_000_000_000, "{what}");
                assert_eq!(dir_atime, 1_000_000_000, "{what}");
            }
            "strictatime" => {
                assert!(first.0 >= now && first.1 >= now, "{what}: {first:?}");
                assert!(again > first.1, "{what}: every read");
                assert!(dir_atime >= now, "{what}");
            }
            "nodiratime" => {
                assert!(first.0 >= now, "{what}");
                assert_eq!(dir_atime, 1_000_000_000, "{what}");
            }
            _ => {
                // The backing's own relatime.
                assert!(first.0 >= now && first.1 >= now, "{what}: {first:?}");
                assert_eq!(again, first.1, "{what}");
                assert!(dir_atime >= now, "{what}");
            }
        }
    }
}

/// `mount -o remount,ro` (mount.fuse3 runs `casafs SOURCE MOUNTPOINT -o
/// remount,ro,...` with what the mount table says): the mount turns
/// read-only in place and back, the daemon and its mount stay.
#[test]
fn remount_read_only_and_back() {
    let m = Mount::over_itself("remount");
    fs::write(m.p("before"), b"x").unwrap();
    let remount = |opts: &str| {
        Command::new(BIN)
            .arg(&m.source)
            .arg(&m.mnt)
            .arg("-o")
            .arg(opts)
            .output()
            .unwrap()
    };
    let out = remount("remount,ro,user_id=0,group_id=0,default_permissions,allow_other");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(errno_of(fs::write(m.p("after"), b"y")), libc::EROFS);
    // The flags not named stay as mounted.
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == m.mnt.to_str())
        .unwrap_or_default()
        .to_string();
    assert!(line.contains(" ro,nosuid,nodev"), "{line}");
    assert_eq!(fs::read(m.p("before")).unwrap(), b"x");
    let out = remount("remount,rw");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(m.p("after"), b"y").unwrap();
    assert_eq!(m.stats()["pid"].as_u64(), Some(m.pid() as u64));
    // Not a casafs mount: one line, exit 2.
    let plain = TempDir::new("remount-plain");
    let out = Command::new(BIN)
        .arg(plain.path())
        .arg(plain.path())
        .arg("-o")
        .arg("remount,ro")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a casafs mount") && err.lines().count() == 1,
        "{err}"
    );
}
