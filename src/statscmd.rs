//! `casafs stats`: the control files of a mount, for a person.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

fn read(mp: &Path, file: &str) -> Result<String, String> {
    let p = mp.join(".casafs").join(file);
    std::fs::read_to_string(&p).map_err(|e| {
        format!(
            "{}: {e} (is a casafs mounted on {}?)",
            p.display(),
            mp.display()
        )
    })
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn human_bytes(b: u64) -> String {
    const U: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b as f64;
    let mut i = 0;
    while x >= 1024.0 && i + 1 < U.len() {
        x /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{x:.1} {}", U[i])
    }
}

fn human_secs(s: f64) -> String {
    let s = s as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// The readable summary of a stats.json document.
pub fn summary(j: &Value) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "casafs {} on {} (source {}, host {}), up {}\n",
        j["version"].as_str().unwrap_or("?"),
        j["mountpoint"].as_str().unwrap_or("?"),
        j["source"].as_str().unwrap_or("?"),
        j["host"].as_str().unwrap_or("?"),
        human_secs(j["uptime_seconds"].as_f64().unwrap_or(0.0))
    ));
    if let Some(b) = j["backing_fs"].as_object() {
        let parts: Vec<String> = b
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or("?")))
            .collect();
        o.push_str(&format!("backing      {}\n", parts.join(", ")));
    }
    o.push_str(&format!(
        "passthrough  {}   open handles {}   inodes cached {}\n",
        if j["passthrough"].as_bool() == Some(true) {
            "on"
        } else {
            "off"
        },
        num(&j["open_handles"]),
        num(&j["inodes_cached"])
    ));
    let t = &j["transport"];
    o.push_str(&format!(
        "transport    {}\n",
        if t["kind"].as_str() == Some("io_uring") {
            format!(
                "io_uring, {} CPU queues, {} requests, {}",
                num(&t["io_uring_queues"]),
                num(&t["io_uring_requests"]),
                if t["io_uring_handoff"].as_bool() == Some(true) {
                    format!(
                        "CPU handoff on (taken back {} times)",
                        num(&t["io_uring_handoff_revoked"])
                    )
                } else {
                    "CPU handoff off".to_string()
                }
            )
        } else {
            "/dev/fuse".to_string()
        }
    ));
    o.push_str("redirects    ");
    if let Some(r) = j["redirects"].as_object() {
        let parts: Vec<String> = r
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k} {} (fail-open {}, retention removed {})",
                    num(&v["redirects"]),
                    num(&v["fail_open"]),
                    num(&v["retention_removed"])
                )
            })
            .collect();
        o.push_str(&parts.join(", "));
    }
    o.push_str(&format!("; live {}\n", num(&j["redirects_live"])));
    let d = &j["deferred_unlinks"];
    o.push_str(&format!(
        "deferred     pending {} ({}), completed {} ({})\n",
        num(&d["pending"]),
        human_bytes(num(&d["pending_bytes"])),
        num(&d["completed"]),
        human_bytes(num(&d["completed_bytes"]))
    ));
    o.push_str(&format!(
        "data         read {}, written {} (through the daemon)\n",
        human_bytes(num(&j["bytes_read"])),
        human_bytes(num(&j["bytes_written"]))
    ));
    if let Some(e) = j["errors"].as_object()
        && !e.is_empty()
    {
        let parts: Vec<String> = e.iter().map(|(k, v)| format!("{k} {}", num(v))).collect();
        o.push_str(&format!("errors       {}\n", parts.join(", ")));
    }
    o.push_str(&format!(
        "\n{:<16}{:>12}{:>9}{:>11}{:>11}{:>11}\n",
        "operation", "count", "errors", "p50 us", "p90 us", "p99 us"
    ));
    if let Some(ops) = j["operations"].as_object() {
        let mut rows: Vec<(&String, &Value)> = ops.iter().collect();
        rows.sort_by_key(|(_, v)| std::cmp::Reverse(num(&v["count"])));
        for (name, v) in rows {
            let l = &j["latency_us"][name];
            let f = |x: &Value| x.as_f64().map(|v| format!("{v:.1}")).unwrap_or("-".into());
            o.push_str(&format!(
                "{:<16}{:>12}{:>9}{:>11}{:>11}{:>11}\n",
                name,
                num(&v["count"]),
                num(&v["errors"]),
                f(&l["p50"]),
                f(&l["p90"]),
                f(&l["p99"])
            ));
        }
    }
    o
}

fn once(mp: &Path, json: bool, prometheus: bool) -> Result<String, String> {
    if prometheus {
        return read(mp, "metrics");
    }
    let text = read(mp, "stats.json")?;
    if json {
        return Ok(text);
    }
    let j: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{}/.casafs/stats.json: {e}", mp.display()))?;
    Ok(summary(&j))
}

pub fn run(mp: &Path, json: bool, prometheus: bool, watch: Option<f64>) -> i32 {
    let Some(secs) = watch else {
        return match once(mp, json, prometheus) {
            Ok(t) => {
                print!("{t}");
                0
            }
            Err(e) => {
                eprintln!("casafs: error: {e}");
                1
            }
        };
    };
    if !(secs.is_finite() && secs > 0.0) {
        eprintln!("casafs: error: --watch needs a positive number of seconds");
        return 2;
    }
    loop {
        match once(mp, json, prometheus) {
            // Clear the screen and redraw in place.
            Ok(t) => print!("\x1b[H\x1b[2J{t}"),
            Err(e) => {
                eprintln!("casafs: error: {e}");
                return 1;
            }
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_secs_f64(secs));
    }
}
