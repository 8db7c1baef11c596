//! The control directory and statistics, as an operator reads
//! them.

mod common;

use std::fs;
use std::io::Write;
use std::process::Command;

use common::*;

#[test]
fn control_directory_lives_only_in_the_mount() {
    let m = Mount::over_itself("ctl-visible");
    fs::write(m.p("data"), b"x").unwrap();
    // Resolvable by name ...
    assert_eq!(
        names(&m.p(".casafs")),
        ["config", "metrics", "redirects", "stats.json"]
    );
    // ... but not in the root listing, nor in the backing tree.
    assert!(!names(&m.mnt).contains(&".casafs".to_string()));
    assert!(!m.backing(".casafs").exists());
    assert!(!names(&m.backing("")).contains(&".casafs".to_string()));
    // Read-only.
    let e = fs::write(m.p(".casafs/stats.json"), b"{}");
    assert_ne!(errno_of(e), 0);
    let e = fs::remove_file(m.p(".casafs/metrics"));
    assert_ne!(errno_of(e), 0);
    let e = fs::create_dir(m.p(".casafs"));
    assert_ne!(errno_of(e), 0);
    // The effective configuration.
    let cfg = fs::read_to_string(m.p(".casafs/config")).unwrap();
    assert!(cfg.contains("defer_unlink = \"auto\""), "{cfg}");
    assert!(cfg.contains("name = \"casa-logs\""), "{cfg}");
}

#[test]
fn counters_move_with_traffic_by_the_right_amounts() {
    let m = Mount::builder("ctl-counters")
        .opt("passthrough=never")
        .start();
    fs::create_dir(m.p("d")).unwrap();
    let before = m.stats();
    let mut f = fs::File::create(m.p("d/f")).unwrap();
    f.write_all(&vec![1u8; 100_000]).unwrap();
    drop(f);
    let data = fs::read(m.p("d/f")).unwrap();
    assert_eq!(data.len(), 100_000);
    for i in 0..5 {
        let _ = fs::metadata(m.p(&format!("d/missing{i}")));
    }
    fs::write(m.p("d/casa-1.log"), b"log").unwrap();
    fs::remove_file(m.p("d/f")).unwrap();
    let after = m.stats();
    assert_eq!(
        after["bytes_written"].as_u64().unwrap() - before["bytes_written"].as_u64().unwrap(),
        100_003
    );
    assert_eq!(
        after["bytes_read"].as_u64().unwrap() - before["bytes_read"].as_u64().unwrap(),
        100_000
    );
    assert_eq!(op_count(&after, "create") - op_count(&before, "create"), 2);
    assert_eq!(op_count(&after, "unlink") - op_count(&before, "unlink"), 1);
    let enoent = |j: &serde_json::Value| j["errors"]["ENOENT"].as_u64().unwrap_or(0);
    assert!(enoent(&after) - enoent(&before) >= 5);
    assert_eq!(after["redirects"]["casa-logs"]["redirects"], 1);
    assert_eq!(after["redirects_live"], 1);
    assert!(after["latency_us"]["create"]["p50"].as_f64().unwrap() > 0.0);
    assert!(after["uptime_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(after["backing_fs"]["source"], "ext4");
    // Open handles now: one held, then none. Releases of the files closed
    // above arrive after their close() returned.
    eventually("no open handles before the next open", || {
        m.stats()["open_handles"] == 0
    });
    let held = fs::File::open(m.p("d/casa-1.log")).unwrap();
    // (stats.json is rendered before its own handle is counted; the
    // release of the previous read's handle may still be on its way)
    eventually("the held file is the one open handle", || {
        m.stats()["open_handles"] == 1
    });
    drop(held);
    eventually("no open handles after the close", || {
        m.stats()["open_handles"] == 0
    });
}

#[test]
fn metrics_are_valid_prometheus_text() {
    let m = Mount::over_itself("ctl-prom");
    fs::write(m.p("casa-2.log"), b"x").unwrap();
    let text = fs::read_to_string(m.p(".casafs/metrics")).unwrap();
    for family in [
        "casafs_redirects_total",
        "casafs_retention_removed_total",
        "casafs_passthrough_opens_total",
        "casafs_direct_unlinks_of_open_files_total",
        "casafs_operation_latency_microseconds_sum",
    ] {
        assert!(text.contains(&format!("\n{family}{{")), "{family}: {text}");
    }
    let parsed = prometheus_families(&text);
    let families = parsed.lines().count();
    assert!(families >= 10, "parsed {parsed}");
}

#[test]
fn casafs_stats_prints_for_a_person() {
    let m = Mount::over_itself("ctl-cli");
    fs::write(m.p("casa-3.log"), b"x").unwrap();
    let out = Command::new(BIN).arg("stats").arg(&m.mnt).output().unwrap();
    let text = ok(&out);
    assert!(text.contains("redirects    casa-logs 1"), "{text}");
    assert!(
        text.contains("operation") && text.contains("p99 us"),
        "{text}"
    );
    let out = Command::new(BIN)
        .args(["stats", "--json"])
        .arg(&m.mnt)
        .output()
        .unwrap();
    let j: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(j["redirects"]["casa-logs"]["redirects"], 1);
    let out = Command::new(BIN)
        .args(["stats", "--prometheus"])
        .arg(&m.mnt)
        .output()
        .unwrap();
    assert!(ok(&out).contains("# TYPE casafs_operations_total counter"));
    // --watch redraws in place until stopped.
    let mut child = Command::new(BIN)
        .args(["stats", "--watch", "0.2"])
        .arg(&m.mnt)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.matches("\x1b[H\x1b[2J").count() >= 2, "{text}");
    // Not a casafs mount: a clear error.
    let out = Command::new(BIN).args(["stats", "/tmp"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a casafs mounted on /tmp?"));
}

#[test]
fn deferred_unlink_bytes_follow_the_file() {
    // The temporary-file pattern: create, unlink, then write. The pending
    // bytes are what the graveyard holds now, not the size at unlink.
    let m = Mount::builder("pending-bytes")
        .opt("defer_unlink=always")
        .start();
    let p = m.p("scratch.tmp");
    let mut f = std::fs::File::create(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    let d = |s: &serde_json::Value, k: &str| s["deferred_unlinks"][k].as_u64().unwrap();
    let st = m.stats();
    assert_eq!((d(&st, "pending"), d(&st, "pending_bytes")), (1, 0));
    std::io::Write::write_all(&mut f, &vec![7u8; 3 << 20]).unwrap();
    let st = m.stats();
    assert_eq!((d(&st, "pending"), d(&st, "pending_bytes")), (1, 3 << 20));
    let metrics = std::fs::read_to_string(m.p(".casafs/metrics")).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("casafs_deferred_unlinks_pending_bytes{")
                && l.ends_with(&format!(" {}", 3 << 20))),
        "{metrics}"
    );
    drop(f);
    eventually("the last close frees it", || {
        let st = m.stats();
        d(&st, "pending") == 0 && d(&st, "completed") == 1
    });
    let st = m.stats();
    assert_eq!(d(&st, "pending_bytes"), 0);
    assert_eq!(d(&st, "completed_bytes"), 3 << 20);
}
