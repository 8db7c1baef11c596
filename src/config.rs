//! The effective configuration: `-o` options and the TOML config file merged
//! into one validated `Settings`.
//!
//! Every key has one name, used alike in fstab's `-o`, on the command line and
//! in the config file, so an operator can move a setting from one to the
//! other without translating it. An unknown key is an error, never ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fuser::MountOption;
use serde::Deserialize;

use crate::rules::{Kind, Rule, RuleSet};

/// When to move an unlinked-but-open file into the graveyard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeferUnlink {
    /// Only on backing filesystems that would leave debris (FUSE, NFS, SMB).
    Auto,
    Always,
    Never,
}

/// What a rename onto a routed name does when the target area is on another
/// filesystem than the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrossDevice {
    /// Answer EXDEV, as POSIX rename does; `mv` and `shutil.move` then copy.
    Exdev,
    /// Rename in place, without routing.
    InPlace,
}

/// `auto` as a cache time: long where casafs sees every change made
/// beneath the mount, short elsewhere (`crate::fs`, `crate::watch`).
pub const AUTO_CACHE_TIME: Duration = Duration::MAX;

#[derive(Clone, Debug)]
pub struct Settings {
    pub source: PathBuf,
    pub mountpoint: PathBuf,
    pub logs: PathBuf,
    pub scratch: PathBuf,
    pub rules: RuleSet,
    pub defer_unlink: DeferUnlink,
    pub cross_device: CrossDevice,
    pub passthrough: bool,
    /// Serve requests through FUSE over io_uring where the kernel offers it.
    pub io_uring: bool,
    /// io_uring queue threads hand their CPU to the caller they answer.
    pub handoff: bool,
    pub attr_timeout: Duration,
    pub entry_timeout: Duration,
    pub threads: usize,
    pub allow_other: bool,
    pub foreground: bool,
    pub fsname: String,
    /// This daemon's host identity (`-o host=`).
    pub host: String,
    /// How long another host's daemon counts as alive after renewing its
    /// lease.
    pub host_lease: Duration,
    /// Log filter (`info`, `debug`, `casafs=debug`...); None: `RUST_LOG`,
    /// or info.
    pub log_level: Option<String>,
    /// Where to keep a copy of the metrics for node_exporter's textfile
    /// collector.
    pub textfile: Option<PathBuf>,
    pub mount_flags: Vec<MountOption>,
    pub config_file: Option<PathBuf>,
    /// `-o remount`: change the kernel flags of the mount in place
    /// (`mount -o remount,ro`), nothing else.
    pub remount: bool,
}

/// A bad input: one line naming the culprit. The CLI prints it and exits 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadInput(pub String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad<T>(msg: impl Into<String>) -> Result<T, BadInput> {
    Err(BadInput(msg.into()))
}

/// The config file's shape: option keys (as `-o`, see `crate::options`)
/// at the top, `allow_other`, and `[[rule]]` tables.
#[derive(Deserialize, Default, Debug)]
struct FileConfig {
    allow_other: Option<bool>,
    #[serde(default, rename = "rule")]
    rules: Vec<FileRule>,
    #[serde(flatten)]
    options: std::collections::BTreeMap<String, toml::Value>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileRule {
    name: String,
    glob: Option<String>,
    regex: Option<String>,
    kind: Option<String>,
    target: Option<String>,
    retention: Option<String>,
    enabled: Option<bool>,
}

/// Raw key/value settings before validation, in the order given.
#[derive(Default, Debug)]
struct Raw {
    kv: Vec<(String, String)>,
    flags: Vec<MountOption>,
    allow_other: Option<bool>,
    remount: bool,
}

/// Options that mount(8), fstab and systemd pass along but that mean nothing
/// to the daemon itself.
fn is_ignored_mount_keyword(k: &str) -> bool {
    matches!(
        k,
        "defaults"
            | "auto"
            | "noauto"
            | "user"
            | "users"
            | "nouser"
            | "owner"
            | "group"
            | "_netdev"
            | "nofail"
            // Access times are kept by the backing filesystem, which
            // writes them out by its own schedule.
            | "lazytime"
            | "nolazytime"
            | "default_permissions"
            | "silent"
            | "loud"
    ) || k.starts_with("x-")
        // FUSE's own mount data, which casafs sets itself and mount(8)
        // hands back on a remount from the mount table.
        || ["user_id=", "group_id=", "rootmode=", "max_read=", "blksize="]
            .iter()
            .any(|p| k.starts_with(p))
        || k.starts_with("comment=")
}

fn kernel_flag(k: &str) -> Option<MountOption> {
    Some(match k {
        "ro" => MountOption::RO,
        "rw" => MountOption::RW,
        "dev" => MountOption::Dev,
        "nodev" => MountOption::NoDev,
        "suid" => MountOption::Suid,
        "nosuid" => MountOption::NoSuid,
        "exec" => MountOption::Exec,
        "noexec" => MountOption::NoExec,
        "atime" => MountOption::Atime,
        "noatime" => MountOption::NoAtime,
        "sync" => MountOption::Sync,
        "async" => MountOption::Async,
        "dirsync" => MountOption::DirSync,
        _ => return None,
    })
}

/// Splits `-o a=b,c` (several `-o` allowed) into the raw option list.
fn parse_o(opts: &[String], raw: &mut Raw) -> Result<(), BadInput> {
    for group in opts {
        for item in group.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = match item.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (item, None),
            };
            if k == "remount" && v.is_none() {
                raw.remount = true;
            } else if k == "allow_other" && v.is_none() {
                raw.allow_other = Some(true);
            } else if k == "noallow_other" && v.is_none() {
                raw.allow_other = Some(false);
            } else if let (Some(f), None) = (kernel_flag(k), v) {
                raw.flags.push(f);
            } else if crate::atime::WORDS.contains(&k) && v.is_none() {
                raw.flags.push(MountOption::CUSTOM(k.to_string()));
            } else if is_ignored_mount_keyword(item) || is_ignored_mount_keyword(k) {
                continue;
            } else if crate::options::find(k).is_some() {
                let Some(v) = v else {
                    return bad(format!("option '{k}' needs a value ({k}=...)"));
                };
                raw.kv.push((k.to_string(), v.to_string()));
            } else {
                return bad(format!(
                    "unknown mount option '{item}' (known: {}; see casafs mount --help)",
                    crate::options::keys().join(", ")
                ));
            }
        }
    }
    Ok(())
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration '{s}' (e.g. 30s, 15m, 24h, 7d)"))?;
    let mult = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => {
            return Err(format!(
                "invalid duration unit in '{s}' (use ms, s, m, h or d)"
            ));
        }
    };
    if !(n.is_finite() && n >= 0.0) {
        return Err(format!("invalid duration '{s}'"));
    }
    Duration::try_from_secs_f64(n * mult).map_err(|_| format!("duration '{s}' is too long"))
}

fn value_to_string(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        _ => String::from("<invalid>"),
    }
}

fn read_file_config(path: &Path) -> Result<FileConfig, BadInput> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BadInput(format!("config file {}: {e}", path.display())))?;
    parse_file_config(path, &text)
}

fn parse_file_config(path: &Path, text: &str) -> Result<FileConfig, BadInput> {
    let file: FileConfig = toml::from_str(text).map_err(|e| {
        let msg = e.message().replace('\n', " ");
        let loc = e
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!(" at line {line}")
            })
            .unwrap_or_default();
        BadInput(format!("config file {}{loc}: {msg}", path.display()))
    })?;
    for (k, v) in &file.options {
        // `config` names this file; it cannot name another.
        let Some(opt) = crate::options::find(k).filter(|_| k != "config") else {
            let mut known = crate::options::keys();
            known.retain(|k| *k != "config");
            return bad(format!(
                "config file {}: unknown key '{k}' (known: {}, allow_other, [[rule]])",
                path.display(),
                known.join(", ")
            ));
        };
        // A path or a name is text; the rest a word, number or boolean.
        let fits = match v {
            toml::Value::String(_) => true,
            toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                !opt.not_empty
            }
            _ => false,
        };
        if !fits {
            let want = if opt.not_empty {
                "a string"
            } else {
                "a string, number or boolean"
            };
            return bad(format!(
                "config file {}: '{k}' must be {want}, not {}",
                path.display(),
                v.type_str()
            ));
        }
    }
    Ok(file)
}

pub(crate) fn absolute(base: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() { p } else { base.join(p) }
}

/// Inputs of `casafs mount` after the CLI has split them.
#[derive(Clone, Debug)]
pub struct MountArgs {
    pub source: PathBuf,
    pub mountpoint: PathBuf,
    pub options: Vec<String>,
    pub config: Option<PathBuf>,
    pub foreground: bool,
}

/// Builds and validates the effective settings. Nothing here touches the
/// backing tree beyond reading the config file; the daemon checks the target
/// areas before it mounts.
pub fn build(args: &MountArgs) -> Result<Settings, BadInput> {
    build_inner(args, None).map_err(one_line)
}

/// Errors echo what the operator wrote; a newline or other control
/// character in it must not break the one-line error.
fn one_line(e: BadInput) -> BadInput {
    BadInput(
        e.0.chars()
            .flat_map(|c| {
                let esc: Vec<char> = if c.is_control() {
                    c.escape_default().collect()
                } else {
                    vec![c]
                };
                esc
            })
            .collect(),
    )
}

/// `build` with the config file's text given directly (for the fuzzer and
/// for checking a file before installing it); `config=` options are
/// ignored.
pub fn build_from_text(args: &MountArgs, config_text: &str) -> Result<Settings, BadInput> {
    build_inner(args, Some(config_text)).map_err(one_line)
}

fn build_inner(args: &MountArgs, config_text: Option<&str>) -> Result<Settings, BadInput> {
    let mut raw = Raw::default();
    parse_o(&args.options, &mut raw)?;

    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    // `-o source=DIR` (the form xfstests and some mount tools use) names the
    // directory; SOURCE is then only the name the mount table shows.
    let given_source = raw.kv.iter().rev().find(|(k, _)| k == "source");
    let source = match given_source {
        Some((_, v)) => absolute(&cwd, v),
        None => absolute(&cwd, &args.source.to_string_lossy()),
    };
    let mountpoint = absolute(&cwd, &args.mountpoint.to_string_lossy());

    // Empty paths are refused before anything is read: `logs=` or
    // `config=` would otherwise mean the directory mount ran in.
    if let Some((k, _)) = raw
        .kv
        .iter()
        .find(|(k, v)| v.is_empty() && crate::options::find(k).is_some_and(|o| o.not_empty))
    {
        return bad(format!("option '{k}': empty value (give a path)"));
    }
    let config_file = raw
        .kv
        .iter()
        .rev()
        .find(|(k, _)| k == "config")
        .map(|(_, v)| absolute(&cwd, v))
        .or_else(|| args.config.clone());
    let file = match (config_text, &config_file) {
        (Some(text), _) => parse_file_config(Path::new("<text>"), text)?,
        (None, Some(p)) => read_file_config(p)?,
        (None, None) => FileConfig::default(),
    };

    // File values first, then -o values on top.
    let mut kv: Vec<(String, String)> = Vec::new();
    let mut push = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            kv.push((k.to_string(), v));
        }
    };
    for (k, v) in &file.options {
        push(k, Some(value_to_string(v)));
    }
    kv.extend(raw.kv.iter().cloned());

    let mut s = Settings {
        logs: source.join("state/logs/casa"),
        scratch: source.join("state/scratch/tmppointing"),
        source,
        mountpoint,
        rules: RuleSet::default(),
        defer_unlink: DeferUnlink::Auto,
        cross_device: CrossDevice::Exdev,
        passthrough: true,
        io_uring: true,
        handoff: true,
        attr_timeout: AUTO_CACHE_TIME,
        entry_timeout: AUTO_CACHE_TIME,
        threads: default_threads(),
        allow_other: raw.allow_other.or(file.allow_other).unwrap_or(true),
        foreground: args.foreground,
        fsname: String::new(),
        host: crate::hosts::this_host(),
        host_lease: Duration::from_secs(300),
        log_level: None,
        textfile: None,
        mount_flags: raw.flags.clone(),
        config_file: config_file.clone(),
        remount: raw.remount,
    };
    s.fsname = match given_source {
        Some(_) => args.source.to_string_lossy().into_owned(),
        None => s.source.to_string_lossy().into_owned(),
    };

    for (k, v) in &kv {
        let Some(opt) = crate::options::find(k) else {
            return bad(format!("unknown option '{k}'"));
        };
        // The same for the config file's values.
        if v.is_empty() && opt.not_empty {
            return bad(format!("'{k}': empty value (give a path)"));
        }
        opt.set(&mut s, v, &cwd)
            .map_err(|e| BadInput(format!("option '{k}': {e}")))?;
    }

    s.rules = build_rules(&s, &file.rules)?;
    Ok(s)
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 16)
}

fn build_rules(s: &Settings, file_rules: &[FileRule]) -> Result<RuleSet, BadInput> {
    struct Spec {
        name: String,
        pattern: String,
        is_regex: bool,
        kind: Kind,
        target: PathBuf,
        retention: Option<Duration>,
        enabled: bool,
    }
    let mut specs = vec![
        Spec {
            name: "casa-logs".into(),
            pattern: "casa-*.log".into(),
            is_regex: false,
            kind: Kind::File,
            target: s.logs.clone(),
            retention: None,
            enabled: true,
        },
        Spec {
            name: "tmppointing".into(),
            pattern: "TMPPOINTING*".into(),
            is_regex: false,
            kind: Kind::Any,
            target: s.scratch.clone(),
            retention: None,
            enabled: true,
        },
    ];
    for fr in file_rules {
        let idx = match specs.iter().position(|sp| sp.name == fr.name) {
            Some(i) => i,
            None => {
                if fr.glob.is_none() && fr.regex.is_none() {
                    return bad(format!("rule '{}': needs glob or regex", fr.name));
                }
                if fr.target.is_none() {
                    return bad(format!("rule '{}': needs a target", fr.name));
                }
                specs.push(Spec {
                    name: fr.name.clone(),
                    pattern: String::new(),
                    is_regex: false,
                    kind: Kind::Any,
                    target: PathBuf::new(),
                    retention: None,
                    enabled: true,
                });
                specs.len() - 1
            }
        };
        let sp = &mut specs[idx];
        match (&fr.glob, &fr.regex) {
            (Some(_), Some(_)) => {
                return bad(format!("rule '{}': give glob or regex, not both", fr.name));
            }
            (Some(g), None) => {
                sp.pattern = g.clone();
                sp.is_regex = false;
            }
            (None, Some(r)) => {
                sp.pattern = r.clone();
                sp.is_regex = true;
            }
            (None, None) => {}
        }
        if let Some(k) = &fr.kind {
            sp.kind = Kind::parse(k).map_err(|e| BadInput(format!("rule '{}': {e}", fr.name)))?;
        }
        if let Some(t) = &fr.target {
            sp.target = match t.as_str() {
                "logs" => s.logs.clone(),
                "scratch" => s.scratch.clone(),
                p if Path::new(p).is_absolute() => PathBuf::from(p),
                p => {
                    return bad(format!(
                        "rule '{}': target '{p}' must be logs, scratch or an absolute path",
                        fr.name
                    ));
                }
            };
        }
        if let Some(r) = &fr.retention {
            sp.retention = Some(
                parse_duration(r)
                    .map_err(|e| BadInput(format!("rule '{}': retention: {e}", fr.name)))?,
            );
        }
        if let Some(e) = fr.enabled {
            sp.enabled = e;
        }
    }
    let mut rules = Vec::new();
    for sp in specs.into_iter().filter(|sp| sp.enabled) {
        let rule = Rule::new(
            &sp.name,
            &sp.pattern,
            sp.is_regex,
            sp.kind,
            sp.target.clone(),
            sp.retention,
        )
        .map_err(BadInput)?;
        // A target whose own path matches the rule would route the area
        // into itself: refuse it rather than guess.
        for comp in sp.target.components() {
            let b = comp.as_os_str().as_encoded_bytes();
            if rule.matches_name(b) {
                return bad(format!(
                    "rule '{}': target {} is inside the rule's own match ('{}')",
                    sp.name,
                    sp.target.display(),
                    sp.pattern
                ));
            }
        }
        rules.push(rule);
    }
    Ok(RuleSet { rules })
}

/// The effective configuration as TOML, for `.casafs/config`.
pub fn render(s: &Settings) -> String {
    let q = |p: &Path| format!("{:?}", p.to_string_lossy());
    let mut out = String::new();
    out.push_str(&format!("source = {}\n", q(&s.source)));
    out.push_str(&format!("mountpoint = {}\n", q(&s.mountpoint)));
    for o in crate::options::OPTIONS {
        if let Some(v) = o.show(s) {
            out.push_str(&format!("{} = {v}\n", o.key));
        }
    }
    out.push_str(&format!("allow_other = {}\n", s.allow_other));
    if let Some(c) = &s.config_file {
        out.push_str(&format!("# read from {}\n", c.display()));
    }
    for r in &s.rules.rules {
        out.push_str("\n[[rule]]\n");
        out.push_str(&format!("name = {:?}\n", r.name));
        let key = if r.is_regex { "regex" } else { "glob" };
        out.push_str(&format!("{key} = {:?}\n", r.pattern));
        out.push_str(&format!("kind = \"{}\"\n", r.kind.as_str()));
        out.push_str(&format!("target = {}\n", q(&r.target)));
        if let Some(d) = r.retention {
            out.push_str(&format!("retention = \"{}s\"\n", d.as_secs()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(opts: &[&str]) -> MountArgs {
        MountArgs {
            source: "/src".into(),
            mountpoint: "/mnt".into(),
            options: opts.iter().map(|s| s.to_string()).collect(),
            config: None,
            foreground: true,
        }
    }

    #[test]
    fn defaults_route_into_the_source_tree() {
        let s = build(&args(&[])).unwrap();
        assert_eq!(s.logs, PathBuf::from("/src/state/logs/casa"));
        assert_eq!(s.scratch, PathBuf::from("/src/state/scratch/tmppointing"));
        assert_eq!(s.rules.rules.len(), 2);
        assert_eq!(s.rules.route(b"casa-20250101-000000.log", false), Some(0));
        assert_eq!(s.rules.route(b"TMPPOINTING17", true), Some(1));
    }

    #[test]
    fn o_keys_and_mount_keywords() {
        let s = build(&args(&[
            "logs=/l,scratch=/s,rw,nosuid,nofail,_netdev,x-systemd.automount,defer_unlink=always",
        ]))
        .unwrap();
        assert_eq!(s.logs, PathBuf::from("/l"));
        assert_eq!(s.rules.rules[1].target, PathBuf::from("/s"));
        assert_eq!(s.defer_unlink, DeferUnlink::Always);
        assert!(s.mount_flags.contains(&MountOption::NoSuid));
    }

    #[test]
    fn empty_paths_and_the_atime_family() {
        for o in ["logs=", "scratch=", "config=", "fsname="] {
            let e = build(&args(&[o])).unwrap_err();
            assert!(e.0.contains("empty value"), "{o}: {e}");
        }
        assert!(build(&args(&["nodiratime,relatime,lazytime"])).is_ok());
    }

    /// `mount -t fuse.casafs -o source=DIR NAME MOUNTPOINT`: DIR is served
    /// and NAME is what the mount table shows.
    #[test]
    fn source_option_names_the_directory() {
        let s = build(&args(&["source=/data/t,allow_other"])).unwrap();
        assert_eq!(s.source, PathBuf::from("/data/t"));
        assert_eq!(s.fsname, "/src");
        assert_eq!(s.logs, PathBuf::from("/data/t/state/logs/casa"));
        let e = build_from_text(&args(&[]), "source = \"/elsewhere\"\n").unwrap_err();
        assert!(e.0.contains("not a config-file key"), "{e}");
    }

    #[test]
    fn unknown_option_is_named() {
        let e = build(&args(&["logs=/l,bogus=1"])).unwrap_err();
        assert!(e.0.contains("'bogus=1'"), "{e}");
        let e = build(&args(&["defer_unlink=sometimes"])).unwrap_err();
        assert!(e.0.contains("defer_unlink"), "{e}");
    }

    #[test]
    fn target_inside_own_match_is_refused() {
        let e = build(&args(&["scratch=/fast/TMPPOINTING_area"])).unwrap_err();
        assert!(e.0.contains("inside the rule's own match"), "{e}");
    }

    #[test]
    fn config_file_rules() {
        let dir = std::env::temp_dir().join(format!("casafs-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(
            &f,
            "logs = \"/L\"\nfsname = \"dsa110\"\n[[rule]]\nname = \"tmppointing\"\nretention = \"24h\"\n\
             [[rule]]\nname = \"ms-tmp\"\nregex = \"tmp[0-9]+\\\\.ms\"\nkind = \"dir\"\ntarget = \"scratch\"\n",
        )
        .unwrap();
        let mut a = args(&[]);
        a.config = Some(f.clone());
        let s = build(&a).unwrap();
        assert_eq!(s.logs, PathBuf::from("/L"));
        assert_eq!(s.fsname, "dsa110");
        assert_eq!(s.rules.rules.len(), 3);
        assert_eq!(s.rules.rules[1].retention, Some(Duration::from_secs(86400)));
        assert_eq!(s.rules.route(b"tmp12.ms", true), Some(2));
        std::fs::write(&f, "logz = 1\n").unwrap();
        let e = build(&a).unwrap_err();
        assert!(e.0.contains("logz"), "{e}");
        std::fs::write(
            &f,
            "[[rule]]\nname = \"x\"\nregex = \"(\"\ntarget = \"/t\"\n",
        )
        .unwrap();
        let e = build(&a).unwrap_err();
        assert!(e.0.contains("invalid pattern"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn durations_too_long_are_refused_not_a_panic() {
        assert!(parse_duration("1e300").is_err());
        assert!(parse_duration(&format!("{}d", "9".repeat(300))).is_err());
        let e = build(&args(&[&format!("attr_timeout={}s", "9".repeat(300))])).unwrap_err();
        assert!(e.0.contains("too long"), "{e}");
    }

    /// A short stable-toolchain fuzz of the option and config parsers (the
    /// libFuzzer targets in fuzz/ go further): random inputs built from the
    /// tokens the parsers care about never panic and never give a
    /// multi-line error.
    #[test]
    fn random_options_and_config_files_never_panic() {
        const TOKENS: &[&str] = &[
            "logs",
            "scratch",
            "config",
            "defer_unlink",
            "threads",
            "attr_timeout",
            "=",
            ",",
            "1e309",
            "-1",
            "0",
            "999999999999999999999",
            "always",
            "[[rule]]",
            "name",
            "glob",
            "regex",
            "kind",
            "target",
            "retention",
            "enabled",
            "\"",
            "\n",
            " = ",
            "true",
            "casa-*.log",
            "TMPPOINTING*",
            "[",
            "]",
            "*",
            "?",
            "\\",
            "(",
            ")",
            "{99999}",
            "/",
            "\u{0}",
            "é",
            "file",
            "dir",
            "any",
            "24h",
            "ms",
            "tmppointing",
            "casa-logs",
        ];
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut pick = |n: u64| -> String {
                (0..n)
                    .map(|_| TOKENS[(next() % TOKENS.len() as u64) as usize])
                    .collect()
            };
            let opts = pick(6);
            let file = pick(24);
            let a = args(&[&opts]);
            match build_from_text(&a, &file) {
                Ok(s) => {
                    let _ = render(&s);
                }
                Err(e) => assert!(!e.0.contains('\n'), "{opts:?} {file:?}: {e}"),
            }
        }
    }
}
