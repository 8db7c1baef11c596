//! What casafs knows of each kind of filesystem beneath it (from the
//! `statfs` magic number), and the choices that follow from it.

const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
const NFS_SUPER_MAGIC: i64 = 0x6969;
const SMB_SUPER_MAGIC: i64 = 0x517B;
const SMB2_MAGIC: i64 = 0xFE53_4D42;
const CIFS_MAGIC: i64 = 0xFF53_4D42;

/// Network filesystems (NFS, SMB/CIFS).
pub fn is_network(f_type: i64) -> bool {
    matches!(
        f_type,
        NFS_SUPER_MAGIC | SMB_SUPER_MAGIC | SMB2_MAGIC | CIFS_MAGIC
    )
}

/// Whether an object keeps its inode number for as long as it exists: not
/// on vfat and exFAT, which number inodes as they are read in, nor on a
/// FUSE filesystem, whose numbers are its own business.
pub fn keeps_inode_numbers(f_type: i64) -> bool {
    !keeps_no_owners(f_type)
}

/// vfat, exFAT and FUSE (ntfs-3g) filesystems: what they show of owners
/// and modes comes from mount options, not from each object, and their
/// inode numbers are made as objects are read in.
pub fn keeps_no_owners(f_type: i64) -> bool {
    const MSDOS: i64 = 0x4d44;
    const EXFAT: i64 = 0x2011_bab0;
    matches!(f_type, FUSE_SUPER_MAGIC | MSDOS | EXFAT)
}

/// Filesystems another process serves (a FUSE daemon such as ntfs-3g, a
/// network server): nearly every request to them waits on that server.
pub fn has_own_server(f_type: i64) -> bool {
    f_type == FUSE_SUPER_MAGIC || is_network(f_type)
}

/// Filesystems that turn an unlink of an open file into a visible rename
/// (`.fuse_hidden*`, `.nfsXXXX`, SMB delete-pending): those with a server
/// of their own, which keeps an unlinked open file for its client.
pub fn leaves_unlink_debris(f_type: i64) -> bool {
    has_own_server(f_type)
}

/// Filesystems that report delayed write errors at close(2); on every other
/// backing filesystem a FUSE flush has nothing to do and costs a round trip
/// per close.
pub fn reports_errors_at_close(f_type: i64) -> bool {
    is_network(f_type)
}

/// A readable name for a statfs magic number, for the statistics.
pub fn fs_type_name(f_type: i64) -> String {
    match f_type {
        0xEF53 => "ext4".into(),
        0x0102_1994 => "tmpfs".into(),
        0x6573_5546 => "fuse".into(),
        0x9123_683E => "btrfs".into(),
        0x5846_5342 => "xfs".into(),
        0x6969 => "nfs".into(),
        0xFF53_4D42 | 0xFE53_4D42 | 0x517B => "smb".into(),
        0x794C_7630 => "overlayfs".into(),
        other => format!("0x{other:x}"),
    }
}

/// The type, source and superblock options of the filesystem on device
/// `dev` as its mount says (`fuseblk`, `/dev/sdb1`, `rw,user_id=0,...`),
/// from /proc/self/mountinfo.
pub fn mount_of_dev(dev: u64) -> Option<(String, String, String)> {
    let want = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (a, b) = line.split_once(" - ")?;
        if a.split(' ').nth(2)? != want {
            return None;
        }
        let mut it = b.split(' ');
        let kind = it.next()?.to_string();
        let source = crate::health::unescape(it.next()?)
            .to_string_lossy()
            .into_owned();
        let options = it.next().unwrap_or_default().to_string();
        Some((kind, source, options))
    })
}

/// The type of the filesystem at `path` as an operator knows it
/// (`fuseblk`, `fuse.ntfs-3g`, `ext4`).
pub fn type_at(path: &std::path::Path, f_type: i64) -> String {
    // /proc/self/mountinfo knows fuseblk vs fuse and the subtype; the
    // magic number alone does not.
    if let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") {
        let mut best: Option<(usize, String)> = None;
        for line in text.lines() {
            let mut it = line.split(" - ");
            let (Some(a), Some(b)) = (it.next(), it.next()) else {
                continue;
            };
            let Some(mp) = a.split(' ').nth(4) else {
                continue;
            };
            let mp = mp.replace("\\040", " ");
            let Some(fstype) = b.split(' ').next() else {
                continue;
            };
            if path.starts_with(&mp) && best.as_ref().is_none_or(|(l, _)| mp.len() >= *l) {
                best = Some((mp.len(), fstype.to_string()));
            }
        }
        if let Some((_, t)) = best {
            return t;
        }
    }
    fs_type_name(f_type)
}
