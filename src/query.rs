//! Answers to "where did it go?": `casafs where PATH` (where a path through
//! a mount really lives), `casafs route NAME` (which rule would route a
//! name, and where to), `casafs config check FILE` (is a config good,
//! without mounting).

use std::path::{Path, PathBuf};

use crate::config::{self, MountArgs};

/// The casafs mount `path` is under, and `path` relative to it.
fn mount_of(path: &Path) -> Option<(PathBuf, PathBuf)> {
    let abs = std::path::absolute(path).ok()?;
    let mut dir = abs.as_path();
    loop {
        if crate::health::fstype_at(dir).as_deref() == Some("fuse.casafs") {
            let rel = abs.strip_prefix(dir).ok()?.to_path_buf();
            return Some((dir.to_path_buf(), rel));
        }
        dir = dir.parent()?;
    }
}

/// Where `origin` (relative to the mount) lives, from the lines of
/// `.casafs/redirects`: the routed object itself, or one that contains it.
fn routed(redirects: &str, rel: &Path) -> Option<(PathBuf, PathBuf, String)> {
    redirects
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some((
                PathBuf::from(crate::redirect::unescape(f.next()?)),
                PathBuf::from(crate::redirect::unescape(f.next()?)),
                f.next()?.to_string(),
            ))
        })
        .filter(|(origin, _, _)| rel.starts_with(origin))
        .max_by_key(|(origin, _, _)| origin.components().count())
}

pub fn where_is(path: &Path) -> i32 {
    let shown = path.display();
    let Some((mnt, rel)) = mount_of(path) else {
        println!("{shown}: not under a casafs mount");
        return 1;
    };
    // Looked up first: an object another host routed is known here only
    // once a lookup has found its record.
    let _ = std::fs::symlink_metadata(path);
    let redirects = std::fs::read_to_string(mnt.join(".casafs/redirects")).unwrap_or_default();
    if let Some((origin, target, rule)) = routed(&redirects, &rel) {
        let inside = rel.strip_prefix(&origin).unwrap_or(Path::new(""));
        let at = if inside.as_os_str().is_empty() {
            target
        } else {
            target.join(inside)
        };
        println!(
            "{shown}: routed by rule {rule} from {}; lives at {}",
            mnt.join(&origin).display(),
            at.display()
        );
        return 0;
    }
    let config = std::fs::read_to_string(mnt.join(".casafs/config")).unwrap_or_default();
    let source = config
        .lines()
        .find_map(|l| l.strip_prefix("source = "))
        .and_then(|v| serde_json::from_str::<String>(v).ok())
        .map(PathBuf::from)
        .unwrap_or_else(|| mnt.clone());
    println!(
        "{shown}: not routed; lives in the tree at {}",
        source.join(&rel).display()
    );
    0
}

/// `casafs route NAME`: exit 0 and the rule and area if one routes it, 1 if
/// none does, 2 for a bad config.
pub fn route(
    name: &str,
    dir: bool,
    config: Option<PathBuf>,
    options: Vec<String>,
    source: &Path,
) -> i32 {
    let args = MountArgs {
        source: source.to_path_buf(),
        mountpoint: source.to_path_buf(),
        options,
        config,
        foreground: true,
    };
    let s = match config::build(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("casafs: error: {e}");
            return 2;
        }
    };
    let what = if dir { "directory" } else { "file" };
    match s.rules.route(name.as_bytes(), dir) {
        Some(i) => {
            let r = &s.rules.rules[i];
            println!(
                "{name} ({what}): rule {} ('{}') routes it to {}",
                r.name,
                r.pattern,
                r.target.display()
            );
            0
        }
        None => {
            println!("{name} ({what}): no rule routes it; it stays where it is made");
            1
        }
    }
}

/// `casafs config check FILE`: the effective configuration, or the one-line
/// error and exit 2. Nothing is mounted or made.
pub fn check_config(file: &Path, source: &Path) -> i32 {
    let args = MountArgs {
        source: source.to_path_buf(),
        mountpoint: source.to_path_buf(),
        options: vec![],
        config: Some(std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf())),
        foreground: true,
    };
    match config::build(&args) {
        Ok(s) => {
            println!("# {}: good", file.display());
            print!("{}", config::render(&s));
            0
        }
        Err(e) => {
            eprintln!("casafs: error: {e}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_innermost_routed_origin_holds_a_path() {
        let r = "obs/TMPPOINTING1\t/scratch/TMPPOINTING1\ttmppointing\n\
                 obs/casa-1.log\t/logs/casa-1.log\tcasa-logs\n";
        assert_eq!(
            routed(r, Path::new("obs/TMPPOINTING1/table.f1")),
            Some((
                PathBuf::from("obs/TMPPOINTING1"),
                PathBuf::from("/scratch/TMPPOINTING1"),
                "tmppointing".into()
            ))
        );
        assert_eq!(
            routed(r, Path::new("obs/casa-1.log")).unwrap().2,
            "casa-logs"
        );
        assert_eq!(routed(r, Path::new("obs/TMPPOINTING10")), None);
        assert_eq!(routed(r, Path::new("obs")), None);
    }
}
