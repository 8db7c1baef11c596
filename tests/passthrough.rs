//! The core passthrough, as a user sees it: contents, names, inode numbers,
//! link counts, owners, modes, special files, xattrs, holes, locks, and file
//! descriptors that outlive their names.

mod common;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use common::*;

fn cs(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

#[test]
fn over_itself_serves_the_existing_tree_and_writes_reach_the_disk() {
    let tmp = TempDir::new("preexisting");
    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("ms/POINTING")).unwrap();
    fs::write(tree.join("ms/table.dat"), b"before mount").unwrap();
    let mut m = Mount::builder("preexisting").source(&tree, tmp).start();
    assert_eq!(fs::read(m.p("ms/table.dat")).unwrap(), b"before mount");
    fs::write(m.p("ms/new.dat"), b"written through casafs").unwrap();
    fs::create_dir(m.p("ms/sub")).unwrap();
    assert_eq!(
        fs::read(m.backing("ms/new.dat")).unwrap(),
        b"written through casafs"
    );
    assert!(m.backing("ms/sub").is_dir());
    assert_eq!(
        names(&m.p("ms")),
        ["POINTING", "new.dat", "sub", "table.dat"]
    );
    let st = m.stop().unwrap();
    assert!(st.success(), "daemon exit {st}");
    // After unmount the same directory shows the same content natively.
    assert_eq!(
        fs::read(m.mnt.join("ms/new.dat")).unwrap(),
        b"written through casafs"
    );
    assert!(!m.mnt.join(".casafs-graveyard").exists());
}

#[test]
fn separate_mount_point_mirrors_the_source() {
    let m = Mount::separate("separate");
    fs::write(m.p("a"), b"1").unwrap();
    assert_eq!(fs::read(m.source.join("a")).unwrap(), b"1");
    fs::write(m.source.join("b"), b"2").unwrap();
    assert_eq!(fs::read(m.p("b")).unwrap(), b"2");
    assert_eq!(names(&m.mnt), ["a", "b", "state"]);
}

#[test]
fn inode_numbers_links_and_readdir_are_native() {
    let m = Mount::over_itself("inodes");
    fs::write(m.p("f"), b"x").unwrap();
    let before = stat(&m.p("f"));
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::hard_link(m.p("f"), m.p("g")).unwrap();
    let f = stat(&m.p("f"));
    let g = stat(&m.p("g"));
    assert_eq!(f.st_ino, g.st_ino, "hard links share st_ino");
    assert_eq!(f.st_nlink, 2, "nlink right after link");
    assert!(
        (f.st_ctime, f.st_ctime_nsec) > (before.st_ctime, before.st_ctime_nsec),
        "ctime moves on link"
    );
    // st_ino is the backing inode number.
    assert_eq!(f.st_ino, fs::metadata(m.backing("f")).unwrap().ino());
    // readdir's d_ino equals st_ino for every entry.
    for e in fs::read_dir(&m.mnt).unwrap() {
        let e = e.unwrap();
        assert_eq!(e.ino(), stat(&e.path()).st_ino, "{:?}", e.file_name());
    }
    // And for "." and "..", which std's read_dir leaves out, in a
    // subdirectory and in the mount's root (whose ".." is outside).
    fs::create_dir_all(m.p("sub/deeper")).unwrap();
    for (dir, parent) in [
        (m.p("sub/deeper"), m.p("sub")),
        (m.p("sub"), m.mnt.clone()),
        (m.mnt.clone(), m.mnt.join("..")),
    ] {
        let (dot, dotdot) = dot_inos(&dir);
        assert_eq!(dot, stat(&dir).st_ino, "{dir:?}/.");
        assert_eq!(dotdot, stat(&parent).st_ino, "{dir:?}/..");
    }
    fs::remove_file(m.p("g")).unwrap();
    assert_eq!(stat(&m.p("f")).st_nlink, 1, "nlink right after unlink");
    fs::rename(m.p("f"), m.p("h")).unwrap();
    assert_eq!(stat(&m.p("h")).st_ino, f.st_ino);
}

/// A directory listed again while the kernel still has its entries' attributes
/// (rm and find open each directory twice) shows the same names, inode
/// numbers and types, and what changed in between through the mount.
#[test]
fn a_second_listing_soon_after_the_first_is_the_same() {
    let m = Mount::over_itself("relist");
    let d = m.p("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("f"), b"x").unwrap();
    fs::create_dir(d.join("s")).unwrap();
    std::os::unix::fs::symlink("f", d.join("l")).unwrap();
    assert_eq!(unsafe { libc::mkfifo(cs(&d.join("p")).as_ptr(), 0o600) }, 0);
    let list = || {
        let mut v: Vec<(String, u64, fs::FileType)> = fs::read_dir(&d)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.ino(),
                    e.file_type().unwrap(),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let first = list();
    for (name, ino, _) in &first {
        assert_eq!(stat(&d.join(name)).st_ino, *ino, "{name}");
    }
    fs::write(d.join("f"), b"longer").unwrap();
    fs::set_permissions(d.join("s"), fs::Permissions::from_mode(0o701)).unwrap();
    let second = list();
    assert_eq!(first, second);
    let kinds: Vec<_> = second
        .iter()
        .map(|(n, _, t)| {
            (
                n.as_str(),
                t.is_file(),
                t.is_dir(),
                t.is_symlink(),
                t.is_fifo(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("f", true, false, false, false),
            ("l", false, false, true, false),
            ("p", false, false, false, true),
            ("s", false, true, false, false),
        ]
    );
    for (name, ino, _) in &second {
        let st = stat(&d.join(name));
        assert_eq!(st.st_ino, *ino, "{name}");
        assert_eq!(
            st.st_ino,
            fs::symlink_metadata(m.backing(&format!("d/{name}")))
                .unwrap()
                .ino()
        );
    }
    assert_eq!(stat(&d.join("f")).st_size, 6);
    assert_eq!(stat(&d.join("s")).st_mode & 0o7777, 0o701);
    assert_eq!(fs::read(d.join("l")).unwrap(), b"longer");
    // A name replaced between the listings is the new object.
    fs::remove_file(d.join("f")).unwrap();
    fs::create_dir(d.join("f")).unwrap();
    let third = list();
    let f = third.iter().find(|e| e.0 == "f").unwrap();
    assert!(f.2.is_dir());
    assert_eq!(f.1, stat(&d.join("f")).st_ino);
}

/// A mount whose kernel caches (attributes and names) last `time`.
fn with_cache_times(tag: &str, time: &str) -> MountBuilder {
    Mount::builder(tag).opt(&format!("attr_timeout={time},entry_timeout={time}"))
}

/// Listings the daemon was asked for (readdir and readdirplus requests).
fn listings_served(m: &Mount) -> u64 {
    let st = m.stats();
    op_count(&st, "readdir") + op_count(&st, "readdirplus")
}

/// The kernel keeps a directory's listing for a while (no request at all
/// for the next `ls`), and every change made through the mount shows in
/// the very next listing, which always matches the directory on disk.
#[test]
fn a_kept_listing_shows_every_change_made_through_the_mount() {
    // Long timeouts: the listing stays kept however slow the machine is.
    let m = with_cache_times("listing-cache", "30s").start();
    let d = m.p("d");
    let o = m.p("other");
    fs::create_dir(&d).unwrap();
    fs::create_dir(&o).unwrap();
    fs::write(d.join("a"), b"a").unwrap();
    fs::write(d.join("b"), b"b").unwrap();
    fs::write(o.join("x"), b"x").unwrap();
    assert_eq!(names(&d), ["a", "b"]);
    let served = listings_served(&m);
    assert_eq!(names(&d), ["a", "b"]);
    assert_eq!(listings_served(&m), served, "the second listing is kept");

    let check = |what: &str| {
        for dir in ["d", "other"] {
            let want = names(&m.backing(dir));
            assert_eq!(names(&m.p(dir)), want, "{dir} after {what}");
            assert_eq!(names(&m.p(dir)), want, "{dir} listed again after {what}");
        }
    };
    fs::write(d.join("c"), b"c").unwrap();
    check("create");
    fs::remove_file(d.join("a")).unwrap();
    check("unlink");
    fs::rename(d.join("b"), d.join("b2")).unwrap();
    check("rename within");
    fs::rename(d.join("b2"), o.join("b3")).unwrap();
    check("rename out");
    fs::rename(o.join("x"), d.join("x")).unwrap();
    check("rename in");
    fs::hard_link(d.join("x"), d.join("x-link")).unwrap();
    check("link");
    std::os::unix::fs::symlink("x", d.join("x-sym")).unwrap();
    check("symlink");
    assert_eq!(
        unsafe { libc::mkfifo(cs(&d.join("fifo")).as_ptr(), 0o600) },
        0
    );
    check("mkfifo");
    fs::create_dir(d.join("s")).unwrap();
    check("mkdir");
    fs::remove_dir(d.join("s")).unwrap();
    check("rmdir");
    let f = File::create(d.join("open")).unwrap();
    fs::remove_file(d.join("open")).unwrap();
    check("unlink of an open file");
    drop(f);
    assert_eq!(names(&d), ["c", "fifo", "x", "x-link", "x-sym"]);
}

/// A listing is kept only while every name it gave is fresh in the kernel:
/// a kept listing refreshes no name, and `ls -l` after it would cost a
/// lookup per name where a listing with attributes refreshes them all.
#[test]
fn a_listing_is_kept_only_while_its_names_are_fresh_in_the_kernel() {
    let m = with_cache_times("listing-fresh", "4s").start();
    let d = m.p("d");
    fs::create_dir(&d).unwrap();
    for i in 0..20 {
        fs::write(d.join(format!("f{i}")), b"x").unwrap();
    }
    // Listed soon after the creates: the kernel has every name already, so
    // the listing gives them bare, and they stay as old as the creates.
    // (Up to 3 s of delay on a busy machine keep it so.)
    std::thread::sleep(std::time::Duration::from_millis(1000));
    assert_eq!(names(&d).len(), 20);
    std::thread::sleep(std::time::Duration::from_millis(3200));
    // The names are now older than the timeouts although the listing is
    // not: listed afresh, and stat then needs no lookup.
    let listing = fs::read_dir(&d).unwrap();
    let (served, looked_up) = (listings_served(&m), lookups(&m));
    for e in listing {
        fs::symlink_metadata(e.unwrap().path()).unwrap();
    }
    assert!(listings_served(&m) > served, "listed afresh");
    assert_eq!(lookups(&m), looked_up, "names refreshed by the listing");

    // A big directory listed without stats gets most names through plain
    // readdir, which refreshes none. Names the kernel does not have (made
    // beneath the mount): not kept.
    let beneath = m.backing("beneath");
    fs::create_dir(&beneath).unwrap();
    for i in 0..1500 {
        File::create(beneath.join(format!("some-longer-file-name-{i:05}"))).unwrap();
    }
    let big = m.p("beneath");
    assert_eq!(names(&big).len(), 1500);
    let served = listings_served(&m);
    assert_eq!(names(&big).len(), 1500);
    assert!(listings_served(&m) > served, "listed afresh");

    // Names it has (made through the mount, as `git status` has every
    // file it looked at): kept, however the kernel listed them.
    let big = m.p("big");
    fs::create_dir(&big).unwrap();
    for i in 0..1500 {
        File::create(big.join(format!("some-longer-file-name-{i:05}"))).unwrap();
    }
    assert_eq!(names(&big).len(), 1500);
    let served = listings_served(&m);
    assert_eq!(names(&big).len(), 1500);
    assert_eq!(listings_served(&m), served, "the second listing is kept");
}

fn lookups(m: &Mount) -> u64 {
    op_count(&m.stats(), "lookup")
}

/// A change made beneath the mount, not through it, shows in a listing once
/// the directory's attributes are older than attr_timeout, as for a stat:
/// in a new listing, and in one read again from the top through a handle
/// opened before the change (there the kernel compares the directory's
/// mtime with the one it kept the listing under).
#[test]
fn a_kept_listing_shows_changes_beneath_the_mount_after_attr_timeout() {
    let m = with_cache_times("listing-beneath", "200ms")
        .separate()
        .start();
    let d = m.p("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("a"), b"a").unwrap();
    assert_eq!(names(&d), ["a"]);
    // Older than the timeouts: listed afresh, which refreshes the names.
    std::thread::sleep(std::time::Duration::from_millis(250));
    let served = listings_served(&m);
    assert_eq!(names(&d), ["a"]);
    assert!(listings_served(&m) > served, "listed afresh");

    let dir = unsafe { libc::opendir(cs(&d).as_ptr()) };
    assert!(!dir.is_null());
    let read_all = || {
        let mut v: Vec<String> = read_stream(dir)
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| name != "." && name != "..")
            .collect();
        v.sort();
        v
    };
    assert_eq!(read_all(), ["a"]);
    // A later mtime than the listing's, on any timestamp granularity.
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(m.backing("d/beneath"), b"b").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(250));
    unsafe { libc::rewinddir(dir) };
    assert_eq!(read_all(), ["a", "beneath"]);
    unsafe { libc::closedir(dir) };

    fs::remove_file(m.backing("d/a")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(250));
    assert_eq!(names(&d), ["beneath"]);
}

/// Names and `d_ino`s from libc's readdir, to the end of the stream.
fn read_stream(d: *mut libc::DIR) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    loop {
        let e = unsafe { libc::readdir64(d) };
        if e.is_null() {
            return v;
        }
        let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) };
        v.push((name.to_string_lossy().into_owned(), unsafe { (*e).d_ino }));
    }
}

/// The `d_ino` of "." and ".." in `dir`, through libc's readdir.
fn dot_inos(dir: &Path) -> (u64, u64) {
    let (mut dot, mut dotdot) = (0, 0);
    let d = unsafe { libc::opendir(cs(dir).as_ptr()) };
    assert!(!d.is_null(), "opendir {dir:?}");
    for (name, ino) in read_stream(d) {
        match name.as_str() {
            "." => dot = ino,
            ".." => dotdot = ino,
            _ => {}
        }
    }
    unsafe { libc::closedir(d) };
    (dot, dotdot)
}

#[test]
fn rename_flags_noreplace_and_exchange() {
    let m = Mount::over_itself("rename");
    fs::write(m.p("a"), b"A").unwrap();
    fs::write(m.p("b"), b"B").unwrap();
    let ren = |flags: u32| unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cs(&m.p("a")).as_ptr(),
            libc::AT_FDCWD,
            cs(&m.p("b")).as_ptr(),
            flags,
        )
    };
    assert_eq!(ren(libc::RENAME_NOREPLACE), -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EEXIST)
    );
    assert_eq!(ren(libc::RENAME_EXCHANGE), 0);
    assert_eq!(fs::read(m.p("a")).unwrap(), b"B");
    assert_eq!(fs::read(m.p("b")).unwrap(), b"A");
    assert_eq!(fs::read(m.backing("a")).unwrap(), b"B");
    // Plain rename replaces.
    fs::rename(m.p("a"), m.p("b")).unwrap();
    assert_eq!(names(&m.mnt), ["b", "state"]);
    assert_eq!(fs::read(m.p("b")).unwrap(), b"B");
}

#[test]
fn special_files_symlinks_and_xattrs() {
    let m = Mount::over_itself("special");
    let fifo = m.p("fifo");
    assert_eq!(unsafe { libc::mkfifo(cs(&fifo).as_ptr(), 0o640) }, 0);
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert_eq!(stat(&fifo).st_mode & 0o7777, 0o640);
    let dev = m.p("null");
    assert_eq!(
        unsafe {
            libc::mknod(
                cs(&dev).as_ptr(),
                libc::S_IFCHR | 0o600,
                libc::makedev(1, 3),
            )
        },
        0
    );
    let st = stat(&dev);
    assert_eq!(st.st_rdev, libc::makedev(1, 3));
    let sock = std::os::unix::net::UnixListener::bind(m.p("sock")).unwrap();
    assert!(
        fs::symlink_metadata(m.p("sock"))
            .unwrap()
            .file_type()
            .is_socket()
    );
    drop(sock);
    std::os::unix::fs::symlink("target/../x", m.p("link")).unwrap();
    assert_eq!(
        fs::read_link(m.p("link")).unwrap().to_str(),
        Some("target/../x")
    );
    assert!(
        fs::symlink_metadata(m.backing("link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    fs::write(m.p("x"), b"").unwrap();
    let out = sh(
        &m.mnt,
        "setfattr -n user.k -v hello x && getfattr --only-values -n user.k x",
    );
    assert_eq!(ok(&out), "hello");
    let out = sh(&m.mnt, "getfattr -n user.missing x; echo rc=$?");
    assert!(String::from_utf8_lossy(&out.stdout).contains("rc=1"));
    // The size query, a buffer too small, and the calls that must not
    // follow a symlink: the link's own trusted.* attribute, not its
    // target's.
    assert_eq!(
        lgetxattr(&m.p("x"), "user.k", 0),
        Ok(b"\0\0\0\0\0".to_vec())
    );
    assert_eq!(lgetxattr(&m.p("x"), "user.k", 2), Err(libc::ERANGE));
    std::os::unix::fs::symlink("x", m.p("to-x")).unwrap();
    let out = sh(
        &m.backing(""),
        "setfattr -h -n trusted.t -v link to-x && setfattr -n trusted.t -v target x",
    );
    ok(&out);
    assert_eq!(
        lgetxattr(&m.p("to-x"), "trusted.t", 64),
        Ok(b"link".to_vec())
    );
    assert_eq!(
        lgetxattr(&m.p("x"), "trusted.t", 64),
        Ok(b"target".to_vec())
    );
    assert_eq!(lgetxattr(&m.p("to-x"), "user.k", 64), Err(libc::ENODATA));
    let out = sh(&m.mnt, "setfattr -x user.k x && getfattr -d x");
    assert!(!ok(&out).contains("user.k"));

    // Set, list and remove land on the link itself, never on its target.
    let out = sh(
        &m.mnt,
        "setfattr -h -n trusted.s -v own to-x && getfattr -h --only-values -n trusted.s to-x \
         && getfattr -h -m - --absolute-names to-x | grep -c trusted",
    );
    assert_eq!(ok(&out).trim(), "own2");
    assert_eq!(
        lgetxattr(&m.backing("x"), "trusted.s", 64),
        Err(libc::ENODATA)
    );
    assert_eq!(
        lgetxattr(&m.backing("to-x"), "trusted.s", 64),
        Ok(b"own".to_vec())
    );
    ok(&sh(&m.mnt, "setfattr -h -x trusted.s to-x"));
    assert_eq!(
        lgetxattr(&m.backing("to-x"), "trusted.s", 64),
        Err(libc::ENODATA)
    );
    assert_eq!(
        lgetxattr(&m.backing("x"), "trusted.t", 64),
        Ok(b"target".to_vec())
    );
    // A directory's own attributes (the root's and a subdirectory's), and
    // the errors of create-only, replace-only and removing what is not there.
    fs::create_dir(m.p("d")).unwrap();
    for dir in [m.p("d"), m.p("")] {
        assert_eq!(lsetxattr(&dir, "user.dir", b"v1", 0), Ok(()));
        assert_eq!(
            lsetxattr(&dir, "user.dir", b"v2", libc::XATTR_CREATE),
            Err(libc::EEXIST)
        );
        assert_eq!(
            lsetxattr(&dir, "user.none", b"v", libc::XATTR_REPLACE),
            Err(libc::ENODATA)
        );
        assert_eq!(
            lsetxattr(&dir, "user.dir", b"v3", libc::XATTR_REPLACE),
            Ok(())
        );
        assert_eq!(lgetxattr(&dir, "user.dir", 64), Ok(b"v3".to_vec()));
        let list = ok(&sh(&dir, "getfattr -h -d . 2>&1"));
        assert!(list.contains("user.dir=\"v3\""), "{list}");
    }
    assert_eq!(
        lgetxattr(&m.backing("d"), "user.dir", 64),
        Ok(b"v3".to_vec())
    );
    ok(&sh(&m.mnt, "setfattr -x user.dir d"));
    assert_eq!(
        lgetxattr(&m.backing("d"), "user.dir", 64),
        Err(libc::ENODATA)
    );
    let out = sh(&m.mnt, "setfattr -x user.dir d 2>&1; echo rc=$?");
    assert!(String::from_utf8_lossy(&out.stdout).contains("No such attribute"));
    ok(&sh(&m.mnt, "setfattr -x user.dir ."));

    // A file that is open but has no name any more keeps its attributes.
    fs::write(m.p("gone"), b"g").unwrap();
    let f = fs::File::open(m.p("gone")).unwrap();
    fs::remove_file(m.p("gone")).unwrap();
    let fd = f.as_raw_fd();
    let (k, v) = (CString::new("user.kept").unwrap(), b"still");
    let rc = unsafe { libc::fsetxattr(fd, k.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let mut buf = [0u8; 16];
    let n = unsafe { libc::fgetxattr(fd, k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(&buf[..n.max(0) as usize], b"still");
    let n = unsafe { libc::flistxattr(fd, buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(&buf[..n.max(0) as usize], b"user.kept\0");
    assert_eq!(unsafe { libc::fremovexattr(fd, k.as_ptr()) }, 0);
    let n = unsafe { libc::flistxattr(fd, buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(n, 0);
}

/// `lsetxattr`, or the errno.
fn lsetxattr(p: &Path, name: &str, val: &[u8], flags: i32) -> Result<(), i32> {
    let n = CString::new(name).unwrap();
    let r = unsafe {
        libc::lsetxattr(
            cs(p).as_ptr(),
            n.as_ptr(),
            val.as_ptr().cast(),
            val.len(),
            flags,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    Ok(())
}

/// `lgetxattr` with a buffer of `size` bytes (0: the size query, answered
/// as that many zero bytes), or the errno.
fn lgetxattr(p: &Path, name: &str, size: usize) -> Result<Vec<u8>, i32> {
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; size];
    let r = unsafe {
        libc::lgetxattr(
            cs(p).as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    buf.resize(r as usize, 0);
    Ok(buf)
}

#[test]
fn setattr_times_modes_and_sizes() {
    let m = Mount::over_itself("setattr");
    let p = m.p("f");
    fs::write(&p, b"0123456789").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o4751)).unwrap();
    assert_eq!(stat(&p).st_mode & 0o7777, 0o4751);
    assert_eq!(stat(&m.backing("f")).st_mode & 0o7777, 0o4751);
    // truncate by path, grow and shrink
    let c = cs(&p);
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 3) }, 0);
    assert_eq!(fs::read(&p).unwrap(), b"012");
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 5) }, 0);
    assert_eq!(fs::read(&p).unwrap(), b"012\0\0");
    // utimensat: a fixed atime, mtime left alone (UTIME_OMIT), then UTIME_NOW
    let before = stat(&p);
    let ts = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 5,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    ];
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) },
        0
    );
    let st = stat(&p);
    assert_eq!((st.st_atime, st.st_atime_nsec), (1_000_000_000, 5));
    assert_eq!(
        (st.st_mtime, st.st_mtime_nsec),
        (before.st_mtime, before.st_mtime_nsec)
    );
    let now = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
    ];
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), now.as_ptr(), 0) },
        0
    );
    assert!(stat(&p).st_atime > 1_000_000_000);
    // A symlink's own times (AT_SYMLINK_NOFOLLOW) are settable too.
    std::os::unix::fs::symlink("f", m.p("l")).unwrap();
    let lc = cs(&m.p("l"));
    assert_eq!(
        unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                lc.as_ptr(),
                ts.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        },
        0
    );
    assert_eq!(stat(&m.p("l")).st_atime, 1_000_000_000);
}

/// A program that is running cannot be truncated: open(O_TRUNC) answers
/// ETXTBSY and the program's bytes stay as they are (the kernel checks only
/// after the filesystem's open, so casafs must not truncate in open).
#[test]
fn a_running_program_is_not_truncated_by_a_refused_open() {
    let m = Mount::over_itself("etxtbsy");
    let exe = m.p("prog");
    fs::copy("/bin/sleep", &exe).unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    let size = fs::metadata(&exe).unwrap().len();
    let mut child = std::process::Command::new(&exe).arg("30").spawn().unwrap();
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        let r = OpenOptions::new()
            .read(flags & libc::O_ACCMODE != libc::O_WRONLY)
            .write(flags & libc::O_ACCMODE != libc::O_RDONLY)
            .custom_flags(flags & libc::O_TRUNC)
            .open(&exe);
        assert_eq!(errno_of(r), libc::ETXTBSY, "open flags {flags:#o}");
    }
    assert_eq!(
        fs::metadata(&exe).unwrap().len(),
        size,
        "the program's bytes"
    );
    assert_eq!(fs::metadata(m.backing("prog")).unwrap().len(), size);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the program still runs"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // Once it has ended, it can be rewritten.
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&exe)
        .unwrap();
    assert_eq!(fs::metadata(&exe).unwrap().len(), 0);
}

#[test]
fn open_flags_trunc_append_excl() {
    let m = Mount::over_itself("openflags");
    let p = m.p("f");
    fs::write(&p, b"hello world").unwrap();
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"!").unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"hello world!");
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"");
    let e = OpenOptions::new().write(true).create_new(true).open(&p);
    assert_eq!(errno_of(e), libc::EEXIST);
    let e = File::open(m.p("missing"));
    assert_eq!(errno_of(e), libc::ENOENT);
    // O_CREAT without O_EXCL on an existing file opens it.
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .unwrap();
    f.write_all(b"abc").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"abc");
}

#[test]
fn holes_seek_data_copy_file_range_and_locks() {
    let m = Mount::over_itself("holes");
    let p = m.p("sparse");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    let fd = f.as_raw_fd();
    let block = vec![7u8; 1 << 20];
    (&f).write_all(&block).unwrap();
    (&f).write_all(&block).unwrap();
    // Punch a hole in the first MiB.
    let rc = unsafe {
        libc::fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            1 << 20,
        )
    };
    assert_eq!(rc, 0, "punch hole: {}", std::io::Error::last_os_error());
    assert_eq!(f.metadata().unwrap().len(), 2 << 20);
    let data = unsafe { libc::lseek(fd, 0, libc::SEEK_DATA) };
    assert_eq!(data, 1 << 20, "SEEK_DATA finds the data after the hole");
    let hole = unsafe { libc::lseek(fd, 0, libc::SEEK_HOLE) };
    assert_eq!(hole, 0);
    let mut first = vec![1u8; 4096];
    (&f).seek(SeekFrom::Start(0)).unwrap();
    (&f).read_exact(&mut first).unwrap();
    assert!(first.iter().all(|&b| b == 0), "the hole reads as zeros");
    // Preallocation extends.
    assert_eq!(unsafe { libc::fallocate(fd, 0, 0, 3 << 20) }, 0);
    assert_eq!(f.metadata().unwrap().len(), 3 << 20);
    // copy_file_range between two files of the mount.
    let q = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.p("copy"))
        .unwrap();
    let mut off_in: i64 = 1 << 20;
    let mut off_out: i64 = 0;
    let n = unsafe { libc::copy_file_range(fd, &mut off_in, q.as_raw_fd(), &mut off_out, 4096, 0) };
    assert_eq!(n, 4096);
    assert_eq!(fs::read(m.p("copy")).unwrap(), vec![7u8; 4096]);
    // flock and POSIX locks conflict across open file descriptions.
    let g = File::open(&p).unwrap();
    assert_eq!(unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) }, 0);
    assert_eq!(
        unsafe { libc::flock(g.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        -1
    );
    assert_eq!(unsafe { libc::flock(fd, libc::LOCK_UN) }, 0);
    let out = sh(
        &m.mnt,
        "python3 -c \"import fcntl,os,sys\nf=open('sparse','r+')\nfcntl.lockf(f, fcntl.LOCK_EX)\npid=os.fork()\nif pid==0:\n  g=open('sparse','r+')\n  try:\n    fcntl.lockf(g, fcntl.LOCK_EX|fcntl.LOCK_NB); os._exit(1)\n  except OSError: os._exit(0)\nprint(os.waitpid(pid,0)[1])\"",
    );
    assert_eq!(
        ok(&out).trim(),
        "0",
        "a POSIX lock held by another process conflicts"
    );
}

#[test]
fn descriptors_outlive_their_names() {
    for defer in ["never", "always"] {
        let m = Mount::builder("unlinked")
            .opt(&format!("defer_unlink={defer}"))
            .start();
        let p = m.p("victim");
        fs::write(&p, b"payload").unwrap();
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let fd = f.as_raw_fd();
        fs::remove_file(&p).unwrap();
        assert!(!p.exists(), "the name is gone at once ({defer})");
        assert_eq!(names(&m.mnt), ["state"]);
        let mut s = String::new();
        (&f).read_to_string(&mut s).unwrap();
        assert_eq!(s, "payload");
        (&f).write_all(b"+more").unwrap();
        assert_eq!(f.metadata().unwrap().len(), 12, "fstat works");
        f.set_len(3).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 3, "ftruncate works");
        assert_eq!(unsafe { libc::fchmod(fd, 0o600) }, 0, "fchmod");
        assert_eq!(f.metadata().unwrap().mode() & 0o777, 0o600);
        assert_eq!(unsafe { libc::fchown(fd, 65534, 65534) }, 0, "fchown");
        assert_eq!(f.metadata().unwrap().uid(), 65534);
        let ts = [
            libc::timespec {
                tv_sec: 1_234_567_890,
                tv_nsec: 0,
            },
            libc::timespec {
                tv_sec: 1_234_567_890,
                tv_nsec: 0,
            },
        ];
        assert_eq!(unsafe { libc::futimens(fd, ts.as_ptr()) }, 0, "futimens");
        assert_eq!(f.metadata().unwrap().mtime(), 1_234_567_890);
        assert_eq!(unsafe { libc::fallocate(fd, 0, 0, 8192) }, 0, "fallocate");
        assert_eq!(f.metadata().unwrap().len(), 8192);
        drop(f);
        // Nothing of it is left anywhere in the backing tree.
        let leftovers = sh(
            &m.backing(""),
            "find . -name 'victim' -o -name '.fuse_hidden*' | wc -l",
        );
        assert_eq!(ok(&leftovers).trim(), "0");
    }
}

/// As natively, a file removed while a process holds only a path
/// descriptor of it (no open file) lives on for that holder, who can still
/// open it through the descriptor; its space is freed once it lets go.
#[test]
fn a_deleted_file_only_a_path_descriptor_holds_reopens_through_it() {
    let m = Mount::over_itself("opath-only");
    let f = m.p("f");
    // Made beneath: no handle of it is open (or still being released)
    // through the mount.
    fs::write(m.backing("f"), b"old data!").unwrap();
    let held = path_descriptor(&f);
    fs::remove_file(&f).unwrap();
    for i in 0..8 {
        fs::write(m.p(&format!("g{i}")), b"NEW").unwrap();
    }
    let st = held.metadata().unwrap();
    assert_eq!((st.len(), st.nlink()), (9, 0));
    let reopened = fs::read(format!("/proc/self/fd/{}", held.as_raw_fd()));
    assert_eq!(reopened.unwrap(), b"old data!");
    drop(held);
    deleted_f_is_freed(&m);
}

#[test]
fn a_deleted_file_held_by_a_path_descriptor_is_never_another_file() {
    for defer in ["never", "always"] {
        let m = Mount::builder("opath-held")
            .opt(&format!("defer_unlink={defer}"))
            .start();
        let f = m.p("f");
        let mut w = File::create(&f).unwrap();
        w.write_all(b"old data!").unwrap();
        let held = path_descriptor(&f);
        fs::remove_file(&f).unwrap();
        drop(w);
        // The last close is served; ext4 hands the freed inode number to
        // the next new file.
        std::thread::sleep(std::time::Duration::from_millis(300));
        for i in 0..8 {
            fs::write(m.p(&format!("g{i}")), b"NEW").unwrap();
        }
        let reopen = || fs::read(format!("/proc/self/fd/{}", held.as_raw_fd()));
        match defer {
            // As natively: the deleted file lives on for its holder.
            "never" => {
                let st = held.metadata().unwrap();
                assert_eq!((st.len(), st.nlink()), (9, 0), "{defer}");
                assert_eq!(reopen().unwrap(), b"old data!", "{defer}");
            }
            // The graveyard lets it go at its last close, so the holder
            // may lose it, but never sees another file in its place.
            _ => {
                assert!(held.metadata().map_or(true, |st| st.len() == 9), "{defer}");
                assert!(reopen().map_or(true, |d| d == b"old data!"), "{defer}");
            }
        }
        drop(held);
        deleted_f_is_freed(&m);
    }
}

/// An `O_PATH` descriptor of `p`: it holds the object, opens nothing.
fn path_descriptor(p: &std::path::Path) -> File {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(p)
        .unwrap()
}

/// The deleted file `f` is gone from the backing once its holder let go:
/// no grave, no descriptor of it in the daemon, only the eight new files
/// written after it.
fn deleted_f_is_freed(m: &Mount) {
    let pid = m.pid();
    eventually("the deleted file's space is freed", || {
        let fds = ok(&sh(
            &m.backing(""),
            &format!("ls -l /proc/{pid}/fd | grep -c '/f (deleted)' || true"),
        ));
        let files = ok(&sh(&m.backing(""), "find . -type f | xargs -r cat"));
        fds.trim() == "0" && files == "NEW".repeat(8)
    });
}

#[test]
fn a_removed_working_directory_answers_enoent_as_natively() {
    let m = Mount::over_itself("cwd-removed");
    fs::create_dir(m.p("d")).unwrap();
    // After the attribute time, so the kernel asks casafs about it again.
    let out = sh(
        &m.p("d"),
        "rmdir ../d && sleep 1.2 && { stat x; : > x; } 2>&1; true",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // What dash and stat say natively for ENOENT there.
    assert!(
        text.contains("'x': No such file or directory")
            && text.contains("cannot create x: Directory nonexistent")
            && !text.contains("Stale"),
        "{text}"
    );
}

#[test]
fn other_users_get_in_and_own_what_they_create() {
    let m = Mount::over_itself("users");
    let (uid, gid) = user_ids("nobody");
    fs::create_dir(m.p("shared")).unwrap();
    chmod(&m.p("shared"), 0o1777);
    let out = sh_as(
        uid,
        gid,
        &m.p("shared"),
        "echo hi > mine && mkdir d && ln -s mine l && mkfifo p && id -u",
    );
    assert_eq!(ok(&out).trim(), uid.to_string());
    for n in ["mine", "d", "l", "p"] {
        let st = stat(&m.backing(&format!("shared/{n}")));
        assert_eq!(
            (st.st_uid, st.st_gid),
            (uid, gid),
            "{n} is owned by its creator on disk"
        );
    }
    // The kernel checks permissions: a private directory stays private.
    fs::create_dir(m.p("private")).unwrap();
    chmod(&m.p("private"), 0o700);
    let out = sh_as(
        uid,
        gid,
        &m.mnt,
        "ls private 2>&1; touch private/x 2>&1; echo done",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Permission denied"), "{text}");
    assert!(!m.backing("private/x").exists());
    // setgid directories hand down their group.
    fs::create_dir(m.p("sg")).unwrap();
    std::os::unix::fs::chown(m.p("sg"), None, Some(4242)).unwrap();
    chmod(&m.p("sg"), 0o2777);
    ok(&sh_as(uid, gid, &m.p("sg"), "touch f && mkdir d"));
    assert_eq!(stat(&m.backing("sg/f")).st_gid, 4242);
    assert_eq!(stat(&m.backing("sg/d")).st_gid, 4242);
    assert_ne!(stat(&m.backing("sg/d")).st_mode & libc::S_ISGID, 0);
}

#[test]
fn descriptors_stay_bounded_on_a_large_walk() {
    let m = Mount::over_itself("bounded");
    // 20 directories of 500 files: far more inodes than a directory cache.
    ok(&sh(
        &m.mnt,
        "for d in $(seq 1 20); do mkdir d$d; (cd d$d && seq 1 500 | xargs touch); done",
    ));
    ok(&sh(&m.mnt, "find . -type f | wc -l; ls -lR > /dev/null"));
    let fds = fs::read_dir(format!("/proc/{}/fd", m.pid()))
        .unwrap()
        .count();
    assert!(
        fds < 200,
        "the daemon holds {fds} descriptors after walking 10,000 files"
    );
    let st = m.stats();
    assert!(st["inodes_cached"].as_u64().unwrap() >= 10_000);
}

/// What writes and truncates leave of set-ID bits and file capabilities,
/// for an unprivileged writer and for root: the same on casafs as on the
/// native directory (with kernel passthrough on, where casafs must keep
/// set-ID files off it and leaves capabilities to the backing filesystem).
/// `settle` runs before each writer: through casafs it waits for the
/// release of the handle that wrote the file (kernel passthrough I/O of a
/// file runs with the credentials of its registration, which casafs makes
/// nobody's, and a new handle shares it while an older one is open, so a
/// root writer would clear the bits there).
fn set_id_outcomes(dir: &Path, settle: &dyn Fn()) -> Vec<(String, String)> {
    // cap_net_raw+ep, as setcap(8) writes it (v2).
    const CAP: [u8; 20] = [
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let (uid, gid) = user_ids("nobody");
    // (case, mode, what the writer does, writer, file's group)
    let cases = [
        ("write", 0o6777, "echo x >> f", uid, 0),
        ("truncate", 0o6777, "truncate -s 1 f", uid, 0),
        ("o_trunc", 0o6777, ": > f", uid, 0),
        ("sgid_no_xgrp", 0o2766, "echo x >> f", uid, 0),
        ("sgid_no_xgrp_in_group", 0o2766, "echo x >> f", uid, gid),
        ("sgid_xgrp_in_group", 0o2776, "echo x >> f", uid, gid),
        ("root_write", 0o6777, "echo x >> f", 0, 0),
    ];
    let mut out = Vec::new();
    for (name, mode, script, who, group) in cases {
        let d = dir.join(name);
        fs::create_dir_all(&d).unwrap();
        chmod(&d, 0o777);
        fs::write(d.join("f"), b"data").unwrap();
        std::os::unix::fs::chown(d.join("f"), Some(0), Some(group)).unwrap();
        chmod(&d.join("f"), mode);
        let f = cs(&d.join("f"));
        let set = unsafe {
            libc::setxattr(
                f.as_ptr(),
                c"security.capability".as_ptr(),
                CAP.as_ptr().cast(),
                CAP.len(),
                0,
            )
        };
        assert_eq!(set, 0, "{name}: {}", std::io::Error::last_os_error());
        settle();
        let o = sh_as(who, if who == 0 { 0 } else { gid }, &d, script);
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let m = stat(&d.join("f")).st_mode & 0o7777;
        let caps = lgetxattr(&d.join("f"), "security.capability", 64).is_ok();
        out.push((name.to_string(), format!("{m:o} caps {caps}")));
    }
    out
}

#[test]
fn unprivileged_writes_clear_set_id_bits_as_natively() {
    let native = TempDir::new("setid-native");
    chmod(native.path(), 0o755);
    let want = set_id_outcomes(native.path(), &|| {});
    assert_eq!(
        want[0].1, "777 caps false",
        "the native kernel clears them: {want:?}"
    );
    let m = Mount::over_itself("setid");
    fs::create_dir_all(m.p("t")).unwrap();
    let settled = || {
        eventually("the writer's handle released", || {
            m.stats()["open_handles"] == 0
        })
    };
    assert_eq!(set_id_outcomes(&m.p("t"), &settled), want);
}

/// A file that becomes set-group-ID while a handle of it passes through
/// (held open here; a close whose release is still on its way does the
/// same): another user's write through a new handle still clears the bit,
/// as natively, because that handle's writes go through casafs.
#[test]
fn a_set_id_file_opened_beside_a_passthrough_handle_loses_its_bits_on_write() {
    let (uid, gid) = user_ids("nobody");
    let outcome = |dir: &Path| -> (String, Vec<u8>) {
        let d = dir.join("sgid");
        fs::create_dir_all(&d).unwrap();
        chmod(&d, 0o777);
        let f = d.join("f");
        let mut held = File::create(&f).unwrap();
        held.write_all(b"data").unwrap();
        std::os::unix::fs::chown(&f, Some(0), Some(gid)).unwrap();
        chmod(&f, 0o2776);
        let o = sh_as(uid, gid, &d, "echo x >> f");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        drop(held);
        let mode = format!("{:o}", stat(&f).st_mode & 0o7777);
        (mode, fs::read(&f).unwrap())
    };
    let native = TempDir::new("sgid-native");
    chmod(native.path(), 0o755);
    let want = outcome(native.path());
    assert_eq!(want, ("776".to_string(), b"datax\n".to_vec()));
    let m = Mount::over_itself("sgid-beside");
    fs::create_dir_all(m.p("t")).unwrap();
    chmod(&m.p("t"), 0o755);
    assert_eq!(outcome(&m.p("t")), want);
    assert_eq!(
        stat(&m.backing("t/sgid/f")).st_mode & 0o7777,
        0o776,
        "on the backing disk too"
    );
}

#[test]
fn replacing_an_open_file_is_atomic_on_the_backing() {
    // Save by write-to-temporary-then-rename while readers hold the old
    // file: where unlinks need no deferring, the backing sees one atomic
    // rename, so another host or a process beneath the mount never finds
    // the name missing.
    let m = Mount::over_itself("atomic-replace");
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d/data"), b"v0").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        let path = m.backing("d/data");
        std::thread::spawn(move || {
            let (mut seen, mut missing) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match fs::symlink_metadata(&path) {
                    Ok(_) => seen += 1,
                    Err(_) => missing += 1,
                }
            }
            (seen, missing)
        })
    };
    for i in 1..=1000 {
        let held = fs::File::open(m.p("d/data")).unwrap();
        fs::write(m.p("d/tmp"), format!("v{i}")).unwrap();
        fs::rename(m.p("d/tmp"), m.p("d/data")).unwrap();
        // The reader keeps the version it opened.
        let mut s = String::new();
        (&held).read_to_string(&mut s).unwrap();
        assert_eq!(s, format!("v{}", i - 1));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (seen, missing) = watcher.join().unwrap();
    assert!(seen > 0);
    assert_eq!(
        missing,
        0,
        "the name was missing {missing} times of {}",
        seen + missing
    );
    assert_eq!(fs::read(m.backing("d/data")).unwrap(), b"v1000");
    assert_eq!(names(&m.backing("d")), ["data"]);
}

#[test]
fn a_set_id_file_made_by_open_with_o_trunc_keeps_its_bits_as_natively() {
    // open(O_CREAT|O_TRUNC) of a new name truncates nothing, so nothing
    // strips the set-user-ID bit an unprivileged creator asked for.
    let m = Mount::over_itself("creat-trunc-suid");
    let native = TempDir::new("creat-trunc-suid-native");
    let (uid, gid) = user_ids("nobody");
    let script = "umask 0; python3 -c \"import os; os.close(os.open('x', os.O_CREAT|os.O_TRUNC|os.O_WRONLY, 0o4755))\"";
    let mut modes = Vec::new();
    for d in [native.path().to_path_buf(), m.p("w")] {
        fs::create_dir_all(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        ok(&sh_as(uid, gid, &d, script));
        let st = stat(&d.join("x"));
        assert_eq!(st.st_uid, uid);
        modes.push(st.st_mode & 0o7777);
    }
    assert_eq!(modes[0], 0o4755, "native");
    assert_eq!(modes[1], modes[0], "through casafs as natively");
}

/// A process whose working directory is removed (by itself or anyone)
/// still gets its attributes, with no links, also after the attribute
/// cache time: as natively.
#[test]
fn a_removed_working_directory_still_answers_as_natively() {
    let script = "import os, time\n\
os.mkdir('gone'); os.chdir('gone'); os.rmdir('../gone')\n\
time.sleep(1.5)\n\
st = os.stat('.')\n\
print(st.st_nlink, oct(st.st_mode & 0o7777), os.listdir('.'))\n";
    let run = |dir: &Path| ok(&sh(dir, &format!("python3 -c \"{script}\"")));
    let native = TempDir::new("gone-native");
    let want = run(native.path());
    assert_eq!(want.split(' ').next(), Some("0"), "natively: {want}");
    let m = Mount::over_itself("gone");
    assert_eq!(run(&m.mnt), want);
}

/// An unprivileged O_DIRECT write clears the set-user-ID and set-group-ID
/// bits of a file root made writable by all, as natively.
#[test]
fn an_unprivileged_direct_write_clears_set_id_bits_as_natively() {
    // The mode is looked at first, as `ls -l` before a write would.
    let write = "import os, mmap\n\
os.stat('f')\n\
buf = mmap.mmap(-1, 4096); buf.write(b'x' * 4096)\n\
fd = os.open('f', os.O_WRONLY | os.O_DIRECT); os.write(fd, buf); os.close(fd)\n";
    // Asked for the mode alone (as `ls -l` and `stat -c %A` ask): a stat
    // asking for the size too would have refreshed everything.
    let (uid, gid) = user_ids("tests");
    let run = |dir: &Path| {
        let f = dir.join("f");
        fs::write(&f, b"").unwrap();
        chmod(&f, 0o6777);
        ok(&sh_as(
            uid,
            gid,
            dir,
            &format!("/usr/bin/python3 -c \"{write}\" && stat -c %a f"),
        ))
    };
    let native = TempDir::new("dio-native");
    let want = run(native.path());
    assert_eq!(want.trim(), "777", "natively");
    let m = Mount::over_itself("dio");
    assert_eq!(run(&m.mnt), want);
    // The writer's own file, set-group-ID without group execute (which a
    // write keeps): what stat shows at once is what the disk holds.
    let own = |dir: &Path| {
        let f = dir.join("f");
        fs::write(&f, b"this is a test").unwrap();
        std::os::unix::fs::chown(&f, Some(uid), Some(gid)).unwrap();
        chmod(&f, 0o6644);
        ok(&sh_as(
            uid,
            gid,
            dir,
            &format!("/usr/bin/python3 -c \"{write}\" && stat -c %a f"),
        ))
    };
    let want = own(native.path());
    assert_eq!(want.trim(), "2644", "natively");
    assert_eq!(own(&m.mnt), want);
}

/// `open(O_TMPFILE)` makes a file without a name, owned by its maker with
/// the mode and umask asked for; linking its descriptor names it (a
/// `casa-*.log` name is routed like any other), and one never named leaves
/// nothing behind.
#[test]
fn o_tmpfile_makes_a_nameless_file_that_a_link_names() {
    let m = Mount::over_itself("tmpfile");
    let (uid, gid) = user_ids("nobody");
    fs::create_dir(m.p("shared")).unwrap();
    chmod(&m.p("shared"), 0o1777);
    // linkat(AT_EMPTY_PATH), as xfs_io's flink does: a link through
    // /proc/self/fd answers EXDEV on FUSE (the kernel's, on any FUSE
    // filesystem).
    let script = r#"python3 - <<'PY'
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def link(fd, name):
    if libc.linkat(fd, b"", -100, name.encode(), 0x1000) != 0:
        raise OSError(ctypes.get_errno(), name)
os.umask(0o027)
fd = os.open(".", os.O_TMPFILE | os.O_RDWR, 0o666)
os.write(fd, b"kept\n")
print(sorted(os.listdir(".")), oct(os.fstat(fd).st_mode & 0o7777), os.fstat(fd).st_nlink)
link(fd, "named")
os.lseek(fd, 0, 0)
print(os.read(fd, 100), os.stat("named").st_nlink, os.stat("named").st_ino == os.fstat(fd).st_ino)
log = os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o644)
os.write(log, b"log\n")
link(log, "casa-20260101-000000.log")
gone = os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o600)
os.write(gone, b"gone\n")
os.close(gone)
print(sorted(os.listdir(".")))
PY"#;
    let out = ok(&sh_as(uid, gid, &m.p("shared"), script));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "[] 0o640 0", "{out}");
    assert_eq!(lines[1], "b'kept\\n' 1 True", "{out}");
    // A routed name is left out of its directory's listing, as always.
    assert_eq!(lines[2], "['named']", "{out}");
    let st = stat(&m.backing("shared/named"));
    assert_eq!(
        (st.st_uid, st.st_gid, st.st_mode & 0o7777),
        (uid, gid, 0o640)
    );
    assert_eq!(fs::read(m.p("shared/named")).unwrap(), b"kept\n");
    // The log went to the logs area, and is read by its own name.
    assert_eq!(
        fs::read(m.p("shared/casa-20260101-000000.log")).unwrap(),
        b"log\n"
    );
    assert!(!m.backing("shared/casa-20260101-000000.log").exists());
    assert_eq!(
        fs::read(m.backing("state/logs/casa/casa-20260101-000000.log")).unwrap(),
        b"log\n"
    );
    assert_eq!(names(&m.backing("shared")), vec!["named".to_string()]);
}

/// A program others may run but not read (mode 0711): natively exec needs
/// only the execute permission. Reading it stays refused.
#[test]
fn a_program_others_may_run_but_not_read_runs() {
    let m = Mount::over_itself("execonly");
    let (uid, gid) = user_ids("nobody");
    fs::copy("/bin/true", m.p("tool")).unwrap();
    chmod(&m.p("tool"), 0o711);
    let out = sh_as(
        uid,
        gid,
        &m.mnt,
        "./tool && echo ran; cat tool >/dev/null 2>&1 || echo unreadable",
    );
    assert_eq!(ok(&out).trim(), "ran\nunreadable");
}

/// An O_TMPFILE file that a link has named is reached by that name, like
/// any other file: casafs keeps no descriptor of it (hundreds of them
/// would otherwise hold as many of the daemon's descriptors for as long as
/// the kernel caches their names).
#[test]
fn named_tmpfiles_hold_no_descriptor_of_the_daemon() {
    let m = Mount::over_itself("tmpfile-fds");
    let fds = || {
        fs::read_dir(format!("/proc/{}/fd", m.pid()))
            .unwrap()
            .count()
    };
    let before = fds();
    let script = r#"python3 - <<'PY'
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
for i in range(300):
    fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o644)
    os.write(fd, b"x")
    if libc.linkat(fd, b"", -100, f"t{i}".encode(), 0x1000) != 0:
        raise OSError(ctypes.get_errno(), "linkat")
    os.close(fd)
print(len(os.listdir(".")))
PY"#;
    assert_eq!(ok(&sh(&m.mnt, script)).trim(), "301");
    // Still cached by the kernel: stat them all.
    for i in 0..300 {
        fs::metadata(m.p(&format!("t{i}"))).unwrap();
    }
    let after = fds();
    assert!(
        after < before + 30,
        "daemon descriptors {before} -> {after}"
    );
}
