//! What a reload (SIGHUP, `systemctl reload`) changes while mounted: which
//! rules route and with which patterns and retention, the cache times and
//! the log level. Everything else is fixed by the mount: a new config that
//! changes it is applied in part, and the part left out is said in one line.
//!
//! The rules a mount can route by are the ones it started with, each with
//! the area it opened for it (areas are opened before mounting, from below
//! a mount over itself); a reload turns them off and on, reorders them and
//! changes what they match, never where they route to.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::RwLock;

use crate::config::Settings;
use crate::rules::Rule;

/// The live part of the settings.
pub struct Live {
    /// The rules routing now, in order, each with its index among the rules
    /// the mount started with (areas, statistics and records use that).
    rules: RwLock<Arc<Vec<(usize, Rule)>>>,
    attr_nanos: AtomicU64,
    entry_nanos: AtomicU64,
    /// The settings in effect, as the `config` control file shows them.
    current: RwLock<Arc<Settings>>,
}

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Settings that changed and now apply.
    pub changed: Vec<String>,
    /// Settings that changed but need a remount; left as they were.
    pub needs_remount: Vec<String>,
}

/// A cache time as kept: `auto` as u64::MAX, every other one in
/// nanoseconds (up to some 584 years).
fn nanos(d: Duration) -> u64 {
    if d == crate::config::AUTO_CACHE_TIME {
        u64::MAX
    } else {
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1)
    }
}

fn duration(n: u64) -> Duration {
    if n == u64::MAX {
        crate::config::AUTO_CACHE_TIME
    } else {
        Duration::from_nanos(n)
    }
}

impl Live {
    pub fn new(s: &Settings) -> Live {
        Live {
            rules: RwLock::new(Arc::new(
                s.rules.rules.iter().cloned().enumerate().collect(),
            )),
            attr_nanos: AtomicU64::new(nanos(s.attr_timeout)),
            entry_nanos: AtomicU64::new(nanos(s.entry_timeout)),
            current: RwLock::new(Arc::new(s.clone())),
        }
    }

    /// The index (among the mount's rules) of the first rule routing now
    /// that routes `name` of that kind.
    pub fn route(&self, name: &[u8], is_dir: bool) -> Option<usize> {
        let rules = self.rules.read().clone();
        rules
            .iter()
            .find(|(_, r)| r.kind.admits(is_dir) && r.matches_name(name))
            .map(|(i, _)| *i)
    }

    /// Every rule that routes `name`, of either kind (files, directories).
    pub fn rules_naming(&self, name: &[u8]) -> Vec<usize> {
        let rules = self.rules.read().clone();
        rules
            .iter()
            .filter(|(_, r)| r.matches_name(name))
            .map(|(i, _)| *i)
            .collect()
    }

    /// The mount's rule `index` as it routes now (None: turned off).
    pub fn rule(&self, index: usize) -> Option<Rule> {
        let rules = self.rules.read().clone();
        rules
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, r)| r.clone())
    }

    pub fn attr_timeout(&self) -> Duration {
        duration(self.attr_nanos.load(Relaxed))
    }

    pub fn entry_timeout(&self) -> Duration {
        duration(self.entry_nanos.load(Relaxed))
    }

    pub fn current(&self) -> Arc<Settings> {
        self.current.read().clone()
    }

    /// Applies what can change of `new` (a config judged good as a whole),
    /// given the rules the mount started with.
    pub fn apply(&self, mounted: &Settings, new: &Settings) -> Applied {
        let old = self.current();
        let mut done = Applied::default();
        // What applies live is taken from the new settings below.
        let mut effective = (*old).clone();
        effective.config_file = new.config_file.clone();

        let mut rules = Vec::new();
        for r in &new.rules.rules {
            match mounted.rules.rules.iter().position(|m| m.name == r.name) {
                Some(i) if mounted.rules.rules[i].target == r.target => {
                    rules.push((i, r.clone()));
                }
                // Where it routes is the mount's: it goes on as it is (off
                // stays off), rather than let its debris land in the tree.
                Some(i) => {
                    if let Some(now) = self.rule(i) {
                        rules.push((i, now));
                    }
                    done.needs_remount.push(format!(
                        "rule '{}' routing to {} (a new area)",
                        r.name,
                        r.target.display()
                    ))
                }
                None => done
                    .needs_remount
                    .push(format!("rule '{}' (not routing when mounted)", r.name)),
            }
        }
        if describe(&rules) != describe_settings(&old) {
            done.changed.push("rules".into());
        }
        effective.rules.rules = rules.iter().map(|(_, r)| r.clone()).collect();
        *self.rules.write() = Arc::new(rules);

        if new.attr_timeout != old.attr_timeout || new.entry_timeout != old.entry_timeout {
            self.attr_nanos.store(nanos(new.attr_timeout), Relaxed);
            self.entry_nanos.store(nanos(new.entry_timeout), Relaxed);
            effective.attr_timeout = new.attr_timeout;
            effective.entry_timeout = new.entry_timeout;
            done.changed.push("cache times".into());
        }
        if new.log_level != old.log_level {
            // Without the option: what the daemon started with.
            let spec = new
                .log_level
                .clone()
                .or_else(|| std::env::var("RUST_LOG").ok())
                .unwrap_or_else(|| "info".into());
            match crate::logsink::set_level(&spec) {
                Ok(()) => {
                    effective.log_level = new.log_level.clone();
                    done.changed.push(format!("log_level {spec}"));
                }
                Err(e) => done.needs_remount.push(format!("log_level: {e}")),
            }
        }

        // The rest is the mount's: keep it, and say what was asked.
        for o in crate::options::OPTIONS.iter().filter(|o| !o.live) {
            if o.show(new) != o.show(&old) {
                done.needs_remount.push(o.key.to_string());
            }
        }
        if new.allow_other != old.allow_other {
            done.needs_remount.push("allow_other".into());
        }
        if format!("{:?}", new.mount_flags) != format!("{:?}", old.mount_flags) {
            done.needs_remount.push("kernel mount flags".into());
        }
        *self.current.write() = Arc::new(effective);
        done
    }
}

fn describe(rules: &[(usize, Rule)]) -> Vec<String> {
    rules.iter().map(|(_, r)| one(r)).collect()
}

fn describe_settings(s: &Settings) -> Vec<String> {
    s.rules.rules.iter().map(one).collect()
}

fn one(r: &Rule) -> String {
    format!(
        "{} {} {} {:?} {:?}",
        r.name, r.pattern, r.is_regex, r.kind, r.retention
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MountArgs, build_from_text};

    fn settings(config: &str) -> Settings {
        let args = MountArgs {
            source: "/t/tree".into(),
            mountpoint: "/t/tree".into(),
            options: vec![],
            config: Some("/t/c.toml".into()),
            foreground: true,
        };
        build_from_text(&args, config).unwrap()
    }

    #[test]
    fn rules_go_off_and_on_and_change_what_they_match() {
        let mounted = settings("");
        let live = Live::new(&mounted);
        let logs = live.route(b"casa-1.log", false).unwrap();
        assert!(live.route(b"TMPPOINTING1", true).is_some());

        let off = settings("[[rule]]\nname = \"tmppointing\"\nenabled = false\n");
        let done = live.apply(&mounted, &off);
        assert_eq!(done.changed, ["rules"]);
        assert!(done.needs_remount.is_empty(), "{done:?}");
        assert_eq!(live.route(b"TMPPOINTING1", true), None);
        assert_eq!(live.route(b"casa-1.log", false), Some(logs));
        assert!(
            live.current()
                .rules
                .rules
                .iter()
                .all(|r| r.name != "tmppointing")
        );

        let back = settings(
            "attr_timeout = \"3s\"\n[[rule]]\nname = \"tmppointing\"\nretention = \"1h\"\n",
        );
        let done = live.apply(&mounted, &back);
        assert_eq!(done.changed, ["rules", "cache times"]);
        assert!(live.route(b"TMPPOINTING1", true).is_some());
        let i = live.route(b"TMPPOINTING1", true).unwrap();
        assert_eq!(
            live.rule(i).unwrap().retention,
            Some(Duration::from_secs(3600))
        );
        assert_eq!(live.attr_timeout(), Duration::from_secs(3));
    }

    #[test]
    fn what_needs_a_remount_is_said_and_kept() {
        let mounted = settings("");
        let live = Live::new(&mounted);
        let new = settings(
            "scratch = \"/elsewhere\"\ndefer_unlink = \"always\"\n\
             [[rule]]\nname = \"extra\"\nglob = \"*.tmp\"\ntarget = \"/t/x\"\n",
        );
        let done = live.apply(&mounted, &new);
        assert!(
            done.needs_remount
                .iter()
                .any(|n| n.contains("tmppointing") && n.contains("new area")),
            "{done:?}"
        );
        assert!(done.needs_remount.iter().any(|n| n.contains("'extra'")));
        assert!(done.needs_remount.contains(&"scratch".to_string()));
        assert!(done.needs_remount.contains(&"defer_unlink".to_string()));
        assert_eq!(live.current().scratch, mounted.scratch);
        assert_eq!(live.route(b"a.tmp", false), None);
        // The rule whose area would change goes on routing where it did.
        let i = live.route(b"TMPPOINTING1", true).unwrap();
        assert_eq!(live.rule(i).unwrap().target, mounted.rules.rules[i].target);
    }
}
