//! Credentials: whose rights a backing operation runs with.
//!
//! casafs runs as root for every user of the machine. Each request is served
//! with the caller's filesystem ids, supplementary groups and umask, and
//! without any capability, so the filesystem beneath refuses exactly what
//! it would refuse the caller natively (mode bits, POSIX ACLs, sticky
//! directories, immutable files, quota, the blocks reserved for root) and
//! charges what it allows to the caller. casafs's own acts (its areas, the
//! graveyard, origin records, descriptors it keeps) run as root inside
//! `as_root`, on names only casafs can change or through descriptors.
//!
//! Linux keeps credentials per thread; glibc's `set*id` wrappers change
//! every thread of the process, so the raw system calls are used. A thread
//! keeps the identity it last took: a stream of requests from one user
//! costs no system call after the first.
//!
//! Switching needs CAP_SETUID and CAP_SETGID; a daemon without them (a user
//! mount without `allow_other`) serves only its own user and switches
//! nothing.

use std::cell::{Cell, RefCell};
use std::ffi::{CStr, CString};
use std::sync::Arc;
use std::sync::OnceLock;

use dashmap::DashMap;

/// Who is asking: the credentials in the request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Caller {
    pub const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 0,
    };
}

/// The identity a thread acts with.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Ident {
    uid: u32,
    gid: u32,
    groups: Arc<[u32]>,
    /// The effective capabilities it acts with.
    caps: [u32; 2],
}

impl Ident {
    /// The daemon's own identity: root with every capability it has.
    fn root() -> &'static Ident {
        static ROOT: OnceLock<Ident> = OnceLock::new();
        ROOT.get_or_init(|| Ident {
            uid: 0,
            gid: 0,
            groups: Arc::from([]),
            caps: permitted().unwrap_or([u32::MAX; 2]),
        })
    }

    /// Whether this is the daemon's own identity.
    fn is_root(&self) -> bool {
        self == Ident::root()
    }

    fn privileged(&self) -> bool {
        self.uid == 0
    }
}

/// The capabilities that bear on filesystem operations, the ones a caller
/// brings along: CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH,
/// CAP_FOWNER, CAP_FSETID, CAP_LINUX_IMMUTABLE, CAP_SYS_ADMIN (trusted.*
/// attributes), CAP_SYS_RESOURCE (quota, reserved blocks), CAP_MKNOD and
/// CAP_SETFCAP. Others (CAP_SETUID...) it never lends casafs.
const FS_CAPS: u32 = (1 << 0)
    | (1 << 1)
    | (1 << 2)
    | (1 << 3)
    | (1 << 4)
    | (1 << 9)
    | (1 << 21)
    | (1 << 24)
    | (1 << 27)
    | (1 << 31);

/// The daemon's permitted capabilities, read once; `None` when it cannot
/// switch identities.
fn permitted() -> Option<[u32; 2]> {
    static CAPS: OnceLock<Option<[u32; 2]>> = OnceLock::new();
    *CAPS.get_or_init(|| {
        let (_, permitted) = capget()?;
        let setid = (1 << CAP_SETUID) | (1 << CAP_SETGID);
        (unsafe { libc::geteuid() } == 0 && permitted[0] & setid == setid).then_some(permitted)
    })
}

/// Whether casafs acts as its callers (it runs as root).
pub fn enabled() -> bool {
    permitted().is_some()
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;

/// This thread's (effective, permitted) capability sets.
fn capget() -> Option<([u32; 2], [u32; 2])> {
    let mut h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) };
    (rc == 0).then(|| {
        (
            [d[0].effective, d[1].effective],
            [d[0].permitted, d[1].permitted],
        )
    })
}

/// Sets this thread's effective capabilities (within the permitted set).
fn set_effective(eff: [u32; 2]) -> bool {
    let Some(p) = permitted() else {
        return false;
    };
    let mut h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let d = [
        CapData {
            effective: eff[0] & p[0],
            permitted: p[0],
            inheritable: 0,
        },
        CapData {
            effective: eff[1] & p[1],
            permitted: p[1],
            inheritable: 0,
        },
    ];
    unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) == 0 }
}

thread_local! {
    /// The identity this thread acts with now; `None`: root, as started.
    static CURRENT: RefCell<Option<Ident>> = const { RefCell::new(None) };
    /// This thread's umask, once it has one of its own.
    static UMASK: Cell<Option<u32>> = const { Cell::new(None) };
    /// The caller of the request this thread serves, also while it acts
    /// as root for it.
    static REQUEST: Cell<Caller> = const { Cell::new(Caller::ROOT) };
    /// The caller whose identity this thread took last, and until when
    /// (`coarse_now_ns`) what was read of its process holds. Any other
    /// change of identity clears it. A stream of one process's requests
    /// then costs neither a look-up nor a comparison of identities.
    static TAKEN: Cell<Option<(Caller, u64)>> = const { Cell::new(None) };
}

/// The caller of the request this thread serves (root outside requests).
pub fn request_caller() -> Caller {
    REQUEST.with(Cell::get)
}

/// Makes this thread act as `to`. False if it could not: the thread then
/// acts as nobody, without any capability, if it can still change that,
/// and the request must not be served.
fn switch(to: &Ident) -> bool {
    let cur = current();
    if cur == *to {
        return true;
    }
    // Only what differs is changed. Setting ids needs CAP_SETUID and
    // CAP_SETGID, which the identity the thread leaves may have given up;
    // a filesystem uid that leaves 0 drops the filesystem capabilities
    // (and one that comes back to 0 gets them back).
    let full = Ident::root().caps;
    let ok = (cur.caps == full || set_effective(full))
        && (cur.groups == to.groups
            || unsafe {
                libc::syscall(libc::SYS_setgroups, to.groups.len(), to.groups.as_ptr()) == 0
            })
        && (cur.gid == to.gid || set_fsid(libc::SYS_setfsgid, to.gid))
        && (cur.uid == to.uid || set_fsid(libc::SYS_setfsuid, to.uid))
        && ((to.caps == full && !(cur.uid == 0 && to.uid != 0)) || set_effective(to.caps));
    TAKEN.set(None);
    if ok {
        CURRENT.with(|c| *c.borrow_mut() = Some(to.clone()));
        return true;
    }
    tracing::error!(
        "cannot take the credentials of uid {} gid {}: {}",
        to.uid,
        to.gid,
        std::io::Error::last_os_error()
    );
    let nobody = Ident {
        uid: u32::MAX - 1,
        gid: u32::MAX - 1,
        groups: Arc::from([]),
        caps: [0, 0],
    };
    unsafe {
        libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<u32>());
        libc::syscall(libc::SYS_setfsgid, nobody.gid);
        libc::syscall(libc::SYS_setfsuid, nobody.uid);
    }
    set_effective([0, 0]);
    CURRENT.with(|c| *c.borrow_mut() = Some(nobody));
    false
}

/// setfsuid/setfsgid answer the previous id whatever happens; with
/// CAP_SETUID and CAP_SETGID (raised before) they cannot fail for an id
/// the kernel maps, which every id of a request is.
fn set_fsid(call: libc::c_long, id: u32) -> bool {
    unsafe { libc::syscall(call, id) };
    true
}

/// Supplementary groups and capabilities of processes, read from /proc and
/// kept for a second: a request costs no file read, and a process that
/// gave a group or capability up keeps it here for at most that long.
struct ProcessCache {
    map: DashMap<u32, Process>,
}

/// What one process's /proc/PID/status said: its ids then, when, and what
/// it acts with.
struct Process {
    uid: u32,
    gid: u32,
    at: u64,
    groups: Arc<[u32]>,
    caps: [u32; 2],
}

const PROCESS_TTL_NS: u64 = 1_000_000_000;
const PROCESS_MAX: usize = 8192;

fn process_cache() -> &'static ProcessCache {
    static CACHE: OnceLock<ProcessCache> = OnceLock::new();
    CACHE.get_or_init(|| ProcessCache {
        map: DashMap::new(),
    })
}

/// The supplementary groups and filesystem capabilities of process `pid`,
/// which must still be `uid` and `gid` (a pid reused by another process is
/// read again). A process casafs cannot read (gone, in another pid
/// namespace, or the kernel itself: pid 0) gets the groups the user
/// database gives its user, and root's capabilities only if it is root.
///
/// Also answers until when (`coarse_now_ns`) what it read holds.
fn process(pid: u32, uid: u32, gid: u32) -> (Arc<[u32]>, [u32; 2], u64) {
    let now = crate::sys::coarse_now_ns();
    let cache = process_cache();
    if pid != 0
        && let Some(e) = cache.map.get(&pid)
        && e.uid == uid
        && e.gid == gid
        && now.saturating_sub(e.at) < PROCESS_TTL_NS
    {
        return (e.groups.clone(), e.caps, e.at + PROCESS_TTL_NS);
    }
    let read = (pid != 0)
        .then(|| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .flatten()
        .and_then(|s| parse_status(&s, uid))
        // Looked at after the status: a process may leave for a user
        // namespace of its own in between, but never come back.
        .map(|(g, caps)| {
            (
                g,
                if in_our_user_namespace(pid) {
                    caps
                } else {
                    [0, 0]
                },
            )
        });
    let (groups, caps) = match read {
        Some(r) => r,
        None => (
            Arc::from(user_groups(uid, gid)),
            if uid == 0 { [FS_CAPS, 0] } else { [0, 0] },
        ),
    };
    if pid != 0 {
        if cache.map.len() >= PROCESS_MAX {
            cache
                .map
                .retain(|_, e| now.saturating_sub(e.at) < PROCESS_TTL_NS);
        }
        cache.map.insert(
            pid,
            Process {
                uid,
                gid,
                at: now,
                groups: groups.clone(),
                caps,
            },
        );
    }
    (groups, caps, now + PROCESS_TTL_NS)
}

/// Whether process `pid` is in casafs's own user namespace. `CapEff:`
/// counts in the process's own namespace, which any user may make (`unshare
/// -U`) and be root in: capabilities held there are no rights over the
/// files casafs serves, so a caller from another namespace gets none
/// (natively it would keep them over files whose owners its namespace
/// maps; casafs errs on the safe side).
fn in_our_user_namespace(pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    static OURS: OnceLock<Option<(u64, u64)>> = OnceLock::new();
    let id = |p: &str| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    // As root: another process's namespace links are for those who may
    // trace it, and the thread may still be a previous caller.
    as_root(|| {
        let ours = *OURS.get_or_init(|| id("/proc/self/ns/user"));
        ours.is_some() && id(&format!("/proc/{pid}/ns/user")) == ours
    })
}

/// The `Groups:` and the filesystem part of `CapEff:` of a
/// /proc/PID/status, if its filesystem uid is `uid`.
fn parse_status(s: &str, uid: u32) -> Option<(Arc<[u32]>, [u32; 2])> {
    let field = |k: &str| s.lines().find_map(|l| l.strip_prefix(k));
    let fsuid: u32 = field("Uid:")?.split_whitespace().nth(3)?.parse().ok()?;
    if fsuid != uid {
        return None;
    }
    let groups: Vec<u32> = field("Groups:")?
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    let eff = u64::from_str_radix(field("CapEff:")?.trim(), 16).ok()?;
    Some((Arc::from(groups), [eff as u32 & FS_CAPS, 0]))
}

/// Makes this thread act as the caller of the request it serves. False if
/// the credentials could not be taken: the request must then be refused.
pub fn act_as(who: &Caller) -> bool {
    REQUEST.with(|r| r.set(*who));
    if !enabled() {
        return true;
    }
    if who.pid != 0
        && let Some((last, until)) = TAKEN.get()
        && last == *who
        && crate::sys::coarse_now_ns() < until
    {
        return true;
    }
    let p = permitted().unwrap_or([0, 0]);
    let (groups, caps, until) = process(who.pid, who.uid, who.gid);
    // Root with its filesystem capabilities is served as the daemon is.
    let ok = if who.uid == 0 && who.gid == 0 && caps[0] & p[0] == FS_CAPS & p[0] {
        switch(Ident::root())
    } else {
        switch(&Ident {
            uid: who.uid,
            gid: who.gid,
            groups,
            caps: [caps[0] & p[0], caps[1] & p[1]],
        })
    };
    if ok && who.pid != 0 {
        TAKEN.set(Some((*who, until)));
    }
    ok
}

/// Notes the caller of a request that is casafs's bookkeeping alone
/// (release, forget: what the kernel sends when it lets go of something),
/// without switching: those take root themselves where they touch the
/// backing, and a stream of one user's opens and closes costs no switch.
pub fn bookkeeping(who: &Caller) {
    REQUEST.with(|r| r.set(*who));
}

/// Acts as the user `uid` with the primary group and the groups the user
/// database gives that user, and no capability (for work casafs does on a
/// user's behalf outside any request: retention, sweep). Never with the
/// group of an object: a user can own an object of a group it is not in
/// (made in a set-group-ID directory, or kept after leaving the group).
fn act_as_user(uid: u32) -> bool {
    if !enabled() {
        return true;
    }
    let (gid, groups) = user_identity(uid);
    switch(&Ident {
        uid,
        gid,
        groups: Arc::from(groups),
        caps: [0, 0],
    })
}

/// The primary group and the groups the user database gives the user
/// `uid`. A user it does not know (an id of a container's range) gets the
/// overflow group and no other: the group of an object it owns may be one
/// it was never in. Kept for a minute.
pub fn user_identity(uid: u32) -> (u32, Vec<u32>) {
    match user_entry(uid) {
        Some((name, primary)) => (primary, user_groups_of(uid, &name, primary)),
        None => (NOBODY, Vec::new()),
    }
}

/// The groups of the user `uid` when acting with group `gid` (a request's,
/// which the kernel vouches for): `gid` and the user's groups from the
/// user database, kept for a minute.
pub fn user_groups(uid: u32, gid: u32) -> Vec<u32> {
    match user_entry(uid) {
        Some((name, _)) => user_groups_of(uid, &name, gid),
        None => Vec::new(),
    }
}

/// Time-limited cache of the user database's answers.
const USER_DB_TTL_NS: u64 = 60 * PROCESS_TTL_NS;

/// Answers of the user database, by key: (when asked, answer).
type UserDb<K, V> = DashMap<K, (u64, V)>;

/// The answer kept in `cache` for `key` if less than a minute old, else
/// `ask()`'s, kept (the whole cache dropped should it hold too many).
fn user_db_answer<K: std::hash::Hash + Eq, V: Clone>(
    cache: &UserDb<K, V>,
    key: K,
    ask: impl FnOnce() -> V,
) -> V {
    let now = crate::sys::coarse_now_ns();
    if let Some(e) = cache.get(&key)
        && now.saturating_sub(e.0) < USER_DB_TTL_NS
    {
        return e.1.clone();
    }
    let v = ask();
    if cache.len() >= PROCESS_MAX {
        cache.clear();
    }
    cache.insert(key, (now, v.clone()));
    v
}

/// The user `uid`'s name and primary group, from the user database.
fn user_entry(uid: u32) -> Option<(CString, u32)> {
    static CACHE: OnceLock<UserDb<u32, Option<(CString, u32)>>> = OnceLock::new();
    user_db_answer(CACHE.get_or_init(DashMap::new), uid, || user_entry_now(uid))
}

fn user_entry_now(uid: u32) -> Option<(CString, u32)> {
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() || pw.pw_name.is_null() {
        return None;
    }
    let name = unsafe { CStr::from_ptr(pw.pw_name) }.to_owned();
    Some((name, pw.pw_gid))
}

/// `gid` and the groups the user database lists `name` in.
fn user_groups_of(uid: u32, name: &CStr, gid: u32) -> Vec<u32> {
    /// (uid, gid) -> (when, groups).
    static CACHE: OnceLock<UserDb<(u32, u32), Vec<u32>>> = OnceLock::new();
    user_db_answer(CACHE.get_or_init(DashMap::new), (uid, gid), || {
        let mut n: libc::c_int = 64;
        loop {
            let mut groups = vec![0 as libc::gid_t; n as usize];
            let cap = n;
            let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
            if rc >= 0 {
                groups.truncate(n.max(0) as usize);
                return groups;
            }
            if n <= cap {
                return Vec::new();
            }
        }
    })
}

/// Puts the thread back to the identity it had when dropped (also when
/// what ran in between panicked).
struct Restore(Option<Ident>);

impl Drop for Restore {
    fn drop(&mut self) {
        if let Some(prev) = self.0.take() {
            switch(&prev);
        }
    }
}

/// The identity the thread has now.
fn current() -> Ident {
    CURRENT
        .with(|c| c.borrow().clone())
        .unwrap_or_else(|| Ident::root().clone())
}

/// Runs `f` as root, the daemon's own identity, and returns to the
/// identity the thread had. For what casafs does itself: it must touch
/// only names no user can change, or objects through descriptors.
pub fn as_root<T>(f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    let prev = current();
    if prev.is_root() {
        return f();
    }
    let _back = Restore(Some(prev));
    switch(Ident::root());
    f()
}

/// Runs `f` acting as the user `uid` (`user_identity`; without
/// capabilities), then returns to the identity the thread had: for work
/// outside requests. None if the identity could not be taken.
pub fn as_user<T>(uid: u32, f: impl FnOnce() -> T) -> Option<T> {
    if !enabled() {
        return Some(f());
    }
    let _back = Restore(Some(current()));
    act_as_user(uid).then(f)
}

/// The overflow user: the identity kernel passthrough I/O runs with.
const NOBODY: u32 = 65534;

/// Runs `f` as a user without any right, holding CAP_SYS_ADMIN alone:
/// for registering a kernel passthrough backing file, whose reads and
/// writes the kernel then runs with these credentials for every opener
/// of the file. So they carry no privilege (no reserved blocks, no quota
/// override, no keeping set-ID bits on a write) whoever opened it first.
pub fn as_registrar<T>(f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    // Only the filesystem uid and the capabilities change, and back: the
    // groups and filesystem gid of a caller carry no privilege here (the
    // blocks reserved for root go by uid and capability). CAP_SETUID stays
    // for the way back; it gives the kernel's I/O nothing.
    let cur = current();
    struct Back(Ident);
    impl Drop for Back {
        fn drop(&mut self) {
            set_fsid(libc::SYS_setfsuid, self.0.uid);
            set_effective(self.0.caps);
        }
    }
    set_effective([1 << CAP_SYS_ADMIN | 1 << CAP_SETUID, 0]);
    let _back = Back(cur);
    set_fsid(libc::SYS_setfsuid, NOBODY);
    f()
}

/// Runs `f` with the thread's effective capabilities changed by `change`,
/// and gives them back afterwards (also when `f` panics).
fn with_caps<T>(change: impl Fn([u32; 2]) -> [u32; 2], f: impl FnOnce() -> T) -> T {
    let cur = current().caps;
    let caps = change(cur);
    if !enabled() || caps == cur {
        return f();
    }
    struct Back([u32; 2]);
    impl Drop for Back {
        fn drop(&mut self) {
            set_effective(self.0);
        }
    }
    let _back = Back(cur);
    set_effective(caps);
    f()
}

/// Runs `f` with CAP_SYS_ADMIN added to what the thread acts with, for a
/// call that needs it and nothing else of root's (closing a passthrough
/// backing id).
pub fn with_sys_admin<T>(f: impl FnOnce() -> T) -> T {
    with_caps(|c| [c[0] | 1 << CAP_SYS_ADMIN, c[1]], f)
}

/// Runs `f` without CAP_SYS_RESOURCE: for root's chown of an object it
/// made for a user, which moves the object's quota charge to that user and
/// must fail where the user is over quota, as the creation would have.
pub fn charging<T>(f: impl FnOnce() -> T) -> T {
    with_caps(|c| [c[0] & !(1 << CAP_SYS_RESOURCE), c[1]], f)
}

/// Whether this thread acts for an unprivileged caller now.
pub fn unprivileged() -> bool {
    enabled() && !current().privileged()
}

/// Whether the identity this thread acts with is in group `gid` (its
/// filesystem gid or a supplementary group), or is root.
/// Whether the thread's identity may act as the owner of what `uid` owns,
/// as the kernel's owner checks judge it: it is `uid`, or has CAP_FOWNER.
pub fn owns(uid: u32) -> bool {
    if !enabled() {
        return true;
    }
    let cur = current();
    cur.uid == uid || cur.caps[0] & (1 << 3) != 0
}

pub fn in_group(gid: u32) -> bool {
    let cur = current();
    cur.caps[0] & (1 << 4) != 0 || cur.gid == gid || cur.groups.contains(&gid)
}

/// Gives this thread the umask `mask` for what it creates next. Threads
/// get a filesystem context of their own first (umask is per process
/// otherwise). False where that is not possible: the caller must then
/// apply the mask itself.
pub fn set_umask(mask: u32) -> bool {
    let mask = mask & 0o777;
    UMASK.with(|u| match u.get() {
        Some(m) if m == mask => true,
        Some(_) => {
            unsafe { libc::umask(mask) };
            u.set(Some(mask));
            true
        }
        None => {
            if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
                return false;
            }
            unsafe { libc::umask(mask) };
            u.set(Some(mask));
            true
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_capabilities_come_from_the_status_of_the_same_user() {
        let s = "Name:\tx\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nGroups:\t4 24 27 100 \nCapEff:\t0000000000000006\n";
        let (groups, caps) = parse_status(s, 1000).unwrap();
        assert_eq!(&*groups, &[4, 24, 27, 100]);
        // CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH.
        assert_eq!(caps, [6, 0]);
        assert!(parse_status(s, 1001).is_none());
        // Root's full set: only the filesystem part is lent.
        let root = "Uid:\t0\t0\t0\t0\nGroups:\t\nCapEff:\t000001ffffffffff\n";
        let (groups, caps) = parse_status(root, 0).unwrap();
        assert!(groups.is_empty());
        assert_eq!(caps, [FS_CAPS, 0]);
    }

    #[test]
    fn a_thread_acts_as_its_caller_and_back() {
        assert!(
            enabled(),
            "acting as callers needs root with CAP_SETUID and CAP_SETGID: run the tests as root"
        );
        std::thread::spawn(|| {
            let dir = std::env::temp_dir().join(format!("casafs-creds-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            let who = Caller {
                uid: 4242,
                gid: 4343,
                pid: 0,
            };
            assert!(act_as(&who));
            assert!(unprivileged());
            // A root-owned 0755 directory refuses the caller...
            let made = std::fs::write(dir.join("x"), b"");
            assert_eq!(made.unwrap_err().raw_os_error(), Some(libc::EACCES));
            // ...and root's own acts still work, as root.
            as_root(|| std::fs::write(dir.join("y"), b"")).unwrap();
            assert!(unprivileged());
            // casafs's bookkeeping changes nothing...
            bookkeeping(&Caller::ROOT);
            assert!(unprivileged());
            // ...and root's next request is root's.
            let root = Caller {
                uid: 0,
                gid: 0,
                pid: std::process::id(),
            };
            assert!(act_as(&root));
            assert!(!unprivileged());
            // A caller served again after another is that caller again,
            // also within the time its process's status is kept, and also
            // after casafs acted as root for it in between.
            let user = Caller {
                pid: std::process::id(),
                ..who
            };
            for _ in 0..2 {
                assert!(act_as(&user));
                assert!(unprivileged());
                as_root(|| std::fs::write(dir.join("z"), b"")).unwrap();
                assert!(act_as(&user));
                let made = std::fs::write(dir.join("x"), b"");
                assert_eq!(made.unwrap_err().raw_os_error(), Some(libc::EACCES));
                assert!(act_as(&root));
                assert!(!unprivileged());
                std::fs::write(dir.join("x"), b"").unwrap();
            }
            std::fs::remove_dir_all(&dir).unwrap();
        })
        .join()
        .unwrap();
    }
}
