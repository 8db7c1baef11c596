//! Reading other processes from /proc: which processes there are, and what
//! a process maps (retention and sweep leave what anything holds).

/// The processes of the system: (pid, its /proc directory).
pub fn processes() -> Vec<(String, std::path::PathBuf)> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|p| {
            let pid = p.file_name().into_string().ok()?;
            pid.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| (pid, p.path()))
        })
        .collect()
}

/// The files a `/proc/PID/maps` text maps: device and inode as the line
/// gives them, and the path without its " (deleted)".
pub fn mapped_files(maps: &str) -> impl Iterator<Item = ((u64, u64), std::path::PathBuf)> + '_ {
    maps.lines().filter_map(|line| {
        let mut f = line.splitn(6, ' ');
        let (_addr, _perms, _off) = (f.next()?, f.next()?, f.next()?);
        let (major, minor) = f.next()?.split_once(':')?;
        let ino: u64 = f.next()?.parse().ok()?;
        let path = f.next()?.trim_start();
        if ino == 0 || !path.starts_with('/') {
            return None;
        }
        let dev = libc::makedev(
            u32::from_str_radix(major, 16).ok()?,
            u32::from_str_radix(minor, 16).ok()?,
        );
        let path = std::path::PathBuf::from(path.trim_end_matches(" (deleted)"));
        Some(((dev, ino), path))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn mapped_files_are_read_from_a_maps_text() {
        let maps = "55d0c0a00000-55d0c0a02000 r--p 00000000 08:01 1311     /usr/bin/cat\n\
                    7f0000000000-7f0000001000 rw-p 00000000 00:00 0 \n\
                    7f0100000000-7f0100004000 r--s 00000000 00:2e 42        /data/obs/x y.idx (deleted)\n\
                    7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0          [stack]\n";
        let got: Vec<_> = mapped_files(maps).collect();
        assert_eq!(
            got,
            [
                ((libc::makedev(8, 1), 1311), PathBuf::from("/usr/bin/cat")),
                (
                    (libc::makedev(0, 0x2e), 42),
                    PathBuf::from("/data/obs/x y.idx")
                ),
            ]
        );
    }
}
