//! Handing the CPU to the caller a queue thread answers.
//!
//! A queue thread runs on its caller's CPU. When it commits a reply, the
//! kernel wakes the caller while the thread is still running there, so the
//! scheduler looks for an idle CPU and moves the caller to it. Where waking
//! an idle CPU is slow (a virtual machine halts idle vCPUs) that move costs
//! more than the whole request, and it happens on every request. A CPU
//! whose only runnable threads are SCHED_IDLE counts as idle to the
//! scheduler, so a thread that is SCHED_IDLE when it replies gets its
//! caller woken on its own CPU, which it then gives up at once.
//!
//! A SCHED_IDLE thread also waits for as long as any other thread wants its
//! CPU. So queue threads are SCHED_IDLE only while requests keep coming
//! (they become so at a reply, and the watchdog puts each back after
//! [`QUIET`] without a reply from it) and only while some CPU has idle time (when
//! every CPU is busy no caller is moved anyway, and the thread would only
//! wait behind other work). Meanwhile the watchdog, a thread of normal
//! priority, looks at them every [`TICK`]: one that is runnable but has not
//! been on a CPU for two ticks in a row is starved by other work on its
//! CPU; it gets its normal policy back and replies without the handoff for
//! [`BAN`]. Changing a policy costs two microseconds, so it happens once
//! per burst of requests, not per request.
//!
//! On its way through a request a queue thread touches only its own slot:
//! it counts the reply, and the watchdog compares counts between ticks. The
//! watchdog sleeps while no thread is SCHED_IDLE; the thread that becomes
//! so wakes it.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
    Ordering::SeqCst,
};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use crate::stats::Stats;
use crate::sys::coarse_now_ns;

/// The watchdog's period while requests keep coming.
const TICK: Duration = Duration::from_millis(2);
/// A thread the watchdog had to take back replies without handoff this long.
const BAN: u64 = 1_000_000_000;
/// With no reply for this long the threads go back to their normal policy
/// and the watchdog sleeps until the next reply.
const QUIET: u64 = 50_000_000;

/// One queue thread's handoff state.
struct Slot {
    tid: libc::pid_t,
    /// `/proc/thread-self/stat` and `schedstat`: the thread's state, and
    /// how much it ran, for the watchdog.
    stat: std::fs::File,
    schedstat: std::fs::File,
    /// Run time plus times on a CPU, from `schedstat`, at the watchdog's
    /// last look: both only grow, so their sum moves when either does.
    last_ran: AtomicU64,
    /// The thread is SCHED_IDLE. Whoever swaps it to false restores the
    /// normal policy.
    idle: AtomicBool,
    /// No handoff for this thread before this time.
    banned_until: AtomicU64,
    /// Consecutive watchdog ticks that saw the thread runnable.
    runnable_ticks: AtomicU32,
    /// Replies so far: written by the thread alone, so the queue threads
    /// share nothing on their way through a request.
    replies: AtomicU64,
    /// The watchdog's own: `replies` at its last look, and when it last saw
    /// the count move.
    seen: AtomicU64,
    moved_at: AtomicU64,
}

impl Slot {
    /// Gives the thread its normal policy back; true if it was SCHED_IDLE.
    /// The policy changes before the flag: a reply in between sees the flag
    /// still set and leaves the policy alone, where the other order could
    /// leave a SCHED_IDLE thread flagged normal or the reverse.
    fn restore(&self) -> bool {
        if !self.idle.load(Acquire) {
            return false;
        }
        set_policy(self.tid, libc::SCHED_OTHER);
        self.idle.swap(false, Release)
    }
}

pub(crate) struct Handoff {
    /// Every CPU is busy: no caller would be moved to an idle CPU, and a
    /// SCHED_IDLE thread would only wait behind other work.
    saturated: AtomicBool,
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Counts each time the watchdog takes a thread back.
    stats: Arc<Stats>,
    /// Set once the watchdog runs: the handoff is on.
    watchdog: OnceLock<std::thread::Thread>,
    /// The watchdog is parked: no thread was SCHED_IDLE when it looked.
    asleep: AtomicBool,
}

fn set_policy(tid: libc::pid_t, policy: libc::c_int) -> bool {
    let p = libc::sched_param { sched_priority: 0 };
    unsafe { libc::sched_setscheduler(tid, policy, &p) == 0 }
}

/// Whether a thread of this process may become SCHED_IDLE and come back:
/// without CAP_SYS_NICE (or a generous RLIMIT_NICE) the way back is
/// refused, so a throwaway thread tries both first.
fn policy_round_trip_allowed() -> bool {
    std::thread::Builder::new()
        .name("casafs-probe".into())
        .spawn(|| set_policy(0, libc::SCHED_IDLE) && set_policy(0, libc::SCHED_OTHER))
        .ok()
        .and_then(|t| t.join().ok())
        .unwrap_or(false)
}

/// Whether the thread got a CPU since the last tick: its run time or its
/// count of times on a CPU moved. A thread that answers requests does,
/// many times per tick; one waiting for a busy CPU does not.
fn ran_since_last_tick(s: &Slot) -> bool {
    let mut buf = [0u8; 128];
    let Ok(n) = s.schedstat.read_at(&mut buf, 0) else {
        return false;
    };
    // "run time ns, wait time ns, times on a CPU": the wait time moves for
    // a waiting thread too.
    let v: Vec<u64> = std::str::from_utf8(&buf[..n])
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let ran = v
        .first()
        .unwrap_or(&0)
        .wrapping_add(*v.get(2).unwrap_or(&0));
    s.last_ran.swap(ran, Relaxed) != ran
}

/// Whether the thread whose `stat` file this is is running or waiting to
/// run (`R`), as opposed to sleeping.
fn runnable(stat: &std::fs::File) -> bool {
    let mut buf = [0u8; 512];
    let Ok(n) = stat.read_at(&mut buf, 0) else {
        return false;
    };
    // "tid (comm) S ...": the state follows the last ')'.
    let text = &buf[..n];
    text.iter()
        .rposition(|&b| b == b')')
        .and_then(|i| text.get(i + 2))
        .is_some_and(|&s| s == b'R')
}

impl Handoff {
    pub(crate) fn new(wanted: bool, stats: Arc<Stats>) -> Arc<Handoff> {
        let h = Arc::new(Handoff {
            saturated: AtomicBool::new(false),
            slots: Mutex::new(Vec::new()),
            stats,
            watchdog: OnceLock::new(),
            asleep: AtomicBool::new(false),
        });
        if !wanted {
            return h;
        }
        if !policy_round_trip_allowed() {
            tracing::info!(
                "queue threads reply without CPU handoff: cannot change their scheduling policy"
            );
            return h;
        }
        let weak = Arc::downgrade(&h);
        match std::thread::Builder::new()
            .name("casafs-handoff".into())
            .stack_size(64 * 1024)
            .spawn(move || watch(weak))
        {
            Ok(t) => {
                let _ = h.watchdog.set(t.thread().clone());
            }
            // Without the watchdog nobody could rescue a starved thread.
            Err(e) => tracing::warn!("queue threads reply without CPU handoff: {e}"),
        }
        h
    }

    pub(crate) fn enabled(&self) -> bool {
        self.watchdog.get().is_some()
    }

    /// The calling queue thread's membership, until the returned guard
    /// drops. None: no handoff.
    pub(crate) fn join(self: &Arc<Self>) -> Option<Member> {
        if !self.enabled() {
            return None;
        }
        // Without them the watchdog could not tell a starved thread.
        let stat = std::fs::File::open("/proc/thread-self/stat").ok()?;
        let schedstat = std::fs::File::open("/proc/thread-self/schedstat").ok()?;
        let slot = Arc::new(Slot {
            tid: unsafe { libc::gettid() },
            stat,
            schedstat,
            last_ran: AtomicU64::new(0),
            idle: AtomicBool::new(false),
            banned_until: AtomicU64::new(0),
            runnable_ticks: AtomicU32::new(0),
            replies: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            moved_at: AtomicU64::new(0),
        });
        self.slots.lock().push(slot.clone());
        Some(Member {
            handoff: self.clone(),
            slot,
        })
    }

    /// One watchdog pass at `now`. Returns whether a thread is still
    /// SCHED_IDLE (to watch), and whether any replied since the last pass.
    fn tick(&self, now: u64) -> (bool, bool) {
        let release = self.saturated.load(Relaxed);
        let slots = self.slots.lock().clone();
        let (mut watched, mut replying) = (false, false);
        for s in slots {
            let n = s.replies.load(Relaxed);
            let replied = s.seen.swap(n, Relaxed) != n;
            if replied {
                s.moved_at.store(now, Relaxed);
                replying = true;
            }
            // Acquire: the count the thread stored before the flag is in.
            if !s.idle.load(Acquire) {
                s.runnable_ticks.store(0, Relaxed);
                continue;
            }
            // A thread whose CPU sends no more requests goes back too, so
            // that on a host with many CPUs only the busy ones are watched.
            let quiet = now.saturating_sub(s.moved_at.load(Relaxed)) >= QUIET;
            if release || quiet {
                s.restore();
                continue;
            }
            watched = true;
            // A reply since the last tick shows progress without /proc.
            if replied || ran_since_last_tick(&s) || !runnable(&s.stat) {
                s.runnable_ticks.store(0, Relaxed);
                continue;
            }
            if s.runnable_ticks.fetch_add(1, Relaxed) + 1 >= 2 {
                // The ban first: the thread may reply again the moment its
                // policy changes.
                s.banned_until.store(now + BAN, Relaxed);
                s.runnable_ticks.store(0, Relaxed);
                if s.restore() {
                    self.stats.ring_handoff_revoked.fetch_add(1, Relaxed);
                }
            }
        }
        (watched, replying)
    }

    /// Parks the watchdog until a thread becomes SCHED_IDLE, a reply finds
    /// every CPU busy (the load is to be measured again), or `timeout`.
    fn sleep_until_watched(&self, timeout: Duration) {
        // The flag before the last look, and the thread sets its own flag
        // before reading this one (both SeqCst): one of the two sees the
        // other, so a thread that turned SCHED_IDLE is watched as soon as it
        // has stored its flag. (The policy comes first: a thread flagged but
        // not yet SCHED_IDLE could be restored by the watchdog in between and
        // then turn SCHED_IDLE unflagged. Until its flag is stored, a thread
        // starved right away goes unwatched for as long as SCHED_IDLE's small
        // share of its CPU takes to run it again.)
        self.asleep.store(true, SeqCst);
        if !self.slots.lock().iter().any(|s| s.idle.load(SeqCst)) {
            std::thread::park_timeout(timeout);
        }
        self.asleep.store(false, SeqCst);
    }
}

/// How often the watchdog looks at how idle the CPUs were.
const LOAD_PERIOD: Duration = Duration::from_millis(50);

/// Idle and busy time of all CPUs so far, from `/proc/stat`, in ticks.
fn cpu_times(stat: &std::fs::File) -> Option<(u64, u64)> {
    let mut buf = [0u8; 256];
    let n = stat.read_at(&mut buf, 0).ok()?;
    let line = std::str::from_utf8(&buf[..n]).ok()?.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    let busy = v.iter().take(8).sum::<u64>().saturating_sub(idle);
    Some((idle, busy))
}

fn watch(handoff: Weak<Handoff>) {
    let proc_stat = std::fs::File::open("/proc/stat").ok();
    let mut last = proc_stat.as_ref().and_then(cpu_times);
    let mut checked = std::time::Instant::now();
    loop {
        let Some(h) = handoff.upgrade() else {
            return;
        };
        if checked.elapsed() >= LOAD_PERIOD {
            checked = std::time::Instant::now();
            let now = proc_stat.as_ref().and_then(cpu_times);
            if let (Some(a), Some(b)) = (last, now) {
                let (idle, busy) = (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1));
                // Less than 5% idle since the last look.
                h.saturated.store(idle * 20 < idle + busy, Relaxed);
            }
            last = now;
        }
        let (watched, replying) = h.tick(coarse_now_ns());
        if watched {
            drop(h);
            std::thread::sleep(TICK);
        } else if replying && h.saturated.load(Relaxed) {
            // No thread turns SCHED_IDLE while every CPU is busy: look
            // again for the end of that while requests come.
            drop(h);
            std::thread::sleep(LOAD_PERIOD);
        } else {
            // The timeout notices the end of the mount, and refreshes the
            // load after a busy spell.
            h.sleep_until_watched(Duration::from_secs(1));
        }
    }
}

/// A queue thread's membership; leaving removes its slot.
pub(crate) struct Member {
    handoff: Arc<Handoff>,
    slot: Arc<Slot>,
}

impl Member {
    /// Before committing a reply: the thread becomes SCHED_IDLE unless it
    /// already is or is banned, and the watchdog wakes after a quiet spell.
    pub(crate) fn before_reply(&self) {
        let s = &self.slot;
        s.replies
            .store(s.replies.load(Relaxed).wrapping_add(1), Relaxed);
        // Acquire: a ban stored before the flag was cleared is seen here.
        if s.idle.load(Acquire) {
            return;
        }
        if self.handoff.saturated.load(Relaxed) {
            // A watchdog parked since a busy spell ended measures again.
            self.wake_if_asleep();
            return;
        }
        if coarse_now_ns() < s.banned_until.load(Relaxed) {
            return;
        }
        // Reset on fork: a queue thread started by this one to replace it
        // begins with the normal policy, not unwatched as SCHED_IDLE.
        if set_policy(0, libc::SCHED_IDLE | libc::SCHED_RESET_ON_FORK) {
            s.idle.store(true, SeqCst);
            self.wake_if_asleep();
        }
    }

    fn wake_if_asleep(&self) {
        if self.handoff.asleep.load(SeqCst)
            && let Some(t) = self.handoff.watchdog.get()
        {
            t.unpark();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.slot.restore();
        self.handoff
            .slots
            .lock()
            .retain(|s| !Arc::ptr_eq(s, &self.slot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// The calling thread's policy, without the reset-on-fork flag.
    fn policy() -> libc::c_int {
        unsafe { libc::sched_getscheduler(0) & !libc::SCHED_RESET_ON_FORK }
    }

    fn counting() -> (Arc<Stats>, Arc<Handoff>) {
        let stats = Arc::new(Stats::new(&[]));
        let h = Handoff::new(true, stats.clone());
        assert!(
            h.enabled(),
            "the tests run as root, who may change policies"
        );
        (stats, h)
    }

    fn revoked(stats: &Stats) -> u64 {
        stats.ring_handoff_revoked.load(Relaxed)
    }

    #[test]
    fn off_when_not_wanted() {
        let h = Handoff::new(false, Arc::new(Stats::new(&[])));
        assert!(!h.enabled());
        assert!(h.join().is_none());
    }

    #[test]
    fn a_thread_is_idle_while_replies_come_and_normal_once_quiet() {
        let (revoked_by, h) = counting();
        let r = revoked_by.clone();
        std::thread::spawn(move || {
            let m = h.join().unwrap();
            m.before_reply();
            assert_eq!(policy(), libc::SCHED_IDLE);
            let start = Instant::now();
            while policy() == libc::SCHED_IDLE && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(policy(), libc::SCHED_OTHER);
            // Sleeping between requests is no reason to take it back: a
            // quiet spell is, unless the machine is so busy (other tests)
            // that the thread waited for its CPU.
            if revoked(&r) == 0 {
                assert!(start.elapsed() >= Duration::from_millis(QUIET / 1_000_000));
                // The next burst: idle again, unless the watchdog found
                // the thread starved meanwhile and banned it for a while,
                // or no CPU has idle time to hand off to (other tests).
                m.before_reply();
                assert!(
                    policy() == libc::SCHED_IDLE
                        || revoked(&r) > 0
                        || m.handoff.saturated.load(Relaxed),
                    "idle again at the next burst"
                );
            }
        })
        .join()
        .unwrap();
        assert!(revoked(&revoked_by) <= 1);
    }

    #[test]
    fn the_watchdog_takes_back_a_thread_starved_by_a_busy_cpu_and_bans_it() {
        let (stats, h) = counting();
        let stop = Arc::new(AtomicBool::new(false));
        let hog = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                crate::transport::uring::pin(0);
                while !stop.load(Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        let served = std::thread::spawn(move || {
            crate::transport::uring::pin(0);
            let m = h.join().unwrap();
            m.before_reply();
            // Waits behind the hog for as long as it is SCHED_IDLE.
            let start = Instant::now();
            while policy() == libc::SCHED_IDLE && start.elapsed() < Duration::from_secs(10) {
                std::hint::spin_loop();
            }
            let after = policy();
            // Banned: the next reply goes without the handoff.
            m.before_reply();
            (after, policy())
        })
        .join();
        stop.store(true, Relaxed);
        hog.join().unwrap();
        assert_eq!(served.unwrap(), (libc::SCHED_OTHER, libc::SCHED_OTHER));
        assert_eq!(revoked(&stats), 1);
    }
}
