//! `casafs sweep TREE`: the one-off clean-up of debris made before casafs
//! was mounted. Stray `casa-*.log` files move to the logs area and
//! `TMPPOINTING*` tables to scratch (never deleted, never overwritten);
//! `.fuse_hidden*`/`.nfs*` files are reported with the processes holding
//! them and removed only with `--remove-debris` and only when nobody holds
//! them. The plan is printed before anything is done.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::rules::{Kind, Rule};
use crate::sys::{self, Errno};
use crate::tree;

pub struct SweepArgs {
    pub tree: PathBuf,
    pub dry_run: bool,
    pub logs: Option<PathBuf>,
    pub scratch: Option<PathBuf>,
    /// The mount's config file: its rules (and `enabled = false`) apply.
    pub config: Option<PathBuf>,
    pub remove_debris: bool,
    pub min_age: Duration,
    /// Stay on the tree's filesystem.
    pub one_file_system: bool,
    /// The plan and the summary as JSON on stdout.
    pub json: bool,
}

#[derive(Debug)]
enum Action {
    Move {
        from: PathBuf,
        to_dir: PathBuf,
        bytes: u64,
        /// The object judged old and unused: only it moves.
        id: FileId,
    },
    Debris {
        path: PathBuf,
        bytes: u64,
        holders: Vec<String>,
    },
    /// Would be moved but is open (or a working directory) right now.
    Held { path: PathBuf, holders: Vec<String> },
}

/// A file as the kernel knows it: (device, inode).
type FileId = (u64, u64);

fn file_id(m: &fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

/// Who holds what open within the tree, from `/proc/*/fd`, `/proc/*/maps`
/// and `/proc/*/cwd`.
#[derive(Default)]
struct Holders {
    /// By device and inode, not by path: a `.fuse_hidden*` file is the one
    /// an unlink renamed away from under its holders, whose descriptors
    /// still show the old name (`… (deleted)`).
    by_id: HashMap<FileId, Vec<String>>,
    /// Paths open (or a working directory), for what is inside a directory.
    paths: Vec<(PathBuf, String)>,
}

impl Holders {
    /// Only descriptors whose path is within the tree are looked at, so a
    /// hung filesystem elsewhere cannot hang the sweep.
    fn scan(tree: &Path) -> Holders {
        let mut h = Holders::default();
        for (pid, dir) in crate::procs::processes() {
            let comm = fs::read_to_string(dir.join("comm"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            // casafs itself (a daemon serving the tree, this sweep) uses
            // nothing: its descriptors are its clients', who show up
            // themselves.
            if comm == "casafs" {
                continue;
            }
            let who = format!("{pid} ({comm})");
            if let Ok(cwd) = fs::read_link(dir.join("cwd"))
                && cwd.starts_with(tree)
            {
                h.paths.push((cwd, who.clone()));
            }
            let Ok(fds) = fs::read_dir(dir.join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                let Ok(t) = fs::read_link(fd.path()) else {
                    continue;
                };
                if !t.starts_with(tree) {
                    continue;
                }
                if let Ok(m) = fs::metadata(fd.path()) {
                    h.by_id.entry(file_id(&m)).or_default().push(who.clone());
                }
                let t = PathBuf::from(t.to_string_lossy().trim_end_matches(" (deleted)"));
                h.paths.push((t, who.clone()));
            }
            // A mapping holds its file open as a descriptor does, after the
            // descriptor it was made through is closed (the dynamic loader,
            // git's pack indexes).
            let maps = fs::read_to_string(dir.join("maps")).unwrap_or_default();
            for (id, path) in crate::procs::mapped_files(&maps) {
                if path.starts_with(tree) {
                    h.by_id.entry(id).or_default().push(who.clone());
                    h.paths.push((path, who.clone()));
                }
            }
        }
        for v in h.by_id.values_mut() {
            v.sort();
            v.dedup();
        }
        h
    }

    /// Who holds `p` (`st` its attributes), or for a directory anything in
    /// it.
    fn of(&self, p: &Path, st: &libc::stat) -> Vec<String> {
        let mut who = self.by_id.get(&stat_id(st)).cloned().unwrap_or_default();
        if is_dir(st) {
            who.extend(
                self.paths
                    .iter()
                    .filter(|(q, _)| q.starts_with(p))
                    .map(|(_, w)| w.clone()),
            );
        }
        who.sort();
        who.dedup();
        who
    }
}

/// Holders as of at most a moment ago: scanning all of /proc for each of
/// thousands of stray logs would take minutes.
struct Fresh<'a> {
    tree: &'a Tree,
    snap: Holders,
    at: Instant,
}

impl Fresh<'_> {
    const MAX_AGE: Duration = Duration::from_secs(1);

    fn of(&mut self, p: &Path) -> Vec<String> {
        if self.at.elapsed() > Self::MAX_AGE {
            self.snap = Holders::scan(&self.tree.path);
            self.at = Instant::now();
        }
        match self.tree.stat(p) {
            Ok(st) => self.snap.of(p, &st),
            Err(_) => Vec::new(),
        }
    }
}

fn stat_id(st: &libc::stat) -> FileId {
    (st.st_dev, st.st_ino)
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.code())
}

/// The tree swept, reached through a descriptor: every path in it is
/// opened strictly beneath it and through no symlink, so a directory a user
/// swaps for a symlink while sweep works never leads it elsewhere.
struct Tree {
    fd: OwnedFd,
    path: PathBuf,
}

impl Tree {
    fn open(path: &Path) -> io::Result<Tree> {
        let c = sys::cpath(path).map_err(errno)?;
        let fd =
            sys::open_at(libc::AT_FDCWD, &c, libc::O_PATH | libc::O_DIRECTORY, 0).map_err(errno)?;
        Ok(Tree {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// `p` (a path inside the tree) opened with `flags`.
    fn open_at(&self, p: &Path, flags: i32) -> io::Result<OwnedFd> {
        let rel = p
            .strip_prefix(&self.path)
            .map_err(|_| io::Error::other(format!("{} is outside the tree", shown(p))))?;
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let c = sys::cpath(rel).map_err(errno)?;
        sys::open_beneath(self.fd.as_raw_fd(), &c, flags, 0).map_err(errno)
    }

    /// The directory `p` is in, and `p`'s name there.
    fn parent_of(&self, p: &Path) -> io::Result<(OwnedFd, CString)> {
        let parent = p.parent().unwrap_or(&self.path);
        let name = p
            .file_name()
            .ok_or_else(|| io::Error::other(format!("{}: no name", shown(p))))?;
        let dir = self.open_at(parent, libc::O_PATH | libc::O_DIRECTORY)?;
        let name = CString::new(name.as_bytes()).map_err(|_| errno(Errno::EINVAL))?;
        Ok((dir, name))
    }

    /// `p`'s own attributes (never a symlink's target's).
    fn stat(&self, p: &Path) -> io::Result<libc::stat> {
        let (dir, name) = self.parent_of(p)?;
        sys::stat_at(dir.as_raw_fd(), &name).map_err(errno)
    }
}

/// Bytes in the files of `name` in `dir` and below.
fn size_of(dir: RawFd, name: &CStr, st: &libc::stat) -> u64 {
    if !is_dir(st) {
        return st.st_size as u64;
    }
    let Ok(fd) = sys::open_at(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    ) else {
        return 0;
    };
    let mut bytes = 0;
    tree::walk(
        fd,
        &mut |_, _, st| {
            if !is_dir(st) {
                bytes += st.st_size as u64;
            }
        },
        &mut |_, _| {},
    );
    bytes
}

fn is_debris(name: &str) -> bool {
    name.starts_with(".fuse_hidden") || name.starts_with(".nfs")
}

struct Plan {
    actions: Vec<Action>,
}

/// What sweep looks for, and where it does not look.
struct Walk<'a> {
    /// Stay on this device (`-x`).
    dev: Option<u64>,
    skip: &'a [PathBuf],
    rules: &'a [(Rule, PathBuf)],
    min_age: Duration,
    skip_ids: &'a [FileId],
    held: &'a Holders,
}

/// Plans the sweep of the tree: directories are visited one at a time from
/// a list (no recursion), each opened beneath the tree.
fn walk(tree: &Tree, w: &Walk<'_>, plan: &mut Plan) -> io::Result<()> {
    let mut dirs = vec![tree.path.clone()];
    let mut first = true;
    // A long walk says how far it got, on stderr, every few seconds.
    let started = Instant::now();
    let mut told = started;
    let mut walked = 0u64;
    while let Some(dir) = dirs.pop() {
        walked += 1;
        if told.elapsed() >= Duration::from_secs(5) {
            told = Instant::now();
            eprintln!(
                "casafs: sweep: {walked} directories walked in {}s, {} found so far, at {}",
                started.elapsed().as_secs(),
                plan.actions.len(),
                shown(&dir)
            );
        }
        let fd = match tree.open_at(&dir, libc::O_RDONLY | libc::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if first => return Err(e),
            Err(e) => {
                eprintln!("casafs: sweep: {}: {e}", shown(&dir));
                continue;
            }
        };
        first = false;
        let mut names = tree::list_dir(&fd).map_err(errno)?;
        names.sort();
        let mut subdirs = Vec::new();
        for cname in names {
            let name = String::from_utf8_lossy(cname.to_bytes()).into_owned();
            let path = dir.join(std::ffi::OsStr::from_bytes(cname.to_bytes()));
            if w.skip.contains(&path) {
                continue;
            }
            let Ok(st) = sys::stat_at(fd.as_raw_fd(), &cname) else {
                continue;
            };
            // The areas however they were named (relative, through a symlink).
            if is_dir(&st) && w.skip_ids.contains(&stat_id(&st)) {
                continue;
            }
            // Another filesystem mounted inside the tree, with `-x`.
            if w.dev.is_some_and(|d| d != st.st_dev) {
                continue;
            }
            if is_debris(&name) && !is_dir(&st) {
                plan.actions.push(Action::Debris {
                    holders: w.held.of(&path, &st),
                    path,
                    bytes: st.st_size as u64,
                });
                continue;
            }
            let routed = w.rules.iter().find(|(r, _)| {
                let kind_ok = match r.kind {
                    Kind::Any => true,
                    Kind::File => !is_dir(&st),
                    Kind::Dir => is_dir(&st),
                };
                kind_ok && r.matches_name(name.as_bytes())
            });
            if let Some((r, to)) = routed {
                let modified = std::time::UNIX_EPOCH
                    + Duration::new(st.st_mtime.max(0) as u64, st.st_mtime_nsec as u32);
                // A log nobody holds is done; a table may be between two
                // opens of its user (a concat), so it must be old too.
                let old_enough = r.name == "casa-logs"
                    || SystemTime::now()
                        .duration_since(modified)
                        .is_ok_and(|age| age >= w.min_age);
                if old_enough {
                    let holders = w.held.of(&path, &st);
                    plan.actions.push(if holders.is_empty() {
                        Action::Move {
                            bytes: size_of(fd.as_raw_fd(), &cname, &st),
                            from: path,
                            to_dir: to.clone(),
                            id: stat_id(&st),
                        }
                    } else {
                        // In use (CASA still writing its log, a concat still
                        // working on its table): moving it would pull it from
                        // under its user.
                        Action::Held { path, holders }
                    });
                    continue;
                }
            }
            if is_dir(&st) {
                subdirs.push(path);
            }
        }
        // Depth first, in name order.
        dirs.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

/// A free name for `name` in the directory `dir`: never overwrite.
fn free_name(dir: RawFd, name: &CStr) -> CString {
    for n in crate::redirect::candidate_numbers() {
        let cand = crate::redirect::candidate(name, n);
        if sys::stat_at(dir, &cand) == Err(Errno::ENOENT) {
            return cand;
        }
    }
    let mut last = name.to_bytes().to_vec();
    last.extend_from_slice(format!("-{}", std::process::id()).as_bytes());
    CString::new(last).unwrap_or_default()
}

/// Who a move is done for: the owner of the object moved, with the
/// primary group and the groups the user database gives that user (never
/// the object's group, which its owner need not be in).
#[derive(Clone)]
struct Owner {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

impl Owner {
    /// The owner of an object with attributes `st`.
    fn of(st: &libc::stat) -> Owner {
        let (gid, groups) = crate::creds::user_identity(st.st_uid);
        Owner {
            uid: st.st_uid,
            gid,
            groups,
        }
    }

    /// Runs `f` with the owner's rights (as root where casafs cannot switch).
    fn acting<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        crate::creds::as_user(self.uid, f).unwrap_or_else(|| {
            Err(io::Error::other(format!(
                "cannot take the credentials of uid {}",
                self.uid
            )))
        })
    }
}

/// One directory being copied: the source open with the owner's rights,
/// the copy, the names still to copy, and the copy's mode once full.
struct Copying {
    from: OwnedFd,
    to: OwnedFd,
    left: Vec<CString>,
    mode: u32,
}

/// Copies `name` in the directory `from` (read with the owner's rights) to
/// `dest` in `to` (made by the caller of sweep, root), as `cp -a` by the
/// owner would leave it: every object the owner's, the group kept where
/// the owner is in it, and set-ID bits only on what the owner owned.
/// Everything through descriptors, never following a symlink, without
/// recursion.
/// `made` is given the object that `dest` became, once made: only that
/// one is the copy's to remove should it fail.
fn copy_as(
    owner: &Owner,
    from: RawFd,
    name: &CStr,
    to: RawFd,
    dest: &CStr,
    made: &std::cell::Cell<Option<FileId>>,
) -> io::Result<()> {
    let made_here = |st: io::Result<libc::stat>| {
        if made.get().is_none()
            && let Ok(st) = st
        {
            made.set(Some(stat_id(&st)));
        }
    };
    // Gives the copy `name` in `dir` to the owner; returns its mode.
    let give = |dir: RawFd, name: &CStr, st: &libc::stat| -> io::Result<u32> {
        let gid = if st.st_gid == owner.gid || owner.groups.contains(&st.st_gid) {
            st.st_gid
        } else {
            owner.gid
        };
        // Charged to the owner's quota, as the owner's own copy would be.
        crate::creds::charging(|| {
            sys::chown_at(dir, name, owner.uid, gid, libc::AT_SYMLINK_NOFOLLOW)
        })
        .map_err(errno)?;
        let mut mode = st.st_mode & 0o7777;
        if st.st_uid != owner.uid {
            mode &= !(libc::S_ISUID | libc::S_ISGID);
        }
        if gid != st.st_gid {
            mode &= !libc::S_ISGID;
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
            sys::chmod_at(dir, name, mode).map_err(errno)?;
        }
        Ok(mode)
    };
    let read_dir = |dir: RawFd, name: &CStr| {
        owner.acting(|| {
            sys::open_at(
                dir,
                name,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )
            .map_err(errno)
        })
    };
    // Copies one object; a directory comes back to be filled.
    let one = |from: RawFd, name: &CStr, to: RawFd, dest: &CStr| -> io::Result<Option<Copying>> {
        let st = owner.acting(|| sys::stat_at(from, name).map_err(errno))?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                let src = read_dir(from, name)?;
                let left = owner.acting(|| tree::list_dir(&src).map_err(errno))?;
                sys::mkdir_at(to, dest, 0o700).map_err(errno)?;
                made_here(sys::stat_at(to, dest).map_err(errno));
                let copy = sys::open_at(
                    to,
                    dest,
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                )
                .map_err(errno)?;
                // Its mode last: a directory the owner may not write stays
                // writable while it is filled.
                let mode = give(to, dest, &st)?;
                sys::fchmod(copy.as_raw_fd(), 0o700).map_err(errno)?;
                Ok(Some(Copying {
                    from: src,
                    to: copy,
                    left,
                    mode,
                }))
            }
            libc::S_IFLNK => {
                let target = owner.acting(|| sys::readlink_at(from, name).map_err(errno))?;
                let target = CString::new(target).map_err(|_| errno(Errno::EINVAL))?;
                sys::symlink_at(&target, to, dest).map_err(errno)?;
                made_here(sys::stat_at(to, dest).map_err(errno));
                give(to, dest, &st)?;
                Ok(None)
            }
            libc::S_IFREG => {
                let src = owner.acting(|| {
                    sys::open_at(
                        from,
                        name,
                        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
                        0,
                    )
                    .map_err(errno)
                })?;
                let dst = sys::open_at(
                    to,
                    dest,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                    0o600,
                )
                .map_err(errno)?;
                made_here(sys::fstat(dst.as_raw_fd()).map_err(errno));
                // The file opened must be the one judged.
                let now = sys::fstat(src.as_raw_fd()).map_err(errno)?;
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
                    let _ = sys::unlink_at(to, dest, 0);
                    return Err(io::Error::other("it changed while it was copied"));
                }
                let (mut src, mut dst) = (fs::File::from(src), fs::File::from(dst));
                // Written by the owner: its blocks are the owner's to take
                // (never root's reserve).
                owner.acting(|| {
                    io::copy(&mut src, &mut dst)?;
                    dst.sync_all()
                })?;
                give(to, dest, &st)?;
                Ok(None)
            }
            // Devices, FIFOs and sockets are not copied: `mv` by their owner
            // could not make the first, and the others hold no data.
            _ => Ok(None),
        }
    };
    let mut stack: Vec<Copying> = one(from, name, to, dest)?.into_iter().collect();
    while let Some(level) = stack.last_mut() {
        let Some(child) = level.left.pop() else {
            if let Some(done) = stack.pop() {
                sys::fchmod(done.to.as_raw_fd(), done.mode).map_err(errno)?;
            }
            continue;
        };
        let (f, t) = (level.from.as_raw_fd(), level.to.as_raw_fd());
        if let Some(c) = one(f, &child, t, &child)? {
            if stack.len() >= tree::MAX_DEPTH {
                return Err(errno(Errno::ENAMETOOLONG));
            }
            stack.push(c);
        }
    }
    Ok(())
}

/// Moves `from` (in the tree) into `to_dir` under a free name, as `mv` by
/// its owner would: only if the owner may take it out of its directory;
/// across filesystems it copies (`copy_as`), syncs, and only then removes
/// the original, with the owner's rights.
fn move_into(tree: &Tree, from: &Path, to_dir: &Path, judged: FileId) -> io::Result<PathBuf> {
    let (dir, name) = tree.parent_of(from)?;
    let st = sys::stat_at(dir.as_raw_fd(), &name).map_err(errno)?;
    // Another object given the name since the walk was not judged.
    if stat_id(&st) != judged {
        return Err(io::Error::other("it changed since it was judged"));
    }
    let owner = Owner::of(&st);
    let may = owner
        .acting(|| sys::access_at(dir.as_raw_fd(), c"", libc::W_OK | libc::X_OK).map_err(errno));
    if let Err(e) = may {
        return Err(io::Error::new(
            e.kind(),
            format!(
                "its owner (uid {}) may not move it out of its directory: {e}",
                owner.uid
            ),
        ));
    }
    // An area as casafs takes one: root's alone (see `areas`).
    let to = crate::areas::open_area(to_dir, &mut Vec::new()).map_err(io::Error::other)?;
    if let Err(e) = crate::areas::secure(to.as_raw_fd()) {
        return Err(io::Error::other(format!("{}: {}", shown(to_dir), e.0)));
    }
    let dest = free_name(to.as_raw_fd(), &name);
    let at = to_dir.join(std::ffi::OsStr::from_bytes(dest.to_bytes()));
    // The owner's own rename takes it out of its directory, into one of the
    // owner's in the area: the kernel then moves only what the owner may
    // move, whatever has the name by then (another user's directory cannot
    // change parent at the owner's hand). From there to its place in the
    // area is casafs's own step, between names no one else can reach.
    // (Only where a rename can do it: an area on another filesystem is
    // copied into, and gets no stage, whose owner it might not keep.)
    let same_fs = sys::fstat(to.as_raw_fd()).is_ok_and(|a| a.st_dev == st.st_dev);
    let stage = if same_fs {
        Some(Stage::new(&to, &owner)?)
    } else {
        None
    };
    crate::fault::sweep_moving();
    let moved = match &stage {
        Some(stage) => owner.acting(|| {
            Ok(sys::rename_noreplace(
                dir.as_raw_fd(),
                &name,
                stage.fd.as_raw_fd(),
                &name,
            ))
        })?,
        None => Err(Errno::EXDEV),
    };
    match (moved, stage) {
        (Ok(()), Some(stage)) => {
            // The owner's part is done: from now on the stage is root's, so
            // that a process of the owner's working inside what was moved
            // (whose `..` is now the stage) cannot add to it.
            let _ = stage.take_back();
            crate::fault::sweep_moving();
            // The object moved must be the one judged: put anything else
            // back where it was.
            let now = sys::stat_at(stage.fd.as_raw_fd(), &name).map_err(errno)?;
            let left = stage
                .path(to_dir)
                .join(std::ffi::OsStr::from_bytes(name.to_bytes()));
            let back = |why: &str| {
                put_back(
                    stage.fd.as_raw_fd(),
                    &name,
                    dir.as_raw_fd(),
                    &name,
                    &left,
                    why,
                )
            };
            if stat_id(&now) != stat_id(&st) {
                return Err(back("it changed while it was moved"));
            }
            // A daemon serving the tree may have routed an object under
            // the free name meanwhile: another one then.
            let (mut dest, mut at) = (dest, at);
            for _ in 0..8 {
                match sys::rename_noreplace(stage.fd.as_raw_fd(), &name, to.as_raw_fd(), &dest) {
                    Ok(()) => return Ok(at),
                    Err(Errno::EEXIST) => {
                        dest = free_name(to.as_raw_fd(), &name);
                        at = to_dir.join(std::ffi::OsStr::from_bytes(dest.to_bytes()));
                    }
                    Err(e) => {
                        return Err(back(&format!("cannot place it in the area ({})", errno(e))));
                    }
                }
            }
            Err(back("no free name in the area"))
        }
        (Err(Errno::EXDEV), _) => {
            let made = std::cell::Cell::new(None);
            if let Err(e) = copy_as(&owner, dir.as_raw_fd(), &name, to.as_raw_fd(), &dest, &made) {
                // The original is whole where it was: a part copy would
                // only be copied again beside itself at every run. Only
                // what this copy made goes: a daemon serving the tree may
                // have routed an object of that name there meanwhile.
                if let Some(id) = made.get() {
                    let _ = tree::remove_tree_at_if_same(to.as_raw_fd(), &dest, id);
                }
                return Err(e);
            }
            // Only the object judged and copied goes: another given its
            // name meanwhile stays, and so does the copy.
            owner.acting(|| {
                tree::remove_tree_at_if_same(dir.as_raw_fd(), &name, stat_id(&st)).map_err(|e| {
                    match e {
                        Errno::ESTALE => io::Error::other(format!(
                            "it changed while it was copied (the copy is {})",
                            shown(&at)
                        )),
                        e => errno(e),
                    }
                })
            })?;
            Ok(at)
        }
        (Err(e @ (Errno::EACCES | Errno::EPERM)), _) => Err(io::Error::new(
            errno(e).kind(),
            format!(
                "its owner (uid {}) may not move what has its name ({}): a directory must be writable by its owner to change its parent",
                owner.uid,
                errno(e)
            ),
        )),
        (Err(e), _) => Err(errno(e)),
        (Ok(()), None) => Err(errno(Errno::EIO)),
    }
}

/// A directory of the owner's in an area, that only sweep knows of (the
/// area is root's alone): what the owner's rename takes out of the tree
/// lands there. Removed when dropped, if empty.
struct Stage<'a> {
    area: &'a OwnedFd,
    name: CString,
    fd: OwnedFd,
}

impl<'a> Stage<'a> {
    fn new(area: &'a OwnedFd, owner: &Owner) -> io::Result<Stage<'a>> {
        let name = CString::new(format!(".casafs-sweep-{:016x}", sys::random_u64()))
            .map_err(|_| errno(Errno::EINVAL))?;
        sys::mkdir_at(area.as_raw_fd(), &name, 0o700).map_err(errno)?;
        let made = sys::open_at(
            area.as_raw_fd(),
            &name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .map_err(errno)
        .and_then(|fd| {
            sys::chown_at(
                fd.as_raw_fd(),
                c"",
                owner.uid,
                owner.gid,
                libc::AT_EMPTY_PATH,
            )
            .map_err(errno)?;
            Ok(fd)
        });
        match made {
            Ok(fd) => Ok(Stage { area, name, fd }),
            Err(e) => {
                let _ = sys::unlink_at(area.as_raw_fd(), &name, libc::AT_REMOVEDIR);
                Err(e)
            }
        }
    }

    /// Makes the stage root's alone again.
    fn take_back(&self) -> sys::Res<()> {
        sys::chown_at(self.fd.as_raw_fd(), c"", 0, 0, libc::AT_EMPTY_PATH)
    }

    fn path(&self, area: &Path) -> PathBuf {
        area.join(std::ffi::OsStr::from_bytes(self.name.to_bytes()))
    }
}

impl Drop for Stage<'_> {
    fn drop(&mut self) {
        let _ = sys::unlink_at(self.area.as_raw_fd(), &self.name, libc::AT_REMOVEDIR);
    }
}

/// Puts an object taken out of the directory `dir` (now `dest` in the
/// directory `area`, sweep's own) back where it came from, because it is
/// not the one judged or cannot be placed (`why`): under its name, or, if
/// that was taken meanwhile, under a name no one can have foreseen, in
/// that same directory (where whoever swapped it in could have renamed it
/// anyway). Returns the error the move reports.
fn put_back(
    area: RawFd,
    dest: &CStr,
    dir: RawFd,
    name: &CStr,
    in_area: &Path,
    why: &str,
) -> io::Error {
    let mut back = sys::rename_noreplace(area, dest, dir, name).map(|()| name.to_owned());
    for _ in 0..8 {
        if back != Err(Errno::EEXIST) {
            break;
        }
        // As much of the name as fits beside the suffix in a name's 255
        // bytes.
        let suffix = format!(".casafs-{:016x}", sys::random_u64());
        let keep = name.to_bytes().len().min(255 - suffix.len());
        let mut aside = name.to_bytes()[..keep].to_vec();
        aside.extend_from_slice(suffix.as_bytes());
        let Ok(aside) = CString::new(aside) else {
            break;
        };
        back = sys::rename_noreplace(area, dest, dir, &aside).map(|()| aside);
    }
    match back {
        Ok(n) if n.as_c_str() == name => io::Error::other(why.to_string()),
        Ok(n) => io::Error::other(format!(
            "{why}; it was put back as {}",
            shown(Path::new(std::ffi::OsStr::from_bytes(n.to_bytes())))
        )),
        Err(e) => io::Error::other(format!(
            "{why}, and it could not be put back ({}): it is {}",
            errno(e),
            shown(in_area)
        )),
    }
}

/// Removes a debris file with the rights of its owner, who unlinked it.
fn remove_debris(tree: &Tree, p: &Path) -> io::Result<()> {
    let (dir, name) = tree.parent_of(p)?;
    let st = sys::stat_at(dir.as_raw_fd(), &name).map_err(errno)?;
    let owner = Owner::of(&st);
    owner.acting(|| sys::unlink_at(dir.as_raw_fd(), &name, 0).map_err(errno))
}

/// A path as sweep prints it: a control character (a user may put a
/// newline in a name) is escaped, so that no name forges a line of the
/// plan or of the log.
fn shown<P: AsRef<Path> + ?Sized>(p: &P) -> String {
    crate::redirect::escape(&p.as_ref().to_string_lossy())
}

fn human(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    } else if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// The plan (and, once done, the summary) as JSON.
/// The plan (and, once done, what became of each item and the summary)
/// as JSON. Paths as text (a name that is not UTF-8 shows with U+FFFD).
fn json_report(
    tree: &Path,
    plan: &Plan,
    remove_debris: bool,
    done: Option<(&[String], serde_json::Value)>,
) -> String {
    let text = |p: &Path| p.to_string_lossy().into_owned();
    let actions: Vec<serde_json::Value> = plan
        .actions
        .iter()
        .enumerate()
        .map(|(i, act)| {
            let mut v = match act {
                Action::Move {
                    from, to_dir, bytes, ..
                } => serde_json::json!({
                    "action": "move", "path": text(from), "to": text(to_dir), "bytes": bytes,
                }),
                Action::Debris { path, bytes, holders } => serde_json::json!({
                    "action": if !remove_debris { "report" } else if holders.is_empty() { "remove" } else { "keep" },
                    "path": text(path), "bytes": bytes, "holders": holders,
                }),
                Action::Held { path, holders } => serde_json::json!({
                    "action": "leave", "path": text(path), "holders": holders,
                }),
            };
            if let Some((outcomes, _)) = done {
                v["outcome"] = outcomes.get(i).cloned().unwrap_or_default().into();
            }
            v
        })
        .collect();
    let mut doc =
        serde_json::json!({ "tree": text(tree), "plan": actions, "dry_run": done.is_none() });
    if let Some((_, summary)) = done {
        doc["summary"] = summary;
    }
    doc.to_string()
}

pub fn run(a: SweepArgs) -> i32 {
    // With --json, one JSON document on stdout and nothing else there.
    macro_rules! say {
        ($($t:tt)*) => {
            if !a.json {
                println!($($t)*)
            }
        };
    }
    if !crate::creds::enabled() {
        eprintln!(
            "sweep: not run as root: other users' processes are not seen, so a file one of them holds may show as held by nobody"
        );
    }
    let tree = match fs::canonicalize(&a.tree) {
        Ok(t) if t.is_dir() => t,
        Ok(t) => {
            eprintln!("casafs: error: sweep: {} is not a directory", shown(&t));
            return 2;
        }
        Err(e) => {
            eprintln!("casafs: error: sweep: {}: {e}", shown(&a.tree));
            return 2;
        }
    };
    // Absolute, so the plan says where things go whatever the working
    // directory, and the areas are recognised in the walk.
    let absolute = |p: &Path| match std::env::current_dir() {
        Ok(cwd) if p.is_relative() => cwd.join(p),
        _ => p.to_path_buf(),
    };
    // The rules a mount of this tree would route by: the config file's,
    // with --logs and --scratch as the options of the same names.
    let mut options = Vec::new();
    if let Some(l) = &a.logs {
        options.push(format!("logs={}", absolute(l).display()));
    }
    if let Some(s) = &a.scratch {
        options.push(format!("scratch={}", absolute(s).display()));
    }
    let settings = match crate::config::build(&crate::config::MountArgs {
        source: tree.clone(),
        mountpoint: tree.clone(),
        options,
        config: a.config.as_deref().map(absolute),
        foreground: true,
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("casafs: error: sweep: {e}");
            return 2;
        }
    };
    let rules: Vec<(Rule, PathBuf)> = settings
        .rules
        .rules
        .iter()
        .map(|r| (r.clone(), r.target.clone()))
        .collect();
    let mut skip: Vec<PathBuf> = rules.iter().map(|(_, t)| t.clone()).collect();
    skip.push(tree.join(crate::graveyard::GRAVEYARD_DIR));
    skip.push(tree.join(".casafs"));
    let skip_ids: Vec<FileId> = skip
        .iter()
        .filter_map(|p| fs::metadata(p).ok())
        .map(|m| file_id(&m))
        .collect();
    let held = Holders::scan(&tree);
    let mut plan = Plan {
        actions: Vec::new(),
    };
    let swept = match Tree::open(&tree) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("casafs: error: sweep: {}: {e}", shown(&tree));
            return 2;
        }
    };
    let w = Walk {
        dev: if a.one_file_system {
            fs::metadata(&tree)
                .ok()
                .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
        } else {
            None
        },
        skip: &skip,
        rules: &rules,
        min_age: a.min_age,
        skip_ids: &skip_ids,
        held: &held,
    };
    if let Err(e) = walk(&swept, &w, &mut plan) {
        eprintln!("casafs: error: sweep: {}: {e}", shown(&tree));
        return 1;
    }

    say!("sweep plan for {}:", shown(&tree));
    if plan.actions.is_empty() {
        say!("  nothing to do");
    }
    for act in &plan.actions {
        match act {
            Action::Move {
                from,
                to_dir,
                bytes,
                ..
            } => {
                say!(
                    "  move    {}  ->  {}/  ({})",
                    shown(from),
                    shown(to_dir),
                    human(*bytes)
                )
            }
            Action::Debris {
                path,
                bytes,
                holders,
            } => {
                let who = if holders.is_empty() {
                    "held by nobody".to_string()
                } else {
                    format!("held open by {}", holders.join(", "))
                };
                let what = if !a.remove_debris {
                    "report"
                } else if holders.is_empty() {
                    "remove"
                } else {
                    "keep  "
                };
                say!("  {what}  {}  ({}, {who})", shown(path), human(*bytes));
            }
            Action::Held { path, holders } => {
                say!(
                    "  leave   {}  (in use: held open by {})",
                    shown(path),
                    holders.join(", ")
                );
            }
        }
    }
    if a.dry_run {
        say!("dry run: nothing changed");
        if a.json {
            println!("{}", json_report(&tree, &plan, a.remove_debris, None));
        }
        return 0;
    }
    let (mut moved, mut moved_bytes, mut removed, mut removed_bytes, mut failed) = (0, 0, 0, 0, 0);
    let mut in_use = 0;
    // Looked at again as the moves go: a process may have opened something
    // since the plan.
    let mut now = Fresh {
        tree: &swept,
        snap: Holders::scan(&tree),
        at: Instant::now(),
    };
    // What became of each item, for --json.
    let mut outcomes = Vec::with_capacity(plan.actions.len());
    for act in &plan.actions {
        let mut outcome = String::from("left");
        match act {
            Action::Move {
                from,
                to_dir,
                bytes,
                id,
            } => {
                let who = now.of(from);
                if !who.is_empty() {
                    in_use += 1;
                    outcomes.push(format!("left: in use now by {}", who.join(", ")));
                    say!(
                        "  leave   {}  (in use now: held open by {})",
                        shown(from),
                        who.join(", ")
                    );
                    continue;
                }
                match move_into(&swept, from, to_dir, *id) {
                    Ok(dest) => {
                        moved += 1;
                        moved_bytes += bytes;
                        outcome = format!("moved to {}", shown(&dest));
                        tracing::info!("sweep: moved {} -> {}", shown(from), shown(&dest));
                    }
                    Err(e) => {
                        failed += 1;
                        outcome = format!("failed: {e}");
                        eprintln!("casafs: sweep: cannot move {}: {e}", shown(from));
                    }
                }
            }
            Action::Held { .. } => in_use += 1,
            Action::Debris {
                path,
                bytes,
                holders,
            } => {
                if a.remove_debris && holders.is_empty() && now.of(path).is_empty() {
                    match remove_debris(&swept, path) {
                        Ok(()) => {
                            removed += 1;
                            removed_bytes += bytes;
                            outcome = "removed".into();
                        }
                        Err(e) => {
                            failed += 1;
                            outcome = format!("failed: {e}");
                            eprintln!("casafs: sweep: cannot remove {}: {e}", shown(path));
                        }
                    }
                }
            }
        }
        outcomes.push(outcome);
    }
    let debris = plan
        .actions
        .iter()
        .filter(|a| matches!(a, Action::Debris { .. }))
        .count();
    say!(
        "sweep done: moved {moved} ({}), left {in_use} in use, removed {removed} debris files ({}), {} debris files left, {failed} failures",
        human(moved_bytes),
        human(removed_bytes),
        debris - removed
    );
    if a.json {
        let summary = serde_json::json!({
            "moved": moved,
            "moved_bytes": moved_bytes,
            "in_use": in_use,
            "debris_removed": removed,
            "debris_removed_bytes": removed_bytes,
            "debris_left": debris - removed,
            "failures": failed,
        });
        println!(
            "{}",
            json_report(&tree, &plan, a.remove_debris, Some((&outcomes, summary)))
        );
    }
    if failed > 0 { 1 } else { 0 }
}
