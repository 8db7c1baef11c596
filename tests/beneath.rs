//! Changes made beneath the mount, not through it (another process in the
//! backing directory, an operator), with the default cache times: where
//! casafs watches the backing filesystem the kernel keeps names and
//! attributes long, and still every such change shows through the mount
//! as soon as casafs hears of it; where it cannot watch, the cache times
//! stay short.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// Longer than the short cache time (1 s): what the kernel still has after
/// this, it was told to keep long.
const PAST_SHORT: Duration = Duration::from_millis(1300);

/// Requests that look a name up or fetch attributes, from stats.json.
fn asked(m: &Mount) -> u64 {
    let s = m.stats();
    op_count(&s, "lookup") + op_count(&s, "getattr")
}

/// Runs `f` and answers how many lookups and attribute fetches it cost the
/// daemon, less what reading the statistics costs by itself.
fn cost(m: &Mount, f: impl FnOnce()) -> u64 {
    let a = asked(m);
    let b = asked(m);
    f();
    let c = asked(m);
    (c - b).saturating_sub(b - a)
}

/// Listings the daemon was asked for (readdir and readdirplus requests).
fn listings_served(m: &Mount) -> u64 {
    let s = m.stats();
    op_count(&s, "readdir") + op_count(&s, "readdirplus")
}

/// The one object in the default logs area (in the source tree) whose
/// name holds `part`.
fn routed_log(m: &Mount, part: &str) -> PathBuf {
    let logs = m.source.join("state/logs/casa");
    let found: Vec<PathBuf> = fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(part))
        .collect();
    assert_eq!(found.len(), 1, "{part} routed to {}", logs.display());
    found[0].clone()
}

fn exists(p: &PathBuf) -> bool {
    fs::symlink_metadata(p).is_ok()
}

/// Primes the kernel's caches (a file's name and attributes, a missing
/// name, a listing), waits past the short cache time, checks that the
/// kernel still has them all (no request), then changes each beneath the
/// mount through `beneath` and sees every change through the mount.
fn every_change_beneath_shows(m: &Mount, beneath: impl Fn(&str) -> PathBuf) {
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d/f"), b"one").unwrap();
    fs::write(m.p("d/gone"), b"x").unwrap();
    fs::create_dir(m.p("d/sub")).unwrap();
    let prime = || {
        assert_eq!(fs::metadata(m.p("d/f")).unwrap().len(), 3);
        assert!(exists(&m.p("d/gone")));
        assert!(!exists(&m.p("d/new")));
        assert_eq!(
            fs::metadata(m.p("d/sub")).unwrap().permissions().mode() & 0o777,
            0o755
        );
    };
    prime();
    assert_eq!(names(&m.p("d")), ["f", "gone", "sub"]);
    // A directory's attributes are kept short in the reply that first
    // watches it (a change between its stat and the watch went unheard):
    // asked again once.
    std::thread::sleep(PAST_SHORT);
    prime();
    std::thread::sleep(PAST_SHORT);
    let c = cost(m, prime);
    assert_eq!(
        c,
        0,
        "the kernel kept every name and attribute past a second: {}",
        m.log_text()
    );
    let listed = listings_served(m);
    assert_eq!(names(&m.p("d")), ["f", "gone", "sub"]);
    assert_eq!(listings_served(m), listed, "the kernel kept the listing");

    // Contents and attributes.
    OpenOptions::new()
        .append(true)
        .open(beneath("d/f"))
        .unwrap()
        .write_all(b" two")
        .unwrap();
    eventually("an append beneath shows in the size", || {
        fs::metadata(m.p("d/f")).unwrap().len() == 7
    });
    assert_eq!(fs::read(m.p("d/f")).unwrap(), b"one two");
    fs::set_permissions(beneath("d/sub"), fs::Permissions::from_mode(0o700)).unwrap();
    eventually("a chmod beneath shows", || {
        fs::metadata(m.p("d/sub")).unwrap().permissions().mode() & 0o777 == 0o700
    });
    // Names: made, removed, renamed; and the listing.
    fs::write(beneath("d/new"), b"new").unwrap();
    eventually("a file made beneath shows (no negative entry kept)", || {
        exists(&m.p("d/new"))
    });
    fs::remove_file(beneath("d/gone")).unwrap();
    eventually("a file removed beneath is gone", || !exists(&m.p("d/gone")));
    fs::rename(beneath("d/f"), beneath("d/g")).unwrap();
    eventually("a rename beneath shows", || {
        !exists(&m.p("d/f")) && exists(&m.p("d/g"))
    });
    fs::create_dir(beneath("d/sub/deeper")).unwrap();
    eventually("a directory made beneath shows in the listing", || {
        names(&m.p("d")) == ["g", "new", "sub"] && names(&m.p("d/sub")) == ["deeper"]
    });
    assert_eq!(fs::read(m.p("d/g")).unwrap(), b"one two");
}

#[test]
fn changes_beside_a_separate_mount_show_at_once() {
    let m = Mount::separate("beneath-separate");
    let source = m.source.clone();
    every_change_beneath_shows(&m, |rel| source.join(rel));
}

/// Over itself, the backing tree is reached only by what held it before
/// the mount (here: the daemon's own root, through /proc).
#[test]
fn changes_beneath_a_mount_over_itself_show_at_once() {
    let m = Mount::over_itself("beneath-over");
    every_change_beneath_shows(&m, |rel| m.backing(rel));
}

/// ntfs-3g is watched one directory at a time (the kernel watches no FUSE
/// filesystem whole).
#[test]
fn changes_beneath_on_ntfs_show_at_once() {
    // With POSIX modes, so that a chmod beneath is one to see.
    let vol = Ntfs::with_options("beneath-ntfs", "-o permissions");
    let src = vol.dir.join("tree");
    fs::create_dir(&src).unwrap();
    let m = Mount::builder("beneath-ntfs")
        .separate()
        .source(&src, TempDir::new("beneath-ntfs-mnt"))
        .start();
    every_change_beneath_shows(&m, |rel| src.join(rel));
}

/// Where casafs cannot hear of changes beneath (here: the watch refused),
/// the kernel keeps nothing longer than a second, and a change beneath
/// shows within it.
#[test]
fn without_a_watch_cache_times_stay_short() {
    let m = Mount::builder("beneath-unwatched")
        .separate()
        .env("CASAFS_FAULT_NO_WATCH", "1")
        .start();
    fs::write(m.p("f"), b"one").unwrap();
    assert!(!exists(&m.p("new")));
    std::thread::sleep(PAST_SHORT);
    assert!(
        cost(&m, || {
            assert!(exists(&m.p("f")));
            assert!(!exists(&m.p("new")));
        }) >= 2,
        "asked again after a second"
    );
    fs::write(m.source.join("new"), b"new").unwrap();
    eventually_within("a file made beneath shows", 2, || exists(&m.p("new")));
}

/// A routed object lives in its area, where users and retention remove it
/// without the mount: its original name is kept no longer than a second.
#[test]
fn a_routed_object_removed_in_its_area_goes_from_its_original_path() {
    let m = Mount::separate("beneath-area");
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d/casa-1.log"), b"log").unwrap();
    let in_area = routed_log(&m, "casa-1");
    // Looked up afresh by its original name, in a watched directory.
    std::thread::sleep(PAST_SHORT);
    assert!(exists(&m.p("d/casa-1.log")));
    fs::remove_file(&in_area).unwrap();
    eventually_within("gone from its original path", 2, || {
        !exists(&m.p("d/casa-1.log"))
    });
}

/// A file renamed through the mount onto a name a rule routes moves to its
/// area, where casafs and users act unseen by the kernel: the name is
/// asked for again soon, although the kernel kept the old one for long.
#[test]
fn a_file_renamed_into_its_area_is_asked_for_again() {
    let m = Mount::separate("beneath-renamed");
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d/a"), b"log").unwrap();
    std::thread::sleep(PAST_SHORT);
    assert!(exists(&m.p("d/a")));
    assert_eq!(cost(&m, || assert!(exists(&m.p("d/a")))), 0, "kept long");
    fs::rename(m.p("d/a"), m.p("d/casa-2.log")).unwrap();
    assert!(exists(&m.p("d/casa-2.log")));
    let routed = routed_log(&m, "casa-2");
    fs::remove_file(&routed).unwrap();
    eventually_within("gone from the name it was renamed to", 3, || {
        !exists(&m.p("d/casa-2.log"))
    });
}

/// A file with another name in a directory the kernel never looked into:
/// a change made there beneath is seen through the name the kernel knows.
#[test]
fn a_change_through_another_hard_link_shows() {
    let m = Mount::separate("beneath-linked");
    fs::create_dir(m.p("seen")).unwrap();
    fs::create_dir(m.source.join("unseen")).unwrap();
    fs::write(m.p("seen/f"), b"x").unwrap();
    fs::hard_link(m.source.join("seen/f"), m.source.join("unseen/f")).unwrap();
    let mode = || fs::metadata(m.p("seen/f")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(), 0o644);
    fs::set_permissions(m.source.join("unseen/f"), fs::Permissions::from_mode(0o600)).unwrap();
    eventually_within("a chmod through the other link shows", 3, || {
        mode() == 0o600
    });
}

/// A hard link made beneath in a directory the kernel never looked into
/// changes a file's link count with no name in any watched directory: the
/// change is found by the file itself (its handle).
#[test]
fn a_link_made_beneath_elsewhere_shows_in_the_link_count() {
    let m = Mount::separate("beneath-nlink");
    fs::create_dir(m.p("d")).unwrap();
    fs::create_dir(m.source.join("unseen")).unwrap();
    fs::write(m.p("d/f"), b"x").unwrap();
    let links = || stat(&m.p("d/f")).st_nlink;
    assert_eq!(links(), 1);
    std::thread::sleep(PAST_SHORT);
    assert_eq!(cost(&m, || assert_eq!(links(), 1)), 0, "kept long");
    fs::hard_link(m.source.join("d/f"), m.source.join("unseen/g")).unwrap();
    eventually_within("the new link counts", 3, || links() == 2);
}

/// Watches the daemon `pid` holds: one line per fanotify mark, from its
/// descriptors' fdinfo (`sdev:` a whole filesystem, `ino:` a directory).
fn fanotify_marks(pid: u32) -> Vec<String> {
    let mut marks = Vec::new();
    for fd in fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let is_fanotify =
            fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy().contains("[fanotify]"));
        if !is_fanotify {
            continue;
        }
        let info = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        marks.extend(
            info.lines()
                .filter(|l| l.starts_with("fanotify ") && l.contains("mask:"))
                .map(str::to_string),
        );
    }
    marks
}

/// With both cache times fixed nothing casafs would hear of is used, and
/// no watch is set: a watch makes the kernel build an event for every
/// change any process makes on that filesystem.
#[test]
fn fixed_cache_times_set_no_watch_on_the_filesystem() {
    let auto = Mount::over_itself("watch-auto");
    let marks = fanotify_marks(auto.pid());
    assert!(
        marks.iter().any(|l| l.contains("sdev:")),
        "the default cache times watch the tree's filesystem: {marks:?}"
    );
    let fixed = Mount::builder("watch-fixed")
        .opt("attr_timeout=1s,entry_timeout=1s")
        .start();
    fs::write(fixed.p("seen"), b"x").unwrap();
    assert_eq!(fs::read(fixed.p("seen")).unwrap(), b"x");
    assert_eq!(fanotify_marks(fixed.pid()), Vec::<String>::new());
}
