//! The control directory `MOUNTPOINT/.casafs/`: read-only files generated
//! at open, living only in the mount. It resolves by name from the root but
//! is never listed there, so tree walkers and `git status` do not see it.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use super::CasaFs;
use crate::handle::{Body, Handle};
use crate::inode::{CONTROL_DIR_ID, ROOT_ID};
use crate::sys::{Errno, Res};

pub const CONTROL_NAME: &str = ".casafs";

pub const FILES: &[&str] = &["stats.json", "metrics", "redirects", "config"];

pub fn is_control(ino: u64) -> bool {
    (CONTROL_DIR_ID..=CONTROL_DIR_ID + FILES.len() as u64).contains(&ino)
}

impl CasaFs {
    /// The control entry for `name` in `parent`, if it is one.
    pub(super) fn control_lookup(&self, parent: u64, name: &[u8]) -> Option<Res<FileAttr>> {
        if parent == ROOT_ID && name == CONTROL_NAME.as_bytes() {
            return Some(Ok(self.control_attr(CONTROL_DIR_ID)));
        }
        if parent != CONTROL_DIR_ID {
            return None;
        }
        Some(
            FILES
                .iter()
                .position(|f| f.as_bytes() == name)
                .map(|i| self.control_attr(CONTROL_DIR_ID + 1 + i as u64))
                .ok_or(Errno::ENOENT),
        )
    }

    pub(super) fn control_attr(&self, ino: u64) -> FileAttr {
        let now = SystemTime::now();
        let dir = ino == CONTROL_DIR_ID;
        FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: UNIX_EPOCH,
            kind: if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: if dir { 0o555 } else { 0o444 },
            nlink: if dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    pub fn control_content(&self, ino: u64) -> Vec<u8> {
        let idx = ino.wrapping_sub(CONTROL_DIR_ID + 1) as usize;
        match FILES.get(idx).copied() {
            Some("stats.json") => {
                let mut v = serde_json::to_vec_pretty(&self.stats.to_json(&self.extra()))
                    .unwrap_or_default();
                v.push(b'\n');
                v
            }
            Some("metrics") => self.stats.to_prometheus(&self.extra()).into_bytes(),
            Some("redirects") => {
                self.redirects.drop_gone(&self.areas);
                self.redirects
                    .render(&self.areas, &self.rule_names)
                    .into_bytes()
            }
            Some("config") => crate::config::render(&self.settings).into_bytes(),
            _ => Vec::new(),
        }
    }

    pub(super) fn control_open(&self, ino: u64, flags: i32) -> Res<u64> {
        if ino == CONTROL_DIR_ID {
            return Err(Errno::EISDIR);
        }
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(Errno::EACCES);
        }
        let data = self.control_content(ino);
        let root = self.inodes.root()?;
        self.stats.open_handles.fetch_add(1, Relaxed);
        Ok(self.handles.insert(Handle {
            inode: root,
            body: Body::Control(data),
            passthrough: false,
            append: false,
        }))
    }

    pub(super) fn control_opendir(&self) -> Res<u64> {
        let root = self.inodes.root()?;
        self.stats.open_handles.fetch_add(1, Relaxed);
        Ok(self.handles.insert(Handle {
            inode: root,
            body: Body::ControlDir,
            passthrough: false,
            append: false,
        }))
    }

    /// Entries of the control directory: (ino, kind, name).
    pub(super) fn control_entries(&self) -> Vec<(u64, FileType, String)> {
        let mut v = vec![
            (CONTROL_DIR_ID, FileType::Directory, ".".to_string()),
            (ROOT_ID, FileType::Directory, "..".to_string()),
        ];
        for (i, f) in FILES.iter().enumerate() {
            v.push((
                CONTROL_DIR_ID + 1 + i as u64,
                FileType::RegularFile,
                f.to_string(),
            ));
        }
        v
    }
}
