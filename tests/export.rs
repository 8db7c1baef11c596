//! File handles: `name_to_handle_at`/`open_by_handle_at` on the mount, as
//! NFS export uses them, after the kernel forgot the object, across a
//! remount, for a removed object, and for a handle someone made up.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

const HANDLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/export/handles.py");

fn py(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(HANDLES)
        .args(args)
        .output()
        .unwrap();
    ok(&out).trim().to_string()
}

fn handle_of(p: &Path) -> String {
    py(&["get", p.to_str().unwrap()])
}

fn read_by(m: &Mount, h: &str) -> String {
    py(&["read", m.mnt.to_str().unwrap(), h])
}

/// The kernel lets go of every inode it can (those of this mount among
/// them), which then comes back only through casafs.
fn forget_all(m: &Mount) {
    let before = op_count(&m.stats(), "forget");
    fs::write("/proc/sys/vm/drop_caches", b"2").unwrap();
    eventually("the kernel forgot inodes of the mount", || {
        op_count(&m.stats(), "forget") > before
    });
}

#[test]
fn handles_find_objects_after_forget_and_remount_and_go_stale_when_removed() {
    let tmp = TempDir::new("handles");
    let tree = tmp.path().join("tree");
    // casafs's state directory (/var/lib/casafs), kept across the remount.
    let state = TempDir::new("handles-state");
    let state_dir = state.path().to_str().unwrap();
    let mut m = Mount::builder("handles")
        .env("CASAFS_STATE_DIR", state_dir)
        .source(&tree, tmp)
        .start();
    fs::create_dir_all(m.p("obs/run1")).unwrap();
    fs::write(m.p("obs/run1/data"), b"visibilities").unwrap();
    fs::write(m.p("obs/gone"), b"soon removed").unwrap();
    let file = handle_of(&m.p("obs/run1/data"));
    let dir = handle_of(&m.p("obs/run1"));
    let gone = handle_of(&m.p("obs/gone"));
    assert_eq!(read_by(&m, &file), "visibilities");

    forget_all(&m);
    assert_eq!(
        read_by(&m, &file),
        "visibilities",
        "after the kernel forgot it"
    );
    assert_eq!(read_by(&m, &dir), "data");

    // Remounted (the backing keeps its inode numbers): the same handles.
    assert!(m.stop().is_some_and(|s| s.success()));
    // This one, when it stops, takes a while to write its table.
    let m2 = Mount::builder("handles2")
        .env("CASAFS_STATE_DIR", state_dir)
        .env("CASAFS_FAULT_SLOW_STOP", "1500")
        .source(&tree, TempDir::new("handles2"))
        .start();
    let kept = names(state.path());
    assert!(
        kept.iter()
            .any(|n| n.starts_with("handles-") && !n.contains(".")),
        "the table, in the state directory: {kept:?}"
    );

    assert_eq!(read_by(&m2, &file), "visibilities", "after a remount");
    assert_eq!(read_by(&m2, &dir), "data");
    // The object of a handle is the one a path reaches: a write by one
    // shows through the other.
    fs::write(m2.p("obs/run1/data"), b"rewritten").unwrap();
    assert_eq!(read_by(&m2, &file), "rewritten");

    // Removed: its handle names nothing, even once the number is reused.
    fs::remove_file(m2.p("obs/gone")).unwrap();
    forget_all(&m2);
    for i in 0..50 {
        fs::write(m2.p(&format!("obs/new{i}")), b"someone else's").unwrap();
    }
    assert_eq!(read_by(&m2, &gone), "ESTALE");

    // Remounted the way `umount; mount` does it: the new daemon starts while
    // the old one is still stopping (writing its table).
    // A file this mount alone handed out: its handle is in no table yet.
    fs::write(m2.p("obs/late"), b"late").unwrap();
    let late = handle_of(&m2.p("obs/late"));
    let mut m2 = m2;
    let mut stopping = m2.child.take().unwrap();
    assert_eq!(umount(&m2.mnt, false), 0);
    let m3 = Mount::builder("handles3")
        .env("CASAFS_STATE_DIR", state_dir)
        .source(&tree, TempDir::new("handles3"))
        .start();
    assert_eq!(read_by(&m3, &file), "rewritten", "right after the unmount");
    assert_eq!(
        read_by(&m3, &late),
        "late",
        "handed out by the one stopping"
    );
    assert!(stopping.wait().unwrap().success());
}

/// A handle made up by root for an object casafs never handed out (a file
/// outside the tree on the same filesystem) names nothing.
#[test]
fn a_made_up_handle_names_nothing() {
    let m = Mount::over_itself("forged");
    fs::write(m.p("mine"), b"x").unwrap();
    let real = handle_of(&m.p("mine"));
    let outside = m.tmp.path().join("outside");
    fs::write(&outside, b"not in the tree").unwrap();
    let ino = stat(&outside).st_ino.to_string();
    let answer = py(&["forge", m.mnt.to_str().unwrap(), &real, &ino]);
    assert_eq!(answer, "ESTALE");
}

/// A directory moved out of the tree, beneath the mount on the same disk,
/// has no place in the mount: its handle answers ESTALE, and the way up
/// from it never leads casafs outside the tree, where it would meet the
/// directory holding its own mount point (whose listing asks the mount
/// itself). A file moved out is still found, as by an export without
/// `subtree_check`.
#[test]
fn a_directory_moved_out_of_the_tree_is_stale_and_the_mount_keeps_serving() {
    let tmp = TempDir::new("handles-out");
    let base = tmp.path().to_path_buf();
    let tree = base.join("m/tree");
    fs::create_dir_all(&tree).unwrap();
    fs::create_dir_all(base.join("o")).unwrap();
    let state = TempDir::new("handles-out-state");
    let state_dir = state.path().to_str().unwrap();
    let mut m = Mount::builder("handles-out")
        .env("CASAFS_STATE_DIR", state_dir)
        .source(&tree, tmp)
        .start();
    fs::create_dir_all(m.p("far/b/c")).unwrap();
    fs::create_dir_all(m.p("near/b/c")).unwrap();
    fs::write(m.p("far/b/f"), b"moved file").unwrap();
    let far = handle_of(&m.p("far/b/c"));
    let near = handle_of(&m.p("near/b/c"));
    let file = handle_of(&m.p("far/b/f"));
    assert!(m.stop().is_some_and(|s| s.success()));
    // Beneath the mount: one away from it, one beside its mount point.
    fs::rename(tree.join("far"), base.join("o/far")).unwrap();
    fs::rename(tree.join("near"), base.join("m/near")).unwrap();
    let m2 = Mount::builder("handles-out2")
        .env("CASAFS_STATE_DIR", state_dir)
        .source(&tree, TempDir::new("handles-out2"))
        .start();
    let listings = |m: &Mount| {
        let s = m.stats();
        op_count(&s, "readdir") + op_count(&s, "readdirplus")
    };
    let listed = listings(&m2);
    assert_eq!(
        read_by(&m2, &far),
        "ESTALE",
        "a directory outside the tree, shown through the mount"
    );
    assert_eq!(
        listings(&m2),
        listed,
        "the kernel was led to list directories outside the tree"
    );
    assert_eq!(read_by(&m2, &file), "moved file");
    assert_eq!(read_by(&m2, &near), "ESTALE");
    fs::write(m2.p("after"), b"served").unwrap();
    assert_eq!(fs::read(m2.p("after")).unwrap(), b"served");
    drop(m2);
    drop(m);
}
