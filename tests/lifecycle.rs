//! A mount's life under systemd: a second mount over a live one, boot
//! order (an area under a mount point not mounted yet), reload on SIGHUP,
//! the watchdog and `casafs check`, and log priorities for the journal.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

fn casafs_mounts_at(p: &std::path::Path) -> usize {
    let want = fs::canonicalize(p).unwrap();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| {
            l.split(' ').nth(4).map(std::path::Path::new) == Some(want.as_path())
                && l.contains(" - fuse.casafs ")
        })
        .count()
}

/// `casafs mount` of a mount's own source on its mount point, once more.
fn mount_again(m: &Mount) -> (i32, String, String) {
    casafs_with(
        &[
            os("mount"),
            m.source.as_os_str(),
            m.mnt.as_os_str(),
            os("-f"),
        ],
        &[],
    )
}

#[test]
fn a_second_mount_over_a_live_casafs_says_who_and_exits_2() {
    let m = Mount::over_itself("second");
    fs::write(m.p("kept"), b"first").unwrap();
    let (code, _, err) = mount_again(&m);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("already mounted by casafs, pid {}", m.pid())),
        "{err}"
    );
    // The first one goes on, alone.
    assert_eq!(casafs_mounts_at(&m.mnt), 1);
    assert_eq!(fs::read(m.p("kept")).unwrap(), b"first");
}

#[test]
fn a_second_mount_over_a_stalled_casafs_is_refused_without_waiting_for_it() {
    let m = Mount::builder("second-stalled")
        .env("CASAFS_FAULT_STALL", "stallme")
        .env("CASAFS_FAULT_STALL_SECS", "12")
        .start();
    let stuck = m.p("stallme");
    let t = std::thread::spawn(move || fs::metadata(stuck).is_ok());
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    let (code, _, err) = mount_again(&m);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("already mounted by casafs, which is not answering"),
        "{err}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "waited for the stalled mount"
    );
    let _ = t.join();
}

#[test]
fn an_area_under_a_mount_point_not_mounted_yet_is_refused() {
    let tmp = TempDir::new("bootorder");
    let tree = tmp.path().join("tree");
    let scratch = tmp.path().join("scratch");
    fs::create_dir_all(&tree).unwrap();
    fs::create_dir_all(&scratch).unwrap();
    let fstab = tmp.path().join("fstab");
    fs::write(
        &fstab,
        format!(
            "/dev/root / ext4 defaults 0 1\ntmpfs {} tmpfs nofail,size=16m 0 0\n{} {} fuse.casafs scratch={}/t 0 0\n",
            scratch.display(),
            tree.display(),
            tree.display(),
            scratch.display()
        ),
    )
    .unwrap();
    // Named through a symlink into the mount point, the same.
    std::os::unix::fs::symlink(&scratch, tmp.path().join("link")).unwrap();
    let linked = format!("scratch={}/t", tmp.path().join("link").display());
    let (code, _, err) = casafs_with(
        &[
            os("mount"),
            tree.as_os_str(),
            tree.as_os_str(),
            os("-f"),
            os("-o"),
            os(&linked),
        ],
        &[("CASAFS_FSTAB", fstab.as_os_str())],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not mounted"), "{err}");
    assert_eq!(
        fs::read_dir(&scratch).unwrap().count(),
        0,
        "made on the disk beneath"
    );
    let opt = format!("scratch={}/t", scratch.display());
    let args = [
        os("mount"),
        tree.as_os_str(),
        tree.as_os_str(),
        os("-f"),
        os("-o"),
        os(&opt),
    ];
    let (code, _, err) = casafs_with(&args, &[("CASAFS_FSTAB", fstab.as_os_str())]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("{} is in", scratch.display())) && err.contains("not mounted"),
        "{err}"
    );
    assert_eq!(
        fs::read_dir(&scratch).unwrap().count(),
        0,
        "made on the disk beneath"
    );
    assert_eq!(fstype_at(&tree), None, "nothing mounted");

    // Once it is mounted, the same command mounts, with the area on it.
    let fast = Tmpfs::new(scratch.clone(), "mode=0755,size=16m");
    let m = Mount::builder("bootorder")
        .opt(&opt)
        .env("CASAFS_FSTAB", fstab.to_str().unwrap())
        .source(&tree, TempDir::new("bootorder-m"))
        .start();
    fs::create_dir(m.p("TMPPOINTING1")).unwrap();
    assert!(fast.0.join("t/TMPPOINTING1").is_dir(), "{}", m.log_text());
}

fn hup(m: &Mount) {
    unsafe { libc::kill(m.pid() as i32, libc::SIGHUP) };
}

#[test]
fn sighup_applies_a_new_config_while_files_stay_open() {
    let tmp = TempDir::new("reload");
    let config = tmp.path().join("casafs.toml");
    fs::write(&config, "").unwrap();
    let tree = tmp.path().join("tree");
    let m = Mount::builder("reload")
        .arg("--config")
        .arg(config.to_str().unwrap())
        .source(&tree, tmp)
        .start();
    fs::write(m.p("held"), b"open all along").unwrap();
    let held = fs::File::open(m.p("held")).unwrap();
    let pid = m.pid();

    // tmppointing off, a retention for the logs, longer cache times.
    fs::write(
        &config,
        "attr_timeout = \"2s\"\n[[rule]]\nname = \"tmppointing\"\nenabled = false\n\
         [[rule]]\nname = \"casa-logs\"\nretention = \"2s\"\n",
    )
    .unwrap();
    hup(&m);
    eventually_within("the reload", 10, || m.stats()["reloads"] == 1);
    let shown = fs::read_to_string(m.p(".casafs/config")).unwrap();
    assert!(!shown.contains("\"tmppointing\""), "{shown}");
    assert!(shown.contains("retention = \"2s\""), "{shown}");
    assert!(shown.contains("attr_timeout = \"2s\""), "{shown}");
    fs::create_dir(m.p("TMPPOINTING1")).unwrap();
    assert!(m.backing("TMPPOINTING1").is_dir(), "routed although off");
    fs::write(m.p("casa-1.log"), b"log").unwrap();
    assert!(m.backing("state/logs/casa/casa-1.log").is_file());
    eventually_within("retention of the routed log", 20, || {
        !m.backing("state/logs/casa/casa-1.log").exists()
    });

    // A bad file is refused whole; the running configuration stays.
    fs::write(&config, "[[rule]]\nname = \"tmppointing\"\nenabled = yes\n").unwrap();
    hup(&m);
    eventually_within("the refusal in the log", 10, || {
        m.log_text().contains("reload refused")
    });
    assert_eq!(m.stats()["reloads"], 1);
    fs::create_dir(m.p("TMPPOINTING2")).unwrap();
    assert!(m.backing("TMPPOINTING2").is_dir(), "still off");

    // Back on; what needs a remount is said and left alone.
    fs::write(&config, "threads = 3\n").unwrap();
    hup(&m);
    eventually_within("the second reload", 10, || m.stats()["reloads"] == 2);
    fs::create_dir(m.p("TMPPOINTING3")).unwrap();
    assert!(m.backing("state/scratch/tmppointing/TMPPOINTING3").is_dir());
    let log = m.log_text();
    assert!(
        log.contains("left as mounted until a remount: threads"),
        "{log}"
    );

    // Never unmounted, the same daemon, the open file still served.
    assert_eq!(m.pid(), pid);
    assert_eq!(casafs_mounts_at(&m.mnt), 1);
    let mut s = String::new();
    use std::io::Read;
    (&held).read_to_string(&mut s).unwrap();
    assert_eq!(s, "open all along");
}

/// Messages on a NOTIFY_SOCKET of the test's own, as they arrive.
fn messages(sock: &UnixDatagram, for_how_long: Duration) -> Vec<String> {
    let deadline = Instant::now() + for_how_long;
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => out.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => break,
        }
    }
    out
}

fn pings(msgs: &[String]) -> usize {
    msgs.iter().filter(|m| m.contains("WATCHDOG=1")).count()
}

#[test]
fn the_watchdog_pings_only_while_the_mount_answers_and_check_says_so() {
    let tmp = TempDir::new("watchdog");
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let tree = tmp.path().join("tree");
    let mut m = Mount::builder("watchdog")
        .env("NOTIFY_SOCKET", sock_path.to_str().unwrap())
        .env("WATCHDOG_USEC", "400000")
        .env("CASAFS_FAULT_STALL", "stallme")
        .source(&tree, tmp)
        .start();
    let first = messages(&sock, Duration::from_secs(3));
    assert!(first.iter().any(|x| x.contains("READY=1")), "{first:?}");
    assert!(pings(&first) >= 3, "serving, yet {first:?}");

    let mnt = m.mnt.as_os_str().to_owned();
    let check =
        |timeout: &str| casafs_with(&[os("check"), &mnt, os("--timeout"), os(timeout)], &[]);
    let (code, out, _) = check("5s");
    assert_eq!(
        (code, out.trim()),
        (
            0,
            format!("{}: serving (pid {})", m.mnt.display(), m.pid()).as_str()
        )
    );

    // Every serving thread stuck for 4 s: no ping, and check says so.
    let stuck = m.p("stallme");
    let t = std::thread::spawn(move || fs::metadata(stuck).is_ok());
    std::thread::sleep(Duration::from_millis(400));
    // Pings from before the stall may still wait in the socket.
    let _ = messages(&sock, Duration::from_millis(50));
    let asked = Instant::now();
    let (code, out, _) = check("1s");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not answering"), "{out}");
    assert!(
        asked.elapsed() < Duration::from_millis(2500),
        "check hung with the mount"
    );
    let during = messages(&sock, Duration::from_millis(1500));
    assert_eq!(pings(&during), 0, "pinged while stalled: {during:?}");
    let _ = t.join();
    let after = messages(&sock, Duration::from_secs(3));
    assert!(pings(&after) >= 1, "no ping once serving again: {after:?}");

    // A dead mount, and a directory that is no casafs mount.
    m.kill9();
    let (code, out, _) = check("5s");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("gone"), "{out}");
    let plain = TempDir::new("watchdog-plain");
    let (code, out, _) = casafs_with(&[os("check"), plain.path().as_os_str()], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not a casafs mount"), "{out}");
}

#[test]
fn under_the_journal_each_line_carries_its_priority() {
    let tmp = TempDir::new("journal");
    let log = tmp.path().join("casafs.log");
    fs::write(&log, b"").unwrap();
    let st = fs::metadata(&log).unwrap();
    let config = tmp.path().join("casafs.toml");
    fs::write(&config, "").unwrap();
    let tree = tmp.path().join("tree");
    let m = Mount::builder("journal")
        .env("JOURNAL_STREAM", &format!("{}:{}", st.dev(), st.ino()))
        .arg("--config")
        .arg(config.to_str().unwrap())
        .source(&tree, tmp)
        .start();
    fs::write(&config, "threads = 3\n").unwrap();
    hup(&m);
    eventually_within("the reload", 10, || m.stats()["reloads"] == 1);
    let text = m.log_text();
    let line = |what: &str| {
        text.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no line with {what}: {text}"))
            .to_string()
    };
    assert!(line("mounted ").starts_with("<6>"), "{text}");
    assert!(line("until a remount").starts_with("<4>"), "{text}");
}
