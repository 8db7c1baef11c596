//! Faults: a crash during writes, target areas that fill up,
//! symlinks planted where casafs writes, and many processes hammering the
//! rules at once next to fsx and stress-ng.

mod common;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

fn chunk(i: usize) -> Vec<u8> {
    (0..65536).map(|k| (i * 31 + k) as u8).collect()
}

#[test]
fn kill9_during_writes_keeps_fsynced_data_and_empties_the_graveyard() {
    let tmp = TempDir::new("crash");
    let tree = tmp.path().join("tree");
    let mut m = Mount::builder("crash")
        .opt("defer_unlink=always")
        .source(&tree, tmp)
        .start();
    fs::create_dir_all(m.p("out")).unwrap();
    // An unlinked file still open: its data waits in the graveyard.
    let mut buried = File::create(m.p("out/buried")).unwrap();
    buried.write_all(&[9u8; 100_000]).unwrap();
    fs::remove_file(m.p("out/buried")).unwrap();
    assert_eq!(m.stats()["deferred_unlinks"]["pending"], 1);

    let done = Arc::new(AtomicUsize::new(0));
    let writer = {
        let done = done.clone();
        let dir = m.p("out");
        std::thread::spawn(move || {
            for i in 0.. {
                let r = (|| -> std::io::Result<()> {
                    let mut f = File::create(dir.join(format!("f{i}")))?;
                    f.write_all(&chunk(i))?;
                    f.sync_all()
                })();
                if r.is_err() {
                    return;
                }
                done.store(i + 1, Ordering::SeqCst);
            }
        })
    };
    while done.load(Ordering::SeqCst) < 20 {
        std::thread::sleep(Duration::from_millis(10));
    }
    m.kill9();
    writer.join().unwrap();
    drop(buried);
    let synced = done.load(Ordering::SeqCst);

    let m2 = Mount::builder("crash2")
        .opt("defer_unlink=always")
        .source(&tree, TempDir::new("crash2"))
        .start();
    for i in 0..synced {
        assert_eq!(
            fs::read(m2.p(&format!("out/f{i}"))).unwrap(),
            chunk(i),
            "f{i} was fsynced before the crash"
        );
    }
    let graves = m2.backing(".casafs-graveyard");
    let leftovers = ok(&sh(&graves, "find . -type f"));
    assert_eq!(leftovers.trim(), "", "graveyard emptied at the next mount");
    assert!(m2.log_text().contains("took over a dead casafs mount"));
}

#[test]
fn full_scratch_fails_open_for_new_tables_and_gives_enospc_to_writers() {
    let tmp = TempDir::new("full");
    let scratch = tmp.path().join("scratch");
    // Room for three inodes and 256 KiB.
    let _t = Tmpfs::new(scratch.clone(), "mode=0700,size=256k,nr_inodes=4");
    let tree = tmp.path().join("tree");
    let m = Mount::builder("full")
        .opt(&format!("scratch={}", scratch.display()))
        .source(&tree, tmp)
        .start();
    let w = m.p("work");
    fs::create_dir_all(&w).unwrap();
    let mut f = File::create(w.join("TMPPOINTING1")).unwrap();
    assert!(
        scratch.join("TMPPOINTING1").exists(),
        "routed while there is room"
    );
    let err = f.write_all(&vec![1u8; 1 << 20]).and_then(|_| f.sync_all());
    assert_eq!(errno_of(err), libc::ENOSPC, "the writer sees a full disk");
    fs::write(scratch.join("filler"), b"").unwrap();
    // No inode left in scratch: the next table is made in place.
    fs::create_dir(w.join("TMPPOINTING2")).unwrap();
    fs::write(w.join("TMPPOINTING2/table.dat"), b"kept").unwrap();
    assert_eq!(
        fs::read(m.backing("work/TMPPOINTING2/table.dat")).unwrap(),
        b"kept"
    );
    assert_eq!(m.stats()["redirects"]["tmppointing"]["fail_open"], 1);
    // Everything else keeps being served.
    fs::write(w.join("plain.txt"), b"fine").unwrap();
    assert_eq!(fs::read(w.join("plain.txt")).unwrap(), b"fine");
    assert!(m.log_text().contains("unusable"), "{}", m.log_text());
}

#[test]
fn symlinks_planted_in_a_target_area_or_the_graveyard_are_never_followed() {
    let tmp = TempDir::new("planted");
    let victim = tmp.path().join("victim");
    fs::create_dir_all(&victim).unwrap();
    fs::write(victim.join("precious"), b"untouched").unwrap();
    let tree = tmp.path().join("tree");
    let logs = tmp.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    // Where the next routed log would go, and a stale graveyard of a dead
    // daemon of this host whose entries point outside the tree.
    let log = "casa-20261122-000000.log";
    std::os::unix::fs::symlink(victim.join("precious"), logs.join(log)).unwrap();
    let host = ok(&sh(Path::new("/"), "hostname"))
        .trim()
        .replace(['.', '/'], "_");
    let stale = tree.join(format!(".casafs-graveyard/{host}.999999999.1"));
    fs::create_dir_all(&stale).unwrap();
    std::os::unix::fs::symlink(&victim, stale.join("0")).unwrap();
    std::os::unix::fs::symlink(&victim, tree.join(".casafs-graveyard/notours")).unwrap();

    let m = Mount::builder("planted")
        .opt(&format!("logs={}", logs.display()))
        .source(&tree, tmp)
        .start();
    fs::create_dir_all(m.p("w")).unwrap();
    fs::write(m.p("w").join(log), b"log text").unwrap();
    assert_eq!(fs::read(m.p("w").join(log)).unwrap(), b"log text");
    assert_eq!(fs::read(victim.join("precious")).unwrap(), b"untouched");
    let listed = names(&logs);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        fs::symlink_metadata(logs.join(log))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(names(&victim), ["precious"]);
    // The stale graveyard was emptied (so its symlink was seen) and removed.
    let graves = names(&m.backing(".casafs-graveyard"));
    assert!(
        !graves.iter().any(|g| g.contains(".999999999.")),
        "{graves:?}"
    );
    assert!(graves.contains(&"notours".to_string()), "{graves:?}");
}

fn cargo_tool(name: &str) -> String {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let p = format!("{home}/.cargo/bin/{name}");
    if Path::new(&p).exists() {
        p
    } else {
        name.to_string()
    }
}

/// Files removed while the kernel still holds them (here through `O_PATH`
/// descriptors, which send the daemon nothing) never use up the daemon's
/// descriptors: held to 1,024, it removes 3,000 such files and goes on
/// serving every other request.
#[test]
fn removed_files_the_kernel_holds_never_use_up_the_daemons_descriptors() {
    use std::os::unix::fs::OpenOptionsExt;
    let m = Mount::builder("fdbudget").nofile(1024).start();
    let dir = m.p("many");
    fs::create_dir(&dir).unwrap();
    let mut held = Vec::new();
    for i in 0..3000 {
        let p = dir.join(format!("f{i}"));
        fs::write(&p, b"x").unwrap();
        held.push(
            fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH)
                .open(&p)
                .unwrap(),
        );
        if let Err(e) = fs::remove_file(&p) {
            panic!("removing file {i}: {e}");
        }
    }
    fs::write(dir.join("after"), b"still served").unwrap();
    fs::hard_link(dir.join("after"), dir.join("linked")).unwrap();
    assert_eq!(fs::read(dir.join("linked")).unwrap(), b"still served");
    assert_eq!(names(&dir), ["after", "linked"]);
    // Some are kept for the kernel, far fewer than it holds; all go once
    // the kernel lets go of them.
    let pinned = || m.stats()["objects_pinned"].as_u64().unwrap();
    let n = pinned();
    assert!(n > 0 && n < 1024, "{n} objects pinned");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(20);
    while pinned() > 0 {
        assert!(Instant::now() < deadline, "{} still pinned", pinned());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Many processes creating casa-*.log files and TMPPOINTING tables with the
/// same names in their own directories, next to fsx and stress-ng, for a
/// bounded time: nothing lost, nothing merged, no deadlock.
#[test]
fn rule_storm_next_to_fsx_and_stress_ng() {
    let m = Mount::over_itself("storm");
    let workers = 8;
    let rounds = 40;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut side = Vec::new();
    fs::create_dir_all(m.p("fsx")).unwrap();
    side.push(
        Command::new(cargo_tool("fsx"))
            .args(["-N", "20000", "-S", "7", "-P"])
            .arg(m.p("fsx"))
            .arg(m.p("fsx/file"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fsx (cargo install fsx)"),
    );
    fs::create_dir_all(m.p("stress")).unwrap();
    side.push(
        Command::new("stress-ng")
            .args([
                "--dir",
                "1",
                "--rename",
                "1",
                "--link",
                "1",
                "--hdd",
                "1",
                "--hdd-bytes",
                "16M",
                "--timeout",
                "20s",
                "--temp-path",
            ])
            .arg(m.p("stress"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("stress-ng (apt-get install stress-ng)"),
    );
    // Each worker is its own process, appending the way CASA does
    // (O_WRONLY|O_CREAT|O_APPEND) and making and removing tables.
    let procs: Vec<_> = (0..workers)
        .map(|wk| {
            let dir = m.p(&format!("run{wk}"));
            fs::create_dir_all(&dir).unwrap();
            let script = format!(
                r#"set -e
r=0
while [ $r -lt {rounds} ]; do
  echo "worker {wk} round $r" >> casa-2026112$((r % 3))-00000$((r % 2)).log
  t=TMPPOINTING$(( (r / 2) % 5 ))
  if [ $((r % 2)) -eq 0 ]; then
    mkdir $t
    echo "worker {wk} round $r" > $t/table.f0
  else
    [ "$(cat $t/table.f0)" = "worker {wk} round $((r - 1))" ]
    rm -r $t
  fi
  r=$((r + 1))
done
"#
            );
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .current_dir(&dir)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (wk, p) in procs.into_iter().enumerate() {
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "worker {wk}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(Instant::now() < deadline, "the storm took too long");
    for c in side {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every worker's logs are its own, appended to, none lost or merged.
    let logs = m.backing("state/logs/casa");
    let all = names(&logs);
    assert_eq!(all.len(), workers * 6, "{all:?}");
    for wk in 0..workers {
        let dir = m.p(&format!("run{wk}"));
        assert_eq!(names(&dir), Vec::<String>::new(), "run{wk} is clean");
        for r in 0..6 {
            let log = dir.join(format!("casa-2026112{}-00000{}.log", r % 3, r % 2));
            let text = fs::read_to_string(&log).unwrap();
            let want: String = (0..rounds)
                .filter(|x| x % 6 == r)
                .map(|x| format!("worker {wk} round {x}\n"))
                .collect();
            assert_eq!(text, want, "{}", log.display());
        }
    }
    assert_eq!(
        names(&m.backing("state/scratch/tmppointing")),
        Vec::<String>::new()
    );
}

/// A create that fails after the object exists (here the backing's stat of
/// it fails) leaves nothing behind, in place or in a target area: the
/// caller gets the error, and a listing the kernel keeps still matches the
/// disk.
#[test]
fn a_create_that_fails_half_way_leaves_nothing_behind() {
    let m = Mount::builder("create-undo")
        .env("CASAFS_FAULT_CREATE_STAT", "victim")
        .start();
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d/kept"), b"k").unwrap();
    for _ in 0..2 {
        assert_eq!(names(&m.p("d")), ["kept"]);
    }
    assert_eq!(errno_of(File::create(m.p("d/victim"))), libc::EIO);
    assert_eq!(errno_of(fs::create_dir(m.p("d/victim"))), libc::EIO);
    assert_eq!(names(&m.p("d")), ["kept"]);
    assert_eq!(names(&m.backing("d")), ["kept"]);

    const LOG: &str = "casa-20261124-080000.log";
    let m = Mount::builder("create-undo-routed")
        .env("CASAFS_FAULT_CREATE_STAT", LOG)
        .start();
    fs::create_dir(m.p("w")).unwrap();
    let area = m.p("state/logs/casa");
    assert_eq!(names(&area), Vec::<String>::new());
    assert_eq!(errno_of(File::create(m.p("w").join(LOG))), libc::EIO);
    assert_eq!(names(&m.p("w")), Vec::<String>::new());
    assert_eq!(names(&area), Vec::<String>::new());
    assert_eq!(names(&m.backing("state/logs/casa")), Vec::<String>::new());
}

#[test]
fn a_rename_over_an_open_file_that_fails_keeps_the_file() {
    // Burying the open file it replaces is the first step of such a rename
    // where unlinks are deferred; the rename failing after it must give the
    // file its name back.
    let m = Mount::builder("rename-undo")
        .opt("defer_unlink=always")
        .env("CASAFS_FAULT_RENAME", "old.txt")
        .start();
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d/old.txt"), b"old").unwrap();
    fs::write(m.p("d/new.txt"), b"new").unwrap();
    let mut held = File::open(m.p("d/old.txt")).unwrap();
    assert_eq!(
        errno_of(fs::rename(m.p("d/new.txt"), m.p("d/old.txt"))),
        libc::EIO
    );
    assert_eq!(names(&m.p("d")), ["new.txt", "old.txt"]);
    assert_eq!(names(&m.backing("d")), ["new.txt", "old.txt"]);
    assert_eq!(fs::read(m.p("d/old.txt")).unwrap(), b"old");
    let mut s = String::new();
    held.read_to_string(&mut s).unwrap();
    assert_eq!(s, "old");
    assert_eq!(m.stats()["deferred_unlinks"]["pending"], 0);
    // Once the handle is closed nothing goes away with it.
    drop(held);
    assert_eq!(fs::read(m.backing("d/old.txt")).unwrap(), b"old");
    let graves = ok(&sh(&m.source, "find .casafs-graveyard -type f | wc -l"));
    assert_eq!(graves.trim(), "0");
}

#[test]
fn a_crashed_daemons_graveyard_goes_even_when_its_pid_lives_on_and_a_live_ones_stays() {
    let tmp = TempDir::new("grave-owner");
    let tree = tmp.path().join("tree");
    let host = ok(&sh(Path::new("/"), "hostname"))
        .trim()
        .replace(['.', '/'], "_");
    // Left by a daemon that crashed before a reboot: its pid now belongs
    // to a live process (pid 1 always lives).
    let stale = tree.join(format!(".casafs-graveyard/{host}.1.1"));
    fs::create_dir_all(&stale).unwrap();
    fs::write(stale.join("0"), vec![1u8; 100_000]).unwrap();
    let a = Mount::builder("grave-a")
        .separate()
        .opt("defer_unlink=always")
        .source(&tree, tmp)
        .start();
    assert!(
        !stale.exists(),
        "{:?}",
        names(&tree.join(".casafs-graveyard"))
    );
    assert!(a.log_text().contains("stopped daemon"), "{}", a.log_text());
    // A's open file waits in A's graveyard...
    fs::write(a.p("held"), b"still here").unwrap();
    let held = File::open(a.p("held")).unwrap();
    fs::remove_file(a.p("held")).unwrap();
    let graves = || ok(&sh(&tree, "find .casafs-graveyard -type f | wc -l"));
    assert_eq!(graves().trim(), "1");
    // ...and a second daemon mounting the same tree leaves it alone.
    let b = Mount::builder("grave-b")
        .separate()
        .source(&tree, TempDir::new("grave-b"))
        .start();
    assert_eq!(graves().trim(), "1");
    let mut s = String::new();
    (&held).read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    drop(b);
    drop(held);
    // The release that deletes it follows the close.
    let deadline = Instant::now() + Duration::from_secs(10);
    while graves().trim() != "0" {
        assert!(
            Instant::now() < deadline,
            "the grave outlived its last close"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(a);
}

#[test]
fn an_entry_that_cannot_be_stat_ed_does_not_hide_its_directory() {
    // A dead FUSE mount inside the data tree (an sshfs whose daemon died,
    // here a killed casafs): stat of it fails. Natively `ls`
    // still lists the directory and flags that one entry.
    let tmp = TempDir::new("dead-entry");
    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("sub")).unwrap();
    fs::write(tree.join("a"), b"a").unwrap();
    fs::write(tree.join("z"), b"z").unwrap();
    let mut inner = Mount::builder("dead-entry-inner")
        .opt("attr_timeout=0")
        .source(&tree.join("sub"), TempDir::new("dead-entry-inner"))
        .start();
    inner.kill9();
    let dead = [libc::ENOTCONN, libc::ECONNABORTED];
    eventually("the inner mount is dead", || {
        dead.contains(&errno_of(fs::symlink_metadata(tree.join("sub"))))
    });
    // Both transports: FUSE over io_uring sends the name bare, /dev/fuse
    // an entry that expires at once.
    for transport in ["io_uring=auto", "io_uring=never"] {
        let outer = Mount::builder("dead-entry")
            .opt(transport)
            .source(&tree, TempDir::new("dead-entry-outer"))
            .start();
        for _ in 0..2 {
            assert_eq!(
                names(&outer.p("")),
                ["a", "state", "sub", "z"],
                "{transport}"
            );
        }
        let out = ok(&sh(&outer.p(""), "ls -l . 2>&1; true"));
        assert!(out.contains(" a\n") && out.contains(" z\n"), "{out}");
        let e = errno_of(fs::symlink_metadata(outer.p("sub")));
        assert!(dead.contains(&e), "{transport}: {e}");
        assert_eq!(fs::read(outer.p("z")).unwrap(), b"z");
    }
    drop(inner);
    drop(tmp);
}

#[test]
fn an_open_file_the_graveyard_cannot_take_is_unlinked_in_place() {
    let m = Mount::builder("grave-unreachable")
        .separate()
        .opt("defer_unlink=always")
        .start();
    // The same filesystem mounted again inside the tree: a rename from
    // there to the graveyard crosses mounts (EXDEV), which no unlink may
    // answer.
    fs::create_dir_all(m.backing("real")).unwrap();
    let _bind = Bind::new(&m.backing("real"), &m.backing("bm"));
    let bm = m.p("bm");
    fs::write(bm.join("f"), b"unlinked while open").unwrap();
    fs::write(bm.join("g"), b"replaced while open").unwrap();
    fs::write(bm.join("h"), b"replacement").unwrap();
    let f = File::open(bm.join("f")).unwrap();
    let g = File::open(bm.join("g")).unwrap();
    fs::remove_file(bm.join("f")).unwrap();
    fs::rename(bm.join("h"), bm.join("g")).unwrap();
    assert_eq!(names(&bm), ["g"]);
    assert_eq!(names(&m.backing("real")), ["g"]);
    assert_eq!(fs::read(bm.join("g")).unwrap(), b"replacement");
    // Open handles keep working.
    for (mut file, want) in [(f, "unlinked while open"), (g, "replaced while open")] {
        let mut s = String::new();
        file.read_to_string(&mut s).unwrap();
        assert_eq!(s, want);
    }
    assert!(
        m.log_text().contains("unlinking it in place"),
        "{}",
        m.log_text()
    );
}
