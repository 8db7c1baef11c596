//! What operators ask of a mount with the tools they already have: metrics
//! by Prometheus's conventions (a histogram in seconds, build info, start
//! time), a textfile for node_exporter, a dashboard whose queries name
//! real metrics, and "where did it go": `casafs where`, `casafs route`,
//! `casafs config check`, `casafs --version`.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use common::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn casafs(args: &[&str]) -> (i32, String, String) {
    casafs_with(args, &[])
}

#[test]
fn metrics_carry_a_histogram_in_seconds_build_info_and_start_time() {
    let m = Mount::over_itself("obs-prom");
    fs::write(m.p("casa-1.log"), b"x").unwrap();
    let text = fs::read_to_string(m.p(".casafs/metrics")).unwrap();
    let families = prometheus_families(&text);
    assert!(
        families
            .lines()
            .any(|l| l.starts_with("casafs_operation_duration_seconds histogram ")),
        "{families}"
    );
    assert!(families.contains("casafs_build_info gauge 1"), "{families}");
    assert!(
        families.contains("casafs_start_time_seconds gauge 1"),
        "{families}"
    );
    // The histogram is whole: +Inf equals the count, buckets only grow.
    let lookup: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("casafs_operation_duration_seconds_bucket{")
                && l.contains("op=\"lookup\"")
        })
        .collect();
    let counts: Vec<u64> = lookup
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{lookup:?}");
    let count_line = text
        .lines()
        .find(|l| {
            l.starts_with("casafs_operation_duration_seconds_count{") && l.contains("op=\"lookup\"")
        })
        .unwrap();
    assert!(lookup.last().unwrap().contains("le=\"+Inf\""));
    assert_eq!(
        count_line.rsplit(' ').next(),
        lookup.last().unwrap().rsplit(' ').next()
    );
    let started: f64 = text
        .lines()
        .find(|l| l.starts_with("casafs_start_time_seconds{"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= now && now - started < 600.0,
        "{started} vs {now}"
    );
}

#[test]
fn the_textfile_is_always_whole_and_needs_no_mount_to_read() {
    let tmp = TempDir::new("obs-textfile");
    let prom = tmp.path().join("casafs.prom");
    // Links planted where a writer might put its temporary file must not
    // lead root's write elsewhere.
    let victim = tmp.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    let m = Mount::builder("obs-textfile")
        .opt(&format!("textfile={}", prom.display()))
        .start();
    let pid = m.pid();
    for name in std::iter::once(format!("casafs.prom.{pid}.tmp"))
        .chain((1..8).map(|n| format!("casafs.prom.{pid}.{n}.tmp")))
    {
        let _ = std::os::unix::fs::symlink(&victim, tmp.path().join(name));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !prom.exists() {
        assert!(Instant::now() < deadline, "no textfile: {}", m.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Read it as a collector would, across rewrites: never half a file.
    let until = Instant::now() + Duration::from_secs(6);
    let mut reads = 0;
    let mut seen = BTreeSet::new();
    while Instant::now() < until {
        let text = fs::read_to_string(&prom).unwrap();
        assert!(
            text.ends_with('\n') && text.contains("casafs_build_info{"),
            "{text}"
        );
        seen.insert(
            text.lines()
                .find(|l| l.starts_with("casafs_uptime_seconds"))
                .unwrap_or("")
                .to_string(),
        );
        reads += 1;
    }
    assert!(
        reads > 100 && seen.len() >= 2,
        "{reads} reads, versions {seen:?}"
    );
    prometheus_families(&fs::read_to_string(&prom).unwrap());
    let cfg = fs::read_to_string(m.p(".casafs/config")).unwrap();
    assert!(
        cfg.contains(&format!("textfile = {:?}", prom.display().to_string())),
        "{cfg}"
    );
}

#[test]
fn the_dashboard_asks_only_for_metrics_casafs_exports() {
    let m = Mount::over_itself("obs-dash");
    let text = fs::read_to_string(m.p(".casafs/metrics")).unwrap();
    let mut exported = BTreeSet::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let mut f = rest.split(' ');
            let (name, kind) = (f.next().unwrap(), f.next().unwrap());
            exported.insert(name.to_string());
            if kind == "histogram" || kind == "summary" {
                for s in ["_bucket", "_sum", "_count"] {
                    exported.insert(format!("{name}{s}"));
                }
            }
        }
    }
    let dash: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(format!("{REPO}/mount-scripts/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut asked = BTreeSet::new();
    let mut exprs = vec![
        dash["templating"]["list"][1]["definition"]
            .as_str()
            .unwrap()
            .to_string(),
    ];
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for e in &exprs {
        let b = e.as_bytes();
        let mut i = 0;
        while let Some(at) = e[i..].find("casafs_") {
            let s = i + at;
            let mut j = s;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                j += 1;
            }
            asked.insert(e[s..j].to_string());
            i = j;
        }
    }
    assert!(asked.len() >= 10, "{asked:?}");
    let missing: Vec<_> = asked.difference(&exported).collect();
    assert!(missing.is_empty(), "the dashboard asks for {missing:?}");
}

#[test]
fn where_says_where_a_path_really_lives() {
    let m = Mount::over_itself("obs-where");
    fs::create_dir_all(m.p("obs")).unwrap();
    fs::write(m.p("obs/casa-1.log"), b"log").unwrap();
    fs::create_dir(m.p("obs/TMPPOINTING1")).unwrap();
    fs::write(m.p("obs/TMPPOINTING1/table.f1"), b"t").unwrap();
    fs::write(m.p("obs/plain"), b"p").unwrap();
    let logs = m.source.join("state/logs/casa");
    let scratch = m.source.join("state/scratch/tmppointing");

    let p = m.p("obs/casa-1.log");
    let (code, out, _) = casafs(&["where", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("routed by rule casa-logs")
            && out.contains(&format!("lives at {}", logs.join("casa-1.log").display())),
        "{out}"
    );
    let p = m.p("obs/TMPPOINTING1/table.f1");
    let (_, out, _) = casafs(&["where", p.to_str().unwrap()]);
    assert!(
        out.contains("rule tmppointing")
            && out.contains(&format!(
                "lives at {}",
                scratch.join("TMPPOINTING1/table.f1").display()
            )),
        "{out}"
    );
    let p = m.p("obs/plain");
    let (_, out, _) = casafs(&["where", p.to_str().unwrap()]);
    assert!(
        out.contains(&format!(
            "not routed; lives in the tree at {}",
            m.source.join("obs/plain").display()
        )),
        "{out}"
    );
    let (code, out, _) = casafs(&["where", "/proc/version"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not under a casafs mount"), "{out}");
    // A name need not be UTF-8.
    let odd = m.p("obs").join(std::ffi::OsStr::from_bytes(b"plain\xff"));
    fs::write(&odd, b"p").unwrap();
    let o = std::process::Command::new(BIN)
        .arg("where")
        .arg(&odd)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("not routed; lives in the tree at"), "{out}");
}

#[test]
fn route_and_config_check_answer_without_mounting() {
    let tmp = TempDir::new("obs-route");
    let src = tmp.path().join("tree");
    let s = src.to_str().unwrap();
    let (code, out, _) = casafs(&["route", "casa-20260101.log", "--source", s]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("rule casa-logs") && out.contains(&format!("{s}/state/logs/casa")),
        "{out}"
    );
    let (code, out, _) = casafs(&["route", "TMPPOINTING17", "--dir", "--source", s]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("rule tmppointing"), "{out}");
    let (code, out, _) = casafs(&["route", "data.ms", "--dir", "--source", s]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no rule routes it"), "{out}");

    let config = tmp.path().join("c.toml");
    fs::write(
        &config,
        "[[rule]]\nname = \"ms-scratch\"\nregex = \"tmp[0-9]+\\\\.ms\"\nkind = \"dir\"\ntarget = \"/fast/ms\"\n",
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let (code, out, _) = casafs(&["route", "tmp12.ms", "--dir", "--config", c, "--source", s]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("rule ms-scratch") && out.contains("/fast/ms"),
        "{out}"
    );

    let (code, out, err) = casafs(&["config", "check", c, "--source", s]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("good") && out.contains("name = \"ms-scratch\""),
        "{out}"
    );
    fs::write(
        &config,
        "[[rule]]\nname = \"x\"\nregex = \"casa-(\"\ntarget = \"/tmp\"\n",
    )
    .unwrap();
    let (code, _, err) = casafs(&["config", "check", c, "--source", s]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("casa-("), "{err}");
    assert!(!src.exists(), "nothing made");
}

#[test]
fn version_says_what_the_kernel_offers() {
    let (code, out, _) = casafs(&["--version"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("casafs {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    assert!(
        out.contains("FUSE passthrough") && out.contains("FUSE over io_uring"),
        "{out}"
    );
}

/// Sets a path's modification time an hour back.
fn age(p: &std::path::Path) {
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    fs::File::open(p).unwrap().set_modified(hour_ago).unwrap();
}

#[test]
fn sweep_follows_the_config_rules_and_reports_as_json() {
    let tmp = TempDir::new("obs-sweep");
    let tree = tmp.path().join("tree");
    let ms = tmp.path().join("ms");
    fs::create_dir_all(tree.join("obs/tmp12.ms")).unwrap();
    fs::write(tree.join("obs/tmp12.ms/table.dat"), b"rows").unwrap();
    age(&tree.join("obs/tmp12.ms"));
    fs::write(tree.join("obs/casa-1.log"), b"log").unwrap();
    // A name that is no UTF-8, routed all the same.
    let odd = tree.join(std::ffi::OsStr::from_bytes(b"obs/TMPPOINTING\xff"));
    fs::create_dir(&odd).unwrap();
    age(&odd);
    let config = tmp.path().join("c.toml");
    fs::write(
        &config,
        format!(
            "[[rule]]\nname = \"ms-scratch\"\nregex = \"tmp[0-9]+\\\\.ms\"\nkind = \"dir\"\ntarget = \"{}\"\n\
             [[rule]]\nname = \"casa-logs\"\nenabled = false\n",
            ms.display()
        ),
    )
    .unwrap();
    let t = tree.to_str().unwrap();
    let c = config.to_str().unwrap();
    let (code, out, err) = casafs(&["sweep", t, "--config", c, "--dry-run", "--json"]);
    assert_eq!(code, 0, "{err}");
    let plan: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(plan["dry_run"], true);
    let actions = plan["plan"].as_array().unwrap();
    assert_eq!(actions.len(), 2, "{out}");
    let path = |i: usize| actions[i]["path"].as_str().unwrap().to_string();
    assert!(path(0).ends_with("obs/TMPPOINTING\u{fffd}"), "{out}");
    assert_eq!(actions[1]["action"], "move");
    assert!(path(1).ends_with("obs/tmp12.ms"), "{out}");
    assert_eq!(actions[1]["to"], ms.to_str().unwrap());

    fs::create_dir_all(&ms).unwrap();
    let (code, out, err) = casafs(&["sweep", t, "--config", c, "--json"]);
    assert_eq!(code, 0, "{err}");
    let done: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(done["summary"]["moved"], 2, "{out}");
    let outcome = done["plan"][1]["outcome"].as_str().unwrap();
    assert!(outcome.starts_with("moved to "), "{out}");
    assert_eq!(fs::read(ms.join("tmp12.ms/table.dat")).unwrap(), b"rows");
    assert!(
        tree.join("obs/casa-1.log").exists(),
        "a rule turned off moved nothing"
    );
}

#[test]
fn sweep_x_stays_on_the_trees_filesystem() {
    let tmp = TempDir::new("obs-sweep-x");
    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("here/TMPPOINTING1")).unwrap();
    age(&tree.join("here/TMPPOINTING1"));
    let other = Tmpfs::new(tree.join("other"), "size=8m");
    fs::create_dir_all(other.0.join("TMPPOINTING2")).unwrap();
    age(&other.0.join("TMPPOINTING2"));
    let t = tree.to_str().unwrap();
    let planned = |args: &[&str]| {
        let mut all = vec!["sweep", t, "--dry-run", "--json"];
        all.extend_from_slice(args);
        let (code, out, err) = casafs(&all);
        assert_eq!(code, 0, "{err}");
        let plan: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        plan["plan"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                a["path"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(planned(&[]), ["TMPPOINTING1", "TMPPOINTING2"]);
    assert_eq!(planned(&["-x"]), ["TMPPOINTING1"]);
    drop(other);
}
