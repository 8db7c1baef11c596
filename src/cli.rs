//! The command line: `casafs mount|stats|sweep`, and the `casafs SOURCE
//! MOUNTPOINT -o opts` form that mount(8) uses through mount.fuse3.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, MountArgs};
use crate::daemon::{self, MountError};

#[derive(Parser, Debug)]
#[command(
    name = "casafs",
    version,
    long_version = long_version(),
    about = "FUSE passthrough overlay that keeps CASA debris out of a data tree",
    long_about = "casafs mounts over a data tree (usually over itself) and passes everything \
through, except that casa-*.log files land in a logs area, TMPPOINTING* tables land in \
scratch, and unlinking a file that is still open never leaves .fuse_hidden* files behind."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Mount SOURCE on MOUNTPOINT (the same directory to mount over itself).
    #[command(after_help = crate::options::help())]
    Mount {
        source: PathBuf,
        mountpoint: PathBuf,
        /// Stay in the foreground (default: daemonize once mounted).
        #[arg(short = 'f', long)]
        foreground: bool,
        /// Mount options, comma separated; may be repeated.
        #[arg(short = 'o', value_name = "OPTS")]
        options: Vec<String>,
        /// TOML config file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Show the statistics of a mounted casafs.
    Stats {
        mountpoint: PathBuf,
        /// Print stats.json as is.
        #[arg(long, conflicts_with = "prometheus")]
        json: bool,
        /// Print the Prometheus metrics text.
        #[arg(long)]
        prometheus: bool,
        /// Refresh every SECONDS until interrupted.
        #[arg(long, value_name = "SECONDS")]
        watch: Option<f64>,
    },
    /// Say whether a casafs mount is serving: exit 0 if it answered within
    /// the timeout, 1 if not (stalled, gone, or not casafs).
    Check {
        mountpoint: PathBuf,
        /// How long to wait for the answer.
        #[arg(long, value_name = "DURATION", default_value = "5s")]
        timeout: String,
    },
    /// Where a path through a casafs mount really lives: routed (by which
    /// rule, from where) or in the tree.
    Where { path: PathBuf },
    /// Which rule would route NAME, and where to (exit 1: none would).
    Route {
        name: String,
        /// NAME is a directory (rules may route files or directories only).
        #[arg(long)]
        dir: bool,
        /// The config file the mount uses.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The mount's options (logs=, scratch=, ...), as given to mount.
        #[arg(short = 'o', value_name = "OPTS")]
        options: Vec<String>,
        /// The tree the default areas are in (default: the current directory).
        #[arg(long, value_name = "DIR", default_value = ".")]
        source: PathBuf,
    },
    /// Configuration files.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Write the manual pages or shell completions, made from this very
    /// command-line definition, into DIR (for packaging).
    #[command(hide = true)]
    Generate { what: Generated, dir: PathBuf },
    /// Clean up debris made before casafs was mounted.
    Sweep {
        tree: PathBuf,
        /// Show the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Where stray casa-*.log files go (default TREE/state/logs/casa).
        #[arg(long, value_name = "DIR")]
        logs: Option<PathBuf>,
        /// Where TMPPOINTING* tables go (default TREE/state/scratch/tmppointing).
        #[arg(long, value_name = "DIR")]
        scratch: Option<PathBuf>,
        /// The mount's config file: its rules apply (custom ones, and
        /// `enabled = false`), with its logs and scratch areas.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Stay on the tree's filesystem (do not walk into other mounts).
        #[arg(short = 'x', long)]
        one_file_system: bool,
        /// Print the plan and the summary as one JSON document.
        #[arg(long)]
        json: bool,
        /// Also delete .fuse_hidden*/.nfs* files that no process holds open.
        #[arg(long)]
        remove_debris: bool,
        /// Only move what a rule other than casa-logs routes (TMPPOINTING*
        /// tables) once unchanged for this long (a concat may be between
        /// two opens of a younger one). Anything held open is left in any
        /// case.
        #[arg(long, value_name = "DURATION", default_value = "1h")]
        min_age: String,
    },
}

#[derive(clap::ValueEnum, Clone, Debug)]
enum Generated {
    /// Manual pages, section 8: casafs(8) and one per subcommand.
    Man,
    /// Shell completions for bash, zsh and fish.
    Completions,
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Check a config file as a mount would, without mounting: print the
    /// effective configuration, or the one-line error and exit 2.
    Check {
        file: PathBuf,
        /// The tree the default areas are in (default: the current directory).
        #[arg(long, value_name = "DIR", default_value = ".")]
        source: PathBuf,
    },
}

const SUBCOMMANDS: &[&str] = &[
    "mount", "stats", "check", "where", "route", "config", "sweep", "generate", "help",
];

/// Manual pages and completions from the command-line definition itself,
/// so they never say other than `--help` does.
fn generate(what: Generated, dir: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    match what {
        Generated::Man => {
            let page = |c: clap::Command, file: String| -> std::io::Result<()> {
                let mut out = Vec::new();
                clap_mangen::Man::new(c).section("8").render(&mut out)?;
                std::fs::write(dir.join(file), out)
            };
            page(cmd.clone(), "casafs.8".into())?;
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                let name = format!("casafs-{}", sub.get_name());
                page(sub.clone().name(name.clone()), format!("{name}.8"))?;
            }
            Ok(())
        }
        Generated::Completions => {
            use clap_complete::Shell;
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                clap_complete::generate_to(shell, &mut cmd.clone(), "casafs", dir)?;
            }
            Ok(())
        }
    }
}

/// `--version`: the build, and what this machine's kernel offers.
fn long_version() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let (major, minor) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    let yes = |b: bool| if b { "yes" } else { "no" };
    let fuse = std::path::Path::new("/dev/fuse").exists();
    let passthrough = (major, minor) >= (6, 9);
    let uring = match std::fs::read_to_string(crate::transport::uring::ENABLE_PARAM) {
        Ok(v) if v.trim() == "Y" => "yes (on)",
        Ok(_) => "yes (off; casafs turns it on at mount)",
        Err(_) => "no",
    };
    format!(
        "{}\nkernel {release}: /dev/fuse {}, FUSE passthrough {} (6.9 and later), FUSE over io_uring {uring}",
        env!("CARGO_PKG_VERSION"),
        yes(fuse),
        yes(passthrough),
    )
}

/// Entry point; returns the process exit status.
pub fn main() -> i32 {
    // Paths need not be UTF-8: clap says so of an argument that must be.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // mount.fuse3 runs `casafs SOURCE MOUNTPOINT -o opts`.
    if let Some(first) = args.get(1)
        && !first.as_encoded_bytes().starts_with(b"-")
        && !first.to_str().is_some_and(|f| SUBCOMMANDS.contains(&f))
    {
        args.insert(1, "mount".into());
    }
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    match cli.cmd {
        Cmd::Mount {
            source,
            mountpoint,
            foreground,
            options,
            config,
        } => mount(MountArgs {
            source,
            mountpoint,
            options,
            config,
            foreground,
        }),
        Cmd::Stats {
            mountpoint,
            json,
            prometheus,
            watch,
        } => crate::statscmd::run(&mountpoint, json, prometheus, watch),
        Cmd::Where { path } => crate::query::where_is(&path),
        Cmd::Generate { what, dir } => match generate(what, &dir) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("casafs: error: {}: {e}", dir.display());
                1
            }
        },
        Cmd::Route {
            name,
            dir,
            config,
            options,
            source,
        } => crate::query::route(&name, dir, config, options, &source),
        Cmd::Config {
            cmd: ConfigCmd::Check { file, source },
        } => crate::query::check_config(&file, &source),
        Cmd::Check {
            mountpoint,
            timeout,
        } => match config::parse_duration(&timeout) {
            Ok(t) => crate::health::check(&mountpoint, t),
            Err(e) => {
                eprintln!("casafs: error: --timeout: {e}");
                2
            }
        },
        Cmd::Sweep {
            tree,
            dry_run,
            logs,
            scratch,
            config,
            one_file_system,
            json,
            remove_debris,
            min_age,
        } => {
            let min_age = match config::parse_duration(&min_age) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("casafs: error: --min-age: {e}");
                    return 2;
                }
            };
            crate::sweep::run(crate::sweep::SweepArgs {
                tree,
                dry_run,
                logs,
                scratch,
                config,
                remove_debris,
                min_age,
                one_file_system,
                json,
            })
        }
    }
}

fn mount(mut args: MountArgs) -> i32 {
    let settings = match config::build(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("casafs: error: {e}");
            return 2;
        }
    };
    if let Some(l) = &settings.log_level
        && let Err(e) = crate::logsink::set_level(l)
    {
        eprintln!("casafs: error: option 'log_level': {e}");
        return 2;
    }
    if settings.remount {
        return match daemon::remount(&settings) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("casafs: error: {e}");
                2
            }
        };
    }
    // A reload reads the same config file again, wherever the daemon is.
    args.config = settings.config_file.clone();
    daemon::raise_nofile();
    let prepared = match daemon::prepare(settings) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("casafs: error: {e}");
            return 2;
        }
    };
    match daemon::run(prepared, args) {
        Ok(()) => 0,
        Err(MountError::Bad(e)) => {
            eprintln!("casafs: error: {e}");
            2
        }
        Err(MountError::Failed(m)) => {
            eprintln!("casafs: error: {m}");
            1
        }
    }
}
