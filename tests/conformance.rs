//! Conformance suites run the same way on casafs and on a native directory:
//! pjdfstest (POSIX semantics) and fsx (data integrity under random
//! operations). casafs must fail no pjdfstest case that native passes,
//! except those listed with a reason in tests/conformance/expected-failures.txt.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::*;

const CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conformance");

fn tool(name: &str) -> String {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    for p in [
        format!("{home}/.cargo/bin/{name}"),
        format!("/usr/local/bin/{name}"),
    ] {
        if Path::new(&p).exists() {
            return p;
        }
    }
    panic!("{name} is not installed: run `cargo install {name}` (the CI script does)");
}

/// Runs pjdfstest in `dir`; returns (passed, failed test names).
fn pjdfstest(dir: &Path) -> (usize, BTreeSet<String>) {
    let out = Command::new(tool("pjdfstest"))
        .arg("-c")
        .arg(format!("{CONF}/pjdfstest.toml"))
        .arg("-p")
        .arg(dir)
        .current_dir(dir)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let failed: BTreeSet<String> = text
        .lines()
        .filter(|l| l.trim_end().ends_with("FAILED"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    let summary = text
        .lines()
        .find(|l| l.starts_with("Summary:"))
        .unwrap_or_else(|| panic!("pjdfstest printed no summary:\n{text}"));
    let passed = summary
        .split(',')
        .find(|p| p.contains("passed"))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (passed, failed)
}

fn expected_failures() -> BTreeSet<String> {
    std::fs::read_to_string(format!("{CONF}/expected-failures.txt"))
        .unwrap()
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// pjdfstest on a native directory and on casafs mounted with `opts`.
fn pjdfstest_against_native(tag: &str, opts: &[&str]) -> Mount {
    user_ids("tests");
    let native = TempDir::new(&format!("{tag}-native"));
    let (native_passed, native_failed) = pjdfstest(native.path());
    assert!(
        native_passed > 300,
        "native run passed only {native_passed}"
    );
    let mut b = Mount::builder(tag);
    for o in opts {
        b = b.opt(o);
    }
    let m = b.start();
    let dir = m.p("suite");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o755);
    let (passed, failed) = pjdfstest(&dir);
    let expected = expected_failures();
    let regressions: Vec<&String> = failed
        .iter()
        .filter(|t| !native_failed.contains(*t) && !expected.contains(*t))
        .collect();
    eprintln!(
        "pjdfstest {opts:?}: native passed {native_passed}, casafs passed {passed}, casafs failed {:?}",
        failed
    );
    assert!(
        regressions.is_empty(),
        "casafs fails where native passes: {regressions:?}"
    );
    let stale: Vec<&String> = expected.iter().filter(|t| !failed.contains(*t)).collect();
    assert!(
        stale.is_empty(),
        "listed as expected failures but passing now (shrink the list): {stale:?}"
    );
    assert!(
        passed + 1 >= native_passed,
        "{passed} passed against {native_passed} native"
    );
    m
}

fn transport_of(m: &Mount) -> String {
    m.stats()["transport"]["kind"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn pjdfstest_fails_nothing_that_native_passes() {
    let m = pjdfstest_against_native("pjd-casafs", &[]);
    // The default transport carried the suite where the kernel has it.
    if std::path::Path::new("/sys/module/fuse/parameters/enable_uring").exists() {
        assert_eq!(transport_of(&m), "io_uring");
    }
}

#[test]
fn pjdfstest_over_dev_fuse_fails_nothing_that_native_passes() {
    let m = pjdfstest_against_native("pjd-devfuse", &["io_uring=never"]);
    assert_eq!(transport_of(&m), "dev_fuse");
}

fn fsx(dir: &Path, config: &str, seed: u32) -> String {
    let out = Command::new(tool("fsx"))
        .arg("-N")
        .arg("20000")
        .arg("-S")
        .arg(seed.to_string())
        .arg("-f")
        .arg(format!("{CONF}/fsx-{config}.toml"))
        .arg("-P")
        .arg(dir)
        .arg(dir.join(format!("fsx-{config}-{seed}.dat")))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "fsx {config} seed {seed} in {}: {text}",
        dir.display()
    );
    text
}

fn fsx_everywhere(config: &str, opts: &[&str]) {
    let native = TempDir::new("fsx-native");
    let mut b = Mount::builder(&format!("fsx-{config}"));
    for o in opts {
        b = b.opt(o);
    }
    let m = b.start();
    for seed in [1, 2, 3] {
        let t = fsx(native.path(), config, seed);
        assert!(t.contains("A-OK"), "{t}");
        let t = fsx(&m.mnt, config, seed);
        assert!(t.contains("A-OK"), "{t}");
    }
}

#[test]
fn fsx_with_mmap() {
    fsx_everywhere("mmap", &[]);
}

#[test]
fn fsx_without_mmap() {
    fsx_everywhere("nommap", &[]);
}

#[test]
fn fsx_with_hole_punching() {
    fsx_everywhere("punch", &[]);
}

/// File data through the daemon rather than kernel passthrough: every read
/// and write crosses the request transport (1 MiB io_uring payloads).
#[test]
fn fsx_through_the_daemon() {
    fsx_everywhere("nommap", &["passthrough=never"]);
}
