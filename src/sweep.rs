//! `casafs sweep`: the one-off clean-up of debris made before casafs.

use std::path::PathBuf;
use std::time::Duration;

pub struct SweepArgs {
    pub tree: PathBuf,
    pub dry_run: bool,
    pub logs: Option<PathBuf>,
    pub scratch: Option<PathBuf>,
    pub remove_debris: bool,
    pub min_age: Duration,
}

pub fn run(_a: SweepArgs) -> i32 {
    eprintln!("casafs: error: sweep is not implemented yet");
    1
}
