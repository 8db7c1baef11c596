//! How requests reach casafs: FUSE over io_uring with a queue per CPU where
//! the kernel offers it, `/dev/fuse` otherwise, and the fall back from one
//! to the other when a queue cannot start. Every transport serves the same
//! operations with the same results.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use common::*;

/// The kernel was built with FUSE over io_uring.
fn kernel_has_io_uring() -> bool {
    Path::new("/sys/module/fuse/parameters/enable_uring").exists()
}

/// CPUs the kernel may ever run (`0-1`, `0-3,8-11`, ...): one queue each.
fn possible_cpus() -> u64 {
    let s = fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    s.trim()
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<u64>().unwrap() + 1 - a.parse::<u64>().unwrap(),
            None => 1,
        })
        .sum()
}

fn xattr_get(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    let r = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| buf[..r as usize].to_vec())
}

fn xattr_set(p: &Path, name: &str, v: &[u8]) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let r = unsafe { libc::setxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    assert_eq!(r, 0, "setxattr {}", std::io::Error::last_os_error());
}

/// Every family of operations, checked by what a user sees and what lands
/// on the backing disk. `tag` keeps runs on several CPUs apart.
fn exercise(m: &Mount, tag: &str) {
    let d = m.p(tag);
    fs::create_dir(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o750)).unwrap();
    assert_eq!(fs::metadata(&d).unwrap().mode() & 0o7777, 0o750);

    let f = d.join("data");
    let mut w = fs::File::create(&f).unwrap();
    w.write_all(&vec![7u8; 300_000]).unwrap();
    w.seek(SeekFrom::Start(10)).unwrap();
    w.write_all(b"hello").unwrap();
    w.sync_all().unwrap();
    drop(w);
    let mut back = Vec::new();
    fs::File::open(&f).unwrap().read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), 300_000);
    assert_eq!(&back[8..17], b"\x07\x07hello\x07\x07");
    assert_eq!(
        fs::read(m.backing(&format!("{tag}/data"))).unwrap(),
        back,
        "the bytes on the backing disk"
    );

    fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(12)
        .unwrap();
    assert_eq!(fs::metadata(&f).unwrap().len(), 12);

    xattr_set(&f, "user.origin", b"test");
    assert_eq!(xattr_get(&f, "user.origin").as_deref(), Some(&b"test"[..]));
    assert_eq!(xattr_get(&f, "user.absent"), None);

    // The control files have no attributes, asked with or without a buffer.
    let ctl = std::ffi::CString::new(
        m.p(".casafs/stats.json")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    assert_eq!(
        unsafe { libc::listxattr(ctl.as_ptr(), std::ptr::null_mut(), 0) },
        0
    );
    let mut list = [0 as libc::c_char; 256];
    assert_eq!(
        unsafe { libc::listxattr(ctl.as_ptr(), list.as_mut_ptr(), list.len()) },
        0,
        "{}",
        std::io::Error::last_os_error()
    );

    std::os::unix::fs::symlink("data", d.join("link")).unwrap();
    assert_eq!(fs::read_link(d.join("link")).unwrap(), Path::new("data"));
    fs::hard_link(&f, d.join("hard")).unwrap();
    assert_eq!(fs::metadata(&f).unwrap().nlink(), 2);
    assert_eq!(
        fs::metadata(&f).unwrap().ino(),
        fs::metadata(d.join("hard")).unwrap().ino()
    );
    fs::rename(d.join("hard"), d.join("renamed")).unwrap();

    let mut listed = names(&d);
    listed.sort();
    assert_eq!(listed, ["data", "link", "renamed"]);
    let e = fs::create_dir(&d);
    assert_eq!(errno_of(e), libc::EEXIST);
    assert_eq!(errno_of(fs::metadata(d.join("nothing"))), libc::ENOENT);

    for n in ["data", "link", "renamed"] {
        fs::remove_file(d.join(n)).unwrap();
    }
    fs::remove_dir(&d).unwrap();
    assert!(!m.backing(tag).exists());
}

fn transport(m: &Mount) -> (String, u64, u64) {
    let t = &m.stats()["transport"];
    (
        t["kind"].as_str().unwrap_or("").to_string(),
        t["io_uring_queues"].as_u64().unwrap(),
        t["io_uring_requests"].as_u64().unwrap(),
    )
}

/// Whether the kernel offers FUSE over io_uring; where it does not, checks
/// that a mount is served through `/dev/fuse` instead.
fn io_uring_or_dev_fuse(tag: &str) -> bool {
    if kernel_has_io_uring() {
        return true;
    }
    let m = Mount::over_itself(tag);
    assert_eq!(transport(&m).0, "dev_fuse");
    false
}

/// Runs `exercise` on a thread with a deadline: a request that waits for a
/// queue that never comes fails the test instead of hanging it.
fn exercise_within(m: &Mount, tag: &str, cpu: Option<usize>) {
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(c) = cpu {
                pin_to(c);
            }
            exercise(m, tag);
            let _ = tx.send(());
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            // Unblock the stuck thread before the scope joins it.
            umount(&m.mnt, true);
            panic!("requests did not complete within 60 s: {}", m.log_text());
        }
    });
}

#[test]
fn requests_are_served_through_a_queue_per_cpu() {
    let m = Mount::over_itself("uring");
    if !kernel_has_io_uring() {
        // A kernel without it: /dev/fuse serves, and the log says why.
        assert_eq!(transport(&m).0, "dev_fuse");
        assert!(m.log_text().contains("FUSE over io_uring off"));
        return;
    }
    let (kind, queues, before) = transport(&m);
    assert_eq!(kind, "io_uring", "{}", m.log_text());
    assert_eq!(queues, possible_cpus());
    let cpus = std::thread::available_parallelism().unwrap().get();
    for cpu in 0..cpus {
        exercise_within(&m, &format!("cpu{cpu}"), Some(cpu));
    }
    let (_, _, after) = transport(&m);
    // Each run makes dozens of requests; all of them went through the rings.
    assert!(
        after >= before + 40 * cpus as u64,
        "{before} -> {after} requests"
    );
    let prom = fs::read_to_string(m.p(".casafs/metrics")).unwrap();
    let line = prom
        .lines()
        .find(|l| l.starts_with("casafs_io_uring_queues{"))
        .unwrap_or_default();
    assert!(line.ends_with(&format!(" {queues}")), "{prom}");
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_casafs"))
        .arg("stats")
        .arg(&m.mnt)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("transport    io_uring, {queues} CPU queues")),
        "{text}"
    );
}

#[test]
fn dev_fuse_serves_everything_when_io_uring_is_off() {
    let m = Mount::builder("devfuse").opt("io_uring=never").start();
    exercise_within(&m, "work", None);
    let (kind, queues, requests) = transport(&m);
    assert_eq!((kind.as_str(), queues, requests), ("dev_fuse", 0, 0));
    let cfg = fs::read_to_string(m.p(".casafs/config")).unwrap();
    assert!(cfg.contains("io_uring = \"never\""), "{cfg}");
}

#[test]
fn a_queue_that_cannot_start_falls_back_to_dev_fuse() {
    // Without io_uring there is nothing to fall back from.
    if !io_uring_or_dev_fuse("fallback") {
        return;
    }
    // The last queue fails after INIT agreed on io_uring: the kernel must be
    // told, or every request would wait for that queue forever.
    let last = (possible_cpus() - 1).to_string();
    let m = Mount::builder("fallback")
        .env("CASAFS_FAULT_QUEUE", &last)
        .start();
    exercise_within(&m, "work", None);
    let (kind, _, requests) = transport(&m);
    assert_eq!((kind.as_str(), requests), ("dev_fuse", 0));
    assert!(
        m.log_text()
            .contains("FUSE over io_uring unavailable, serving through /dev/fuse"),
        "{}",
        m.log_text()
    );
}

/// An fsync waiting on a busy disk holds only itself: the other requests
/// of its CPU are served meanwhile, even with two such fsyncs waiting at
/// once on that CPU's queue.
#[test]
fn fsyncs_waiting_on_the_disk_do_not_hold_the_other_requests_of_their_cpu() {
    if !io_uring_or_dev_fuse("slowfsync-devfuse") {
        return;
    }
    let m = Mount::builder("slowfsync")
        .env("CASAFS_FAULT_SLOW_FSYNC", "6000")
        .start();
    assert_eq!(transport(&m).0, "io_uring", "{}", m.log_text());
    let synced = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        let fsyncs: Vec<_> = (0..2)
            .map(|i| {
                let (f, synced) = (m.p(&format!("synced{i}")), &synced);
                s.spawn(move || {
                    pin_to(0);
                    let mut w = fs::File::create(&f).unwrap();
                    w.write_all(b"kept").unwrap();
                    w.sync_all().unwrap();
                    synced.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                })
            })
            .collect();
        // Both fsyncs are at the daemon by then (the fault holds each 6 s).
        std::thread::sleep(Duration::from_millis(800));
        let others = s.spawn(|| {
            pin_to(0);
            create_read_remove(&m.mnt, 20);
            names(&m.mnt)
        });
        let listed = others.join().unwrap();
        assert_eq!(
            synced.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the other requests waited for the fsyncs"
        );
        let mut listed: Vec<_> = listed
            .into_iter()
            .filter(|n| n.starts_with("synced"))
            .collect();
        listed.sort();
        assert_eq!(listed, ["synced0", "synced1"]);
        for t in fsyncs {
            t.join().unwrap();
        }
    });
    assert_eq!(fs::read(m.backing("synced1")).unwrap(), b"kept");
}

/// A bug that panics in a handler costs only its own request: the caller
/// gets EIO, and the daemon goes on serving, on every transport, however
/// many times it happens.
#[test]
fn a_handler_that_panics_fails_only_its_own_request() {
    for opts in ["io_uring=auto", "io_uring=never"] {
        let m = Mount::builder("panic")
            .opt(opts)
            .env("CASAFS_FAULT_PANIC", "boom")
            .start();
        for _ in 0..8 {
            assert_eq!(errno_of(fs::metadata(m.p("boom"))), libc::EIO, "{opts}");
        }
        exercise_within(&m, "after", None);
        assert!(
            m.log_text().contains("a request handler panicked"),
            "{opts}"
        );
    }
}

/// Scheduling policies of the daemon's queue threads (0: SCHED_OTHER,
/// 5: SCHED_IDLE).
fn queue_policies(pid: u32) -> Vec<u64> {
    let mut out = Vec::new();
    for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("casafs-q") {
            continue;
        }
        let stat = fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the command: the 3rd field of the line comes first,
        // the policy is the 41st.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        out.push(rest.split(' ').nth(41 - 3).unwrap().parse().unwrap());
    }
    out
}

/// Sets the flag when dropped, also when the test panics.
struct SetOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Queue threads are SCHED_IDLE while requests keep coming, so that each
/// caller is woken on its own CPU. On a CPU kept busy by another process
/// that would starve them: the watchdog takes them back, the requests keep
/// completing, and no thread stays SCHED_IDLE once they stop.
#[test]
fn queue_threads_hand_their_cpu_over_and_get_it_back_on_a_busy_cpu() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    if !io_uring_or_dev_fuse("handoff") {
        return;
    }
    let m = Mount::over_itself("handoff");
    let revoked = |m: &Mount| m.stats()["transport"]["io_uring_handoff_revoked"].as_u64();
    assert_eq!(m.stats()["transport"]["io_uring_handoff"], true);
    // (other tests may keep CPUs busy while this one mounts)
    let before = revoked(&m);
    assert!(before.is_some());
    let stop = AtomicBool::new(false);
    let done = std::thread::scope(|s| {
        s.spawn(|| {
            pin_to(0);
            while !stop.load(Relaxed) {
                std::hint::spin_loop();
            }
        });
        s.spawn(|| {
            let _stop = SetOnDrop(&stop);
            pin_to(0);
            let d = m.p("busy");
            fs::create_dir(&d).unwrap();
            let start = std::time::Instant::now();
            let mut done = 0;
            loop {
                for i in 0..100 {
                    let f = d.join(format!("f{i}"));
                    fs::write(&f, b"data").unwrap();
                    assert_eq!(fs::metadata(&f).unwrap().len(), 4);
                    fs::remove_file(&f).unwrap();
                    done += 1;
                }
                if revoked(&m) > before || start.elapsed() > Duration::from_secs(30) {
                    return done;
                }
            }
        })
        .join()
        .unwrap()
    });
    assert!(done >= 100);
    assert!(revoked(&m) > before, "{}", m.stats()["transport"]);
    eventually("every queue thread back to SCHED_OTHER", || {
        queue_policies(m.pid()).iter().all(|&p| p == 0)
    });
    exercise_within(&m, "after", None);
    assert!(
        stats_text(&m).contains("CPU handoff on (taken back"),
        "{}",
        stats_text(&m)
    );

    let n = Mount::builder("nohandoff").opt("handoff=never").start();
    assert_eq!(n.stats()["transport"]["io_uring_handoff"], false);
    exercise_within(&n, "work", None);
    assert_eq!(revoked(&n), Some(0));
    assert!(queue_policies(n.pid()).iter().all(|&p| p == 0));
    let cfg = fs::read_to_string(n.p(".casafs/config")).unwrap();
    assert!(cfg.contains("handoff = \"never\""), "{cfg}");
    assert!(
        stats_text(&n).contains("CPU handoff off"),
        "{}",
        stats_text(&n)
    );
}

/// What `casafs stats MOUNTPOINT` prints.
fn stats_text(m: &Mount) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_casafs"))
        .arg("stats")
        .arg(&m.mnt)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Times before 1970 with a fraction of a second reach the disk as given,
/// through either transport.
#[test]
fn times_before_1970_are_stored_as_given() {
    for opts in ["io_uring=auto", "io_uring=never"] {
        let m = Mount::builder("pre-epoch").opt(opts).start();
        let p = m.p("old");
        fs::write(&p, b"x").unwrap();
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // -1.5 s and -0.5 s: whole seconds rounded down, then the fraction.
        let ts = [
            libc::timespec {
                tv_sec: -2,
                tv_nsec: 500_000_000,
            },
            libc::timespec {
                tv_sec: -1,
                tv_nsec: 500_000_000,
            },
        ];
        assert_eq!(
            unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) },
            0
        );
        let st = fs::metadata(m.backing("old")).unwrap();
        assert_eq!(
            (st.atime(), st.atime_nsec(), st.mtime(), st.mtime_nsec()),
            (-2, 500_000_000, -1, 500_000_000),
            "{opts}"
        );
    }
}
