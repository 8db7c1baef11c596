//! POSIX ACLs for routed objects. An object created in place gets what its
//! directory's default ACL gives it from the filesystem itself; a routed
//! object is created in its area, which has no default ACL, so casafs gives
//! it what the origin directory would have: the access ACL its default ACL
//! makes for the mode asked (POSIX.1e's rule: the owner, other and mask
//! entries narrowed to the mode, the mode narrowed to them), and for a
//! directory that default ACL too. Without a default ACL the caller's
//! umask applies instead, as in place.
//!
//! ACLs travel as the `system.posix_acl_*` xattrs: a version word, then
//! entries of (tag u16, perm u16, id u32), little-endian.

use std::os::fd::RawFd;

use crate::sys::{self, Errno, Res};

pub const ACCESS: &std::ffi::CStr = c"system.posix_acl_access";
pub const DEFAULT: &std::ffi::CStr = c"system.posix_acl_default";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

fn parse(b: &[u8]) -> Option<Vec<Entry>> {
    let (head, rest) = b.split_at_checked(4)?;
    if u32::from_le_bytes(head.try_into().ok()?) != VERSION || rest.len() % 8 != 0 {
        return None;
    }
    Some(
        rest.chunks_exact(8)
            .map(|c| Entry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect(),
    )
}

fn render(e: &[Entry]) -> Vec<u8> {
    let mut out = VERSION.to_le_bytes().to_vec();
    for x in e {
        out.extend_from_slice(&x.tag.to_le_bytes());
        out.extend_from_slice(&x.perm.to_le_bytes());
        out.extend_from_slice(&x.id.to_le_bytes());
    }
    out
}

/// What a new object inherits from its directory's default ACL `default`
/// (the raw xattr) when created with `mode`: its permission bits, and the
/// access ACL to set when the mode alone cannot say it. None when the
/// default ACL cannot be read as one.
pub fn inherit(default: &[u8], mode: u32) -> Option<(u32, Option<Vec<u8>>)> {
    let mut acl = parse(default)?;
    let mut m = mode & 0o777;
    let mut extended = false;
    let mut group_obj = None;
    let mut mask = None;
    for (i, e) in acl.iter_mut().enumerate() {
        match e.tag {
            USER_OBJ => {
                e.perm &= ((m >> 6) & 7) as u16;
                m = (m & !0o700) | (u32::from(e.perm) << 6);
            }
            OTHER => {
                e.perm &= (m & 7) as u16;
                m = (m & !0o007) | u32::from(e.perm);
            }
            GROUP_OBJ => group_obj = Some(i),
            MASK => {
                mask = Some(i);
                extended = true;
            }
            USER | GROUP => extended = true,
            _ => return None,
        }
    }
    // The group class bits: the mask where there is one, else the owning
    // group's entry.
    let class = mask.or(group_obj)?;
    let e = &mut acl[class];
    e.perm &= ((m >> 3) & 7) as u16;
    m = (m & !0o070) | (u32::from(e.perm) << 3);
    Some(((mode & !0o777) | m, extended.then(|| render(&acl))))
}

/// The default ACL of the directory open as `dir`, if it has one. An
/// error where one may exist but cannot be read: what it would have given
/// must not be guessed.
pub fn default_of(dir: RawFd) -> Res<Option<Vec<u8>>> {
    let path = sys::proc_path(dir);
    for _ in 0..4 {
        let n = match sys::getxattr(&path, DEFAULT, &mut [], true) {
            Ok(0) | Err(Errno::ENODATA | Errno::EOPNOTSUPP) => return Ok(None),
            Ok(n) => n,
            Err(e) => return Err(e),
        };
        let mut buf = vec![0u8; n];
        match sys::getxattr(&path, DEFAULT, &mut buf, true) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            // Changed between the two calls.
            Err(Errno::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::EIO)
}

/// Sets an ACL xattr on the object `fd` (an `O_PATH` descriptor) stands
/// for, or removes it (`None`: the object must have none, whatever its
/// area's own default ACL gave it).
pub fn set(fd: RawFd, which: &std::ffi::CStr, value: Option<&[u8]>) -> Res<()> {
    let path = sys::proc_path(fd);
    let r = match value {
        Some(v) => sys::setxattr(&path, which, v, 0, true),
        None => sys::removexattr(&path, which, true),
    };
    match r {
        // A filesystem without ACLs has nothing to inherit either.
        Err(Errno::EOPNOTSUPP | Errno::ENODATA) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(e: &[(u16, u16, u32)]) -> Vec<u8> {
        render(
            &e.iter()
                .map(|&(tag, perm, id)| Entry { tag, perm, id })
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn a_minimal_default_acl_acts_as_a_umask() {
        // default: u::rwx g::r-x o::---
        let d = acl(&[
            (USER_OBJ, 7, u32::MAX),
            (GROUP_OBJ, 5, u32::MAX),
            (OTHER, 0, u32::MAX),
        ]);
        assert_eq!(inherit(&d, 0o100666), Some((0o100640, None)));
        assert_eq!(inherit(&d, 0o040777), Some((0o040750, None)));
    }

    #[test]
    fn named_entries_make_an_access_acl_whose_mask_is_the_group_bits() {
        // default: u::rwx u:1000:rw- g::r-x m::rwx o::r--
        let d = acl(&[
            (USER_OBJ, 7, u32::MAX),
            (USER, 6, 1000),
            (GROUP_OBJ, 5, u32::MAX),
            (MASK, 7, u32::MAX),
            (OTHER, 4, u32::MAX),
        ]);
        let (mode, access) = inherit(&d, 0o100664).unwrap();
        // The mask narrows to the mode's group bits (rw-), the owning
        // group's entry stays r-x in the ACL.
        assert_eq!(mode, 0o100664);
        let got = parse(&access.unwrap()).unwrap();
        assert_eq!(
            got[3],
            Entry {
                tag: MASK,
                perm: 6,
                id: u32::MAX
            }
        );
        assert_eq!(got[2].perm, 5);
        assert_eq!(got[0].perm, 6);
    }

    #[test]
    fn what_is_not_an_acl_gives_nothing() {
        assert_eq!(inherit(b"\x02\0\0\0\x01", 0o644), None);
        assert_eq!(inherit(b"\x01\0\0\0", 0o644), None);
        assert_eq!(inherit(&acl(&[(USER_OBJ, 7, 0)]), 0o644), None);
    }
}
