//! `casafs sweep TREE`: the one-off clean-up of debris made before casafs
//! was mounted. Stray `casa-*.log` files move to the logs area and
//! `TMPPOINTING*` tables to scratch (never deleted, never overwritten);
//! `.fuse_hidden*`/`.nfs*` files are reported with the processes holding
//! them and removed only with `--remove-debris` and only when nobody holds
//! them. The plan is printed before anything is done.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::rules::{Kind, Rule};

pub struct SweepArgs {
    pub tree: PathBuf,
    pub dry_run: bool,
    pub logs: Option<PathBuf>,
    pub scratch: Option<PathBuf>,
    pub remove_debris: bool,
    pub min_age: Duration,
}

#[derive(Debug)]
enum Action {
    Move {
        from: PathBuf,
        to_dir: PathBuf,
        bytes: u64,
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
        for (pid, dir) in crate::sys::processes() {
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
            for (id, path) in crate::sys::mapped_files(&maps) {
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

    /// Who holds `p` (`meta` its metadata), or for a directory anything in
    /// it.
    fn of(&self, p: &Path, meta: &fs::Metadata) -> Vec<String> {
        let mut who = self.by_id.get(&file_id(meta)).cloned().unwrap_or_default();
        if meta.is_dir() {
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
    tree: &'a Path,
    snap: Holders,
    at: Instant,
}

impl Fresh<'_> {
    const MAX_AGE: Duration = Duration::from_secs(1);

    fn of(&mut self, p: &Path) -> Vec<String> {
        if self.at.elapsed() > Self::MAX_AGE {
            self.snap = Holders::scan(self.tree);
            self.at = Instant::now();
        }
        match fs::symlink_metadata(p) {
            Ok(m) => self.snap.of(p, &m),
            Err(_) => Vec::new(),
        }
    }
}

fn size_of(p: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(p) else {
        return 0;
    };
    if !m.is_dir() {
        return m.len();
    }
    fs::read_dir(p)
        .map(|it| it.flatten().map(|e| size_of(&e.path())).sum())
        .unwrap_or(0)
}

fn is_debris(name: &str) -> bool {
    name.starts_with(".fuse_hidden") || name.starts_with(".nfs")
}

struct Plan {
    actions: Vec<Action>,
}

fn walk(
    dir: &Path,
    skip: &[PathBuf],
    rules: &[(Rule, PathBuf)],
    min_age: Duration,
    skip_ids: &[FileId],
    held: &Holders,
    plan: &mut Plan,
) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        if skip.contains(&path) {
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        // The areas however they were named (relative, through a symlink).
        if meta.is_dir() && skip_ids.contains(&file_id(&meta)) {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if is_debris(&name) && !meta.is_dir() {
            plan.actions.push(Action::Debris {
                holders: held.of(&path, &meta),
                path,
                bytes: meta.len(),
            });
            continue;
        }
        let routed = rules.iter().find(|(r, _)| {
            let kind_ok = match r.kind {
                Kind::Any => true,
                Kind::File => !meta.is_dir(),
                Kind::Dir => meta.is_dir(),
            };
            kind_ok && r.matches_name(name.as_bytes())
        });
        if let Some((r, to)) = routed {
            let old_enough = r.name != "tmppointing"
                || meta
                    .modified()
                    .ok()
                    .and_then(|m| SystemTime::now().duration_since(m).ok())
                    .is_some_and(|age| age >= min_age);
            if old_enough {
                let holders = held.of(&path, &meta);
                plan.actions.push(if holders.is_empty() {
                    Action::Move {
                        bytes: size_of(&path),
                        from: path,
                        to_dir: to.clone(),
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
        if meta.is_dir() {
            walk(&path, skip, rules, min_age, skip_ids, held, plan)?;
        }
    }
    Ok(())
}

/// A free name for `name` in `dir`: never overwrite.
fn free_name(dir: &Path, name: &str) -> PathBuf {
    let c = std::ffi::CString::new(name).unwrap_or_default();
    for n in 1..100_000 {
        let cand = crate::redirect::candidate(&c, n);
        let p = dir.join(cand.to_string_lossy().as_ref());
        if fs::symlink_metadata(&p).is_err() {
            return p;
        }
    }
    dir.join(format!("{name}-{}", std::process::id()))
}

/// Who a move is done for: the owner of the object moved, with the groups
/// the system gives that user.
#[derive(Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
}

impl Owner {
    /// Runs `f` with the owner's rights (as root where casafs cannot switch).
    fn acting<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        crate::creds::as_user(self.uid, self.gid, f).unwrap_or_else(|| {
            Err(io::Error::other(format!(
                "cannot take the credentials of uid {}",
                self.uid
            )))
        })
    }
}

/// Copies `from` (read with the owner's rights) to `to` (made by the
/// caller of sweep, root), as `cp -a` by the owner would leave it: every
/// object the owner's, the group kept where the owner is in it, and
/// set-ID bits only on what the owner owned. Directories are walked
/// without recursion.
fn copy_as(owner: Owner, from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let groups = crate::creds::user_groups(owner.uid, owner.gid);
    let give = |to: &Path, m: &fs::Metadata| -> io::Result<()> {
        let gid = if m.gid() == owner.gid || groups.contains(&m.gid()) {
            m.gid()
        } else {
            owner.gid
        };
        std::os::unix::fs::lchown(to, Some(owner.uid), Some(gid))?;
        if !m.file_type().is_symlink() {
            let mut mode = m.mode() & 0o7777;
            if m.uid() != owner.uid {
                mode &= !(libc::S_ISUID | libc::S_ISGID);
            }
            if gid != m.gid() {
                mode &= !libc::S_ISGID;
            }
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    };
    let mut todo = vec![(from.to_path_buf(), to.to_path_buf())];
    let mut dirs = Vec::new();
    while let Some((from, to)) = todo.pop() {
        let m = owner.acting(|| fs::symlink_metadata(&from))?;
        if m.is_dir() {
            let entries: Vec<_> = owner.acting(|| fs::read_dir(&from)?.collect())?;
            fs::create_dir(&to)?;
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&to, fs::Permissions::from_mode(0o700))?;
            for e in entries {
                todo.push((e.path(), to.join(e.file_name())));
            }
            // Modes last: a directory the owner may not write stays
            // writable while it is filled.
            dirs.push((to, m));
        } else if m.file_type().is_symlink() {
            let target = owner.acting(|| fs::read_link(&from))?;
            std::os::unix::fs::symlink(target, &to)?;
            give(&to, &m)?;
        } else if m.is_file() {
            let mut src = owner.acting(|| {
                use std::os::unix::fs::OpenOptionsExt;
                fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(&from)
            })?;
            use std::os::unix::fs::OpenOptionsExt;
            let mut dst = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&to)?;
            io::copy(&mut src, &mut dst)?;
            dst.sync_all()?;
            give(&to, &m)?;
        }
        // Devices, FIFOs and sockets are not copied: `mv` by their owner
        // could not make the first, and the others hold no data.
    }
    for (to, m) in dirs.iter().rev() {
        give(to, m)?;
    }
    Ok(())
}

/// Moves `from` into `to_dir` under a free name, as `mv` by its owner
/// would: only if the owner may take it out of its directory; across
/// filesystems it copies (`copy_as`), syncs, and only then removes the
/// original, with the owner's rights.
fn move_into(from: &Path, to_dir: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(from)?;
    let owner = Owner {
        uid: meta.uid(),
        gid: meta.gid(),
    };
    let parent = from.parent().unwrap_or(Path::new("/"));
    let may = owner.acting(|| {
        let p = crate::sys::cpath(parent).map_err(|e| io::Error::from_raw_os_error(e.code()))?;
        crate::sys::access_at(libc::AT_FDCWD, &p, libc::W_OK | libc::X_OK)
            .map_err(|e| io::Error::from_raw_os_error(e.code()))
    });
    if let Err(e) = may {
        return Err(io::Error::new(
            e.kind(),
            format!(
                "its owner (uid {}) may not move it out of {}: {e}",
                owner.uid,
                parent.display()
            ),
        ));
    }
    fs::create_dir_all(to_dir)?;
    let name = from
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dest = free_name(to_dir, &name);
    match fs::rename(from, &dest) {
        Ok(()) => {
            // The object moved must be the one judged: put anything else
            // back where it was.
            let moved = fs::symlink_metadata(&dest)?;
            if file_id(&moved) != file_id(&meta) {
                fs::rename(&dest, from)?;
                return Err(io::Error::other("it changed while it was moved"));
            }
            Ok(dest)
        }
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            copy_as(owner, from, &dest)?;
            owner.acting(|| {
                if fs::symlink_metadata(from)?.is_dir() {
                    fs::remove_dir_all(from)
                } else {
                    fs::remove_file(from)
                }
            })?;
            Ok(dest)
        }
        Err(e) => Err(e),
    }
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

pub fn run(a: SweepArgs) -> i32 {
    if !crate::creds::enabled() {
        println!(
            "sweep: not run as root: other users' processes are not seen, so a file one of them holds may show as held by nobody"
        );
    }
    let tree = match fs::canonicalize(&a.tree) {
        Ok(t) if t.is_dir() => t,
        Ok(t) => {
            eprintln!("casafs: error: sweep: {} is not a directory", t.display());
            return 2;
        }
        Err(e) => {
            eprintln!("casafs: error: sweep: {}: {e}", a.tree.display());
            return 2;
        }
    };
    // Absolute, so the plan says where things go whatever the working
    // directory, and the areas are recognised in the walk.
    let absolute = |p: &Path| match std::env::current_dir() {
        Ok(cwd) if p.is_relative() => cwd.join(p),
        _ => p.to_path_buf(),
    };
    let logs = a
        .logs
        .as_deref()
        .map(absolute)
        .unwrap_or_else(|| tree.join("state/logs/casa"));
    let scratch = a
        .scratch
        .as_deref()
        .map(absolute)
        .unwrap_or_else(|| tree.join("state/scratch/tmppointing"));
    let rules = match (
        Rule::new(
            "casa-logs",
            "casa-*.log",
            false,
            Kind::File,
            logs.clone(),
            None,
        ),
        Rule::new(
            "tmppointing",
            "TMPPOINTING*",
            false,
            Kind::Any,
            scratch.clone(),
            None,
        ),
    ) {
        (Ok(l), Ok(s)) => vec![(l, logs.clone()), (s, scratch.clone())],
        _ => return 2,
    };
    let skip = vec![
        logs.clone(),
        scratch.clone(),
        tree.join(crate::graveyard::GRAVEYARD_DIR),
        tree.join(".casafs"),
    ];
    let skip_ids: Vec<FileId> = skip
        .iter()
        .filter_map(|p| fs::metadata(p).ok())
        .map(|m| file_id(&m))
        .collect();
    let held = Holders::scan(&tree);
    let mut plan = Plan {
        actions: Vec::new(),
    };
    if let Err(e) = walk(&tree, &skip, &rules, a.min_age, &skip_ids, &held, &mut plan) {
        eprintln!("casafs: error: sweep: {}: {e}", tree.display());
        return 1;
    }

    println!("sweep plan for {}:", tree.display());
    if plan.actions.is_empty() {
        println!("  nothing to do");
    }
    for act in &plan.actions {
        match act {
            Action::Move {
                from,
                to_dir,
                bytes,
            } => {
                println!(
                    "  move    {}  ->  {}/  ({})",
                    from.display(),
                    to_dir.display(),
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
                println!("  {what}  {}  ({}, {who})", path.display(), human(*bytes));
            }
            Action::Held { path, holders } => {
                println!(
                    "  leave   {}  (in use: held open by {})",
                    path.display(),
                    holders.join(", ")
                );
            }
        }
    }
    if a.dry_run {
        println!("dry run: nothing changed");
        return 0;
    }
    let (mut moved, mut moved_bytes, mut removed, mut removed_bytes, mut failed) = (0, 0, 0, 0, 0);
    let mut in_use = 0;
    // Looked at again as the moves go: a process may have opened something
    // since the plan.
    let mut now = Fresh {
        tree: &tree,
        snap: Holders::scan(&tree),
        at: Instant::now(),
    };
    for act in &plan.actions {
        match act {
            Action::Move {
                from,
                to_dir,
                bytes,
            } => {
                let who = now.of(from);
                if !who.is_empty() {
                    in_use += 1;
                    println!(
                        "  leave   {}  (in use now: held open by {})",
                        from.display(),
                        who.join(", ")
                    );
                    continue;
                }
                match move_into(from, to_dir) {
                    Ok(dest) => {
                        moved += 1;
                        moved_bytes += bytes;
                        tracing::info!("sweep: moved {} -> {}", from.display(), dest.display());
                    }
                    Err(e) => {
                        failed += 1;
                        eprintln!("casafs: sweep: cannot move {}: {e}", from.display());
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
                    match fs::remove_file(path) {
                        Ok(()) => {
                            removed += 1;
                            removed_bytes += bytes;
                        }
                        Err(e) => {
                            failed += 1;
                            eprintln!("casafs: sweep: cannot remove {}: {e}", path.display());
                        }
                    }
                }
            }
        }
    }
    let debris = plan
        .actions
        .iter()
        .filter(|a| matches!(a, Action::Debris { .. }))
        .count();
    println!(
        "sweep done: moved {moved} ({}), left {in_use} in use, removed {removed} debris files ({}), {} debris files left, {failed} failures",
        human(moved_bytes),
        human(removed_bytes),
        debris - removed
    );
    if failed > 0 { 1 } else { 0 }
}
