//! casafs: a FUSE passthrough overlay for a radio-telescope pipeline's data
//! tree that routes CASA's debris (`casa-*.log`, `TMPPOINTING*`) to their
//! own areas and never lets an unlink of an open file leave `.fuse_hidden*`
//! files behind. See README.md for operation; each module documents its job.

pub mod areas;
pub mod atime;
pub mod backing;
pub mod boot;
pub mod cli;
pub mod config;
pub mod creds;
pub mod daemon;
pub mod detach;
pub mod exports;
pub mod fault;
pub mod fdbudget;
pub mod fs;
pub mod fstype;
pub mod graveyard;
pub mod handle;
pub mod health;
pub mod hosts;
pub mod inode;
pub mod live;
pub mod logsink;
pub mod options;
pub mod procs;
pub mod query;
pub mod redirect;
pub mod retention;
pub mod rules;
pub mod stats;
pub mod statscmd;
pub mod sweep;
pub mod sys;
pub mod transport;
pub mod tree;
pub mod watch;
