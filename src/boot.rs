//! Boot order: a path that fstab puts on a filesystem of its own must not
//! be used before that filesystem is mounted. At boot a `nofail` scratch
//! disk may come up after casafs; an area made through its empty mount
//! point would put every routed table on the root disk, unnoticed.

use std::path::{Component, Path, PathBuf};

/// The fstab that says which mount points exist: `/etc/fstab`, or
/// `CASAFS_FSTAB` (a chroot's, or a test's).
fn fstab_path() -> PathBuf {
    std::env::var_os("CASAFS_FSTAB")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/fstab"))
}

/// `p` made absolute with `.` and `..` resolved by name (the path may not
/// exist yet: an area casafs is about to make).
fn lexical(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// The mount points fstab lists for real filesystems, casafs's own
/// entries (which this very mount may be) and swap left out.
fn fstab_mount_points(text: &str) -> Vec<PathBuf> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_spec, file, kind) = (f.next()?, f.next()?, f.next()?);
            let skip = file == "none"
                || file == "/"
                || !file.starts_with('/')
                || kind == "swap"
                || kind == "fuse.casafs"
                || kind == "casafs";
            (!skip).then(|| lexical(&crate::health::unescape(file)))
        })
        .collect()
}

fn mounted_points() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(crate::health::unescape)
        .collect()
}

/// The fstab mount point `path` lies under, if it is not mounted now.
pub fn unmounted_under(path: &Path) -> Option<PathBuf> {
    let fstab = std::fs::read_to_string(fstab_path()).unwrap_or_default();
    pick(
        &resolved(path),
        &fstab_mount_points(&fstab),
        &mounted_points(),
    )
}

/// `path` with symlinks resolved as far as it exists (an area may be named
/// through a link into a mount point), the rest by name.
fn resolved(path: &Path) -> PathBuf {
    let path = lexical(path);
    let mut existing = path.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            return rest.iter().rev().fold(real, |p, n| p.join(n));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return path.clone(),
        }
    }
}

fn pick(path: &Path, fstab: &[PathBuf], mounted: &[PathBuf]) -> Option<PathBuf> {
    // The innermost: an outer one being mounted says nothing of it.
    let m = fstab
        .iter()
        .filter(|m| path.starts_with(m))
        .max_by_key(|m| m.components().count())?;
    let real = std::fs::canonicalize(m).unwrap_or_else(|_| m.clone());
    // Anything mounted between it and the path (the point itself, or
    // something mounted another way below it: autofs, a .mount unit)
    // holds the path.
    let held = mounted
        .iter()
        .any(|x| path.starts_with(x) && (x.starts_with(&real) || x.starts_with(m)));
    (!held).then(|| m.clone())
}

/// For an operator's one line: what is missing and how to order it.
pub fn refusal(m: &Path) -> String {
    format!(
        "{} is in {} but not mounted yet; mount it first (systemd: RequiresMountsFor={})",
        m.display(),
        fstab_path().display(),
        m.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_innermost_fstab_mount_point_decides() {
        let fstab = fstab_mount_points(
            "# comment\n/dev/a / ext4 defaults 0 1\n/dev/b /scratch ext4 nofail 0 2\n\
             /dev/c /scratch/fast xfs nofail 0 2\n/swap none swap sw 0 0\n\
             /data/t /data/t fuse.casafs scratch=/scratch/x 0 0\nLABEL=d /data\\040x ext4 defaults 0 2\n",
        );
        assert_eq!(
            fstab,
            [
                PathBuf::from("/scratch"),
                PathBuf::from("/scratch/fast"),
                PathBuf::from("/data x")
            ]
        );
        let mounted = [PathBuf::from("/"), PathBuf::from("/scratch")];
        assert_eq!(pick(Path::new("/scratch/t/tmp"), &fstab, &mounted), None);
        assert_eq!(
            pick(
                &lexical(Path::new("/scratch/fast/../fast/t")),
                &fstab,
                &mounted
            ),
            Some(PathBuf::from("/scratch/fast"))
        );
        assert_eq!(
            pick(Path::new("/data x/y"), &fstab, &mounted),
            Some(PathBuf::from("/data x"))
        );
        // Something mounted below an unmounted fstab point holds the path.
        let also = [PathBuf::from("/"), PathBuf::from("/scratch/fast/t")];
        assert_eq!(pick(Path::new("/scratch/fast/t/x"), &fstab, &also), None);
        // Not under any fstab entry (a casafs entry is this mount itself).
        assert_eq!(pick(Path::new("/data/t/state"), &fstab, &mounted), None);
        assert_eq!(pick(Path::new("/scratchy"), &fstab, &mounted), None);
    }
}
