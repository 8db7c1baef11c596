//! The Debian package: what it holds, its manual pages, and an install and
//! purge in a throw-away root that leave that root as it was.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    ok(&out)
}

/// Every path under `root`, relative, sorted.
fn tree(root: &Path) -> Vec<String> {
    let out = run(Command::new("find").arg(root).arg("-mindepth").arg("1"));
    let mut v: Vec<String> = out
        .lines()
        .map(|l| {
            l.strip_prefix(root.to_str().unwrap())
                .unwrap_or(l)
                .to_string()
        })
        .collect();
    v.sort();
    v
}

#[test]
fn the_package_holds_its_parts_reads_as_manual_pages_and_purges_clean() {
    let tmp = TempDir::new("deb");
    let out = tmp.path().join("out");
    let deb = run(Command::new(format!("{REPO}/mount-scripts/build-deb.sh"))
        .arg(BIN)
        .arg(&out));
    let deb = deb.trim();
    assert!(deb.ends_with(".deb"), "{deb}");

    let fields = run(Command::new("dpkg-deb").args(["-f", deb, "Package", "Version", "Depends"]));
    assert!(
        fields.contains("Package: casafs")
            && fields.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION")))
            && fields.contains("fuse3"),
        "{fields}"
    );
    let listing = run(Command::new("dpkg-deb").args(["-c", deb]));
    for part in [
        "./usr/bin/casafs",
        "./lib/systemd/system/casafs.service",
        "./lib/systemd/system/casafs@.service",
        "./usr/share/man/man8/casafs.8.gz",
        "./usr/share/man/man8/casafs-mount.8.gz",
        "./usr/share/man/man8/casafs-check.8.gz",
        "./usr/share/bash-completion/completions/casafs",
        "./usr/share/zsh/vendor-completions/_casafs",
        "./etc/casafs/casafs.toml",
        "./usr/share/doc/casafs/OPERATIONS.md",
        "./usr/share/doc/casafs/grafana-dashboard.json",
    ] {
        assert!(listing.contains(part), "{part} missing: {listing}");
    }
    // Debian's own checker finds nothing to say.
    let lint = Command::new("lintian")
        .args(["--tag-display-limit", "0", deb])
        .output()
        .expect("lintian (tests/run.sh installs it)");
    let said = String::from_utf8_lossy(&lint.stdout);
    assert!(
        !said
            .lines()
            .any(|l| l.starts_with("E:") || l.starts_with("W:")),
        "lintian: {said}"
    );
    let conffiles = run(Command::new("dpkg-deb").args(["-I", deb, "conffiles"]));
    assert!(conffiles.contains("/etc/casafs/casafs.toml"), "{conffiles}");

    // The manual pages render, and carry what --help says.
    let x = tmp.path().join("x");
    run(Command::new("dpkg-deb").args(["-x", deb]).arg(&x));
    let page = |name: &str| {
        run(Command::new("man")
            .args(["-l", "-P", "cat"])
            .arg(x.join(format!("usr/share/man/man8/{name}.8.gz")))
            .env("MANWIDTH", "200"))
    };
    let main = page("casafs");
    assert!(main.contains("casafs") && main.contains("mount"), "{main}");
    let mount = page("casafs-mount");
    assert!(
        mount.contains("textfile=FILE") && mount.contains("log_level=FILTER"),
        "{mount}"
    );
    // The unit runs the packaged binary.
    let unit = std::fs::read_to_string(x.join("lib/systemd/system/casafs@.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/casafs mount"), "{unit}");

    // Install and purge in a root of its own (maintainer scripts run
    // outside it, and leave the system alone there).
    let root = tmp.path().join("root");
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), b"").unwrap();
    let before = tree(&root);
    let dpkg = |args: &[&str]| {
        let mut c = Command::new("dpkg");
        c.arg(format!("--root={}", root.display()))
            .args([
                "--force-script-chrootless",
                "--force-depends",
                "--log=/dev/null",
            ])
            .args(args);
        run(&mut c)
    };
    dpkg(&["-i", deb]);
    assert!(root.join("usr/bin/casafs").is_file());
    assert!(root.join("etc/casafs/casafs.toml").is_file());
    let installed = run(Command::new(root.join("usr/bin/casafs")).arg("--version"));
    assert!(installed.contains(env!("CARGO_PKG_VERSION")), "{installed}");
    dpkg(&["--purge", "casafs"]);
    let left: Vec<String> = tree(&root)
        .into_iter()
        .filter(|p| !p.starts_with("/var/lib/dpkg"))
        .collect();
    let before: Vec<String> = before
        .into_iter()
        .filter(|p| !p.starts_with("/var/lib/dpkg"))
        .collect();
    assert_eq!(left, before, "left behind after purge");
}
