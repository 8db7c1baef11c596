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
        /// Also delete .fuse_hidden*/.nfs* files that no process holds open.
        #[arg(long)]
        remove_debris: bool,
        /// Only move TMPPOINTING* unchanged for this long (a concat may be
        /// between two opens of a younger one). Anything held open is left
        /// in any case.
        #[arg(long, value_name = "DURATION", default_value = "1h")]
        min_age: String,
    },
}

const SUBCOMMANDS: &[&str] = &["mount", "stats", "check", "sweep", "help"];

/// Entry point; returns the process exit status.
pub fn main() -> i32 {
    let mut args: Vec<String> = std::env::args().collect();
    // mount.fuse3 runs `casafs SOURCE MOUNTPOINT -o opts`.
    if let Some(first) = args.get(1)
        && !first.starts_with('-')
        && !SUBCOMMANDS.contains(&first.as_str())
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
                remove_debris,
                min_age,
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
