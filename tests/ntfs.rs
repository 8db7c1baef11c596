//! Deferred unlink on a real ntfs-3g volume: the same steps that
//! leave `.fuse_hidden*` files on bare ntfs-3g leave nothing through casafs.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;

/// Names in a directory of the raw volume that are unlink debris.
fn debris(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.starts_with(".fuse_hidden"))
        .collect()
}

/// Debris anywhere in the raw volume.
fn debris_anywhere(root: &Path) -> String {
    // Graves may go while it looks: not an error, and not debris.
    ok(&sh(
        root,
        "find . -ignore_readdir_race -name '.fuse_hidden*' -print",
    ))
}

fn free_bytes(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s.f_bavail * s.f_frsize
}

fn on_ntfs(v: &Ntfs) -> Mount {
    Mount::builder("on-ntfs")
        .source(&v.dir, TempDir::new("on-ntfs-log"))
        .start()
}

#[test]
fn bare_ntfs3g_leaves_fuse_hidden_files() {
    // The control experiment: without casafs the debris appears, so the
    // tests below can fail.
    let v = Ntfs::new("bare");
    let p = v.dir.join("big.dat");
    let mut f = File::create(&p).unwrap();
    f.write_all(&vec![1u8; 1 << 20]).unwrap();
    fs::remove_file(&p).unwrap();
    assert_eq!(
        debris(&v.dir).len(),
        1,
        "ntfs-3g renamed the open file to .fuse_hidden*"
    );
    drop(f);
    eventually("ntfs-3g removes its debris after the close", || {
        debris(&v.dir).is_empty()
    });
}

#[test]
fn sweep_names_who_holds_real_fuse_hidden_debris() {
    // Made as in production: a process holds a file that is then unlinked
    // on bare ntfs-3g. Its descriptor shows the old name, "(deleted)";
    // only the file itself tells it apart.
    let v = Ntfs::new("sweep-holders");
    fs::create_dir(v.dir.join("obs")).unwrap();
    let p = v.dir.join("obs/big.dat");
    fs::write(&p, vec![1u8; 1 << 20]).unwrap();
    let holder = Holder::sh(&format!("exec 3<'{}'; exec sleep 600", p.display()));
    let pid = holder.pid();
    fs::remove_file(&p).unwrap();
    let hidden = debris(&v.dir.join("obs"));
    assert_eq!(hidden.len(), 1);
    let sweep = |extra: &str| {
        let out = std::process::Command::new(BIN)
            .args(["sweep", v.dir.to_str().unwrap(), extra])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = sweep("--dry-run");
    assert!(out.contains(&hidden[0]), "{out}");
    assert!(
        out.contains(&format!("held open by {pid} (sleep)")),
        "{out}"
    );
    // Held, so not removed.
    sweep("--remove-debris");
    assert_eq!(debris(&v.dir.join("obs")), hidden);
    drop(holder);
    eventually("ntfs-3g removes its debris after the close", || {
        debris(&v.dir.join("obs")).is_empty()
    });
    // Held by a mapping whose descriptor is closed.
    let p = v.dir.join("obs/lib.so");
    fs::write(&p, vec![2u8; 64 << 10]).unwrap();
    let mapper = Holder::mapping(&p);
    fs::remove_file(&p).unwrap();
    let hidden = debris(&v.dir.join("obs"));
    assert_eq!(hidden.len(), 1);
    let out = sweep("--dry-run");
    assert!(
        out.contains(&format!("held open by {} (python3)", mapper.pid())),
        "{out}"
    );
    sweep("--remove-debris");
    assert_eq!(
        debris(&v.dir.join("obs")),
        hidden,
        "not removed while mapped"
    );
    drop(mapper);
    eventually("ntfs-3g removes its debris after the unmap", || {
        debris(&v.dir.join("obs")).is_empty()
    });
}

#[test]
fn unlink_of_open_file_leaves_no_debris_and_frees_space_on_close() {
    let v = Ntfs::new("unlink");
    let m = on_ntfs(&v);
    assert_eq!(m.stats()["backing_fs"]["source"], "fuse");
    let raw = m.backing("");
    fs::create_dir_all(m.p("data")).unwrap();
    let p = m.p("data/visibility.ms");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all(&vec![7u8; 32 << 20]).unwrap();
    f.sync_all().unwrap();
    let free_full = free_bytes(&raw);
    fs::remove_file(&p).unwrap();
    assert!(!p.exists());
    assert_eq!(names(&m.p("data")), Vec::<String>::new());
    assert_eq!(
        debris_anywhere(&raw),
        "",
        "no .fuse_hidden right after unlink"
    );
    // Every descriptor operation keeps working, and fstat tells, as
    // natively, that no name is left.
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    let mut head = [0u8; 4];
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_exact(&mut head).unwrap();
    assert_eq!(head, [7; 4]);
    f.seek(SeekFrom::End(0)).unwrap();
    f.write_all(b"tail").unwrap();
    assert_eq!(f.metadata().unwrap().len(), (32 << 20) + 4);
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);
    assert_eq!(unsafe { *(map as *const u8) }, 7);
    unsafe { libc::munmap(map, 4096) };
    f.set_len(1 << 20).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    f.set_len(32 << 20).unwrap();
    assert_eq!(debris_anywhere(&raw), "", "no .fuse_hidden while open");
    let st = m.stats();
    assert_eq!(st["deferred_unlinks"]["pending"], 1);
    drop(f);
    eventually("the deferred unlink completes after the close", || {
        m.stats()["deferred_unlinks"]["pending"] == 0
    });
    assert_eq!(debris_anywhere(&raw), "", "no .fuse_hidden after close");
    let st = m.stats();
    assert_eq!(st["deferred_unlinks"]["completed"], 1);
    let free_after = free_bytes(&raw);
    assert!(
        free_after >= free_full + (24 << 20),
        "space comes back after the last close: {free_full} -> {free_after}"
    );
}

#[test]
fn rename_over_open_file_and_hard_links_leave_nothing() {
    let v = Ntfs::new("rename");
    let m = on_ntfs(&v);
    let raw = m.backing("");
    fs::write(m.p("old"), b"old contents").unwrap();
    fs::write(m.p("new"), b"new contents").unwrap();
    let mut held = File::open(m.p("old")).unwrap();
    fs::rename(m.p("new"), m.p("old")).unwrap();
    assert_eq!(debris_anywhere(&raw), "");
    assert_eq!(fs::read(m.p("old")).unwrap(), b"new contents");
    let mut s = String::new();
    held.read_to_string(&mut s).unwrap();
    assert_eq!(s, "old contents", "the replaced file stays readable");
    drop(held);
    assert_eq!(debris_anywhere(&raw), "");
    // A hard-linked open file: the unlinked name vanishes, the other lives.
    fs::write(m.p("a"), b"linked").unwrap();
    fs::hard_link(m.p("a"), m.p("b")).unwrap();
    let f = File::open(m.p("a")).unwrap();
    fs::remove_file(m.p("a")).unwrap();
    assert_eq!(debris_anywhere(&raw), "");
    assert_eq!(fs::read(m.p("b")).unwrap(), b"linked");
    assert_eq!(fs::metadata(m.p("b")).unwrap().nlink(), 1, "one name left");
    assert_eq!(f.metadata().unwrap().nlink(), 1);
    drop(f);
    assert_eq!(fs::metadata(m.p("b")).unwrap().nlink(), 1);
    assert_eq!(debris_anywhere(&raw), "");
    assert_eq!(fs::read(m.p("b")).unwrap(), b"linked");
    let mut listing = names(&raw);
    listing.retain(|n| !n.starts_with('$') && n != "System Volume Information");
    listing.retain(|n| n != ".casafs-graveyard" && n != "state");
    assert_eq!(listing, ["b", "old"]);
}

/// A read-only shared mapping of a whole file, made through a descriptor
/// that is closed again before this returns (as the dynamic loader and
/// git's pack indexes do).
struct Mapping {
    at: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn of(p: &Path) -> Mapping {
        let f = File::open(p).unwrap();
        let len = f.metadata().unwrap().len() as usize;
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(at, libc::MAP_FAILED, "mmap {}", p.display());
        Mapping { at, len }
    }

    fn bytes(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.at as *const u8, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.at, self.len) };
    }
}

#[test]
fn a_file_mapped_but_closed_leaves_no_debris_when_unlinked_or_replaced() {
    // A mapping outlives the descriptor it was made through: the file is
    // still open for the filesystem beneath (ntfs-3g sees the kernel's
    // open of it), although no process holds a descriptor.
    let bare = Ntfs::new("mapped-bare");
    fs::write(bare.dir.join("lib.so"), vec![5u8; 64 << 10]).unwrap();
    let map = Mapping::of(&bare.dir.join("lib.so"));
    fs::remove_file(bare.dir.join("lib.so")).unwrap();
    assert_eq!(
        debris(&bare.dir).len(),
        1,
        "the control: on bare ntfs-3g a mapped file's unlink leaves debris"
    );
    drop(map);

    let v = Ntfs::new("mapped");
    let m = on_ntfs(&v);
    let raw = m.backing("");
    assert_eq!(m.stats()["passthrough"], true, "with kernel passthrough");
    fs::write(m.p("lib.so"), vec![5u8; 64 << 10]).unwrap();
    fs::write(m.p("pack.idx"), vec![6u8; 16 << 10]).unwrap();
    let lib = Mapping::of(&m.p("lib.so"));
    let idx = Mapping::of(&m.p("pack.idx"));
    fs::remove_file(m.p("lib.so")).unwrap();
    fs::write(m.p("pack.idx.tmp"), vec![7u8; 16 << 10]).unwrap();
    fs::rename(m.p("pack.idx.tmp"), m.p("pack.idx")).unwrap();
    assert_eq!(debris_anywhere(&raw), "", "no .fuse_hidden while mapped");
    assert_eq!(names(&m.p("")), ["pack.idx", "state"]);
    assert!(
        lib.bytes().iter().all(|&b| b == 5),
        "the unlinked file's data"
    );
    assert!(
        idx.bytes().iter().all(|&b| b == 6),
        "the replaced file's data"
    );
    assert_eq!(fs::read(m.p("pack.idx")).unwrap(), vec![7u8; 16 << 10]);
    assert_eq!(m.stats()["deferred_unlinks"]["pending"], 2);
    drop(lib);
    drop(idx);
    eventually("both graves go once the mappings do", || {
        m.stats()["deferred_unlinks"]["pending"] == 0
    });
    assert_eq!(m.stats()["deferred_unlinks"]["completed"], 2);
    assert_eq!(debris_anywhere(&raw), "", "no .fuse_hidden after unmapping");
    let graves = ok(&sh(&raw, "find .casafs-graveyard -type f | wc -l"));
    assert_eq!(graves.trim(), "0", "the graveyard is empty");
}

#[test]
fn a_hard_link_outlives_the_name_casafs_last_saw_it_by() {
    let v = Ntfs::new("links");
    let m = on_ntfs(&v);
    // ntfs-3g reaches a file by path: once the name casafs last saw the
    // file by is gone, a descriptor of it cannot reach it there.
    fs::write(m.p("a"), b"hello").unwrap();
    fs::hard_link(m.p("a"), m.p("b")).unwrap();
    fs::metadata(m.p("b")).unwrap();
    fs::rename(m.p("b"), m.p("c")).unwrap();
    fs::remove_file(m.p("c")).unwrap();
    assert_eq!(fs::read(m.p("a")).unwrap(), b"hello");
    assert_eq!(fs::metadata(m.p("a")).unwrap().nlink(), 1);
    // The same with the other name open while it goes.
    fs::hard_link(m.p("a"), m.p("d")).unwrap();
    let held = File::open(m.p("a")).unwrap();
    fs::metadata(m.p("d")).unwrap();
    fs::remove_file(m.p("d")).unwrap();
    drop(held);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(fs::read(m.p("a")).unwrap(), b"hello");
    ok(&sh(&m.p(""), "chmod 600 a && touch a && cat a >/dev/null"));
    assert_eq!(debris_anywhere(&m.backing("")), "");
}

#[test]
fn git_gc_while_a_reader_maps_the_old_packs_leaves_no_debris() {
    // git maps a pack's index and closes its descriptor; gc replaces the
    // packs while a long-running reader (an editor's or a CI's `git
    // cat-file --batch`) still maps the old ones.
    let v = Ntfs::new("git-gc");
    let mut m = on_ntfs(&v);
    let listing = ok(&sh(
        &m.p(""),
        "set -e
         git init -q r && cd r
         git config user.email ci@example.org && git config user.name ci
         for i in 1 2; do seq 1 ${i}000 > f$i; git add f$i; git commit -qm c$i; git repack -q; done
         H=$(git rev-parse HEAD)
         (echo $H; sleep 3) | git cat-file --batch-check >/dev/null &
         sleep 1
         git gc -q --prune=now
         ls -a .git/objects/pack
         wait",
    ));
    assert!(!listing.contains(".fuse_hidden"), "{listing}");
    assert_eq!(listing.matches(".idx").count(), 1, "{listing}");
    assert_eq!(
        ok(&sh(
            &m.p("r"),
            "git fsck --no-progress 2>&1 && git log --format=%s"
        )),
        "c2\nc1\n"
    );
    // Graves of files that have another name (git links a temporary file
    // to its final name, then unlinks it) wait until the kernel drops the
    // inode, at the latest the unmount.
    assert!(m.stop().is_some_and(|s| s.success()));
    assert_eq!(debris_anywhere(&v.dir), "");
    let left = ok(&sh(
        &v.dir,
        "if [ -e .casafs-graveyard ]; then find .casafs-graveyard; fi",
    ));
    assert_eq!(left, "", "no graveyard left after a clean unmount");
}

#[test]
fn a_read_file_with_another_name_leaves_no_grave_behind() {
    // Files read (so possibly mapped) and hard-linked, as git publishes
    // its objects: the unlinked name goes, the object lives on under its
    // other name, and nothing waits in the graveyard for the kernel to
    // drop the inode.
    let v = Ntfs::new("linked-read");
    let m = on_ntfs(&v);
    for i in 0..5 {
        let (tmp, obj) = (m.p(&format!("tmp{i}")), m.p(&format!("obj{i}")));
        fs::write(&tmp, format!("object {i}")).unwrap();
        fs::read(&tmp).unwrap();
        fs::hard_link(&tmp, &obj).unwrap();
        fs::remove_file(&tmp).unwrap();
    }
    // Held open while a name goes, then closed.
    fs::write(m.p("t"), b"held").unwrap();
    let held = File::open(m.p("t")).unwrap();
    fs::hard_link(m.p("t"), m.p("o")).unwrap();
    fs::remove_file(m.p("t")).unwrap();
    drop(held);
    eventually("no grave is left", || {
        m.stats()["deferred_unlinks"]["pending"] == 0
    });
    for i in 0..5 {
        assert_eq!(
            fs::read_to_string(m.p(&format!("obj{i}"))).unwrap(),
            format!("object {i}")
        );
    }
    assert_eq!(fs::read(m.p("o")).unwrap(), b"held");
    assert_eq!(fs::metadata(m.p("o")).unwrap().nlink(), 1);
    assert_eq!(debris_anywhere(&m.backing("")), "");
}

#[test]
fn a_name_removed_right_after_a_link_leaves_the_other_name_whole() {
    // How git publishes an object: write a temporary file, link it to its
    // final name, unlink the temporary one. ntfs-3g's cached link count of
    // the first name still says 1 for a while after the link.
    let v = Ntfs::new("link-unlink");
    let m = on_ntfs(&v);
    fs::write(m.p("tmp_obj"), b"object").unwrap();
    fs::hard_link(m.p("tmp_obj"), m.p("obj")).unwrap();
    fs::remove_file(m.p("tmp_obj")).unwrap();
    let mut held = File::open(m.p("obj")).unwrap();
    // Past ntfs-3g's attribute time: the next look at the name asks again.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(fs::metadata(m.p("obj")).unwrap().nlink(), 1);
    let mut s = String::new();
    held.read_to_string(&mut s).unwrap();
    assert_eq!(s, "object", "a descriptor of the surviving name reads on");
    // Its names made and removed while it is open: nothing left behind.
    fs::hard_link(m.p("obj"), m.p("obj2")).unwrap();
    fs::remove_file(m.p("obj")).unwrap();
    fs::remove_file(m.p("obj2")).unwrap();
    assert_eq!(
        debris_anywhere(&m.backing("")),
        "",
        "no .fuse_hidden while open"
    );
    use std::io::{Seek, SeekFrom};
    held.seek(SeekFrom::Start(0)).unwrap();
    s.clear();
    held.read_to_string(&mut s).unwrap();
    assert_eq!(s, "object");
    drop(held);
    eventually("the last name's grave goes at the close", || {
        m.stats()["deferred_unlinks"]["pending"] == 0
    });
    assert_eq!(debris_anywhere(&m.backing("")), "");
}

#[test]
fn kill9_with_pending_deferred_unlink_is_cleaned_at_next_mount() {
    let v = Ntfs::new("kill9");
    let mut m = on_ntfs(&v);
    fs::write(m.p("doomed"), vec![3u8; 4 << 20]).unwrap();
    let f = File::open(m.p("doomed")).unwrap();
    fs::remove_file(m.p("doomed")).unwrap();
    m.kill9();
    drop(f);
    // The dead mount is still on top; the next mount takes it over.
    let m2 = on_ntfs(&v);
    let raw = m2.backing("");
    assert_eq!(debris_anywhere(&raw), "");
    let graves = ok(&sh(&raw, "find .casafs-graveyard -mindepth 2 | wc -l"));
    assert_eq!(
        graves.trim(),
        "0",
        "the stopped daemon's graveyard was emptied"
    );
    assert!(m2.log_text().contains("graveyard"), "{}", m2.log_text());
}

#[test]
fn a_buried_file_still_open_across_a_crash_leaves_nothing_once_closed() {
    let v = Ntfs::new("kill9-open");
    let mut m = on_ntfs(&v);
    fs::write(m.p("doomed"), vec![3u8; 1 << 20]).unwrap();
    let mut f = File::open(m.p("doomed")).unwrap();
    fs::remove_file(m.p("doomed")).unwrap();
    m.kill9();
    // The next mount takes over while the file is still open: its grave
    // cannot go yet (ntfs-3g would hide it).
    let mut m2 = on_ntfs(&v);
    let mut head = [0u8; 4];
    f.read_exact(&mut head).unwrap();
    assert_eq!(head, [3; 4], "the holder reads on");
    drop(f);
    assert!(m2.stop().is_some_and(|s| s.success()));
    // The volume itself, with nothing on top.
    assert_eq!(debris_anywhere(&v.dir), "");
    let left = ok(&sh(
        &v.dir,
        "if [ -e .casafs-graveyard ]; then find .casafs-graveyard; fi",
    ));
    assert_eq!(left, "", "no graveyard left after a clean unmount");
}

/// Tests of CPython's suites that fail on ntfs-3g itself, with or without
/// casafs: ntfs-3g keeps no extended attributes on symlinks.
const NTFS3G_OWN_FAILURES: &[&str] = &["test_copyxattr_symlinks"];

#[test]
fn cpython_shutil_and_tempfile_suites_pass_with_tmpdir_on_casafs_over_ntfs() {
    // With `permissions` ntfs-3g keeps POSIX modes, as the suites expect of
    // any native directory.
    let v = Ntfs::with_options("cpython", "-o permissions");
    let m = on_ntfs(&v);
    fs::create_dir_all(m.p("tmp")).unwrap();
    let ignore: Vec<String> = NTFS3G_OWN_FAILURES
        .iter()
        .map(|t| format!("-i {t}"))
        .collect();
    let out = sh(
        &m.p("tmp"),
        &format!(
            "TMPDIR={} python3 -m test test_shutil test_tempfile {} 2>&1 | tail -15",
            m.p("tmp").display(),
            ignore.join(" ")
        ),
    );
    let text = ok(&out);
    assert!(text.contains("Result: SUCCESS"), "{text}");
    assert_eq!(debris_anywhere(&m.backing("")), "");
}

#[test]
fn ntfs3g_killed_underneath_gives_errors_and_the_daemon_keeps_serving() {
    let v = Ntfs::new("killed");
    let img = v.tmp.path().join("vol.img");
    let mut m = on_ntfs(&v);
    fs::write(m.p("kept"), b"on disk").unwrap();
    File::open(m.p("kept")).unwrap().sync_all().unwrap();
    // The volume's driver dies (we started it; nothing else is touched).
    let pid = ok(&sh(
        Path::new("/"),
        &format!("pgrep -f '^ntfs-3g +{}'", img.display()),
    ));
    ok(&sh(Path::new("/"), &format!("kill -9 {}", pid.trim())));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(errno_of(fs::write(m.p("new"), b"x")), libc::ENOTCONN);
    assert_eq!(
        errno_of(fs::read_dir(m.p("")).map(|d| d.count())),
        libc::ENOTCONN
    );
    // casafs itself is alive: its control files answer and it unmounts cleanly.
    let st: serde_json::Value =
        serde_json::from_slice(&fs::read(m.p(".casafs/stats.json")).unwrap()).unwrap();
    assert!(
        st["errors"].as_object().is_some_and(|e| !e.is_empty()),
        "{st}"
    );
    let status = m.stop().expect("the daemon was running");
    assert!(status.success(), "{status} {}", m.log_text());
    // Back up: the driver remounted, casafs on top again, data intact.
    umount(&v.dir, true);
    ok(&sh(
        Path::new("/"),
        &format!(
            "ntfsfix -d {img} >/dev/null && ntfs-3g {img} {dir}",
            img = img.display(),
            dir = v.dir.display()
        ),
    ));
    let m2 = on_ntfs(&v);
    assert_eq!(fs::read(m2.p("kept")).unwrap(), b"on disk");
}

#[test]
fn concurrent_routed_renames_onto_one_name_never_overwrite() {
    // ntfs-3g has no RENAME_NOREPLACE (EINVAL): the free name in scratch
    // is found by a stat, then taken by a rename. Pipeline workers that
    // finish together all move a POINTING table to the same name.
    let v = Ntfs::new("route-race");
    let m = on_ntfs(&v);
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let base = m.p(&format!("w{t}"));
            std::thread::spawn(move || {
                for k in 0..30 {
                    let d = base.join(format!("obs{k}"));
                    fs::create_dir_all(d.join("POINTING")).unwrap();
                    fs::write(d.join("POINTING/table.f0"), format!("{t}-{k}")).unwrap();
                    fs::rename(d.join("POINTING"), d.join("TMPPOINTING1")).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(names(&v.dir.join("state/scratch/tmppointing")).len(), 240);
    for t in 0..8 {
        for k in 0..30 {
            assert_eq!(
                fs::read_to_string(m.p(&format!("w{t}/obs{k}/TMPPOINTING1/table.f0"))).unwrap(),
                format!("{t}-{k}")
            );
        }
    }
}

/// Where the tree is on a filesystem another process serves, a request
/// waiting on that server (ntfs-3g busy with another client) holds only
/// itself: the other requests of its CPU are served meanwhile.
#[test]
fn a_request_waiting_on_ntfs3g_does_not_hold_the_other_requests_of_its_cpu() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let v = Ntfs::new("slow-served");
    let m = Mount::builder("slow-served")
        .source(&v.dir, TempDir::new("slow-served-log"))
        .env("CASAFS_FAULT_SLOW_LOOKUP", "waits")
        .env("CASAFS_FAULT_STALL_SECS", "6")
        .start();
    // Elsewhere than the waiting lookup's directory, whose lock (held
    // shared by the lookup) a creation there would wait for in the kernel.
    fs::create_dir(m.p("sub")).unwrap();
    let answered = AtomicBool::new(false);
    std::thread::scope(|s| {
        let slow = s.spawn(|| {
            pin_to(0);
            let r = fs::metadata(m.p("waits"));
            answered.store(true, SeqCst);
            errno_of(r)
        });
        // The lookup is at the daemon by then (the fault holds it 6 s).
        std::thread::sleep(std::time::Duration::from_millis(800));
        let others = s.spawn(|| {
            pin_to(0);
            create_read_remove(&m.p("sub"), 20);
            fs::write(m.p("sub/kept"), b"on ntfs").unwrap();
            (
                names(&m.p("sub")),
                names(&m.mnt).contains(&"sub".to_string()),
            )
        });
        let listed = others.join().unwrap();
        assert!(
            !answered.load(SeqCst),
            "the other requests waited for the lookup"
        );
        assert_eq!(listed, (vec!["kept".to_string()], true));
        assert_eq!(slow.join().unwrap(), libc::ENOENT);
    });
    assert_eq!(fs::read(v.dir.join("sub/kept")).unwrap(), b"on ntfs");
}

#[test]
fn every_user_is_served_over_ntfs3g_with_posix_permissions() {
    // ntfs-3g with `permissions` keeps modes and owners but has no POSIX
    // ACLs: the kernel's look for an object's ACL on a user's behalf must
    // find none, not fail the user's every access.
    let v = Ntfs::with_options("perm-users", "-o permissions");
    chmod(&v.dir, 0o755);
    fs::create_dir(v.dir.join("shared")).unwrap();
    chmod(&v.dir.join("shared"), 0o1777);
    let (uid, gid) = user_ids("tests");
    let script = "touch f && echo data > g && stat -c '%U %a' f && cat g && ls && rm f g";
    let native = ok(&sh_as(uid, gid, &v.dir.join("shared"), script));
    let m = on_ntfs(&v);
    let through = sh_as(uid, gid, &m.p("shared"), script);
    assert_eq!(
        (
            String::from_utf8_lossy(&through.stdout).into_owned(),
            String::from_utf8_lossy(&through.stderr).into_owned()
        ),
        (native, String::new())
    );
}
