//! Redirect rules: every way a matching name comes into existence
//! is routed, and the original path keeps working while the original
//! directory's listing stays clean.

mod common;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use common::*;

const LOG: &str = "casa-20261122-010101.log";

fn logs(m: &Mount) -> PathBuf {
    m.backing("state/logs/casa")
}

fn scratch(m: &Mount) -> PathBuf {
    m.backing("state/scratch/tmppointing")
}

fn cs(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn casa_open(p: &Path) -> fs::File {
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(p)
        .unwrap()
}

#[test]
fn created_log_lands_in_logs_and_original_path_works() {
    let m = Mount::over_itself("route-create");
    fs::create_dir_all(m.p("repo/scripts")).unwrap();
    let orig = m.p("repo/scripts").join(LOG);
    let mut f = casa_open(&orig);
    f.write_all(b"line 1\n").unwrap();
    // Hidden from the original directory, in the mount and on disk.
    assert_eq!(names(&m.p("repo/scripts")), Vec::<String>::new());
    assert!(!m.backing("repo/scripts").join(LOG).exists());
    // Listed in the logs area, through the mount and on disk.
    assert_eq!(names(&m.p("state/logs/casa")), [LOG]);
    assert_eq!(fs::read(logs(&m).join(LOG)).unwrap(), b"line 1\n");
    // The original path keeps working.
    assert_eq!(fs::read(&orig).unwrap(), b"line 1\n");
    assert_eq!(
        stat(&orig).st_ino,
        stat(&m.p("state/logs/casa").join(LOG)).st_ino
    );
    // The origin is recorded, in the control directory and on the object.
    let redirects = fs::read_to_string(m.p(".casafs/redirects")).unwrap();
    assert!(
        redirects.contains(&format!("repo/scripts/{LOG}\t")),
        "{redirects}"
    );
    let out = sh(
        &logs(&m),
        &format!("getfattr --only-values -n trusted.casafs.origin {LOG}"),
    );
    assert_eq!(ok(&out), format!("repo/scripts/{LOG}"));
    assert_eq!(m.stats()["redirects"]["casa-logs"]["redirects"], 1);
    // Rename and unlink through the original name.
    fs::rename(&orig, m.p("repo/scripts/kept.txt")).unwrap();
    assert_eq!(names(&m.p("repo/scripts")), ["kept.txt"]);
    assert_eq!(fs::read(m.p("repo/scripts/kept.txt")).unwrap(), b"line 1\n");
}

/// casafs puts routed objects into an area itself, which the kernel does
/// not see happen: a listing of the area the kernel has seen before still
/// shows a new object at once.
#[test]
fn an_area_listed_before_shows_a_routed_object_at_once() {
    let m = Mount::over_itself("route-listed");
    fs::create_dir_all(m.p("w")).unwrap();
    let area = m.p("state/logs/casa");
    for _ in 0..2 {
        assert_eq!(names(&area), Vec::<String>::new());
        assert_eq!(names(&m.p("w")), Vec::<String>::new());
    }
    let _f = casa_open(&m.p("w").join(LOG));
    assert_eq!(names(&area), [LOG]);
    assert_eq!(names(&m.p("w")), Vec::<String>::new());
    fs::remove_file(m.p("w").join(LOG)).unwrap();
    assert_eq!(names(&area), Vec::<String>::new());
}

/// CASA's sequence: create, then three reopens by path with
/// O_WRONLY|O_CREAT|O_APPEND while the first descriptor is open, writing
/// through two descriptors at once.
fn casa_reopen_sequence(m: &Mount) {
    fs::create_dir_all(m.p("work")).unwrap();
    let p = m.p("work").join(LOG);
    let mut a = casa_open(&p);
    a.seek(SeekFrom::End(0)).unwrap();
    a.write_all(b"a1\n").unwrap();
    {
        let mut probe = casa_open(&p);
        assert_eq!(probe.seek(SeekFrom::End(0)).unwrap(), 3);
    }
    let mut b = casa_open(&p);
    b.seek(SeekFrom::End(0)).unwrap();
    a.write_all(b"a2\n").unwrap();
    b.write_all(b"b1\n").unwrap();
    {
        let mut probe = casa_open(&p);
        assert_eq!(probe.seek(SeekFrom::End(0)).unwrap(), 9);
    }
    a.write_all(b"a3\n").unwrap();
    b.write_all(b"b2\n").unwrap();
    drop(a);
    drop(b);
    assert_eq!(names(&m.p("work")), Vec::<String>::new());
    assert_eq!(names(&logs(m)), [LOG], "one file, never a second");
    assert_eq!(
        fs::read(logs(m).join(LOG)).unwrap(),
        b"a1\na2\nb1\na3\nb2\n"
    );
}

#[test]
fn casa_reopens_append_to_the_same_file() {
    casa_reopen_sequence(&Mount::over_itself("reopen"));
}

#[test]
fn casa_reopens_append_to_the_same_file_without_name_cache() {
    // With no entry caching every reopen reaches the daemon's create path.
    casa_reopen_sequence(
        &Mount::builder("reopen-nocache")
            .opt("entry_timeout=0,attr_timeout=0")
            .start(),
    );
}

#[test]
fn two_origins_same_name_never_overwrite() {
    let m = Mount::over_itself("collide");
    fs::create_dir_all(m.p("a")).unwrap();
    fs::create_dir_all(m.p("b")).unwrap();
    let mut fa = casa_open(&m.p("a").join(LOG));
    let mut fb = casa_open(&m.p("b").join(LOG));
    fa.write_all(b"from a").unwrap();
    fb.write_all(b"from b").unwrap();
    let mut want = vec![LOG.to_string(), LOG.replace(".log", "-2.log")];
    want.sort();
    assert_eq!(names(&logs(&m)), want);
    assert_eq!(fs::read(m.p("a").join(LOG)).unwrap(), b"from a");
    assert_eq!(fs::read(m.p("b").join(LOG)).unwrap(), b"from b");
    // O_EXCL is judged by the original directory: a third origin may
    // create the name although the logs area holds it twice already.
    fs::create_dir_all(m.p("c")).unwrap();
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.p("c").join(LOG))
        .unwrap();
    let e = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.p("a").join(LOG));
    assert_eq!(errno_of(e), libc::EEXIST);
    assert_eq!(names(&logs(&m)).len(), 3);
}

#[test]
fn tmppointing_directory_is_routed_and_walkable() {
    let m = Mount::over_itself("tmpdir");
    fs::create_dir_all(m.p("obs")).unwrap();
    let t = m.p("obs/TMPPOINTING1763000000.25");
    fs::create_dir(&t).unwrap();
    fs::write(t.join("table.dat"), b"rows").unwrap();
    fs::create_dir(t.join("sub")).unwrap();
    assert_eq!(names(&m.p("obs")), Vec::<String>::new());
    assert_eq!(names(&scratch(&m)), ["TMPPOINTING1763000000.25"]);
    assert_eq!(names(&t), ["sub", "table.dat"]);
    assert_eq!(
        fs::read(scratch(&m).join("TMPPOINTING1763000000.25/table.dat")).unwrap(),
        b"rows"
    );
    // Names inside a target area are never routed again.
    fs::write(t.join(LOG), b"x").unwrap();
    assert!(
        scratch(&m)
            .join("TMPPOINTING1763000000.25")
            .join(LOG)
            .exists()
    );
    fs::remove_dir_all(&t).unwrap();
    assert!(!t.exists());
    assert_eq!(names(&scratch(&m)), Vec::<String>::new());
}

#[test]
fn rename_of_pointing_table_same_filesystem() {
    let m = Mount::over_itself("rename-same");
    fs::create_dir_all(m.p("obs/my.ms/POINTING")).unwrap();
    fs::write(m.p("obs/my.ms/POINTING/table.f0"), b"pointing rows").unwrap();
    // What concat(copypointing=False) does: shutil.move into the cwd.
    let out = sh(
        &m.p("obs"),
        "python3 -c \"import shutil; shutil.move('my.ms/POINTING', 'TMPPOINTING1763000000.5')\"",
    );
    ok(&out);
    assert_eq!(names(&m.p("obs")), ["my.ms"]);
    assert_eq!(names(&m.p("obs/my.ms")), Vec::<String>::new());
    assert_eq!(
        fs::read(scratch(&m).join("TMPPOINTING1763000000.5/table.f0")).unwrap(),
        b"pointing rows"
    );
    assert_eq!(
        fs::read(m.p("obs/TMPPOINTING1763000000.5/table.f0")).unwrap(),
        b"pointing rows"
    );
    // And back, as concat does for an empty table.
    fs::rename(
        m.p("obs/TMPPOINTING1763000000.5"),
        m.p("obs/my.ms/POINTING"),
    )
    .unwrap();
    assert_eq!(
        fs::read(m.p("obs/my.ms/POINTING/table.f0")).unwrap(),
        b"pointing rows"
    );
    assert_eq!(names(&scratch(&m)), Vec::<String>::new());
}

#[test]
fn rename_of_pointing_table_across_filesystems_and_a_crash() {
    let tmp = TempDir::new("rename-exdev");
    let fast = Tmpfs::new(tmp.path().join("nvme"), "size=64m");
    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("obs/my.ms/POINTING")).unwrap();
    fs::write(tree.join("obs/my.ms/POINTING/table.f0"), b"pointing rows").unwrap();
    let scratch_dir = fast.0.join("tmppointing");
    let mut m = Mount::builder("rename-exdev")
        .opt(&format!("scratch={}", scratch_dir.display()))
        .source(&tree, tmp)
        .start();
    // A bare rename across filesystems answers EXDEV, as POSIX says.
    let rc = unsafe {
        libc::rename(
            cs(&m.p("obs/my.ms/POINTING")).as_ptr(),
            cs(&m.p("obs/TMPPOINTING1")).as_ptr(),
        )
    };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EXDEV)
    );
    // shutil.move then copies; the process "crashes" before cleaning up.
    let out = sh(
        &m.p("obs"),
        "python3 -c \"import shutil,os; shutil.move('my.ms/POINTING', 'TMPPOINTING1763000000.5'); os._exit(9)\"; true",
    );
    ok(&out);
    assert_eq!(
        names(&m.p("obs")),
        ["my.ms"],
        "nothing left in the working directory"
    );
    assert_eq!(
        fs::read(scratch_dir.join("TMPPOINTING1763000000.5/table.f0")).unwrap(),
        b"pointing rows",
        "the only copy of the table is safe in scratch"
    );
    // A hard link cannot reach scratch there: made in place, as natively.
    fs::write(m.p("obs/plain"), b"p").unwrap();
    fs::hard_link(m.p("obs/plain"), m.p("obs/TMPPOINTING5")).unwrap();
    assert_eq!(names(&tree.join("obs")), ["TMPPOINTING5", "my.ms", "plain"]);
    fs::remove_file(m.p("obs/plain")).unwrap();
    fs::remove_file(m.p("obs/TMPPOINTING5")).unwrap();
    assert!(m.stop().unwrap().success());
    assert_eq!(
        names(&tree.join("obs")),
        ["my.ms"],
        "nor on disk after unmount"
    );
    drop(fast);
}

#[test]
fn every_creating_operation_is_routed() {
    let m = Mount::over_itself("allops");
    fs::create_dir_all(m.p("d")).unwrap();
    fs::write(m.p("d/plain"), b"p").unwrap();
    let d = m.p("d");
    // mknod (a regular file through mknod(2))
    let c = cs(&d.join("casa-1.log"));
    assert_eq!(
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFREG | 0o644, 0) },
        0
    );
    // symlink
    std::os::unix::fs::symlink("plain", d.join("casa-2.log")).unwrap();
    // link
    fs::hard_link(d.join("plain"), d.join("casa-3.log")).unwrap();
    // rename onto a matching name (same filesystem)
    fs::write(d.join("out.txt"), b"o").unwrap();
    fs::rename(d.join("out.txt"), d.join("casa-4.log")).unwrap();
    // mkdir of a TMPPOINTING directory, and a TMPPOINTING file
    fs::create_dir(d.join("TMPPOINTING9")).unwrap();
    fs::write(d.join("TMPPOINTING10"), b"f").unwrap();
    // A directory named like a log is not a file: stays in place.
    fs::create_dir(d.join("casa-5.log")).unwrap();
    assert_eq!(names(&d), ["casa-5.log", "plain"]);
    assert_eq!(
        names(&logs(&m)),
        ["casa-1.log", "casa-2.log", "casa-3.log", "casa-4.log"]
    );
    assert_eq!(names(&scratch(&m)), ["TMPPOINTING10", "TMPPOINTING9"]);
    assert_eq!(fs::read(d.join("casa-3.log")).unwrap(), b"p");
    assert_eq!(stat(&d.join("casa-3.log")).st_nlink, 2);
    assert_eq!(
        fs::read_link(d.join("casa-2.log")).unwrap().to_str(),
        Some("plain")
    );
    assert_eq!(fs::read(d.join("casa-4.log")).unwrap(), b"o");
    for n in ["casa-1.log", "casa-2.log", "casa-3.log", "casa-4.log"] {
        fs::remove_file(d.join(n)).unwrap();
    }
    assert_eq!(names(&logs(&m)), Vec::<String>::new());
    assert_eq!(m.stats()["redirects"]["casa-logs"]["redirects"], 4);
}

#[test]
fn routed_files_belong_to_their_creator_and_respect_permissions() {
    let m = Mount::over_itself("route-owner");
    let (uid, gid) = user_ids("nobody");
    fs::create_dir_all(m.p("open")).unwrap();
    chmod(&m.p("open"), 0o777);
    fs::create_dir_all(m.p("closed")).unwrap();
    chmod(&m.p("closed"), 0o755);
    let out = sh_as(
        uid,
        gid,
        &m.p("open"),
        &format!("umask 027; echo hi > {LOG}"),
    );
    ok(&out);
    let st = stat(&logs(&m).join(LOG));
    assert_eq!((st.st_uid, st.st_gid), (uid, gid));
    assert_eq!(st.st_mode & 0o777, 0o640);
    // The logs area is writable, but the caller's directory is not.
    let out = sh_as(
        uid,
        gid,
        &m.p("closed"),
        "(echo hi > casa-x.log) 2>&1; echo rc=$?",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Permission denied") && !text.contains("rc=0"),
        "{text}"
    );
    assert!(!logs(&m).join("casa-x.log").exists());
}

#[test]
fn unusable_target_area_fails_open() {
    let m = Mount::over_itself("failopen");
    fs::create_dir_all(m.p("w")).unwrap();
    fs::remove_dir(m.p("state/logs/casa")).unwrap();
    let mut f = casa_open(&m.p("w").join(LOG));
    f.write_all(b"still logged").unwrap();
    assert_eq!(names(&m.p("w")), [LOG], "created in place");
    assert_eq!(fs::read(m.backing("w").join(LOG)).unwrap(), b"still logged");
    let st = m.stats();
    assert_eq!(st["redirects"]["casa-logs"]["fail_open"], 1);
    assert_eq!(st["fail_open"], 1);
    assert!(m.log_text().contains("unusable"), "{}", m.log_text());
    // The operator makes the area again: routing resumes without a remount.
    fs::create_dir(m.p("state/logs/casa")).unwrap();
    // Listed through the mount while nothing is in it yet: the listing of
    // the area must not be kept once casafs puts an object there.
    for _ in 0..2 {
        assert_eq!(names(&m.p("state/logs/casa")), Vec::<String>::new());
    }
    let mut g = casa_open(&m.p("w").join("casa-20261122-020202.log"));
    g.write_all(b"routed again").unwrap();
    assert_eq!(names(&m.p("w")), [LOG]);
    assert_eq!(names(&m.p("state/logs/casa")), ["casa-20261122-020202.log"]);
    assert_eq!(
        fs::read(logs(&m).join("casa-20261122-020202.log")).unwrap(),
        b"routed again"
    );
    assert_eq!(m.stats()["redirects"]["casa-logs"]["redirects"], 1);
    assert!(
        m.log_text().contains("is a new directory"),
        "{}",
        m.log_text()
    );
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// casafs on a new tree in `tmp` whose tmppointing rule removes tables
/// unused for 2 s, from `scratch` (None: its default area).
fn mount_with_2s_retention(tag: &str, tmp: TempDir, scratch: Option<&Path>) -> Mount {
    let tree = tmp.path().join("tree");
    let cfg = tmp.path().join("casafs.toml");
    fs::write(
        &cfg,
        "[[rule]]\nname = \"tmppointing\"\nretention = \"2s\"\n",
    )
    .unwrap();
    let mut b = Mount::builder(tag);
    if let Some(s) = scratch {
        b = b.opt(&format!("scratch={}", s.display()));
    }
    b.arg("--config")
        .arg(cfg.to_str().unwrap())
        .source(&tree, tmp)
        .start()
}

#[test]
fn retention_keeps_a_table_whose_file_is_mapped() {
    // casacore can map a table's storage; the descriptor it mapped it
    // through may be closed long before the table is done with.
    let tmp = TempDir::new("retention-mapped");
    let scratch = tmp.path().join("scratch");
    let m = mount_with_2s_retention("retention-mapped", tmp, Some(&scratch));
    fs::create_dir_all(m.p("w/TMPPOINTING3")).unwrap();
    fs::write(m.p("w/TMPPOINTING3/table.f0"), vec![4u8; 8192]).unwrap();
    fs::create_dir_all(m.p("w/TMPPOINTING4")).unwrap();
    let mapper = Holder::mapping(&m.p("w/TMPPOINTING3/table.f0"));
    wait_until("the table nobody uses is removed", || {
        !scratch.join("TMPPOINTING4").exists()
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        scratch.join("TMPPOINTING3/table.f0").exists(),
        "kept while mapped"
    );
    drop(mapper);
    wait_until("the table is removed once nobody maps it", || {
        !scratch.join("TMPPOINTING3").exists()
    });
}

#[test]
fn retention_waits_the_whole_age_to_the_fraction_of_a_second() {
    let tmp = TempDir::new("retention-age");
    let scratch = tmp.path().join("scratch");
    let m = mount_with_2s_retention("retention-age", tmp, Some(&scratch));
    // Made late in a second: counted in whole seconds, its age would be
    // 0.9 s more than it is.
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_millis()
        < 900
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let made = std::time::Instant::now();
    fs::create_dir(m.p("TMPPOINTING9")).unwrap();
    wait_until("the table is removed", || {
        !scratch.join("TMPPOINTING9").exists()
    });
    // The change time comes from a clock that may be a tick behind.
    assert!(
        made.elapsed() >= std::time::Duration::from_millis(1900),
        "removed {:?} after it was made, retention is 2 s",
        made.elapsed()
    );
}

#[test]
fn retention_removes_old_closed_objects_and_keeps_open_ones() {
    let tmp = TempDir::new("retention");
    let tree = tmp.path().join("tree");
    let scratch = tmp.path().join("scratch");
    let cfg = tmp.path().join("casafs.toml");
    fs::write(
        &cfg,
        "[[rule]]\nname = \"tmppointing\"\nretention = \"2s\"\n\
         [[rule]]\nname = \"ms-scratch\"\nregex = \"tmp[0-9]+\\\\.ms\"\nkind = \"dir\"\n\
         target = \"scratch\"\nretention = \"2s\"\n",
    )
    .unwrap();
    let m = Mount::builder("retention")
        .opt(&format!("scratch={}", scratch.display()))
        .arg("--config")
        .arg(cfg.to_str().unwrap())
        .source(&tree, tmp)
        .start();
    let w = m.p("work");
    fs::create_dir_all(&w).unwrap();
    // A table left behind by a crashed run, and one still being written.
    fs::create_dir(w.join("TMPPOINTING1")).unwrap();
    fs::write(w.join("TMPPOINTING1/table.dat"), vec![1u8; 5000]).unwrap();
    let held = fs::File::create(w.join("TMPPOINTING2")).unwrap();
    // An operator's file in the scratch area that no rule matches.
    fs::write(scratch.join("notes.txt"), b"mine").unwrap();
    assert!(scratch.join("TMPPOINTING1/table.dat").exists());
    // Two origins of one name: the second one's copy carries a suffix that
    // the rule's pattern no longer matches, and goes all the same.
    for d in ["a", "b"] {
        fs::create_dir_all(m.p(d).join("tmp12.ms")).unwrap();
    }
    assert!(scratch.join("tmp12-2.ms").exists());
    wait_until("both copies of tmp12.ms are removed", || {
        !scratch.join("tmp12.ms").exists() && !scratch.join("tmp12-2.ms").exists()
    });

    wait_until("the closed table is removed", || {
        !scratch.join("TMPPOINTING1").exists()
    });
    // No longer listed as live, before anyone looks its name up.
    let live = fs::read_to_string(m.p(".casafs/redirects")).unwrap();
    assert!(!live.contains("work/TMPPOINTING1\t"), "{live}");
    assert!(!live.contains("tmp12"), "{live}");
    assert!(live.contains("work/TMPPOINTING2\t"), "{live}");
    assert_eq!(m.stats()["redirects_live"], 1);
    assert_eq!(errno_of(fs::metadata(w.join("TMPPOINTING1"))), libc::ENOENT);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        scratch.join("TMPPOINTING2").exists(),
        "an open file is kept"
    );
    assert!(w.join("TMPPOINTING2").exists());
    assert_eq!(fs::read(scratch.join("notes.txt")).unwrap(), b"mine");
    assert_eq!(
        m.stats()["redirects"]["tmppointing"]["retention_removed"],
        1
    );
    let log = m.log_text();
    assert!(
        log.contains("retention (tmppointing): removed")
            && log.contains("TMPPOINTING1 (5000 bytes"),
        "{log}"
    );

    drop(held);
    wait_until("the closed file is removed", || {
        !scratch.join("TMPPOINTING2").exists()
    });
    assert_eq!(
        m.stats()["redirects"]["tmppointing"]["retention_removed"],
        2
    );
    assert_eq!(fs::read(scratch.join("notes.txt")).unwrap(), b"mine");
}

#[test]
fn redirects_survive_a_remount() {
    let tmp = TempDir::new("restore");
    let tree = tmp.path().join("tree");
    let mut m = Mount::builder("restore").source(&tree, tmp).start();
    let w = m.p("obs/run1");
    fs::create_dir_all(&w).unwrap();
    casa_open(&w.join(LOG)).write_all(b"first run\n").unwrap();
    fs::create_dir(w.join("TMPPOINTING7")).unwrap();
    fs::write(w.join("TMPPOINTING7/table.f0"), b"rows").unwrap();
    // A name that a real file took in the meantime stays that file's.
    casa_open(&m.p("obs/casa-taken.log"))
        .write_all(b"routed")
        .unwrap();
    assert!(m.stop().is_some_and(|s| s.success()));
    fs::write(tree.join("obs/casa-taken.log"), b"a real file").unwrap();

    let m2 = Mount::builder("restore2")
        .source(&tree, TempDir::new("restore2"))
        .start();
    let w = m2.p("obs/run1");
    assert_eq!(names(&w), Vec::<String>::new(), "still hidden");
    assert_eq!(fs::read(w.join(LOG)).unwrap(), b"first run\n");
    casa_open(&w.join(LOG)).write_all(b"second run\n").unwrap();
    assert_eq!(
        fs::read(m2.backing("state/logs/casa").join(LOG)).unwrap(),
        b"first run\nsecond run\n"
    );
    assert_eq!(fs::read(w.join("TMPPOINTING7/table.f0")).unwrap(), b"rows");
    assert_eq!(
        fs::read(m2.p("obs/casa-taken.log")).unwrap(),
        b"a real file"
    );
    let listed = fs::read_to_string(m2.p(".casafs/redirects")).unwrap();
    assert!(
        listed.contains(&format!("obs/run1/{LOG}")) && listed.contains("obs/run1/TMPPOINTING7"),
        "{listed}"
    );
    assert!(
        m2.log_text()
            .contains("2 redirects from before the restart"),
        "{}",
        m2.log_text()
    );
}

#[test]
fn rename_onto_routed_name_fails_open_and_replaces_like_a_rename() {
    let m = Mount::over_itself("rename-failopen");
    let obs = m.p("obs");
    fs::create_dir_all(obs.join("a.ms/POINTING")).unwrap();
    fs::write(obs.join("a.ms/POINTING/table.f0"), b"a rows").unwrap();
    fs::create_dir_all(obs.join("b.ms/POINTING")).unwrap();
    fs::write(obs.join("b.ms/POINTING/table.f0"), b"b rows").unwrap();
    // Tables left in place beneath the mount by a run from before casafs:
    // one empty, one not.
    fs::create_dir_all(m.backing("obs/TMPPOINTING1")).unwrap();
    fs::create_dir_all(m.backing("obs/TMPPOINTING2")).unwrap();
    fs::write(m.backing("obs/TMPPOINTING2/old.f0"), b"old").unwrap();

    // Onto a non-empty directory: refused as by any rename, nothing moved.
    let e = fs::rename(obs.join("a.ms/POINTING"), obs.join("TMPPOINTING2")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));
    assert_eq!(names(&obs.join("a.ms")), ["POINTING"]);
    assert_eq!(names(&m.backing("obs/TMPPOINTING2")), ["old.f0"]);
    assert_eq!(names(&scratch(&m)), Vec::<String>::new());

    // Onto the empty one: replaced, and the table lands in scratch.
    fs::rename(obs.join("a.ms/POINTING"), obs.join("TMPPOINTING1")).unwrap();
    assert_eq!(names(&obs), ["TMPPOINTING2", "a.ms", "b.ms"]);
    assert!(!m.backing("obs/TMPPOINTING1").exists());
    assert_eq!(
        fs::read(scratch(&m).join("TMPPOINTING1/table.f0")).unwrap(),
        b"a rows"
    );
    assert_eq!(
        fs::read(obs.join("TMPPOINTING1/table.f0")).unwrap(),
        b"a rows"
    );

    // The scratch area goes away: concat must not fail because of casafs.
    fs::remove_dir_all(m.p("obs/TMPPOINTING1")).unwrap();
    fs::remove_dir(m.p("state/scratch/tmppointing")).unwrap();
    fs::rename(obs.join("b.ms/POINTING"), obs.join("TMPPOINTING3")).unwrap();
    assert_eq!(
        fs::read(m.backing("obs/TMPPOINTING3/table.f0")).unwrap(),
        b"b rows"
    );
    // And onto an existing name with the area gone: a plain rename.
    fs::remove_dir_all(m.p("obs/TMPPOINTING2")).unwrap();
    fs::create_dir(m.p("obs/TMPPOINTING2")).unwrap();
    fs::rename(obs.join("TMPPOINTING3"), obs.join("TMPPOINTING2")).unwrap();
    assert_eq!(names(&obs), ["TMPPOINTING2", "a.ms", "b.ms"]);
    assert_eq!(names(&m.backing("obs")), ["TMPPOINTING2", "a.ms", "b.ms"]);
    assert_eq!(
        fs::read(m.backing("obs/TMPPOINTING2/table.f0")).unwrap(),
        b"b rows"
    );
    let st = m.stats();
    assert_eq!(st["redirects"]["tmppointing"]["fail_open"], 3);
    assert_eq!(st["redirects"]["tmppointing"]["redirects"], 1);
    assert!(m.log_text().contains("unusable"), "{}", m.log_text());
}

#[test]
fn open_files_in_areas_on_another_filesystem_unlink_as_there() {
    // Production puts scratch on NVMe: the graveyard cannot take a file
    // from there (burying is a rename), so it is unlinked as on that
    // filesystem, never refused.
    let tmp = TempDir::new("area-elsewhere");
    let fast = Tmpfs::new(tmp.path().join("nvme"), "size=64m");
    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("w")).unwrap();
    let scratch_dir = fast.0.join("tmppointing");
    let logs_dir = fast.0.join("logs");
    let mut m = Mount::builder("area-elsewhere")
        .opt("defer_unlink=always")
        .opt(&format!("scratch={}", scratch_dir.display()))
        .opt(&format!("logs={}", logs_dir.display()))
        .source(&tree, tmp)
        .start();
    let w = m.p("w");
    fs::write(w.join("TMPPOINTING7"), b"rows").unwrap();
    let held = fs::File::open(w.join("TMPPOINTING7")).unwrap();
    fs::remove_file(w.join("TMPPOINTING7")).unwrap();
    assert_eq!(names(&w), Vec::<String>::new());
    assert_eq!(names(&scratch_dir), Vec::<String>::new());
    let mut s = String::new();
    std::io::Read::read_to_string(&mut &held, &mut s).unwrap();
    assert_eq!(s, "rows");
    drop(held);

    // A routed log renamed over an open file of the tree: across
    // filesystems, so EXDEV, and the open file keeps its name and data.
    let mut log = casa_open(&w.join(LOG));
    log.write_all(b"log").unwrap();
    fs::write(w.join("old.log"), b"old").unwrap();
    let held = fs::File::open(w.join("old.log")).unwrap();
    assert_eq!(
        errno_of(fs::rename(w.join(LOG), w.join("old.log"))),
        libc::EXDEV
    );
    assert_eq!(names(&w), ["old.log"]);
    assert_eq!(fs::read(tree.join("w/old.log")).unwrap(), b"old");
    assert_eq!(fs::read(logs_dir.join(LOG)).unwrap(), b"log");
    drop(held);
    drop(log);
    assert_eq!(m.stats()["deferred_unlinks"]["pending"], 0);
    assert!(m.stop().unwrap().success());
    drop(fast);
}

#[test]
fn removing_the_origin_directory_ends_its_redirects() {
    let m = Mount::over_itself("rmdir-origin");
    fs::create_dir_all(m.p("work")).unwrap();
    fs::write(m.p("work").join(LOG), b"log").unwrap();
    let live = || fs::read_to_string(m.p(".casafs/redirects")).unwrap();
    assert!(live().contains(&format!("work/{LOG}\t")), "{}", live());
    // Empty as listed (and on disk): rmdir works, and the log stays.
    fs::remove_dir(m.p("work")).unwrap();
    assert!(!live().contains(&format!("work/{LOG}")), "{}", live());
    assert_eq!(fs::read(logs(&m).join(LOG)).unwrap(), b"log");
    // A new directory of that name (on ext4 often with the old one's
    // inode number) has no log in it.
    fs::create_dir(m.p("work")).unwrap();
    assert_eq!(errno_of(fs::metadata(m.p("work").join(LOG))), libc::ENOENT);
    assert_eq!(m.stats()["redirects_live"], 0);
    // The same for a directory replaced by a rename.
    const LOG2: &str = "casa-20261122-020202.log";
    fs::write(m.p("work").join(LOG2), b"log 2").unwrap();
    fs::create_dir(m.p("empty")).unwrap();
    assert!(live().contains(&format!("work/{LOG2}\t")), "{}", live());
    fs::rename(m.p("empty"), m.p("work")).unwrap();
    assert!(!live().contains(&format!("work/{LOG2}")), "{}", live());
    assert_eq!(errno_of(fs::metadata(m.p("work").join(LOG2))), libc::ENOENT);
    assert_eq!(fs::read(logs(&m).join(LOG2)).unwrap(), b"log 2");
}

#[test]
fn a_directory_is_inside_an_area_by_where_it_is_now() {
    let m = Mount::over_itself("route-where-now");
    fs::create_dir_all(m.p("obs/my.ms/POINTING")).unwrap();
    // Routed into scratch by a rename: what is made inside it stays there.
    fs::rename(m.p("obs/my.ms/POINTING"), m.p("obs/TMPPOINTING1")).unwrap();
    fs::write(m.p("obs/TMPPOINTING1").join(LOG), b"in the table").unwrap();
    assert_eq!(names(&scratch(&m).join("TMPPOINTING1")), [LOG]);
    assert_eq!(names(&logs(&m)), Vec::<String>::new());
    // Made in scratch by mkdir, then moved into the tree: routed again.
    fs::create_dir(m.p("obs/TMPPOINTING2")).unwrap();
    fs::rename(m.p("obs/TMPPOINTING2"), m.p("obs/my.ms/POINTING")).unwrap();
    fs::write(m.p("obs/my.ms/POINTING").join(LOG), b"routed").unwrap();
    assert_eq!(
        names(&m.backing("obs/my.ms/POINTING")),
        Vec::<String>::new()
    );
    assert_eq!(fs::read(logs(&m).join(LOG)).unwrap(), b"routed");
}

#[test]
fn an_object_renamed_onto_a_routed_name_keeps_it_across_a_remount() {
    let tmp = TempDir::new("retag");
    let tree = tmp.path().join("tree");
    let mut m = Mount::builder("retag").source(&tree, tmp).start();
    let w = m.p("obs");
    fs::create_dir_all(&w).unwrap();
    const LOG2: &str = "casa-20261122-020202.log";
    casa_open(&w.join(LOG)).write_all(b"routed\n").unwrap();
    casa_open(&w.join(LOG2)).write_all(b"routed 2\n").unwrap();
    // A tool rewriting a log: a temporary file renamed over it.
    fs::write(w.join("log.tmp"), b"rewritten\n").unwrap();
    fs::rename(w.join("log.tmp"), w.join(LOG)).unwrap();
    // And a plain file swapped with the other log.
    fs::write(w.join("plain"), b"plain\n").unwrap();
    let swapped = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cs(&w.join("plain")).as_ptr(),
            libc::AT_FDCWD,
            cs(&w.join(LOG2)).as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(swapped, 0, "{}", std::io::Error::last_os_error());
    let check = |m: &Mount| {
        let w = m.p("obs");
        assert_eq!(names(&w), ["plain"]);
        assert_eq!(fs::read(w.join(LOG)).unwrap(), b"rewritten\n");
        assert_eq!(fs::read(w.join(LOG2)).unwrap(), b"plain\n");
        assert_eq!(fs::read(w.join("plain")).unwrap(), b"routed 2\n");
        assert_eq!(fs::read(logs(m).join(LOG)).unwrap(), b"rewritten\n");
        let live = fs::read_to_string(m.p(".casafs/redirects")).unwrap();
        for name in [LOG, LOG2] {
            assert!(live.contains(&format!("obs/{name}\t")), "{live}");
        }
    };
    check(&m);
    assert!(m.stop().is_some_and(|s| s.success()));

    let m2 = Mount::builder("retag2")
        .source(&tree, TempDir::new("retag2"))
        .start();
    check(&m2);
}

#[test]
fn a_name_taken_again_in_an_area_is_not_shown_at_its_old_origin() {
    let m = Mount::builder("retaken")
        .opt("entry_timeout=0,attr_timeout=0")
        .start();
    fs::create_dir_all(m.p("a")).unwrap();
    fs::create_dir_all(m.p("b")).unwrap();
    casa_open(&m.p("a").join(LOG)).write_all(b"a\n").unwrap();
    // An operator clears the logs area by hand, and another run starts in
    // the same second: its log takes the freed name.
    fs::remove_file(logs(&m).join(LOG)).unwrap();
    casa_open(&m.p("b").join(LOG)).write_all(b"b\n").unwrap();
    assert_eq!(fs::read(logs(&m).join(LOG)).unwrap(), b"b\n");
    assert_eq!(fs::read(m.p("b").join(LOG)).unwrap(), b"b\n");
    assert_eq!(errno_of(fs::metadata(m.p("a").join(LOG))), libc::ENOENT);
    let live = fs::read_to_string(m.p(".casafs/redirects")).unwrap();
    let origins: Vec<&str> = live.lines().filter_map(|l| l.split('\t').next()).collect();
    assert_eq!(origins, [format!("b/{LOG}")], "{live}");
    assert_eq!(m.stats()["redirects_live"], 1);
}

#[test]
fn a_copy_of_a_routed_file_keeps_its_own_path_across_a_remount() {
    let tmp = TempDir::new("copy-origin");
    let tree = tmp.path().join("tree");
    let mut m = Mount::builder("copy-origin").source(&tree, tmp).start();
    let w = m.p("obs");
    fs::create_dir_all(&w).unwrap();
    const BAK: &str = "casa-20261122-010101-bak.log";
    casa_open(&w.join(LOG)).write_all(b"original\n").unwrap();
    // Copies that keep extended attributes see none of casafs's own.
    ok(&sh(
        &w,
        &format!("cp -a {LOG} {BAK} && echo changed >> {BAK}"),
    ));
    let listed = ok(&sh(&w, &format!("getfattr -d -m - {LOG} 2>&1 || true")));
    assert!(!listed.contains("casafs"), "{listed}");
    // Set through the mount (a copy from an area outside it carries one):
    // taken without complaint, and not kept.
    ok(&sh(
        &w,
        &format!("setfattr -n user.casafs.origin -v x {BAK}"),
    ));
    assert_eq!(
        ok(&sh(
            &w,
            &format!("getfattr -n user.casafs.origin {BAK} >/dev/null 2>&1; echo $?")
        ))
        .trim(),
        "1"
    );
    assert!(m.stop().is_some_and(|s| s.success()));

    let m2 = Mount::builder("copy-origin2")
        .source(&tree, TempDir::new("copy-origin2"))
        .start();
    let w = m2.p("obs");
    assert_eq!(fs::read(w.join(LOG)).unwrap(), b"original\n");
    assert_eq!(fs::read(w.join(BAK)).unwrap(), b"original\nchanged\n");
}

#[test]
fn a_table_moved_back_from_an_area_elsewhere_is_an_ordinary_directory() {
    // The areas outside the mount: an operator recovers a table a crash
    // left in scratch with `mv` or `cp -a`, which copy its extended
    // attributes, casafs's origin record among them.
    let tmp = TempDir::new("recover");
    let fast = Tmpfs::new(tmp.path().join("nvme"), "size=16m");
    let tree = tmp.path().join("tree");
    let scratch = fast.0.join("tmppointing");
    let opts = format!("scratch={}", scratch.display());
    let mut m = Mount::builder("recover")
        .opt(&opts)
        .source(&tree, tmp)
        .start();
    let w = m.p("w");
    fs::create_dir_all(w.join("TMPPOINTING7")).unwrap();
    fs::write(w.join("TMPPOINTING7/table.dat"), b"rows").unwrap();
    fs::create_dir_all(w.join("TMPPOINTING8")).unwrap();
    fs::create_dir_all(m.p("rec")).unwrap();
    for (from, to, cmd) in [
        ("TMPPOINTING7", "POINTING", "mv"),
        ("TMPPOINTING8", "P8", "cp -a"),
    ] {
        let out = sh(
            &m.p("rec"),
            &format!("{cmd} {} {to}", scratch.join(from).display()),
        );
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{cmd} complains");
    }
    assert_eq!(fs::read(m.p("rec/POINTING/table.dat")).unwrap(), b"rows");
    assert!(m.stop().is_some_and(|s| s.success()));
    let m2 = Mount::builder("recover2")
        .opt(&opts)
        .source(&tree, TempDir::new("recover2"))
        .start();
    assert_eq!(fs::read(m2.p("rec/POINTING/table.dat")).unwrap(), b"rows");
    assert!(m2.p("rec/P8").is_dir());
    assert_eq!(names(&m2.p("w")), Vec::<String>::new());
    // The copy left in scratch is still the routed table.
    assert!(m2.p("w/TMPPOINTING8").is_dir());
    drop(m2);
    drop(fast);
}

#[test]
fn copies_and_renamed_tables_in_an_area_do_not_take_the_origin_at_a_remount() {
    // In an area outside the mount an operator's `cp -a` or a rename
    // aside keeps casafs's origin record on an object that is not the one
    // routed there.
    let tmp = TempDir::new("area-copies");
    let fast = Tmpfs::new(tmp.path().join("nvme"), "size=16m");
    let tree = tmp.path().join("tree");
    let scratch = fast.0.join("tmppointing");
    let opts = format!("scratch={}", scratch.display());
    let mut m = Mount::builder("area-copies")
        .opt(&opts)
        .source(&tree, tmp)
        .start();
    let w = m.p("w");
    fs::create_dir_all(w.join("TMPPOINTING42")).unwrap();
    fs::write(w.join("TMPPOINTING42/x"), b"v1").unwrap();
    fs::create_dir_all(w.join("TMPPOINTING43")).unwrap();
    fs::write(w.join("TMPPOINTING43/x"), b"old").unwrap();
    ok(&sh(
        &scratch,
        "cp -a TMPPOINTING42 TMPPOINTING42.bak && mv TMPPOINTING43 TMPPOINTING43.keep",
    ));
    fs::write(w.join("TMPPOINTING42/x"), b"v2").unwrap();
    fs::create_dir_all(w.join("TMPPOINTING43")).unwrap();
    fs::write(w.join("TMPPOINTING43/x"), b"new").unwrap();
    assert!(m.stop().is_some_and(|s| s.success()));

    let m2 = Mount::builder("area-copies2")
        .opt(&opts)
        .source(&tree, TempDir::new("area-copies2"))
        .start();
    let w = m2.p("w");
    assert_eq!(fs::read(w.join("TMPPOINTING42/x")).unwrap(), b"v2");
    assert_eq!(fs::read(w.join("TMPPOINTING43/x")).unwrap(), b"new");
    let live = fs::read_to_string(m2.p(".casafs/redirects")).unwrap();
    assert!(!live.contains(".bak") && !live.contains(".keep"), "{live}");
    assert!(
        scratch.join("TMPPOINTING42.bak/x").exists(),
        "the copy is left alone"
    );
    drop(m2);
    drop(fast);
}

#[test]
fn retention_keeps_a_table_a_process_works_in_on_an_area_elsewhere() {
    let tmp = TempDir::new("retention-cwd");
    let fast = Tmpfs::new(tmp.path().join("nvme"), "size=16m");
    let scratch = fast.0.join("tmppointing");
    let m = mount_with_2s_retention("retention-cwd", tmp, Some(&scratch));
    let w = m.p("w");
    fs::create_dir_all(w.join("TMPPOINTING1/sub")).unwrap();
    fs::create_dir_all(w.join("TMPPOINTING2")).unwrap();
    // A process working in the table through its original path.
    let worker = Holder::sh(&format!(
        "cd {} && exec sleep 60",
        w.join("TMPPOINTING1/sub").display()
    ));
    wait_until("the table nobody uses is removed", || {
        !scratch.join("TMPPOINTING2").exists()
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        scratch.join("TMPPOINTING1/sub").exists(),
        "kept while in use"
    );
    drop(worker);
    wait_until("the table is removed once nobody uses it", || {
        !scratch.join("TMPPOINTING1").exists()
    });
    drop(m);
    drop(fast);
}

#[test]
fn a_routed_directory_made_in_a_setgid_directory_is_setgid_as_in_place() {
    let m = Mount::over_itself("route-setgid");
    let (uid, gid) = user_ids("nobody");
    let d = m.p("shared");
    fs::create_dir_all(&d).unwrap();
    let group = 100;
    assert_ne!(group, gid);
    ok(&sh(&d, &format!("chgrp {group} . && chmod 2777 .")));
    ok(&sh_as(uid, gid, &d, "mkdir TMPPOINTING1 plain"));
    for dir in ["TMPPOINTING1", "plain"] {
        let st = stat(&d.join(dir));
        assert_eq!(st.st_gid, group, "{dir}");
        assert_ne!(st.st_mode & libc::S_ISGID, 0, "{dir}");
        ok(&sh_as(uid, gid, &d.join(dir), "touch f"));
        assert_eq!(stat(&d.join(dir).join("f")).st_gid, group, "{dir}");
    }
    let st = stat(&scratch(&m).join("TMPPOINTING1"));
    assert_eq!((st.st_uid, st.st_gid), (uid, group));
}

#[test]
fn routed_objects_follow_their_directory_across_a_rename_and_a_remount() {
    let tmp = TempDir::new("origin-dir-moved");
    let tree = tmp.path().join("tree");
    let mut m = Mount::builder("origin-dir-moved")
        .source(&tree, tmp)
        .start();
    fs::create_dir_all(m.p("obs/run1")).unwrap();
    fs::create_dir_all(m.p("obs/run2")).unwrap();
    casa_open(&m.p("obs/run1").join(LOG))
        .write_all(b"run 1\n")
        .unwrap();
    casa_open(&m.p("obs/run2").join(LOG))
        .write_all(b"run 2\n")
        .unwrap();
    fs::rename(m.p("obs"), m.p("archive")).unwrap();
    let swapped = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cs(&m.p("archive/run1")).as_ptr(),
            libc::AT_FDCWD,
            cs(&m.p("archive/run2")).as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(swapped, 0, "{}", std::io::Error::last_os_error());
    let check = |m: &Mount| {
        assert_eq!(fs::read(m.p("archive/run1").join(LOG)).unwrap(), b"run 2\n");
        assert_eq!(fs::read(m.p("archive/run2").join(LOG)).unwrap(), b"run 1\n");
        let live = fs::read_to_string(m.p(".casafs/redirects")).unwrap();
        let origins: Vec<&str> = live.lines().filter_map(|l| l.split('\t').next()).collect();
        assert_eq!(
            origins,
            [format!("archive/run1/{LOG}"), format!("archive/run2/{LOG}")],
            "{live}"
        );
    };
    check(&m);
    assert!(m.stop().is_some_and(|s| s.success()));
    let m2 = Mount::builder("origin-dir-moved2")
        .source(&tree, TempDir::new("origin-dir-moved2"))
        .start();
    check(&m2);
}

#[test]
fn inplace_renames_onto_a_routed_name_elsewhere_replace_it_in_place() {
    let tmp = TempDir::new("inplace-replace");
    let fast = Tmpfs::new(tmp.path().join("nvme"), "size=16m");
    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("w")).unwrap();
    let scratch = fast.0.join("tmppointing");
    let m = Mount::builder("inplace-replace")
        .opt("cross_device=inplace")
        .opt(&format!("scratch={}", scratch.display()))
        .source(&tree, tmp)
        .start();
    let w = m.p("w");
    // A file replaced while open: the new one takes the name in the tree.
    fs::write(w.join("TMPPOINTINGf"), b"old").unwrap();
    let held = File::open(w.join("TMPPOINTINGf")).unwrap();
    fs::write(w.join("x"), b"new").unwrap();
    fs::rename(w.join("x"), w.join("TMPPOINTINGf")).unwrap();
    assert_eq!(fs::read(w.join("TMPPOINTINGf")).unwrap(), b"new");
    assert_eq!(fs::read(tree.join("w/TMPPOINTINGf")).unwrap(), b"new");
    let mut s = String::new();
    (&held).read_to_string(&mut s).unwrap();
    assert_eq!(s, "old");
    drop(held);
    // An empty routed directory is replaced; a full one is not, as natively.
    fs::create_dir(w.join("TMPPOINTINGd")).unwrap();
    fs::create_dir(w.join("TMPPOINTINGe")).unwrap();
    fs::write(w.join("TMPPOINTINGe/table.f0"), b"rows").unwrap();
    fs::create_dir(w.join("y")).unwrap();
    fs::create_dir(w.join("z")).unwrap();
    fs::rename(w.join("y"), w.join("TMPPOINTINGd")).unwrap();
    assert_eq!(
        errno_of(fs::rename(w.join("z"), w.join("TMPPOINTINGe"))),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno_of(fs::rename(w.join("z"), w.join("TMPPOINTINGf"))),
        libc::ENOTDIR
    );
    // Routed objects are not listed in their original directory.
    assert_eq!(names(&w), ["TMPPOINTINGd", "TMPPOINTINGf", "z"]);
    assert_eq!(
        names(&tree.join("w")),
        ["TMPPOINTINGd", "TMPPOINTINGf", "z"]
    );
    assert_eq!(names(&scratch), ["TMPPOINTINGe"]);
    assert_eq!(fs::read(w.join("TMPPOINTINGe/table.f0")).unwrap(), b"rows");
    let live = fs::read_to_string(m.p(".casafs/redirects")).unwrap();
    assert_eq!(live.lines().count(), 1, "{live}");
    drop(m);
    drop(fast);
}

#[test]
fn an_area_made_anew_or_rotated_is_the_one_routed_to_and_emptied() {
    let tmp = TempDir::new("area-anew");
    let m = mount_with_2s_retention("area-anew", tmp, None);
    fs::create_dir_all(m.p("w")).unwrap();
    // Logs rotated: the old area moved aside, a new one made.
    fs::write(m.p("w").join(LOG), b"before").unwrap();
    fs::rename(m.p("state/logs/casa"), m.p("state/logs/casa.1")).unwrap();
    fs::create_dir(m.p("state/logs/casa")).unwrap();
    const LOG2: &str = "casa-20261122-020202.log";
    fs::write(m.p("w").join(LOG2), b"after").unwrap();
    assert_eq!(names(&m.p("state/logs/casa")), [LOG2]);
    assert_eq!(names(&m.p("state/logs/casa.1")), [LOG]);
    assert_eq!(fs::read(m.p("w").join(LOG2)).unwrap(), b"after");
    // Scratch removed and made again: retention empties the new one.
    fs::remove_dir(m.p("state/scratch/tmppointing")).unwrap();
    fs::create_dir(m.p("state/scratch/tmppointing")).unwrap();
    fs::create_dir(m.p("w/TMPPOINTING1")).unwrap();
    assert_eq!(names(&scratch(&m)), ["TMPPOINTING1"]);
    wait_until("the table in the new area is removed", || {
        !scratch(&m).join("TMPPOINTING1").exists()
    });
}

#[test]
fn a_routed_object_under_a_name_that_is_not_utf8_survives_a_remount() {
    use std::ffi::OsStr;
    let tmp = TempDir::new("origin-bytes");
    let tree = tmp.path().join("tree");
    let mut m = Mount::builder("origin-bytes").source(&tree, tmp).start();
    let dir = OsStr::from_bytes(b"run\xff1");
    fs::create_dir_all(m.p("obs").join(dir)).unwrap();
    casa_open(&m.p("obs").join(dir).join(LOG))
        .write_all(b"latin-1 dir\n")
        .unwrap();
    assert!(m.stop().is_some_and(|s| s.success()));
    let m2 = Mount::builder("origin-bytes2")
        .source(&tree, TempDir::new("origin-bytes2"))
        .start();
    assert_eq!(
        fs::read(m2.p("obs").join(dir).join(LOG)).unwrap(),
        b"latin-1 dir\n"
    );
    assert!(
        m2.log_text()
            .contains("1 redirects from before the restart"),
        "{}",
        m2.log_text()
    );
}

#[test]
fn an_area_named_through_a_symlink_to_the_tree_is_used_from_below() {
    let tmp = TempDir::new("area-symlink");
    let tree = tmp.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    let alias = tmp.path().join("alias");
    std::os::unix::fs::symlink(&tree, &alias).unwrap();
    let m = Mount::builder("area-symlink")
        .opt(&format!("logs={}", alias.join("logs").display()))
        .source(&tree, tmp)
        .start();
    fs::create_dir_all(m.p("w")).unwrap();
    // Through the symlink the area's path now leads into the mount itself:
    // casafs must not route into that (it would wait on itself).
    let (done, wait) = std::sync::mpsc::channel();
    let w = m.p("w");
    std::thread::spawn(move || {
        let r = fs::write(w.join(LOG), b"log");
        let _ = done.send(r.is_ok());
    });
    let written = wait.recv_timeout(std::time::Duration::from_secs(20));
    assert_eq!(written, Ok(true), "the routed create must finish");
    assert_eq!(fs::read(m.backing("logs").join(LOG)).unwrap(), b"log");
    assert_eq!(names(&m.p("w")), Vec::<String>::new());
    // Many at once, after the kernel's cache time: every request thread
    // busy routing at the same moment.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (done, wait) = std::sync::mpsc::channel();
    for i in 0..8 {
        let d = m.p(&format!("w{i}"));
        let done = done.clone();
        std::thread::spawn(move || {
            let r = fs::create_dir_all(&d)
                .and_then(|()| fs::write(d.join(format!("casa-{i}.log")), b"x"));
            let _ = done.send(r.is_ok());
        });
    }
    for _ in 0..8 {
        let written = wait.recv_timeout(std::time::Duration::from_secs(20));
        assert_eq!(written, Ok(true), "every routed create must finish");
    }
    assert_eq!(names(&m.backing("logs")).len(), 9);
}

#[test]
fn a_routed_symlink_survives_a_remount() {
    let tmp = TempDir::new("origin-symlink");
    let tree = tmp.path().join("tree");
    let mut m = Mount::builder("origin-symlink").source(&tree, tmp).start();
    fs::create_dir_all(m.p("obs")).unwrap();
    std::os::unix::fs::symlink("../shared/casa.log", m.p("obs").join(LOG)).unwrap();
    assert_eq!(names(&logs(&m)), [LOG]);
    let listed = ok(&sh(
        &m.p("obs"),
        &format!("getfattr -h -d -m - {LOG} 2>&1 || true"),
    ));
    assert!(!listed.contains("casafs"), "{listed}");
    assert!(m.stop().is_some_and(|s| s.success()));
    let m2 = Mount::builder("origin-symlink2")
        .source(&tree, TempDir::new("origin-symlink2"))
        .start();
    assert_eq!(
        fs::read_link(m2.p("obs").join(LOG)).unwrap(),
        Path::new("../shared/casa.log")
    );
}

/// A routed table is reachable by its own path and, with the scratch area
/// inside the tree, by the area's path too. Using both at once (an operator
/// listing the area while CASA works in the table) moves neither: a process
/// working in the table keeps its own path, `..` leads back where it came
/// from, neither path answers ESTALE, and both show the same inode number
/// (as a bind mount would).
#[test]
fn a_table_used_through_its_path_and_the_areas_at_once_stays_put() {
    let m = Mount::over_itself("twopaths");
    fs::create_dir_all(m.p("obs/run1/TMPPOINTING1")).unwrap();
    fs::write(m.p("obs/run1/TMPPOINTING1/table.f0"), b"rows").unwrap();
    let area = m.p("state/scratch/tmppointing");
    let routed = names(&area);
    assert_eq!(routed.len(), 1, "{routed:?}");
    let script = format!(
        r#"import os, threading
os.chdir("obs/run1/TMPPOINTING1")
area = "{area}/{name}"
before = os.getcwd()
errors = []
def operator():
    for _ in range(300):
        try:
            for n in os.listdir(area):
                os.stat(os.path.join(area, n))
        except OSError as e:
            errors.append(("area", e.errno))
t = threading.Thread(target=operator)
t.start()
for i in range(300):
    try:
        with open(f"t{{i}}", "w") as f:
            f.write("x")
        os.listdir(".")
        os.stat("{orig}/table.f0")
    except OSError as e:
        errors.append(("table", e.errno))
t.join()
after = os.getcwd()
os.chdir("..")
same = os.stat(area).st_ino == os.stat("{orig}").st_ino
print(before == after, after, os.getcwd(), sorted(set(errors)), len(os.listdir(area)), same)
"#,
        area = area.display(),
        name = routed[0],
        orig = m.p("obs/run1/TMPPOINTING1").display(),
    );
    let out = ok(&sh(&m.mnt, &format!("python3 - <<'PY'\n{script}PY")));
    let want = format!(
        "True {} {} [] 301 True",
        m.p("obs/run1/TMPPOINTING1").display(),
        m.p("obs/run1").display()
    );
    assert_eq!(out.trim(), want);
}
