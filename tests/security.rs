//! A local user must never get through casafs what Linux refuses them
//! natively. Each test is an attack as a hostile user would run it (uid
//! `tests`, which `.ci/run` makes), on the production shape: casafs as
//! root, mounted over itself with `allow_other`, its areas on another
//! filesystem (a tmpfs) outside the mount. Every attack first tries the
//! way that worked before casafs acted as its callers; where that way is
//! closed now, the next defence is tried too.
//!
//! `CASAFS_BIN=/path/to/an/older/casafs cargo nextest run --test security`
//! runs them against another build.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The unprivileged attacker.
fn attacker() -> (u32, u32) {
    user_ids("tests")
}

/// casafs mounted over `tmp/tree` with both areas on a tmpfs of their own
/// (`tmp/fast`), as the production fstab line has scratch on NVMe.
struct Shape {
    m: Mount,
    fast: Tmpfs,
}

impl Shape {
    fn logs(&self) -> PathBuf {
        self.fast.0.join("logs")
    }
    fn scratch(&self) -> PathBuf {
        self.fast.0.join("scratch")
    }
}

fn production(tag: &str, extra: &[&str]) -> Shape {
    production_held_to(tag, extra, None)
}

/// The production shape with the daemon held to `nofile` descriptors.
fn production_held_to(tag: &str, extra: &[&str], nofile: Option<u64>) -> Shape {
    let tmp = TempDir::new(tag);
    let fast = Tmpfs::new(tmp.path().join("fast"), "mode=0755,size=64m");
    let tree = tmp.path().join("tree");
    let mut b = Mount::builder(tag)
        .opt(&format!("logs={}", fast.0.join("logs").display()))
        .opt(&format!("scratch={}", fast.0.join("scratch").display()));
    for o in extra {
        b = b.arg(o);
    }
    if let Some(n) = nofile {
        b = b.nofile(n);
    }
    let m = b.source(&tree, tmp).start();
    Shape { m, fast }
}

/// Someone else (root) makes a directory, writes, links, reads back and
/// lists: the names listed, or why it was refused.
fn someone_else_is_served(m: &Mount) -> Result<Vec<String>, String> {
    let mine = m.p("mine");
    let served = (|| -> std::io::Result<Vec<String>> {
        fs::create_dir(&mine)?;
        fs::write(mine.join("a"), b"mine")?;
        fs::hard_link(mine.join("a"), mine.join("b"))?;
        assert_eq!(fs::read(mine.join("b"))?, b"mine");
        Ok(names(&mine))
    })();
    served.map_err(|e| e.to_string())
}

/// What each holder (`python_holding_as`) printed once it held all it
/// could, and whether someone else was served while they held it; the
/// holders then let go.
fn served_while_held(
    m: &Mount,
    holders: &mut [std::process::Child],
) -> (Vec<String>, Result<Vec<String>, String>) {
    let said = holders
        .iter_mut()
        .map(|h| {
            let mut line = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(h.stdout.take().unwrap()),
                &mut line,
            )
            .unwrap();
            line.trim().to_string()
        })
        .collect();
    let served = someone_else_is_served(m);
    for h in holders {
        drop(h.stdin.take());
        let _ = h.wait();
    }
    (said, served)
}

/// Debian's Python running `program` in `dir` as `uid`/`gid`, its stdin and
/// stdout piped: it holds what it opened until its stdin closes.
fn python_holding_as(uid: u32, gid: u32, dir: &Path, program: &str) -> std::process::Child {
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            program,
        ])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `dir` made, and given to the attacker.
fn attackers_dir(dir: impl AsRef<Path>) -> PathBuf {
    let dir = dir.as_ref();
    let (uid, gid) = attacker();
    fs::create_dir(dir).unwrap();
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
    dir.to_path_buf()
}

/// casafs over `tmp/tree` with the scratch area on a tmpfs of its own
/// (`fast_opts`) and a retention of 1 s for TMPPOINTING tables; returns
/// the mount, the tmpfs and the scratch area.
fn with_retention(tag: &str, fast_opts: &str) -> (Mount, Tmpfs, PathBuf) {
    retention_slowed(tag, fast_opts, None)
}

/// `with_retention`, with retention waiting 3 s at the fault point
/// `fault` (`CASAFS_FAULT_SLOW_...`) where one is given.
fn retention_slowed(tag: &str, fast_opts: &str, fault: Option<&str>) -> (Mount, Tmpfs, PathBuf) {
    let tmp = TempDir::new(tag);
    let fast = Tmpfs::new(tmp.path().join("fast"), fast_opts);
    let cfg = retention_config(&tmp);
    let tree = tmp.path().join("tree");
    let scratch = fast.0.join("scratch");
    let mut b = Mount::builder(tag)
        .opt(&format!("scratch={}", scratch.display()))
        .arg("--config")
        .arg(&cfg);
    if let Some(f) = fault {
        b = b.env(f, "3000");
    }
    let m = b.source(&tree, tmp).start();
    (m, fast, scratch)
}

/// Debian's Python, which every user may run (`tests/run.sh` installs it).
const PYTHON: &str = "/usr/bin/python3";

/// Runs a Python program as `uid:gid` in `dir` (a race needs a loop no
/// shell is quick enough for).
fn python_as(uid: u32, gid: u32, dir: &Path, program: &str) -> std::process::Output {
    sh_as(
        uid,
        gid,
        dir,
        &format!("exec {PYTHON} -c '{}'", program.replace('\'', "'\"'\"'")),
    )
}

/// A Python program to be run as `uid:gid` beside the test (a race's
/// other side).
fn python_command_as(uid: u32, gid: u32, program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={uid}"),
        &format!("--regid={gid}"),
        "--clear-groups",
        PYTHON,
        "-c",
        program,
    ]);
    c
}

/// The attacker swaps `f` and a symlink `l` to `victim` in `swap_in` (a
/// directory of its own, reached beside casafs) for 6 s, while asking
/// casafs to chmod `f` in `mounted` (the same directory through the
/// mount); returns what it printed.
fn race_chmod(mounted: &Path, swap_in: &Path, victim: &Path) -> String {
    let (uid, gid) = attacker();
    let program = format!(
        r#"
import ctypes, os, sys, time, threading
libc = ctypes.CDLL(None, use_errno=True)
a = {a:?}.encode(); b = {b:?}.encode()
stop = time.time() + 6
def swap():
    while time.time() < stop:
        libc.renameat2(-100, a, -100, b, 2)
threading.Thread(target=swap, daemon=True).start()
while time.time() < stop:
    try:
        os.chmod({target:?}, 0o4755)
    except OSError:
        pass
    if os.stat({victim:?}).st_mode & 0o4000:
        print("root's file is set-user-ID", flush=True)
        sys.exit(0)
"#,
        a = swap_in.join("f").to_string_lossy(),
        b = swap_in.join("l").to_string_lossy(),
        target = mounted.join("f").to_string_lossy(),
        victim = victim.to_string_lossy(),
    );
    let out = python_as(uid, gid, Path::new("/"), &program);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn chmod_through_a_swapped_symlink_never_reaches_roots_files() {
    let (uid, gid) = attacker();
    let victim_of = |dir: &Path| {
        let v = dir.join("victim");
        fs::write(&v, b"root's").unwrap();
        chmod(&v, 0o644);
        v
    };
    let unchanged = |v: &Path, out: &str| {
        let st = fs::metadata(v).unwrap();
        assert_eq!(
            (st.mode() & 0o7777, st.uid()),
            (0o644, 0),
            "root's file changed: {out}"
        );
    };
    // Over itself, a routed table: the attacker swaps in the area where it
    // can reach it, else through the mount.
    let s = production("sec-chmod", &[]);
    let victim = victim_of(&s.fast.0);
    attackers_dir(s.m.p("work"));
    ok(&sh_as(
        uid,
        gid,
        &s.m.p("work"),
        &format!(
            "mkdir TMPPOINTINGx && : > TMPPOINTINGx/f && ln -s {} TMPPOINTINGx/l",
            victim.display()
        ),
    ));
    let direct = s.scratch().join("TMPPOINTINGx");
    let reachable = sh_as(
        uid,
        gid,
        Path::new("/"),
        &format!("test -w {}", direct.display()),
    )
    .status
    .success();
    let mounted = s.m.p("work/TMPPOINTINGx");
    let out = race_chmod(
        &mounted,
        if reachable { &direct } else { &mounted },
        &victim,
    );
    unchanged(&victim, &out);
    drop(s);
    // Mounted beside its source, the attacker's own directory in place,
    // swapped in the source directly.
    let tmp = TempDir::new("sec-chmod2");
    let tree = tmp.path().join("tree");
    let victim = victim_of(tmp.path());
    let m = Mount::builder("sec-chmod2")
        .separate()
        .source(&tree, tmp)
        .start();
    attackers_dir(m.p("work"));
    ok(&sh_as(
        uid,
        gid,
        &m.p("work"),
        &format!(": > f && ln -s {} l", victim.display()),
    ));
    let out = race_chmod(&m.p("work"), &m.source.join("work"), &victim);
    unchanged(&victim, &out);
}

/// Runs `script` as the attacker in a native directory and in the mount
/// (each as `$D`), after `setup` as root in both; returns both outputs.
fn native_and_mounted(tag: &str, setup: &str, script: &str) -> (String, String) {
    let s = production(tag, &[]);
    let native = TempDir::new(&format!("{tag}-native"));
    let (uid, gid) = attacker();
    let mut outs = Vec::new();
    for d in [native.path().to_path_buf(), s.m.p("d")] {
        fs::create_dir_all(&d).unwrap();
        chmod(&d, 0o755);
        ok(&sh(&d, setup));
        let o = sh_as(
            uid,
            gid,
            Path::new("/"),
            &format!("D={}; cd $D; {script}", d.display()),
        );
        outs.push(format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr).replace(&d.display().to_string(), "$D")
        ));
    }
    drop(s);
    let mounted = outs.pop().unwrap_or_default();
    (outs.pop().unwrap_or_default(), mounted)
}

#[test]
fn acl_entries_refuse_what_they_refuse_natively() {
    let setup = "echo secret > f; chmod 0644 f; setfacl -m u:tests:--- f; \
                 mkdir sub; chmod 0755 sub; echo in > sub/g; setfacl -m u:tests:--- sub; \
                 echo open > h; chmod 0600 h; setfacl -m u:tests:r-- h";
    let script = "cat f 2>&1 | sed 's/.*: //'; test -r f && echo readable-f; \
                  cat sub/g 2>&1 | sed 's/.*: //'; ls sub 2>&1 | sed 's/.*: //'; \
                  cat h; test -r h && echo readable-h";
    let (native, mounted) = native_and_mounted("sec-acl", setup, script);
    assert!(native.contains("Permission denied"), "{native}");
    assert_eq!(mounted, native);
}

#[test]
fn default_acls_and_the_mask_come_out_as_natively_in_place_and_routed() {
    // A shared directory whose default ACL gives the attacker rw: what a
    // creator makes there, in place or routed, carries it, and the
    // creator's umask (077 here) gives way to it as natively. Root creates
    // in one directory, the attacker in another; and in a setgid directory
    // of a group the attacker is not in, it may not keep a set-group-ID bit.
    let setup = "mkdir -p shared mine sg; chmod 0770 shared; chmod 0777 mine; \
                 setfacl -m d:u:tests:rw-,d:g::r-x,d:o::---,u:tests:rwx shared; \
                 setfacl -m d:u:tests:rwx,d:g::r--,d:o::--- mine; \
                 chgrp nogroup sg; chmod 2777 sg; \
                 cd shared; umask 077; echo x > plain.txt; echo y > casa-20250101-000000.log; \
                 mkdir TMPPOINTING1; echo z > TMPPOINTING1/t";
    let script = "umask 077; cd mine; echo a > p; echo b > casa-20250101-000001.log; \
                  mkdir TMPPOINTING2; echo c > TMPPOINTING2/t; cd ../sg; umask 022; \
                  python3 -c 'import os; os.close(os.open(\"f\", os.O_CREAT, 0o2775)); \
                  os.mkdir(\"TMPPOINTING3\"); os.close(os.open(\"TMPPOINTING3/g\", os.O_CREAT, 0o2775))'; \
                  cd ..; for f in shared/plain.txt shared/casa-20250101-000000.log shared/TMPPOINTING1 \
                  shared/TMPPOINTING1/t mine/p mine/casa-20250101-000001.log mine/TMPPOINTING2 \
                  mine/TMPPOINTING2/t sg/f sg/TMPPOINTING3 sg/TMPPOINTING3/g; do \
                  getfacl -cp $f 2>&1; stat -c '%n %a %U %G' $f; done; \
                  cat shared/casa-20250101-000000.log shared/TMPPOINTING1/t";
    let (native, mounted) = native_and_mounted("sec-defacl", setup, script);
    assert!(native.contains("user:tests:rw-"), "{native}");
    assert!(native.contains("sg/f 755 tests nogroup"), "{native}");
    assert_eq!(mounted, native);
}

/// The attacker makes directories by the thousand and removes files it
/// still holds, as fast as it can: the daemon, held to 4,096 descriptors,
/// goes on serving another user, who can still make, write, link and list
/// files.
#[test]
fn one_users_directories_and_removed_files_never_use_up_the_daemons_descriptors() {
    let shape = production_held_to("sec-fds-dirs", &[], Some(4096));
    let m = &shape.m;
    let (uid, gid) = attacker();
    let dir = attackers_dir(m.p("u"));
    let program = r#"
import os, sys
held, made, refused = [], 0, 0
for i in range(5000):
    try:
        os.mkdir("d%d" % i)
        made += 1
    except OSError:
        refused += 1
for i in range(3000):
    try:
        with open("f%d" % i, "w") as f:
            f.write("x")
        held.append(os.open("f%d" % i, os.O_PATH))
        os.unlink("f%d" % i)
    except OSError:
        refused += 1
print(made, refused, flush=True)
sys.stdin.read()
"#;
    let mut attack = [python_holding_as(uid, gid, &dir, program)];
    // While the attacker holds all it made, another user is served.
    let (said, served) = served_while_held(m, &mut attack);
    assert_eq!(
        served,
        Ok(vec!["a".to_string(), "b".to_string()]),
        "another user refused after the attacker made (directories made, requests refused): {said:?}"
    );
}

/// Eight users at once, each holding as many files open as casafs lets one
/// user: together they never use up the daemon's descriptors (held to
/// 1,024); past the users' share a further open gets `ENFILE`, as from a
/// full system file table, and root is still served.
#[test]
fn many_users_holding_files_open_never_use_up_the_daemons_descriptors() {
    let shape = production_held_to("sec-fds-users", &[], Some(1024));
    let m = &shape.m;
    let shared = m.p("shared");
    fs::create_dir(&shared).unwrap();
    for i in 0..200 {
        fs::write(shared.join(format!("f{i}")), b"x").unwrap();
    }
    let program = r#"
import errno, os, sys
held, why = [], "none"
for i in range(200):
    try:
        held.append(os.open("f%d" % i, os.O_RDONLY))
    except OSError as e:
        why = errno.errorcode[e.errno]
        break
print(len(held), why, flush=True)
sys.stdin.read()
"#;
    let mut users: Vec<_> = (0..8)
        .map(|k| python_holding_as(60101 + k, 60101, &shared, program))
        .collect();
    // While every user holds what it could open, root is served.
    let (held, served) = served_while_held(m, &mut users);
    assert_eq!(
        served,
        Ok(vec!["a".to_string(), "b".to_string()]),
        "root refused while the users held (files open, why the next was refused): {held:?}"
    );
    let opened: usize = held
        .iter()
        .map(|l| l.split(' ').next().unwrap().parse::<usize>().unwrap())
        .sum();
    assert!(opened >= 128, "{held:?}");
    assert!(
        held.iter().any(|l| l.ends_with("ENFILE")),
        "no user was refused for all users' share: {held:?}"
    );
    assert!(
        held.iter()
            .all(|l| l.ends_with("ENFILE") || l.ends_with("EMFILE")),
        "{held:?}"
    );
}

#[test]
fn an_open_of_a_fifo_swapped_in_never_stalls_other_users() {
    // The attacker's own file, seen by the kernel as a regular file, is
    // replaced behind its back by a FIFO: in the backing tree, which is
    // reachable beside the mount when the mount is not over itself.
    let tmp = TempDir::new("sec-fifo");
    let tree = tmp.path().join("tree");
    let m = Mount::builder("sec-fifo")
        .separate()
        .source(&tree, tmp)
        .start();
    let (uid, gid) = attacker();
    attackers_dir(m.p("u"));
    ok(&sh_as(uid, gid, &m.p("u"), "echo x > f; cat f >/dev/null"));
    fs::write(m.p("other"), b"someone else's").unwrap();
    ok(&sh_as(uid, gid, &m.source.join("u"), "rm f && mkfifo f"));
    // The attacker opens it through the mount, several times at once: each
    // would hold a serving thread.
    let openers: Vec<_> = (0..16)
        .map(|_| {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--clear-groups",
                "timeout",
                "3",
                "cat",
            ])
            .arg(m.p("u/f"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            c.spawn().unwrap()
        })
        .collect();
    // Meanwhile another user is served at once.
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let other = m.p("other");
    std::thread::spawn(move || {
        let _ = tx.send(fs::read(&other).is_ok());
    });
    let served = rx.recv_timeout(Duration::from_secs(5));
    // Whatever happened, let the openers go: a writer releases a reader
    // waiting in the backing; `timeout` ends any waiting in the mount.
    let fifo = m.source.join("u/f");
    let _writer = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
    };
    for mut o in openers {
        let _ = o.wait();
    }
    assert_eq!(
        served,
        Ok(true),
        "another user's read waited {:?} behind opens of a FIFO",
        started.elapsed()
    );
}

#[test]
fn a_log_from_a_private_directory_is_private_in_the_logs_area_and_the_control_files() {
    let s = production("sec-private", &[]);
    let (uid, gid) = attacker();
    dir_with_mode(s.m.p("private"), 0o700);
    let log = s.m.p("private/casa-20250101-000000.log");
    fs::write(&log, b"root's secret log line\n").unwrap();
    chmod(&log, 0o644);
    let direct = s.logs().join("casa-20250101-000000.log");
    assert!(direct.exists(), "routed into the logs area");
    let read = sh_as(
        uid,
        gid,
        Path::new("/"),
        &format!("cat {}", direct.display()),
    );
    assert!(
        !read.status.success(),
        "the attacker read a private log in the logs area: {}",
        String::from_utf8_lossy(&read.stdout)
    );
    // What the attacker reads in the redirects listing, run through
    // `wrap` (a command prefix).
    let listed = |wrap: &str| {
        ok(&sh_as(
            uid,
            gid,
            Path::new("/"),
            &format!("{wrap} cat {}", s.m.p(".casafs/redirects").display()),
        ))
    };
    let text = listed("");
    assert!(
        !text.contains("private/"),
        "the attacker sees a private origin: {text}"
    );
    // Nor as root of a user namespace of its own.
    let text = listed("unshare -Ur");
    assert!(
        !text.contains("private/"),
        "the attacker, root in its own namespace, sees a private origin: {text}"
    );
    // A directory others may pass through but not list (0711): the name
    // of a log in it is as hidden as natively, where only a reader who
    // already knows it can reach it.
    dir_with_mode(s.m.p("unlisted"), 0o711);
    fs::write(s.m.p("unlisted/casa-20250101-000002.log"), b"x\n").unwrap();
    let native = sh_as(
        uid,
        gid,
        Path::new("/"),
        &format!("ls {}", s.m.p("unlisted").display()),
    );
    assert!(
        !native.status.success(),
        "the attacker may list it: test set-up"
    );
    let text = listed("");
    assert!(
        !text.contains("unlisted/"),
        "the attacker learns a name in a directory it may not list: {text}"
    );
    // Root still sees them, and the attacker its own.
    let all = fs::read_to_string(s.m.p(".casafs/redirects")).unwrap();
    assert!(all.contains("private/casa-20250101-000000.log"), "{all}");
    assert!(all.contains("unlisted/casa-20250101-000002.log"), "{all}");
    attackers_dir(s.m.p("mine"));
    ok(&sh_as(
        uid,
        gid,
        &s.m.p("mine"),
        "echo hi > casa-20250101-000001.log",
    ));
    let own = listed("");
    assert!(own.contains("mine/casa-20250101-000001.log"), "{own}");
}

#[test]
fn a_forged_origin_never_puts_an_object_in_someone_elses_directory() {
    let tmp = TempDir::new("sec-origin");
    let fast = Tmpfs::new(tmp.path().join("fast"), "mode=0755,size=64m");
    let tree = tmp.path().join("tree");
    let scratch = fast.0.join("scratch");
    let start = |tmp: TempDir| {
        Mount::builder("sec-origin")
            .opt(&format!("scratch={}", scratch.display()))
            .source(&tree, tmp)
            .start()
    };
    let mut m = start(tmp);
    let (uid, gid) = attacker();
    dir_with_mode(m.p("secret"), 0o700);
    dir_with_mode(m.p("pub"), 0o777);
    ok(&sh_as(
        uid,
        gid,
        &m.p("pub"),
        "mkdir TMPPOINTING7 TMPPOINTING8 && echo mine > TMPPOINTING7/t && echo ok > TMPPOINTING8/t",
    ));
    // The attacker points its object's origin into root's directory,
    // where it could never create anything itself.
    let obj = scratch.join("TMPPOINTING7");
    let _ = sh_as(
        uid,
        gid,
        Path::new("/"),
        &format!(
            "setfattr -n user.casafs.origin -v secret/TMPPOINTING7 {}",
            obj.display()
        ),
    );
    // Even a record only root can write counts only where the one who
    // routed the object could have created it: after a restart, and when
    // a lookup finds it in the area (as of another host's routing), also
    // naming that very directory.
    let secret_ino = stat(&m.backing("secret")).st_ino;
    ok(&sh(
        Path::new("/"),
        &format!(
            "setfattr -n trusted.casafs.origin -v secret/TMPPOINTING7 {0} && \
             setfattr -n trusted.casafs.by -v '{uid} {gid}' {0} && \
             setfattr -n trusted.casafs.dir -v '{secret_ino}' {0}",
            obj.display()
        ),
    ));
    assert!(m.stop().is_some_and(|st| st.success()));
    let m2 = start(TempDir::new("sec-origin2"));
    let planted = m2.p("secret/TMPPOINTING7");
    assert!(
        fs::symlink_metadata(&planted).is_err(),
        "the attacker's object appeared in root's private directory"
    );
    // A record casafs made itself still brings its object back.
    assert_eq!(fs::read(m2.p("pub/TMPPOINTING8/t")).unwrap(), b"ok\n");
    drop(m2);
    drop(m);
    drop(fast);
}

#[test]
fn sweep_never_makes_a_set_user_id_copy_owned_by_root() {
    let tmp = TempDir::new("sec-sweep");
    let fast = Tmpfs::new(tmp.path().join("fast"), "mode=0755,size=64m");
    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("u")).unwrap();
    let (uid, gid) = attacker();
    std::os::unix::fs::chown(tree.join("u"), Some(uid), Some(gid)).unwrap();
    // An old file of the attacker's that sweep will move to scratch, on
    // another filesystem: a copy.
    ok(&sh_as(
        uid,
        gid,
        &tree.join("u"),
        "cp /bin/true TMPPOINTINGevil && chmod 4755 TMPPOINTINGevil && touch -d '2 days ago' TMPPOINTINGevil",
    ));
    // And a table of its, holding a set-user-ID program of root's.
    ok(&sh_as(
        uid,
        gid,
        &tree.join("u"),
        "mkdir -p TMPPOINTINGdir/sub && echo a > TMPPOINTINGdir/a && echo b > TMPPOINTINGdir/sub/b && \
         ln -s a TMPPOINTINGdir/l && chmod 0750 TMPPOINTINGdir/sub",
    ));
    fs::copy("/bin/true", tree.join("u/TMPPOINTINGdir/rootsuid")).unwrap();
    chmod(&tree.join("u/TMPPOINTINGdir/rootsuid"), 0o4755);
    ok(&sh(
        &tree.join("u"),
        "touch -h -d '2 days ago' TMPPOINTINGdir TMPPOINTINGdir/*",
    ));
    let scratch = fast.0.join("scratch");
    let out = Command::new(bin())
        .args(["sweep"])
        .arg(&tree)
        .arg("--scratch")
        .arg(&scratch)
        .output()
        .unwrap();
    let listing = ok(&sh(&scratch, "find . -printf '%p %u %m %y\n' | sort"));
    assert_eq!(
        listing,
        ". root 700 d\n\
         ./TMPPOINTINGdir tests 755 d\n\
         ./TMPPOINTINGdir/a tests 644 f\n\
         ./TMPPOINTINGdir/l tests 777 l\n\
         ./TMPPOINTINGdir/rootsuid tests 755 f\n\
         ./TMPPOINTINGdir/sub tests 750 d\n\
         ./TMPPOINTINGdir/sub/b tests 644 f\n\
         ./TMPPOINTINGevil tests 4755 f\n",
        "as mv by their owner leaves them (no set-ID copy owned by root): {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!tree.join("u/TMPPOINTINGdir").exists(), "moved, not copied");
    drop(fast);
}

/// Mounts TMP/tree over itself with `scratch` as its area, and asserts it
/// was refused: nothing mounted, exit 2, one line.
fn refused_with_scratch(tmp: &Path, scratch: &Path, what: &str) {
    let tree = tmp.join("tree");
    let out = Command::new(bin())
        .args(["mount"])
        .arg(&tree)
        .arg(&tree)
        .arg("-o")
        .arg(format!("scratch={}", scratch.display()))
        .output()
        .unwrap();
    let tree_mounted = fstype_at(&tree).is_some();
    if tree_mounted {
        umount(&tree, false);
    }
    assert!(!tree_mounted, "mounted with {what}");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn an_area_a_user_made_is_never_taken_for_casafs_own() {
    let tmp = TempDir::new("sec-area");
    let fast = Tmpfs::new(tmp.path().join("fast"), "mode=1777,size=64m");
    let (uid, gid) = attacker();
    // At mount: the attacker got there first.
    let theirs = fast.0.join("scratch");
    ok(&sh_as(
        uid,
        gid,
        Path::new("/"),
        &format!("mkdir -m 0777 {}", theirs.display()),
    ));
    refused_with_scratch(tmp.path(), &theirs, "an area the attacker owns");
    // At mount, another way: a symlink of its own where the area goes (in
    // a directory of its own on the area's path), into a directory of
    // root's.
    let roots = fast.0.join("roots");
    fs::create_dir(&roots).unwrap();
    chmod(&roots, 0o755);
    let planted = fast.0.join("theirs/scratch");
    ok(&sh_as(
        uid,
        gid,
        Path::new("/"),
        &format!(
            "mkdir {} && ln -s {} {}",
            fast.0.join("theirs").display(),
            roots.display(),
            planted.display()
        ),
    ));
    refused_with_scratch(
        tmp.path(),
        &planted,
        "an area through the attacker's symlink",
    );
    assert_eq!(
        fs::metadata(&roots).unwrap().mode() & 0o7777,
        0o755,
        "root's directory was changed"
    );
    // At run time: the operator rotates the area away, the attacker makes
    // a directory of its own under the name before the operator does.
    fs::remove_dir(&theirs).unwrap();
    let ours = fast.0.join("tp");
    let tree = tmp.path().join("tree");
    let m = Mount::builder("sec-area")
        .opt(&format!("scratch={}", ours.display()))
        .source(&tree, tmp)
        .start();
    fs::rename(&ours, fast.0.join("tp.old")).unwrap();
    ok(&sh_as(
        uid,
        gid,
        Path::new("/"),
        &format!("mkdir -m 0777 {}", ours.display()),
    ));
    fs::create_dir(m.p("TMPPOINTING5")).unwrap();
    assert!(
        !ours.join("TMPPOINTING5").exists(),
        "a table went into the attacker's directory"
    );
    drop(m);
    drop(fast);
}

fn retention_config(tmp: &TempDir) -> String {
    let cfg = tmp.path().join("casafs.toml");
    fs::write(
        &cfg,
        "[[rule]]\nname = \"tmppointing\"\nretention = \"1s\"\n",
    )
    .unwrap();
    cfg.display().to_string()
}

#[test]
fn retention_removes_nothing_its_router_could_not() {
    let (m, fast, scratch) = with_retention("sec-retention", "mode=0755,size=64m");
    let (uid, gid) = attacker();
    dir_with_mode(m.p("pub"), 0o777);
    ok(&sh_as(
        uid,
        gid,
        &m.p("pub"),
        "mkdir TMPPOINTING3 && chmod 0777 TMPPOINTING3 && echo x > TMPPOINTING3/mine",
    ));
    // Root's files inside, in a directory of root's the attacker may not
    // write: natively it could never remove them.
    dir_with_mode(m.p("pub/TMPPOINTING3/roots"), 0o755);
    fs::write(m.p("pub/TMPPOINTING3/roots/keep"), b"root's").unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        scratch.join("TMPPOINTING3/roots/keep").exists(),
        "retention removed root's file for the attacker"
    );
    // What the attacker could remove itself went.
    assert!(
        !scratch.join("TMPPOINTING3/mine").exists(),
        "{}",
        m.log_text()
    );
    drop(m);
    drop(fast);
}

#[test]
fn a_very_deep_table_never_brings_the_daemon_down() {
    let (m, fast, _) = with_retention("sec-deep", "mode=0755,size=256m,nr_inodes=200k");
    let (uid, gid) = attacker();
    dir_with_mode(m.p("pub"), 0o777);
    // 20,000 levels, made one at a time through the mount, more than the
    // descriptor cache holds (they may fail past some depth: the daemon
    // must not).
    let program = r#"
import os
os.mkdir("TMPPOINTINGdeep")
fd = os.open("TMPPOINTINGdeep", os.O_RDONLY)
try:
    for i in range(20000):
        os.mkdir("d", dir_fd=fd)
        nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
except OSError as e:
    if e.errno in (103, 107):
        raise
    print("stopped at", i, e)
"#;
    ok(&python_as(uid, gid, &m.p("pub"), program));
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        fs::read(m.p(".casafs/stats.json")).is_ok(),
        "the daemon stopped serving: {}",
        m.log_text()
    );
    // Forgetting the whole chain at the unmount must not take it down.
    let mut m = m;
    let log = m.log.clone();
    assert!(
        m.stop().is_some_and(|st| st.success()),
        "{}",
        fs::read_to_string(log).unwrap_or_default()
    );
    drop(m);
    drop(fast);
}

#[test]
fn one_user_holding_control_files_open_costs_bounded_memory_and_no_one_else() {
    let s = production("sec-control", &[]);
    let (uid, gid) = attacker();
    let program = format!(
        r#"
import os
fds = []
try:
    for i in range(5000):
        fds.append(os.open({p:?}, os.O_RDONLY))
except OSError as e:
    print("refused after", len(fds), e.errno)
"#,
        p = s.m.p(".casafs/stats.json").to_string_lossy()
    );
    let out = ok(&python_as(uid, gid, Path::new("/"), &program));
    assert!(out.starts_with("refused after"), "{out}");
    // Others still read them.
    assert!(fs::read(s.m.p(".casafs/stats.json")).is_ok());
}

#[test]
fn what_a_user_creates_is_theirs_in_place_and_routed() {
    // The owner, group and quota charge of an object come from the
    // backing creating it as the caller: compare with a native directory.
    let setup = "chmod 1777 .";
    let script = "umask 022; echo a > f; mkdir d; echo b > casa-20250101-000002.log; mkdir TMPPOINTING8; \
                  ln -s f l; mkfifo p; stat -c '%n %a %U %G %F' f d casa-20250101-000002.log TMPPOINTING8 l p";
    let (native, mounted) = native_and_mounted("sec-owner", setup, script);
    assert!(native.contains("tests"), "{native}");
    assert_eq!(mounted, native);
}

/// An ext4 volume with 10% of its blocks reserved for root, mounted for
/// a test and unmounted on drop.
struct Ext4(PathBuf);

impl Ext4 {
    fn new(tmp: &TempDir) -> Ext4 {
        let img = tmp.path().join("ext4.img");
        let vol = tmp.path().join("vol");
        fs::create_dir_all(&vol).unwrap();
        ok(&sh(
            tmp.path(),
            &format!(
                "truncate -s 64M {0} && mkfs.ext4 -q -F -m 10 {0} && mount -o loop {0} {1} && chmod 0755 {1}",
                img.display(),
                vol.display()
            ),
        ));
        Ext4(vol)
    }

    /// Blocks free, and blocks reserved for root.
    fn blocks(&self) -> (u64, u64) {
        let c = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut sv) }, 0);
        (sv.f_bfree, sv.f_bfree - sv.f_bavail)
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        umount(&self.0, true);
    }
}

#[test]
fn the_blocks_reserved_for_root_stay_roots() {
    // The attacker fills the volume through the mount as far as it goes:
    // with write(2) (passed through to the kernel), and with a shared
    // mapping of a set-user-ID file of its own (such a file's writes go
    // through casafs, and the kernel writes a mapping back on nobody's
    // behalf), with casafs's defaults and without passthrough.
    for opts in ["passthrough=auto", "passthrough=never"] {
        let tmp = TempDir::new("sec-reserve");
        let vol = Ext4::new(&tmp);
        let (_, reserved) = vol.blocks();
        assert!(reserved > 0, "the volume reserves blocks");
        let m = Mount::builder("sec-reserve")
            .opt(opts)
            .source(&vol.0, TempDir::new("sec-reserve-m"))
            .start();
        let (uid, gid) = attacker();
        attackers_dir(m.p("u"));
        let program = r#"
import mmap, os
fd = os.open("fill", os.O_WRONLY | os.O_CREAT, 0o644)
try:
    while True:
        os.write(fd, b"x" * (1 << 20))
except OSError:
    pass
os.close(fd)
size = 4 << 20
fd = os.open("suid", os.O_RDWR | os.O_CREAT, 0o644)
os.ftruncate(fd, size)
os.fchmod(fd, 0o4755)
m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
try:
    for off in range(0, size, 4096):
        m[off:off + 4096] = b"y" * 4096
    m.flush()
except OSError:
    pass
"#;
        let _ = python_as(uid, gid, &m.p("u"), program);
        let _ = sh(Path::new("/"), "sync");
        let (free, _) = vol.blocks();
        assert!(
            free >= reserved,
            "{opts}: the attacker wrote into the blocks reserved for root: {free} free of {reserved} reserved"
        );
        drop(m);
    }
}

#[test]
fn a_graveyard_a_user_made_is_never_casafs_own() {
    // Before casafs is mounted, a user who may write the tree's top makes
    // the graveyard's directory, to read or swap what unlinks bury there.
    let tmp = TempDir::new("sec-grave");
    let tree = tmp.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    chmod(&tree, 0o777);
    let (uid, gid) = attacker();
    ok(&sh_as(uid, gid, &tree, "mkdir -m 0777 .casafs-graveyard"));
    let m = Mount::builder("sec-grave")
        .arg("-o")
        .arg("defer_unlink=always")
        .source(&tree, tmp)
        .start();
    let st = fs::symlink_metadata(m.backing(".casafs-graveyard")).unwrap();
    assert_eq!(
        (st.uid(), st.mode() & 0o777),
        (0, 0o700),
        "the graveyard casafs uses"
    );
    // It works: an open file unlinked waits there and goes at its close.
    fs::write(m.p("f"), b"data").unwrap();
    let f = fs::File::open(m.p("f")).unwrap();
    fs::remove_file(m.p("f")).unwrap();
    drop(f);
    eventually("the grave goes", || {
        m.stats()["deferred_unlinks"]["completed"].as_u64() == Some(1)
    });
    // What the user made is still there, moved aside.
    let kept = ok(&sh(&m.backing(""), "ls -d .casafs-graveyard.not-casafs.*"));
    assert!(!kept.trim().is_empty());
}

#[test]
fn sweep_never_follows_a_directory_swapped_for_a_symlink() {
    // Someone else's log in a directory the attacker cannot even search;
    // the attacker swaps a directory of its own (holding a decoy of the
    // same name) with a symlink to it while sweep walks and moves.
    let tmp = TempDir::new("sec-sweepswap");
    let fast = Tmpfs::new(tmp.path().join("fast"), "mode=0755,size=64m");
    let (uid, gid) = attacker();
    let victim = tmp.path().join("victim");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("casa-20251206-120000.log"), b"victim's").unwrap();
    std::os::unix::fs::chown(&victim, Some(65534), Some(65534)).unwrap();
    std::os::unix::fs::chown(
        victim.join("casa-20251206-120000.log"),
        Some(65534),
        Some(65534),
    )
    .unwrap();
    chmod(&victim, 0o700);
    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("att")).unwrap();
    std::os::unix::fs::chown(tree.join("att"), Some(uid), Some(gid)).unwrap();
    ok(&sh_as(
        uid,
        gid,
        &tree.join("att"),
        &format!(
            "mkdir d && echo decoy > d/casa-20251206-120000.log && ln -s {} link",
            victim.display()
        ),
    ));
    let swap = format!(
        r#"
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
a = {a:?}.encode(); b = {b:?}.encode()
stop = time.time() + 2
while time.time() < stop:
    libc.renameat2(-100, a, -100, b, 2)
"#,
        a = tree.join("att/d").to_string_lossy(),
        b = tree.join("att/link").to_string_lossy(),
    );
    for _ in 0..6 {
        let mut swapper = python_command_as(uid, gid, &swap).spawn().unwrap();
        let _ = Command::new(bin())
            .args(["sweep"])
            .arg(&tree)
            .arg("--logs")
            .arg(fast.0.join("logs"))
            .arg("--scratch")
            .arg(fast.0.join("scratch"))
            .output()
            .unwrap();
        let _ = swapper.wait();
        assert_eq!(
            fs::read(victim.join("casa-20251206-120000.log"))
                .ok()
                .as_deref(),
            Some(&b"victim's"[..]),
            "the victim's log was moved or replaced"
        );
    }
    drop(fast);
}

#[test]
fn one_user_cannot_use_up_the_descriptors_everyone_needs() {
    // Every open through casafs holds a descriptor of the daemon's, for
    // all users at once: one user opening as many as its processes may
    // gets EMFILE at its share, and root (here the other users) still
    // opens.
    let s = production("sec-fds", &[]);
    let (uid, gid) = attacker();
    attackers_dir(s.m.p("u"));
    ok(&sh_as(uid, gid, &s.m.p("u"), "echo x > f"));
    let program = r#"
import os, resource, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
fds = []
try:
    while len(fds) < hard - 100:
        fds.append(os.open("f", os.O_RDONLY))
except OSError as e:
    try:
        os.open("new%d" % os.getpid(), os.O_CREAT | os.O_WRONLY, 0o644)
        created = 0
    except OSError as c:
        created = c.errno
    print(len(fds), e.errno, created, flush=True)
    time.sleep(8)
    sys.exit(0)
print(len(fds), 0, flush=True)
time.sleep(8)
"#;
    let holders: Vec<_> = (0..8)
        .map(|_| {
            Command::new("setpriv")
                .args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={gid}"),
                    "--clear-groups",
                    PYTHON,
                    "-c",
                    program,
                ])
                .current_dir(s.m.p("u"))
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_secs(6));
    let root_open = fs::write(s.m.p("rootfile"), b"still served");
    let mut refused = false;
    let mut said = String::new();
    for h in holders {
        let out = h.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // Refused its opens, and its creations of new files too.
        refused |= text.contains(" 24 24");
        said.push_str(&text);
    }
    assert!(root_open.is_ok(), "root could not open: {root_open:?}");
    assert!(refused, "the attacker was never refused: {said}");
}

#[test]
fn a_user_keeps_using_routed_objects_by_their_original_paths() {
    // Areas are root's alone now; the original paths must still serve the
    // user everything, also after the kernel's entries expired (a lookup
    // through the area).
    let s = production("sec-use", &[]);
    let (uid, gid) = attacker();
    attackers_dir(s.m.p("u"));
    let out = ok(&sh_as(
        uid,
        gid,
        &s.m.p("u"),
        "echo hi > casa-1.log && mkdir TMPPOINTING1 && echo t > TMPPOINTING1/x && sleep 1.5 && \
         cat casa-1.log TMPPOINTING1/x && echo more >> casa-1.log && chmod 600 casa-1.log && \
         stat -c '%a %U' casa-1.log && setfattr -n user.k -v v casa-1.log && \
         getfattr --only-values -n user.k casa-1.log && echo && ls -a && \
         mv casa-1.log kept && mv TMPPOINTING1 TMPPOINTING2 && ls && cat TMPPOINTING2/x && \
         rm -r TMPPOINTING2 kept && ls -a",
    ));
    assert_eq!(
        out, "hi\nt\n600 tests\nv\n.\n..\nkept\nt\n.\n..\n",
        "through the original paths"
    );
    assert!(fs::read_dir(s.logs()).unwrap().next().is_none());
    assert!(fs::read_dir(s.scratch()).unwrap().next().is_none());
}

#[test]
fn one_copy_file_range_request_is_bounded() {
    // A copy of any size would hold a serving thread for as long as it
    // takes; a short answer is complete (callers loop), and cp still
    // copies everything.
    let s = production("sec-copy", &[]);
    let (uid, gid) = attacker();
    attackers_dir(s.m.p("u"));
    let program = r#"
import os
with open("a", "wb") as f:
    f.write(os.urandom(1 << 20) * 64)
a = os.open("a", os.O_RDONLY)
b = os.open("b", os.O_WRONLY | os.O_CREAT, 0o644)
print(os.copy_file_range(a, b, 64 << 20))
"#;
    let out = ok(&python_as(uid, gid, &s.m.p("u"), program));
    let copied: u64 = out.trim().parse().unwrap();
    assert!(
        copied > 0 && copied <= 16 << 20,
        "one request copied {copied} bytes"
    );
    ok(&sh_as(uid, gid, &s.m.p("u"), "cp a c && cmp a c"));
}

#[test]
fn a_routed_name_taken_by_another_object_never_shows_it_at_the_old_origin() {
    // The operator clears a user's log out of the logs area and puts a
    // file of its own there under the same name: the user's old path must
    // not lead to it.
    let s = production("sec-stale", &[]);
    let (uid, gid) = attacker();
    attackers_dir(s.m.p("u"));
    ok(&sh_as(
        uid,
        gid,
        &s.m.p("u"),
        "echo mine > casa-20250101-000003.log",
    ));
    let in_area = s.logs().join("casa-20250101-000003.log");
    fs::remove_file(&in_area).unwrap();
    fs::write(&in_area, b"the operator's\n").unwrap();
    chmod(&in_area, 0o644);
    std::thread::sleep(Duration::from_millis(1100));
    let out = sh_as(uid, gid, &s.m.p("u"), "cat casa-20250101-000003.log");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("operator"),
        "the user's old path shows the operator's file"
    );
}

#[test]
fn an_area_named_through_a_symlink_is_found_again_where_it_really_is() {
    // The scratch area's path ends in root's symlink to the real directory;
    // the operator rotates the real one and makes it again: routing goes
    // to the new one, never to a directory found by the symlink's name.
    let tmp = TempDir::new("sec-arealink");
    let fast = Tmpfs::new(tmp.path().join("fast"), "mode=0755,size=64m");
    let real = fast.0.join("real");
    fs::create_dir(&real).unwrap();
    chmod(&real, 0o700);
    std::os::unix::fs::symlink(&real, fast.0.join("link")).unwrap();
    let tree = tmp.path().join("tree");
    let m = Mount::builder("sec-arealink")
        .opt(&format!("scratch={}", fast.0.join("link").display()))
        .source(&tree, tmp)
        .start();
    fs::rename(&real, fast.0.join("real.old")).unwrap();
    fs::create_dir(&real).unwrap();
    chmod(&real, 0o700);
    fs::create_dir(m.p("TMPPOINTING6")).unwrap();
    assert!(
        real.join("TMPPOINTING6").is_dir(),
        "not routed to the area made again: {}",
        m.log_text()
    );
    drop(m);
    drop(fast);
}

#[test]
fn a_directory_the_caller_may_not_write_never_moves_into_an_area() {
    // The scratch area on the tree's own filesystem, where a rename onto a
    // routed table could move another user's directory into it.
    let m = mounted_in("sec-dirmove", |b, tmp| {
        b.opt(&format!("scratch={}", tmp.join("scratch").display()))
    });
    let scratch = m.tmp.path().join("scratch");
    let (uid, gid) = attacker();
    let shared = attackers_dir(m.p("shared"));
    fs::create_dir(shared.join("roots")).unwrap();
    fs::write(shared.join("roots/data"), b"root's\n").unwrap();
    let renamed = sh_as(
        uid,
        gid,
        &shared,
        "mkdir TMPPOINTING1 && python3 -c 'import os; os.rename(\"roots\", \"TMPPOINTING1\")'",
    );
    // Natively allowed (one directory, so the moved one's `..` stays):
    // root's directory takes the name where it is.
    ok(&renamed);
    assert_eq!(
        fs::read(shared.join("TMPPOINTING1/data")).unwrap(),
        b"root's\n"
    );
    assert!(!shared.join("roots").exists());
    let in_area: Vec<_> = walk_names(&scratch);
    assert!(
        !in_area.iter().any(|n| n.ends_with("data")),
        "root's directory was moved into the scratch area: {in_area:?}"
    );
    let st = fs::metadata(shared.join("TMPPOINTING1")).unwrap();
    assert_eq!(st.uid(), 0, "the directory there is root's");
    // An exchange would move it into the area: refused, nothing moved.
    ok(&sh_as(
        uid,
        gid,
        &shared,
        "mkdir TMPPOINTING2 && mkdir other",
    ));
    fs::create_dir(shared.join("roots2")).unwrap();
    let swapped = sh_as(
        uid,
        gid,
        &shared,
        "python3 -c '
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
r = libc.renameat2(-100, b\"roots2\", -100, b\"TMPPOINTING2\", 2)
print(r, os.strerror(ctypes.get_errno()))'",
    );
    assert_eq!(
        ok(&swapped).trim(),
        "-1 Permission denied",
        "an exchange of root's directory with a routed table"
    );
    assert!(shared.join("roots2").is_dir());
}

/// Makes directory `p` with mode `mode` (as root), whatever the umask.
fn dir_with_mode(p: PathBuf, mode: u32) -> PathBuf {
    fs::create_dir(&p).unwrap();
    chmod(&p, mode);
    p
}

/// Asserts that `o` failed, saying `says` (as natively) on its stderr;
/// `what` is what its success would have done.
fn refused(o: &std::process::Output, says: &str, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{what}");
    assert!(
        err.contains(says),
        "{what}: not `{says}`, as natively: {err}"
    );
}

/// casafs over `tree` in a fresh temporary directory, with what `build`
/// adds to the mount (areas may go in that directory, given to it).
fn mounted_in(tag: &str, build: impl FnOnce(MountBuilder, &Path) -> MountBuilder) -> Mount {
    let tmp = TempDir::new(tag);
    let base = tmp.path().to_path_buf();
    build(Mount::builder(tag), &base)
        .source(&base.join("tree"), tmp)
        .start()
}

/// Every path beneath `dir`, as root sees it.
fn walk_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.push(p.display().to_string());
        }
    }
    out
}

#[test]
fn a_users_own_namespace_lends_no_capability_through_the_mount() {
    // Root's set-user-ID program that the attacker's group may write: any
    // write of the attacker's clears the bit, natively even as root of a
    // user namespace of its own (root there is no one here).
    let setup = "cp /bin/true tool && chown root:tests tool && chmod 4775 tool";
    let script = "unshare -Ur sh -c 'grep -c \"^CapEff:.*[1-9a-f]\" /proc/self/status; \
                  printf X | dd of=tool bs=1 seek=200 conv=notrunc 2>/dev/null; \
                  stat -c %A tool; od -An -c -j200 -N1 tool'";
    let (native, mounted) = native_and_mounted("sec-userns", setup, script);
    assert_eq!(
        native.split_whitespace().collect::<Vec<_>>(),
        ["1", "-rwxrwxr-x", "X"],
        "natively (set-up: the namespace has capabilities, the write clears the bit)"
    );
    assert_eq!(mounted, native, "through the mount");
}

#[test]
fn a_directory_holding_another_users_routed_log_is_not_removed_by_whoever_may_write_its_parent() {
    let s = production("sec-rmdir", &[]);
    let (uid, gid) = attacker();
    let (vuid, vgid) = user_ids("nobody");
    // The attacker's directory, open to all; the victim keeps a directory
    // of its own there, with a log (routed: listings leave it out).
    let public = attackers_dir(s.m.p("public"));
    chmod(&public, 0o777);
    ok(&sh_as(
        vuid,
        vgid,
        &public,
        "mkdir -m 755 victims && echo kept > victims/casa-20250101-000000.log",
    ));
    let removed = sh_as(uid, gid, &public, "rmdir victims");
    refused(
        &removed,
        "Directory not empty",
        "the attacker removed a directory holding another user's log",
    );
    let read = ok(&sh_as(
        vuid,
        vgid,
        &public,
        "cat victims/casa-20250101-000000.log",
    ));
    assert_eq!(read, "kept\n");
    // Its owner removes it as usual (`rm -r` sees no log in it, and the
    // log stays in the logs area).
    ok(&sh_as(vuid, vgid, &public, "rm -r victims"));
    assert!(!public.join("victims").exists());
    assert!(s.logs().join("casa-20250101-000000.log").exists());
}

#[test]
fn a_user_who_grows_the_redirects_listing_holds_bounded_memory_with_it() {
    let s = production("sec-redirsize", &[]);
    let (uid, gid) = attacker();
    let dir = attackers_dir(s.m.p("mine"));
    // Routed logs under a long path make every snapshot of `redirects`
    // large (both its origin and its place in the area are listed); each
    // open makes a new one, one more log apart, so none can be shared.
    let program = format!(
        r#"
import os
d = {d:?}
for i in range(12):
    d = os.path.join(d, "d" * 200)
os.makedirs(d)
os.chdir(d)
for i in range(1200):
    open("casa-" + "x" * 180 + "-%d.log" % i, "w").close()
fds, sizes = [], []
try:
    for i in range(64):
        open("casa-%d.log" % i, "w").close()
        fd = os.open({p:?}, os.O_RDONLY)
        fds.append(fd)
        sizes.append(len(os.read(fd, 1 << 26)))
    print("held", len(fds), sum(sizes), min(sizes))
except OSError as e:
    print("refused", len(fds), sum(sizes), min(sizes), e.errno)
"#,
        d = dir.to_string_lossy(),
        p = s.m.p(".casafs/redirects").to_string_lossy()
    );
    let out = ok(&python_as(uid, gid, Path::new("/"), &program));
    let f: Vec<&str> = out.split_whitespace().collect();
    let (held, bytes, smallest): (usize, usize, usize) = (
        f[1].parse().unwrap(),
        f[2].parse().unwrap(),
        f[3].parse().unwrap(),
    );
    assert!(
        smallest > 1 << 20,
        "set-up: each snapshot over 1 MiB: {out}"
    );
    assert_eq!(f[0], "refused", "{out}");
    assert_eq!(f[4], libc::ENFILE.to_string(), "{out}");
    assert!(
        held < 64 && bytes <= (16 << 20) + 2 * smallest,
        "held {held} snapshots, {bytes} bytes: {out}"
    );
    // Others still read it, root whole.
    assert!(fs::read(s.m.p(".casafs/redirects")).unwrap().len() > 1 << 20);
}

#[test]
fn a_rename_into_an_area_keeps_the_sticky_bit_of_what_changed_beneath() {
    // The kernel keeps names and attributes for an hour here. Beneath the
    // mount (as on another host) the attacker's file goes and another
    // user's takes its name, where the kernel still shows the attacker's:
    // a rename of that name onto the attacker's routed log would move the
    // other user's file into the area, as root. The backing's judgement,
    // not the kernel's stale view, must decide.
    let m = mounted_in("sec-sticky-beneath", |b, tmp| {
        b.separate()
            .opt(&format!("logs={}", tmp.join("logs").display()))
            .opt("attr_timeout=1h,entry_timeout=1h")
    });
    let (uid, gid) = attacker();
    let (vuid, vgid) = user_ids("nobody");
    dir_with_mode(m.p("shared"), 0o1777);
    let shared = m.p("shared");
    let beneath = m.source.join("shared");
    ok(&sh_as(
        uid,
        gid,
        &shared,
        "echo log > casa-20250101-000000.log && echo mine > x && cat x",
    ));
    ok(&sh_as(uid, gid, &beneath, "rm x"));
    ok(&sh_as(vuid, vgid, &beneath, "echo precious > x"));
    let moved = python_as(
        uid,
        gid,
        &shared,
        "import os; os.rename(\"x\", \"casa-20250101-000000.log\")",
    );
    refused(
        &moved,
        "[Errno 1]",
        "the attacker moved another user's file out of a sticky directory",
    );
    assert_eq!(fs::read(beneath.join("x")).unwrap(), b"precious\n");
}

#[test]
fn retention_removes_only_the_table_it_judged_expired() {
    // Retention judges, then removes; in between (slowed here, as a look
    // at every process's open files on a busy machine is) a user renames
    // a table in use onto the expired one's name, through the mount.
    let (m, fast, _) = retention_slowed(
        "sec-ret-swap",
        "mode=0755,size=64m",
        Some("CASAFS_FAULT_SLOW_RETENTION"),
    );
    let (uid, gid) = attacker();
    let (vuid, vgid) = user_ids("nobody");
    dir_with_mode(m.p("work"), 0o777);
    ok(&sh_as(
        vuid,
        vgid,
        &m.p("work"),
        "mkdir TMPPOINTING_old && echo old > TMPPOINTING_old/x",
    ));
    eventually_within("set-up: retention judged the old table", 20, || {
        m.log_text().contains("retention: judged")
    });
    // The victim's job starts in a new table, and the attacker gives it
    // the old one's name.
    ok(&sh_as(
        vuid,
        vgid,
        &m.p("work"),
        "mkdir TMPPOINTING_active && echo result > TMPPOINTING_active/result",
    ));
    ok(&sh_as(
        uid,
        gid,
        &m.p("work"),
        "mv TMPPOINTING_old TMPPOINTING_t && mv TMPPOINTING_active TMPPOINTING_old && \
         mv TMPPOINTING_t TMPPOINTING_active",
    ));
    // Past the removal of that pass (the next ones may judge anew).
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(
        fs::read(m.p("work/TMPPOINTING_old/result")).ok(),
        Some(b"result\n".to_vec()),
        "retention removed the table in use, which it never judged"
    );
    drop(m);
    drop(fast);
}

/// A retention mount that waits 3 s after emptying an expired table, a
/// shared sticky `work` directory, and the victim's 0700 `home`.
fn emptying_slowed(tag: &str) -> (Mount, Tmpfs, PathBuf) {
    let (m, fast, _) = retention_slowed(
        tag,
        "mode=0755,size=64m",
        Some("CASAFS_FAULT_SLOW_EMPTYING"),
    );
    let (vuid, vgid) = user_ids("nobody");
    dir_with_mode(m.p("work"), 0o1777);
    let home = dir_with_mode(m.p("home"), 0o700);
    std::os::unix::fs::chown(&home, Some(vuid), Some(vgid)).unwrap();
    (m, fast, home)
}

#[test]
fn retention_never_removes_a_directory_given_the_expired_ones_name_while_emptying_it() {
    // Emptying an expired table takes as long as its entries, which its
    // owner chooses. Meanwhile the owner renames it to another routed name
    // (it moves within the area and frees its name there), and the
    // victim's new table, made in its private home, takes that name.
    let (m, fast, home) = emptying_slowed("sec-ret-empty");
    let (uid, gid) = attacker();
    let (vuid, vgid) = user_ids("nobody");
    ok(&sh_as(
        uid,
        gid,
        &m.p("work"),
        "mkdir TMPPOINTING_race && echo x > TMPPOINTING_race/f",
    ));
    eventually_within("set-up: retention emptied the expired table", 20, || {
        !m.p("work/TMPPOINTING_race/f").exists()
    });
    // May fail: the table may be gone already.
    let _ = sh_as(
        uid,
        gid,
        &m.p("work"),
        "mv TMPPOINTING_race TMPPOINTING_moved",
    );
    ok(&sh_as(vuid, vgid, &home, "mkdir TMPPOINTING_race"));
    // The pass's outcome, before the next pass (which may find the
    // victim's table expired by then: it is empty and old enough).
    let done = || {
        let log = m.log_text();
        log.contains("retention (tmppointing): removed") || log.contains("retention: cannot remove")
    };
    eventually_within("set-up: retention's pass ended", 10, done);
    assert!(
        home.join("TMPPOINTING_race").is_dir(),
        "retention removed the victim's new table: {}",
        m.log_text()
    );
    drop(m);
    drop(fast);
}

#[test]
fn a_table_retention_cannot_empty_keeps_its_name_while_retention_tries() {
    // Retention empties an expired table with its router's rights, which
    // cannot remove what the router made read-only. Meanwhile another
    // user makes a table of that name: it must get a name of its own in
    // the area, and the first table stay where its owner finds it.
    let (m, fast, home) = emptying_slowed("sec-ret-keep");
    let (uid, gid) = attacker();
    let (vuid, vgid) = user_ids("nobody");
    ok(&sh_as(
        vuid,
        vgid,
        &home,
        "mkdir -p TMPPOINTINGv/keep && echo data > TMPPOINTINGv/keep/data && \
         chmod 0555 TMPPOINTINGv/keep",
    ));
    eventually_within("set-up: retention emptied what it could", 20, || {
        m.log_text().contains("retention: emptied")
    });
    ok(&sh_as(uid, gid, &m.p("work"), "mkdir TMPPOINTINGv"));
    eventually_within("set-up: retention's pass ended", 10, || {
        m.log_text().contains("retention: cannot remove")
    });
    let read = sh_as(vuid, vgid, &home, "cat TMPPOINTINGv/keep/data");
    assert_eq!(ok(&read), "data\n", "the victim's table was lost");
    assert!(m.p("work/TMPPOINTINGv").is_dir());
    drop(m);
    drop(fast);
}

#[test]
fn sweep_acts_with_the_owners_groups_never_with_the_group_of_what_it_moves() {
    let (uid, gid) = attacker();
    assert!(
        !supplementary_groups("tests").contains(&group_id("src")),
        "set-up: the attacker is not in group src"
    );
    sweep_with_a_table_of_a_group_its_owner_is_not_in("sec-sweepgroup", uid, gid);
}

#[test]
fn sweep_acts_with_no_group_for_an_owner_the_user_database_does_not_know() {
    // An id of a container's range: nothing says which groups it is in.
    let unknown = 100_123;
    assert!(
        unsafe { libc::getpwuid(unknown) }.is_null(),
        "set-up: uid {unknown} is unknown"
    );
    sweep_with_a_table_of_a_group_its_owner_is_not_in("sec-sweepnogroup", unknown, unknown);
}

/// A user may own a table of a group it is not in: one made in a
/// set-group-ID directory takes that directory's group. Inside it, a
/// member of that group keeps a private directory the owner cannot read
/// or empty; sweep copies the table to scratch (another filesystem) as
/// its owner, and must not do so with the table's group.
fn sweep_with_a_table_of_a_group_its_owner_is_not_in(tag: &str, uid: u32, gid: u32) {
    let tmp = TempDir::new(tag);
    let fast = Tmpfs::new(tmp.path().join("fast"), "mode=0755,size=64m");
    let (vuid, _) = user_ids("nobody");
    let other = group_id("src");
    let drop_box = tmp.path().join("tree/drop");
    fs::create_dir_all(&drop_box).unwrap();
    std::os::unix::fs::chown(&drop_box, Some(0), Some(other)).unwrap();
    chmod(&drop_box, 0o2777);
    ok(&sh_as(
        uid,
        gid,
        &drop_box,
        "mkdir TMPPOINTINGatk && chmod 2777 TMPPOINTINGatk && stat -c %g TMPPOINTINGatk",
    ));
    let table = drop_box.join("TMPPOINTINGatk");
    assert_eq!(
        fs::metadata(&table).unwrap().gid(),
        other,
        "set-up: the table's group"
    );
    let private = table.join("vsub");
    fs::create_dir(&private).unwrap();
    fs::write(private.join("secret"), "group only\n").unwrap();
    std::os::unix::fs::chown(&private, Some(vuid), Some(other)).unwrap();
    std::os::unix::fs::chown(private.join("secret"), Some(vuid), Some(other)).unwrap();
    chmod(&private, 0o2770);
    chmod(&private.join("secret"), 0o640);
    // Natively the attacker can neither read nor remove it.
    let native = sh_as(uid, gid, &table, "cat vsub/secret || rm -rf vsub");
    assert!(!native.status.success(), "set-up: natively refused");
    ok(&sh(&drop_box, "touch -h -d '2 days ago' TMPPOINTINGatk"));
    let scratch = fast.0.join("scratch");
    let swept = Command::new(bin())
        .arg("sweep")
        .arg(tmp.path().join("tree"))
        .arg("--scratch")
        .arg(&scratch)
        .output()
        .unwrap();
    assert_eq!(
        fs::read(private.join("secret")).ok().as_deref(),
        Some(&b"group only\n"[..]),
        "sweep removed the group's private file as the table's owner: {}",
        String::from_utf8_lossy(&swept.stdout)
    );
    let copied = sh(&scratch, "grep -rl 'group only' . || true");
    assert_eq!(
        String::from_utf8_lossy(&copied.stdout),
        "",
        "sweep read the group's private file as the table's owner"
    );
    // The copy failed part-way: what it made goes, or every run would add
    // another beside it.
    assert_eq!(
        names(&scratch),
        Vec::<String>::new(),
        "a part copy was left in scratch"
    );
    assert!(table.join("vsub").exists(), "the table stays whole");
    drop(fast);
}

/// `casafs sweep ARGS` with each move into an area slowed (2 s before
/// the rename and 2 s after), once its plan names `what` and it waits to
/// move it: the window a user has to swap names, made wide.
fn sweep_about_to_move(args: &[&std::ffi::OsStr], what: &str) -> std::process::Child {
    let mut sweep = Command::new(bin())
        .arg("sweep")
        .args(args)
        .env("CASAFS_FAULT_SLOW_SWEEP_MOVE", "2000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(sweep.stdout.take().unwrap());
    let mut plan = String::new();
    while !plan.contains(what) {
        assert!(
            std::io::BufRead::read_line(&mut out, &mut plan).unwrap() > 0,
            "set-up: the plan moves {what}: {plan}"
        );
    }
    // Kept open: the rest of its report is read with its exit.
    sweep.stdout = Some(out.into_inner());
    std::thread::sleep(Duration::from_millis(700));
    sweep
}

/// A shared directory that is not sticky (`0777`), holding another user's
/// directory `vdir` (0700, with `secret`) and file `vfile` (0600), and an
/// old log `log` of the attacker's, which sweep is about to move into the
/// logs area (the same filesystem: a rename) once the attacker exchanged
/// its name with `with` there. Returns the shared directory, the logs
/// area, and sweep, still running.
fn swept_while_swapped(
    tmp: &TempDir,
    shared: &str,
    log: &str,
    with: &str,
) -> (PathBuf, PathBuf, std::process::Child) {
    let (uid, gid) = attacker();
    let (vuid, vgid) = user_ids("nobody");
    let shared = tmp.path().join("tree").join(shared);
    fs::create_dir_all(&shared).unwrap();
    chmod(&shared, 0o777);
    ok(&sh_as(
        vuid,
        vgid,
        &shared,
        "mkdir -m 0700 vdir && echo precious > vdir/secret && \
         echo precious > vfile && chmod 0600 vfile",
    ));
    ok(&sh_as(
        uid,
        gid,
        &shared,
        &format!("echo log > {log} && touch -d '2 days ago' {log}"),
    ));
    let logs = tmp.path().join("areas/logs");
    let tree = tmp.path().join("tree");
    let sweep = sweep_about_to_move(
        &[tree.as_os_str(), "--logs".as_ref(), logs.as_os_str()],
        log,
    );
    ok(&python_as(
        uid,
        gid,
        &shared,
        &format!(
            "import ctypes; libc = ctypes.CDLL(None, use_errno=True); \
             assert libc.renameat2(-100, b\"{log}\", -100, b\"{with}\", 2) == 0"
        ),
    ));
    (shared, logs, sweep)
}

/// Whether anything under `dir` is named `name`.
fn holds_named(dir: &Path, name: &str) -> bool {
    let out = sh(dir, &format!("find . -name '{name}' | grep -q ."));
    out.status.success()
}

#[test]
fn sweep_moves_only_what_the_owner_may_move() {
    // The attacker exchanges its log's name with another user's directory
    // in its own 0777 directory, and would remove that directory (its own)
    // once sweep took the other's directory out of it: natively it can
    // neither move that directory out nor remove its own while it is
    // there. Sweep takes it out by the owner's rename, which the kernel
    // refuses for another user's directory.
    let tmp = TempDir::new("sec-sweepownmove");
    let (uid, gid) = attacker();
    let mine = attackers_dir(tmp.path().join("tree"));
    let (shared, logs, sweep) = swept_while_swapped(&tmp, "mine", "casa-a.log", "vdir");
    assert_eq!(shared, mine.join("mine"));
    let taken = (0..150).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        holds_named(&logs, "casa-a.log")
    });
    let removed = sh_as(uid, gid, &mine, "rm -f mine/vdir && rmdir mine");
    let done = sweep.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(
        !taken && !removed.status.success(),
        "the other user's directory left the shared one (taken {taken}): {stderr}"
    );
    assert_eq!(
        fs::read(shared.join("casa-a.log/secret")).unwrap(),
        b"precious\n"
    );
    assert!(stderr.contains("cannot move"), "{stderr}");
    assert!(names(&logs).is_empty(), "{:?}", names(&logs));
}

#[test]
fn the_owner_cannot_add_to_sweeps_own_directory_in_the_area() {
    // Sweep takes a table out of its directory by the owner's rename into
    // a directory of the owner's in the area; a process of the owner's
    // working inside the table (named as casafs's own, so that sweep does
    // not see it as a holder) finds that directory as its `..`, and must
    // not be able to leave anything there.
    let tmp = TempDir::new("sec-sweepstage");
    let (uid, gid) = attacker();
    let mine = attackers_dir(tmp.path().join("tree"));
    ok(&sh_as(
        uid,
        gid,
        &mine,
        "mkdir TMPPOINTINGt && touch -d '2 days ago' TMPPOINTINGt",
    ));
    let poller = r#"
import ctypes, os, sys, time
ctypes.CDLL(None).prctl(15, b"casafs", 0, 0, 0)
os.chdir("TMPPOINTINGt")
print("ready", flush=True)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    try:
        os.mkdir("../planted")
    except OSError:
        pass
    time.sleep(0.02)
"#;
    let mut p = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            PYTHON,
            "-c",
            poller,
            "6",
        ])
        .current_dir(&mine)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 6];
    std::io::Read::read_exact(p.stdout.as_mut().unwrap(), &mut ready).unwrap();
    let scratch = tmp.path().join("areas/scratch");
    let sweep = sweep_about_to_move(
        &[mine.as_os_str(), "--scratch".as_ref(), scratch.as_os_str()],
        "TMPPOINTINGt",
    );
    let done = sweep.wait_with_output().unwrap();
    let _ = p.wait();
    assert_eq!(
        names(&scratch),
        vec!["TMPPOINTINGt".to_string()],
        "sweep: {}",
        String::from_utf8_lossy(&done.stderr)
    );
}

#[test]
fn sweep_puts_back_what_the_owner_moved_that_it_did_not_judge() {
    swapped_file_is_put_back("sec-sweepput", "casa-a.log");
}

#[test]
fn sweep_puts_back_a_swapped_in_object_of_the_longest_name() {
    let long = format!("casa-{}.log", "x".repeat(246));
    assert_eq!(long.len(), 255);
    swapped_file_is_put_back("sec-sweepputlong", &long);
}

/// Another user's file in a shared directory that is not sticky is one the
/// attacker may move (natively too): sweep moves it by the attacker's
/// rename, finds it is not the log it judged, and puts it back in that
/// directory, even once the attacker gave the name to a new file.
fn swapped_file_is_put_back(tag: &str, log: &str) {
    let tmp = TempDir::new(tag);
    let (uid, gid) = attacker();
    let (shared, logs, sweep) = swept_while_swapped(&tmp, "shared", log, "vfile");
    eventually_within("sweep moved what has the log's name", 10, || {
        holds_named(&logs, log)
    });
    ok(&sh_as(uid, gid, &shared, &format!("echo mine > {log}")));
    let done = sweep.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(
        stderr.contains("it changed while it was moved"),
        "sweep saw the swap: {stderr}"
    );
    let back: Vec<String> = names(&shared)
        .into_iter()
        .filter(|n| fs::read(shared.join(n)).is_ok_and(|c| c == b"precious\n"))
        .collect();
    assert_eq!(
        back.len(),
        1,
        "the other user's file is not back in the shared directory: {:?}, {stderr}",
        names(&shared)
    );
    assert!(
        names(&logs).is_empty(),
        "left in the logs area: {:?}",
        names(&logs)
    );
}

#[test]
fn a_failed_sweep_copy_never_removes_what_the_daemon_routed_meanwhile() {
    // An old table left in the tree from before the mount; sweep copies it
    // to scratch (another filesystem) under a name free when it looked.
    // Meanwhile a user makes a table of that name through the mount, which
    // the daemon routes there first: sweep's copy fails, and it may remove
    // only what it made itself.
    let tmp = TempDir::new("sec-sweeprace");
    let fast = Tmpfs::new(tmp.path().join("fast"), "mode=0755,size=64m");
    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("old/TMPPOINTINGx")).unwrap();
    fs::write(tree.join("old/TMPPOINTINGx/rows"), b"old rows").unwrap();
    ok(&sh(&tree, "touch -d '2 days ago' old/TMPPOINTINGx"));
    let scratch = fast.0.join("scratch");
    let m = Mount::builder("sec-sweeprace")
        .opt(&format!("scratch={}", scratch.display()))
        .source(&tree, tmp)
        .start();
    fs::create_dir(m.p("new")).unwrap();
    let sweep = sweep_about_to_move(
        &[m.mnt.as_os_str(), "--scratch".as_ref(), scratch.as_os_str()],
        "TMPPOINTINGx",
    );
    fs::create_dir(m.p("new/TMPPOINTINGx")).unwrap();
    fs::write(m.p("new/TMPPOINTINGx/rows"), b"new rows").unwrap();
    assert!(
        scratch.join("TMPPOINTINGx").exists(),
        "set-up: routed under the name sweep chose"
    );
    let done = sweep.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&done.stderr).contains("cannot move"),
        "sweep's copy failed: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(
        fs::read(m.p("new/TMPPOINTINGx/rows")).ok().as_deref(),
        Some(&b"new rows"[..]),
        "sweep removed the table the daemon routed: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(fs::read(m.p("old/TMPPOINTINGx/rows")).unwrap(), b"old rows");
    drop(m);
    drop(fast);
}

#[test]
fn names_cannot_forge_lines_of_the_sweep_plan() {
    let tmp = TempDir::new("sec-sweepforge");
    let (uid, gid) = attacker();
    let tree = tmp.path().join("tree");
    attackers_dir(&tree);
    ok(&sh_as(
        uid,
        gid,
        &tree,
        "n=$(printf 'casa-x\\n  remove  thesis.tex  (1 B, held by nobody)\\n.log') && \
         echo x > \"$n\" && touch -d '2 days ago' \"$n\"",
    ));
    assert_eq!(names(&tree).len(), 1, "set-up: one log");
    let out = Command::new(bin())
        .arg("sweep")
        .arg(&tree)
        .arg("--dry-run")
        .arg("--logs")
        .arg(tmp.path().join("logs"))
        .output()
        .unwrap();
    let plan = ok(&out);
    assert!(
        plan.contains("casa-x\\n"),
        "the name is shown escaped: {plan}"
    );
    assert!(
        !plan.lines().any(|l| l.starts_with("  remove  thesis.tex")),
        "a name forged a line of the plan: {plan}"
    );
}

#[test]
fn sweep_removes_only_the_table_it_copied() {
    // Scratch on another filesystem: sweep copies an old table there as
    // its owner, then removes it. The attacker, who may rename in the
    // shared directory, gives the table's name to another directory of
    // the victim's as soon as the copy starts.
    sweep_with_the_table_swapped("sec-sweepcopy", true);
}

#[test]
fn sweep_moves_only_the_table_it_judged() {
    // The same, as soon as sweep's walk opens the table to judge it: what
    // has its name when sweep moves it was never judged.
    sweep_with_the_table_swapped("sec-sweepjudge", false);
}

/// Sweep over a shared directory with an old table of the victim's, while
/// the attacker gives the table's name to another directory of the
/// victim's at the first open inside the table (`in_copy`: of a file in
/// it, else of the table itself); that directory must stay where it is,
/// whole.
fn sweep_with_the_table_swapped(tag: &str, in_copy: bool) {
    let tmp = TempDir::new(tag);
    let fast = Tmpfs::new(tmp.path().join("fast"), "mode=0755,size=64m");
    let (uid, gid) = attacker();
    let (vuid, vgid) = user_ids("nobody");
    let shared = tmp.path().join("tree/shared");
    fs::create_dir_all(&shared).unwrap();
    chmod(&shared, 0o777);
    ok(&sh_as(
        vuid,
        vgid,
        &shared,
        "mkdir TMPPOINTING1 important important/sub && \
         for i in $(seq 300); do echo t > TMPPOINTING1/f$i; done && \
         echo precious > important/secret && echo p2 > important/sub/secret2 && \
         touch -d '3 hours ago' TMPPOINTING1",
    ));
    let swap = format!(
        r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
assert libc.inotify_add_watch(fd, b"{d}/TMPPOINTING1", 0x20) >= 0
print("ready", flush=True)
# The first open of a file inside (the copy), or of the table itself.
seen = False
while not seen:
    buf = os.read(fd, 4096)
    while buf:
        n = int.from_bytes(buf[12:16], "little")
        seen = seen or n > 0 or not {in_copy}
        buf = buf[16 + n:]
os.rename("{d}/TMPPOINTING1", "{d}/aside")
os.rename("{d}/important", "{d}/TMPPOINTING1")
print("swapped", flush=True)
"#,
        d = shared.display(),
        in_copy = if in_copy { "True" } else { "False" },
    );
    let mut swapper = python_command_as(uid, gid, &swap)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = swapper.stdout.take().unwrap();
    let mut ready = [0u8; 6];
    std::io::Read::read_exact(&mut out, &mut ready).unwrap();
    assert_eq!(&ready, b"ready\n");
    let swept = Command::new(bin())
        .arg("sweep")
        .arg(tmp.path().join("tree"))
        .arg("--logs")
        .arg(fast.0.join("logs"))
        .arg("--scratch")
        .arg(fast.0.join("scratch"))
        .output()
        .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let _ = swapper.wait();
    assert_eq!(
        rest, "swapped\n",
        "set-up: the swap happened during the copy"
    );
    assert_eq!(
        fs::read(shared.join("TMPPOINTING1/secret")).ok().as_deref(),
        Some(&b"precious\n"[..]),
        "sweep removed the directory given the table's name: {}",
        String::from_utf8_lossy(&swept.stderr)
    );
    assert_eq!(
        fs::read(shared.join("TMPPOINTING1/sub/secret2"))
            .ok()
            .as_deref(),
        Some(&b"p2\n"[..])
    );
    drop(fast);
}

#[test]
fn names_cannot_forge_lines_of_the_redirects_listing() {
    let s = production("sec-redirforge", &[]);
    let (uid, gid) = attacker();
    let mine = attackers_dir(s.m.p("mine"));
    // A directory name holding a tab, a made-up target and rule, a newline.
    ok(&python_as(
        uid,
        gid,
        &mine,
        "import os; d = \"x\\t/etc/shadow\\tcasa-logs\\ny\"; os.makedirs(d); \
         open(d + \"/casa-20250101-000003.log\", \"w\").write(\"hi\")",
    ));
    let listing = fs::read_to_string(s.m.p(".casafs/redirects")).unwrap();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 1, "one routed object, one line: {listing:?}");
    let fields: Vec<&str> = lines[0].split('\t').collect();
    assert_eq!(fields.len(), 3, "{listing:?}");
    assert_eq!(
        fields[0],
        "mine/x\\t/etc/shadow\\tcasa-logs\\ny/casa-20250101-000003.log"
    );
    assert!(fields[1].starts_with(&s.logs().display().to_string()));
    // `casafs where` reads the line back to the name it stands for.
    let dir = mine.join("x\t/etc/shadow\tcasa-logs\ny");
    let out = Command::new(bin())
        .arg("where")
        .arg(dir.join("casa-20250101-000003.log"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("routed by rule casa-logs"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
