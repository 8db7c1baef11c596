//! Several hosts on one shared tree. NFS cannot be mounted here: two
//! daemons over one backing directory, each with its own host identity
//! (`-o host=`) and `defer_unlink=always` (what NFS gets), stand in for two
//! hosts, on the machine's ext4 and on a real ntfs-3g volume (which has no
//! RENAME_NOREPLACE, as NFS has none).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::Path;

use common::*;

/// One "host": casafs over `tree` on a mount point of its own.
fn host(name: &str, tree: &Path, opts: &[String], config: Option<&Path>) -> Mount {
    let mut b = Mount::builder(&format!("host-{name}"))
        .separate()
        .opt(&format!("host={name}"))
        .opt("defer_unlink=always");
    for o in opts {
        match o.split_once("env:") {
            Some((_, kv)) => {
                let (k, v) = kv.split_once('=').unwrap();
                b = b.env(k, v);
            }
            None => b = b.opt(o),
        }
    }
    if let Some(c) = config {
        b = b.arg("--config").arg(c.to_str().unwrap());
    }
    b.source(tree, TempDir::new(&format!("host-{name}-mnt")))
        .start()
}

const LOG: &str = "casa-20261206-120000.log";
const RENAMED_LOG: &str = "casa-20261206-120001.log";
const TABLE: &str = "TMPPOINTING1";

/// What a host leaves in one of its directories: a log made in place, a
/// table renamed into its name (made so, where scratch is on another
/// filesystem), a log renamed into its name; the same names in every
/// directory of every host, all at once.
fn work(m: &Mount, dir: &str) {
    fs::create_dir_all(m.p(dir)).unwrap();
    fs::write(m.p(&format!("{dir}/{LOG}")), format!("{dir} log")).unwrap();
    // A directory renamed into a scratch area on another filesystem would
    // be EXDEV (and `mv` would copy it): there the table is made in place.
    let made = if m.source.join("state/scratch").exists() {
        fs::create_dir(m.p(&format!("{dir}/work"))).unwrap();
        "work"
    } else {
        TABLE
    };
    if made == TABLE {
        fs::create_dir(m.p(&format!("{dir}/{TABLE}"))).unwrap();
    }
    fs::write(
        m.p(&format!("{dir}/{made}/table.f0")),
        format!("{dir} table"),
    )
    .unwrap();
    if made != TABLE {
        fs::rename(m.p(&format!("{dir}/work")), m.p(&format!("{dir}/{TABLE}"))).unwrap();
    }
    fs::write(m.p(&format!("{dir}/log.tmp")), format!("{dir} renamed")).unwrap();
    fs::rename(
        m.p(&format!("{dir}/log.tmp")),
        m.p(&format!("{dir}/{RENAMED_LOG}")),
    )
    .unwrap();
}

/// Both hosts at once, four threads each, `n` directories each.
fn storm(hosts: &[(&Mount, &str)], n: usize) -> Vec<String> {
    std::thread::scope(|s| {
        for (m, tag) in hosts {
            for t in 0..4 {
                s.spawn(move || {
                    for i in (t..n).step_by(4) {
                        work(m, &format!("{tag}{i:02}"));
                    }
                });
            }
        }
    });
    hosts
        .iter()
        .flat_map(|(_, tag)| (0..n).map(move |i| format!("{tag}{i:02}")))
        .collect()
}

fn read(p: &Path) -> String {
    let mut s = String::new();
    match fs::File::open(p).and_then(|mut f| f.read_to_string(&mut s)) {
        Ok(_) => s,
        Err(e) => panic!("{}: {e}", p.display()),
    }
}

/// Every object of `dirs` is readable through its original path from
/// every mount, with what its host wrote.
fn every_path_from_every_host(mounts: &[&Mount], dirs: &[String]) {
    for m in mounts {
        for d in dirs {
            assert_eq!(read(&m.p(&format!("{d}/{LOG}"))), format!("{d} log"));
            assert_eq!(
                read(&m.p(&format!("{d}/{TABLE}/table.f0"))),
                format!("{d} table")
            );
            assert_eq!(
                read(&m.p(&format!("{d}/{RENAMED_LOG}"))),
                format!("{d} renamed")
            );
        }
    }
}

/// The contents of the files directly in `area` (of directories: of
/// their `table.f0`), and the names there.
fn area_contents(area: &Path) -> (BTreeSet<String>, usize) {
    let names = names(area);
    let contents = names
        .iter()
        .map(|n| {
            let p = area.join(n);
            if p.is_dir() {
                read(&p.join("table.f0"))
            } else {
                read(&p)
            }
        })
        .collect();
    (contents, names.len())
}

/// Every object any host made is in its area exactly once: nothing was
/// replaced by another host's work, nothing is there twice.
fn each_once(logs: &Path, scratch: &Path, dirs: &[String]) {
    let (got, count) = area_contents(logs);
    let want: BTreeSet<String> = dirs
        .iter()
        .flat_map(|d| [format!("{d} log"), format!("{d} renamed")])
        .collect();
    assert_eq!(count, want.len(), "objects in the logs area");
    assert_eq!(got, want, "what the logs area holds");
    let (got, count) = area_contents(scratch);
    let want: BTreeSet<String> = dirs.iter().map(|d| format!("{d} table")).collect();
    assert_eq!(count, want.len(), "tables in scratch");
    assert_eq!(got, want, "what scratch holds");
}

fn graves(tree: &Path) -> Vec<String> {
    names(&tree.join(".casafs-graveyard"))
}

/// The storm, then one host killed with -9 while the other works, then
/// remounted: nothing lost, every path from every host, each host's
/// graveyard its own.
fn two_hosts_share_one_tree(tree: &Path, logs: &Path, scratch: &Path, opts: &[String]) {
    let a = host("alpha", tree, opts, None);
    let b = host("beta", tree, opts, None);
    assert_eq!(a.stats()["host"], "alpha");
    assert_eq!(b.stats()["host"], "beta");

    let dirs = storm(&[(&a, "a"), (&b, "b")], 24);
    each_once(logs, scratch, &dirs);
    every_path_from_every_host(&[&a, &b], &dirs);
    // Where did it go? Asked of the other host, before anything there
    // looked at it.
    fs::write(a.p("a05/casa-20261206-130000.log"), b"new").unwrap();
    let asked = b.p("a05/casa-20261206-130000.log");
    let said = ok(&sh(
        Path::new("/"),
        &format!("{} where {}", bin(), asked.display()),
    ));
    assert!(said.contains("routed by rule casa-logs"), "{said}");
    // The original directories stay clean.
    assert_eq!(names(&tree.join("a00")), Vec::<String>::new());

    // Removed through the other host: gone from both.
    fs::remove_file(b.p(&format!("a01/{LOG}"))).unwrap();
    assert!(!area_contents(logs).0.contains("a01 log"));
    eventually("the other host sees the removal", || {
        !a.p(&format!("a01/{LOG}")).exists()
    });
    // A routed object renamed out of its name through one host; a
    // directory of routed objects moved through the other.
    fs::rename(b.p(&format!("a02/{LOG}")), b.p("a02/kept.log")).unwrap();
    fs::rename(a.p("b03"), a.p("b03-moved")).unwrap();
    eventually("the other host sees the rename", || {
        !a.p(&format!("a02/{LOG}")).exists()
    });
    assert_eq!(read(&a.p("a02/kept.log")), "a02 log");
    for m in [&a, &b] {
        assert_eq!(read(&m.p(&format!("b03-moved/{LOG}"))), "b03 log");
        assert_eq!(
            read(&m.p(&format!("b03-moved/{TABLE}/table.f0"))),
            "b03 table"
        );
    }
    let dirs: Vec<String> = dirs
        .into_iter()
        .filter(|d| !["a01", "a02", "b03"].contains(&d.as_str()))
        .collect();

    // Each host holds a file it unlinked while open: in its own graveyard.
    let mut a = a;
    let a_open = {
        fs::write(a.p("a00/held.dat"), b"alpha's").unwrap();
        let f = fs::File::open(a.p("a00/held.dat")).unwrap();
        fs::remove_file(a.p("a00/held.dat")).unwrap();
        f
    };
    fs::write(b.p("b00/held.dat"), b"beta's").unwrap();
    let mut b_open = fs::File::open(b.p("b00/held.dat")).unwrap();
    fs::remove_file(b.p("b00/held.dat")).unwrap();
    let before = graves(tree);
    assert!(before.iter().any(|g| g.starts_with("alpha.")), "{before:?}");
    assert!(before.iter().any(|g| g.starts_with("beta.")), "{before:?}");

    // alpha dies while beta works.
    let later = std::thread::scope(|s| {
        let worker = s.spawn(|| storm(&[(&b, "late")], 8));
        std::thread::sleep(std::time::Duration::from_millis(30));
        a.kill9();
        worker.join().unwrap()
    });
    drop(a_open);
    every_path_from_every_host(&[&b], &later);
    every_path_from_every_host(&[&b], &dirs);
    drop(a);

    // alpha again: its dead graveyard goes, beta's stays with its file.
    let a = host("alpha", tree, opts, None);
    let after = graves(tree);
    let dead: Vec<_> = before.iter().filter(|g| g.starts_with("alpha.")).collect();
    assert!(dead.iter().all(|g| !after.contains(g)), "{after:?}");
    let beta_gy: Vec<_> = before.iter().filter(|g| g.starts_with("beta.")).collect();
    assert!(beta_gy.iter().all(|g| after.contains(g)), "{after:?}");
    let mut s = String::new();
    b_open.read_to_string(&mut s).unwrap();
    assert_eq!(s, "beta's");
    let mut all = dirs.clone();
    all.extend(later);
    every_path_from_every_host(&[&a, &b], &all);
    assert!(
        a.log_text().contains("graveyard: removed"),
        "{}",
        a.log_text()
    );
    drop(b_open);
}

#[test]
fn two_hosts_on_ext4_lose_nothing_and_see_everything() {
    let tmp = TempDir::new("hosts-ext4");
    let tree = tmp.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    // Scratch on a filesystem of its own, as in production.
    let scratch = Tmpfs::new(tmp.path().join("scratch"), "mode=0700");
    let logs = tree.join("state/logs/casa");
    let opts = [format!("scratch={}", scratch.0.display())];
    two_hosts_share_one_tree(&tree, &logs, &scratch.0, &opts);
}

#[test]
fn two_hosts_on_ntfs3g_lose_nothing_and_see_everything() {
    let v = Ntfs::new("hosts-ntfs");
    let tree = v.dir.clone();
    let logs = tree.join("state/logs/casa");
    let scratch = tree.join("state/scratch/tmppointing");
    two_hosts_share_one_tree(&tree, &logs, &scratch, &[]);
}

/// As on NFS: no RENAME_NOREPLACE (ntfs-3g's), deferred unlinks, and no
/// `trusted.*` xattrs (NFS 4.2 keeps only `user.*` ones; injected), so the
/// records go to `user.*`.
#[test]
fn two_hosts_as_on_nfs_lose_nothing_and_see_everything() {
    let v = Ntfs::new("hosts-nfs");
    let tree = v.dir.clone();
    let logs = tree.join("state/logs/casa");
    let scratch = tree.join("state/scratch/tmppointing");
    let opts = ["env:CASAFS_FAULT_NO_TRUSTED_XATTRS=1".to_string()];
    two_hosts_share_one_tree(&tree, &logs, &scratch, &opts);
    let o = sh(&logs, "getfattr -d -m - casa-20261206-120001.log");
    let text = ok(&o);
    assert!(
        text.contains("user.casafs.origin=") && text.contains("user.casafs.by="),
        "{text}"
    );
    assert!(!text.contains("trusted."), "{text}");
}

/// Retention on one host leaves a table and a log another host routed
/// while that host is alive (its processes are not seen from here), and
/// removes them once that host is gone: neither its lock nor its lease
/// renewed.
#[test]
fn retention_leaves_a_live_hosts_objects_and_takes_a_gone_hosts() {
    let tmp = TempDir::new("hosts-retention");
    let tree = tmp.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    let logs = tree.join("state/logs/casa");
    let scratch = tree.join("state/scratch/tmppointing");
    let cfg = tmp.path().join("retention.toml");
    fs::write(
        &cfg,
        "[[rule]]\nname = \"casa-logs\"\nretention = \"1s\"\n\
         [[rule]]\nname = \"tmppointing\"\nretention = \"1s\"\n",
    )
    .unwrap();
    let opts = ["host_lease=2s".to_string()];
    let mut a = host("alpha", &tree, &opts, None);
    let b = host("beta", &tree, &opts, Some(&cfg));

    fs::create_dir_all(a.p("w/TMPPOINTING7")).unwrap();
    fs::write(a.p("w/TMPPOINTING7/table.f0"), b"alpha's table").unwrap();
    fs::write(a.p("w/casa-1.log"), b"alpha's log").unwrap();
    fs::create_dir_all(b.p("v/TMPPOINTING8")).unwrap();
    fs::write(b.p("v/casa-2.log"), b"beta's log").unwrap();
    // beta's retention runs: its own objects go...
    eventually_within("beta's own objects are removed", 20, || {
        !logs.join("casa-2.log").exists() && !scratch.join("TMPPOINTING8").exists()
    });
    // ...and, a few passes later, alpha's are still there.
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert_eq!(
        read(&b.p("w/casa-1.log")),
        "alpha's log",
        "{}",
        b.log_text()
    );
    assert_eq!(read(&b.p("w/TMPPOINTING7/table.f0")), "alpha's table");

    a.kill9();
    eventually_within("alpha's objects go once alpha is gone", 30, || {
        !logs.join("casa-1.log").exists() && !scratch.join("TMPPOINTING7").exists()
    });
    let log = b.log_text();
    assert!(log.contains("retention (casa-logs): removed"), "{log}");
    assert!(log.contains("retention (tmppointing): removed"), "{log}");
}

/// Two mounts of one host: retention on one keeps a table a process works
/// in through the other (which shows it under the backing's numbers),
/// though it no longer counts the other daemon's own descriptors as uses.
#[test]
fn retention_keeps_a_table_in_use_through_another_mount_of_this_host() {
    let tmp = TempDir::new("hosts-two-mounts");
    let tree = tmp.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    let scratch = tree.join("state/scratch/tmppointing");
    let cfg = tmp.path().join("retention.toml");
    fs::write(
        &cfg,
        "[[rule]]\nname = \"tmppointing\"\nretention = \"1s\"\n",
    )
    .unwrap();
    let a = host("same", &tree, &[], None);
    let b = host("same", &tree, &[], Some(&cfg));
    fs::create_dir_all(a.p("w/TMPPOINTING9")).unwrap();
    fs::write(a.p("w/TMPPOINTING9/table.f0"), b"in use").unwrap();
    let worker = Holder::sh(&format!(
        "cd {} && exec sleep 600",
        a.p("w/TMPPOINTING9").display()
    ));
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(scratch.join("TMPPOINTING9").exists(), "{}", b.log_text());
    drop(worker);
    eventually_within("the table nobody uses is removed", 20, || {
        !scratch.join("TMPPOINTING9").exists()
    });
}

#[test]
fn an_open_that_may_create_opens_a_log_another_host_made_meanwhile() {
    let tmp = TempDir::new("hosts-creat");
    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("d")).unwrap();
    let a = host("alpha", &tree, &[], None);
    let b = host("beta", &tree, &[], None);
    // beta's kernel keeps that the name is free...
    assert!(fs::metadata(b.p("d").join(LOG)).is_err());
    // ...while alpha makes it, routed into the logs area.
    fs::write(a.p("d").join(LOG), b"from alpha\n").unwrap();
    // An open that may create, as natively, opens what is there.
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(b.p("d").join(LOG))
        .expect("open(O_CREAT) on beta of the log alpha made");
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "from alpha\n");
}
