//! Every option, defined once: its key, the value it takes, what it does
//! (one line for `casafs mount --help`, the whole story for README's
//! options table), its default, how its value sets `Settings` and how the
//! settings show it again (`.casafs/config`). The same key works in `-o`,
//! fstab and the config file. README's table is made from this one (a test
//! keeps them equal).

use std::path::Path;
use std::time::Duration;

use crate::config::{CrossDevice, DeferUnlink, Settings, absolute, parse_duration};

pub struct Opt {
    pub key: &'static str,
    /// The value as help shows it: `DIR`, `auto|never`...
    pub value: &'static str,
    /// One line, for `--help`.
    pub help: &'static str,
    /// README's description.
    pub doc: &'static str,
    /// The default as help and README show it.
    pub default: &'static str,
    /// A path or a name: an empty value is refused (it would mean the
    /// directory casafs happened to run in).
    pub not_empty: bool,
    /// A reload applies it; the others are fixed by the mount.
    pub live: bool,
    set: fn(&mut Settings, &str, &Path) -> Result<(), String>,
    /// As TOML for `.casafs/config`; None: not shown.
    show: fn(&Settings) -> Option<String>,
}

impl Opt {
    /// Sets `s` from `v`; `cwd` makes relative paths absolute.
    pub fn set(&self, s: &mut Settings, v: &str, cwd: &Path) -> Result<(), String> {
        (self.set)(s, v, cwd)
    }

    pub fn show(&self, s: &Settings) -> Option<String> {
        (self.show)(s)
    }
}

fn auto_never(v: &str) -> Result<bool, String> {
    match v {
        "1" | "true" | "yes" | "on" | "auto" => Ok(true),
        "0" | "false" | "no" | "off" | "never" => Ok(false),
        _ => Err(format!("invalid value '{v}' (expected auto/never)")),
    }
}

fn show_auto_never(on: bool) -> Option<String> {
    Some(if on { "\"auto\"" } else { "\"never\"" }.into())
}

fn duration(v: &str) -> Result<Duration, String> {
    parse_duration(v)
}

/// A cache time: `auto` (`config::AUTO_CACHE_TIME`) or a duration.
fn cache_time(v: &str) -> Result<Duration, String> {
    if v == "auto" {
        Ok(crate::config::AUTO_CACHE_TIME)
    } else {
        duration(v)
    }
}

fn show_cache_time(d: Duration) -> Option<String> {
    if d == crate::config::AUTO_CACHE_TIME {
        Some("\"auto\"".into())
    } else {
        show_duration(d)
    }
}

fn show_duration(d: Duration) -> Option<String> {
    Some(format!("\"{}s\"", d.as_secs_f64()))
}

fn path(p: &Path) -> Option<String> {
    Some(format!("{:?}", p.to_string_lossy()))
}

pub const OPTIONS: &[Opt] = &[
    Opt {
        key: "logs",
        value: "DIR",
        help: "target area of the casa-logs rule",
        doc: "target area of the `casa-logs` rule",
        default: "SOURCE/state/logs/casa",
        live: false,
        not_empty: true,
        set: |s, v, cwd| {
            s.logs = absolute(cwd, v);
            Ok(())
        },
        show: |s| path(&s.logs),
    },
    Opt {
        key: "scratch",
        value: "DIR",
        help: "target area of the tmppointing rule",
        doc: "target area of the `tmppointing` rule",
        default: "SOURCE/state/scratch/tmppointing",
        live: false,
        not_empty: true,
        set: |s, v, cwd| {
            s.scratch = absolute(cwd, v);
            Ok(())
        },
        show: |s| path(&s.scratch),
    },
    Opt {
        key: "config",
        value: "FILE",
        help: "TOML config file (keys as here, plus [[rule]] tables)",
        doc: "TOML config file (also `--config FILE`)",
        default: "none",
        live: true,
        not_empty: true,
        // Read before every other key (config.rs).
        set: |_, _, _| Ok(()),
        show: |_| None,
    },
    Opt {
        key: "defer_unlink",
        value: "auto|always|never",
        help: "graveyard for unlinks of open files (auto: FUSE/NFS/SMB backing only)",
        doc: "graveyard for unlinks of open files; `auto` = only on backing filesystems that leave debris (FUSE/fuseblk, NFS, SMB, from `statfs`). The graveyard is on the source's filesystem: in a target area on another filesystem (scratch on NVMe) an open file is unlinked as that filesystem does",
        default: "auto",
        live: false,
        not_empty: false,
        set: |s, v, _| {
            s.defer_unlink = match v {
                "auto" => DeferUnlink::Auto,
                "always" => DeferUnlink::Always,
                "never" => DeferUnlink::Never,
                _ => {
                    return Err(format!(
                        "invalid value '{v}' (expected auto, always or never)"
                    ));
                }
            };
            Ok(())
        },
        show: |s| {
            Some(
                match s.defer_unlink {
                    DeferUnlink::Auto => "\"auto\"",
                    DeferUnlink::Always => "\"always\"",
                    DeferUnlink::Never => "\"never\"",
                }
                .into(),
            )
        },
    },
    Opt {
        key: "cross_device",
        value: "exdev|inplace",
        help: "rename onto a routed name across filesystems: EXDEV, or in place",
        doc: "a rename onto a routed name whose area is on another filesystem answers `EXDEV` (POSIX: `mv` and `shutil.move` then copy), or renames in place (onto a name already routed there: the renamed object takes the name in place and the routed one goes, as a replaced file does). A hard link onto such a name cannot cross filesystems either way: it is made in place",
        default: "exdev",
        live: false,
        not_empty: false,
        set: |s, v, _| {
            s.cross_device = match v {
                "exdev" => CrossDevice::Exdev,
                "inplace" => CrossDevice::InPlace,
                _ => return Err(format!("invalid value '{v}' (expected exdev or inplace)")),
            };
            Ok(())
        },
        show: |s| {
            Some(
                match s.cross_device {
                    CrossDevice::Exdev => "\"exdev\"",
                    CrossDevice::InPlace => "\"inplace\"",
                }
                .into(),
            )
        },
    },
    Opt {
        key: "passthrough",
        value: "auto|never",
        help: "kernel FUSE passthrough for file data",
        doc: "kernel FUSE passthrough for file data",
        default: "auto",
        live: false,
        not_empty: false,
        set: |s, v, _| {
            s.passthrough = auto_never(v)?;
            Ok(())
        },
        show: |s| show_auto_never(s.passthrough),
    },
    Opt {
        key: "io_uring",
        value: "auto|never",
        help: "FUSE over io_uring, a request queue per CPU",
        doc: "FUSE over io_uring: a request queue per CPU, served by threads pinned to that CPU (Linux 6.14+; casafs turns on the fuse module's `enable_uring` parameter, see `mount-scripts/OPERATIONS.md`); `never`, or a kernel without it: `/dev/fuse`",
        default: "auto",
        live: false,
        not_empty: false,
        set: |s, v, _| {
            s.io_uring = auto_never(v)?;
            Ok(())
        },
        show: |s| show_auto_never(s.io_uring),
    },
    Opt {
        key: "handoff",
        value: "auto|never",
        help: "queue threads hand their CPU to the caller they answer (root)",
        doc: "with io_uring, queue threads are `SCHED_IDLE` while requests keep coming, so the kernel wakes each caller on the CPU it is on instead of moving it to an idle one (costly in virtual machines); a watchdog gives the normal policy back when requests stop, when no CPU has idle time, and to a thread starved by other work on its CPU (which then goes without handoff for 1 s). Needs root (`CAP_SYS_NICE`); off otherwise",
        default: "auto",
        live: false,
        not_empty: false,
        set: |s, v, _| {
            s.handoff = auto_never(v)?;
            Ok(())
        },
        show: |s| show_auto_never(s.handoff),
    },
    Opt {
        key: "attr_timeout",
        value: "auto|DUR",
        help: "attribute cache time: auto, or e.g. 1s (a reload changes it)",
        doc: "kernel attribute cache time. `auto`: an hour where casafs sees every change made beneath the mount (it watches local filesystems and tells the kernel what changed), a second where it cannot (network filesystems, the areas); a duration applies everywhere. A directory's listing is kept for the shorter of the two cache times (`0` for either: never); a reload changes it",
        default: "auto",
        live: true,
        not_empty: false,
        set: |s, v, _| {
            s.attr_timeout = cache_time(v)?;
            Ok(())
        },
        show: |s| show_cache_time(s.attr_timeout),
    },
    Opt {
        key: "entry_timeout",
        value: "auto|DUR",
        help: "name cache time: auto, or e.g. 1s (a reload changes it)",
        doc: "kernel name cache time (negative entries too), `auto` as for attr_timeout; a reload changes it",
        default: "auto",
        live: true,
        not_empty: false,
        set: |s, v, _| {
            s.entry_timeout = cache_time(v)?;
            Ok(())
        },
        show: |s| show_cache_time(s.entry_timeout),
    },
    Opt {
        key: "threads",
        value: "N",
        help: "/dev/fuse request threads",
        doc: "`/dev/fuse` request threads (with io_uring they only see INIT, FORGET and INTERRUPT)",
        default: "CPUs, 2 to 16",
        live: false,
        not_empty: false,
        set: |s, v, _| {
            s.threads = match v.parse::<usize>() {
                Ok(n) if (1..=256).contains(&n) => n,
                _ => return Err(format!("invalid value '{v}' (a number from 1 to 256)")),
            };
            Ok(())
        },
        show: |s| Some(s.threads.to_string()),
    },
    Opt {
        key: "source",
        value: "DIR",
        help: "serve DIR; SOURCE is then only the name shown in mount tables",
        doc: "the directory to serve, when SOURCE is only a name for the mount table (the `-o source=` form of xfstests and other mount tools); a mount option, not a config-file key",
        default: "SOURCE",
        live: false,
        not_empty: true,
        // Taken before every other option (the areas' defaults lie
        // beneath it); here only a config file's key is refused.
        set: |s, v, cwd| {
            if absolute(cwd, v) == s.source {
                Ok(())
            } else {
                Err("a mount option (-o source=DIR), not a config-file key".into())
            }
        },
        show: |_| None,
    },
    Opt {
        key: "fsname",
        value: "NAME",
        help: "name shown in mount tables",
        doc: "name in the mount table",
        default: "SOURCE",
        live: false,
        not_empty: true,
        set: |s, v, _| {
            s.fsname = v.to_string();
            Ok(())
        },
        show: |s| Some(format!("{:?}", s.fsname)),
    },
    Opt {
        key: "host",
        value: "NAME",
        help: "this daemon's host identity on a tree several hosts mount (letters, digits, - and _)",
        doc: "this daemon's host identity where several hosts mount one shared tree: recorded on what it routes, in its graveyard's name and lease, and in its statistics. Two daemons on one machine with two names stand for two hosts. Letters, digits, `-` and `_`",
        default: "the machine's host name",
        live: false,
        not_empty: true,
        set: |s, v, _| {
            s.host = crate::hosts::check_name(v)?;
            Ok(())
        },
        show: |s| Some(format!("{:?}", s.host)),
    },
    Opt {
        key: "host_lease",
        value: "DURATION",
        help: "how long another host's daemon counts as alive after its last sign of life",
        doc: "how long another host's daemon counts as alive after it last renewed its lease on the shared tree (it renews a quarter of this, at most every 30 s); only then, and once it no longer holds its lock, are its graveyard emptied and its routed objects left to this host's retention",
        default: "5m",
        live: false,
        not_empty: true,
        set: |s, v, _| {
            let d = duration(v)?;
            if d < Duration::from_secs(1) {
                return Err(format!("invalid value '{v}' (at least 1s)"));
            }
            s.host_lease = d;
            Ok(())
        },
        show: |s| show_duration(s.host_lease),
    },
    Opt {
        key: "log_level",
        value: "FILTER",
        help: "what is logged: error, warn, info, debug, or a RUST_LOG filter (a reload changes it)",
        doc: "what is logged: `error`, `warn`, `info`, `debug`, or a `RUST_LOG`-style filter; a reload changes it",
        default: "RUST_LOG, else info",
        live: true,
        not_empty: true,
        set: |s, v, _| {
            crate::logsink::check_level(v)?;
            s.log_level = Some(v.to_string());
            Ok(())
        },
        show: |s| s.log_level.as_ref().map(|l| format!("{l:?}")),
    },
    Opt {
        key: "textfile",
        value: "FILE",
        help: "keep the metrics in FILE too, rewritten atomically every 5 s (node_exporter's textfile collector)",
        doc: "keep a copy of `.casafs/metrics` in FILE, rewritten atomically every 5 s, for node_exporter's textfile collector (`FILE` ending in `.prom` in its directory): a scrape then never waits on the mount, even a hung one",
        default: "none",
        live: false,
        not_empty: true,
        set: |s, v, cwd| {
            s.textfile = Some(absolute(cwd, v));
            Ok(())
        },
        show: |s| s.textfile.as_deref().and_then(path),
    },
];

/// Options without a value, and what README says of them.
const FLAGS: &[(&str, &str, &str)] = &[
    (
        "`allow_other` / `noallow_other`",
        "let every user in, each served with that user's own rights (needs casafs to run as root; see Security model)",
        "on",
    ),
    (
        "`ro rw nosuid nodev noexec sync dirsync ...`",
        "kernel mount flags",
        "`nosuid,nodev`",
    ),
    (
        "`remount`",
        "with `ro`/`rw` and the kernel flags: changes those given on a live mount in place (`mount -o remount,ro MOUNTPOINT`); the other flags, and every other option, stay as mounted (the access-time copy of the backing keeps the mode it was mounted with)",
        "",
    ),
    (
        "`noatime relatime strictatime nodiratime` (and `atime diratime norelatime`)",
        "access times on the backing, kept as a native mount with these options keeps them (casafs reaches the tree through a private copy of the backing's mount with this mode; needs root); `ro` changes none; without any, the backing's own mount decides. That copy does not see mounts made beneath the source after casafs started",
        "the backing's",
    ),
];

pub fn find(key: &str) -> Option<&'static Opt> {
    OPTIONS.iter().find(|o| o.key == key)
}

pub fn keys() -> Vec<&'static str> {
    OPTIONS.iter().map(|o| o.key).collect()
}

/// The options part of `casafs mount --help`.
pub fn help() -> String {
    let mut out = String::from(
        "Options (-o key=value,..., or the same keys at the top of the config file):\n",
    );
    for o in OPTIONS {
        let kv = format!("{}={}", o.key, o.value);
        out.push_str(&format!("  {kv:<31} {}   [{}]\n", o.help, o.default));
    }
    out.push_str("  allow_other / noallow_other   let other users in (default: allowed)\n");
    out.push_str("  ro, rw, nosuid, nodev, noexec, sync, dirsync ...   kernel mount flags\n");
    out.push_str(
        "  noatime, relatime, strictatime, nodiratime   access times on the backing, as natively\n",
    );
    out.push_str("  remount (with ro, rw ...)     change the kernel flags of a live mount\n");
    out.push_str("fstab keywords (defaults, nofail, _netdev, noauto, x-systemd.*) are accepted and ignored.\n");
    out.push_str("Any other option is an error.");
    out
}

/// README's options table.
pub fn markdown() -> String {
    let mut out = String::from("| option | meaning | default |\n|---|---|---|\n");
    for o in OPTIONS {
        let value = o.value.replace('|', "\\|");
        let plain = o.default == "none" || o.default.contains(' ');
        let default = if !plain {
            format!("`{}`", o.default)
        } else {
            o.default.to_string()
        };
        out.push_str(&format!(
            "| `{}={value}` | {} | {default} |\n",
            o.key, o.doc
        ));
    }
    for (name, doc, default) in FLAGS {
        out.push_str(&format!("| {name} | {doc} | {default} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_lists_exactly_these_options() {
        let readme = include_str!("../README.md");
        let table = markdown();
        assert!(
            readme.contains(&table),
            "README's options table is made from src/options.rs; put this in its place:\n{table}"
        );
    }

    #[test]
    fn each_key_is_defined_once() {
        let mut k = keys();
        k.sort();
        k.dedup();
        assert_eq!(k.len(), OPTIONS.len());
    }
}
