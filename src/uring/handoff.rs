//! Handing the CPU to the caller a queue thread answers.
//!
//! A queue thread runs on its caller's CPU. When it commits a reply, the
//! kernel wakes the caller while the thread is still running there, so the
//! scheduler looks for an idle CPU and moves the caller to it. Where waking
//! an idle CPU is slow (a virtual machine halts idle vCPUs) that move costs
//! more than the whole request, and it happens on every request. A CPU
//! whose only runnable threads are SCHED_IDLE counts as idle to the
//! scheduler, so a thread that is SCHED_IDLE at the moment it replies gets
//! its caller woken on its own CPU, which it then gives up at once.
//!
//! A SCHED_IDLE thread also waits for as long as any other thread wants its
//! CPU, and the next request of that CPU may land on it. So a thread is
//! SCHED_IDLE only from just before its reply until it runs again (usually
//! when the caller blocks again), and a watchdog of normal priority takes
//! the policy back from a thread that has not run again within
//! [`EXPOSURE_LIMIT`]: its CPU is busy with other work, where the handoff
//! gains nothing. That thread then replies without the handoff for
//! [`BAN`]. The watchdog ticks only while replies are being made.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How long a thread may stay SCHED_IDLE after its reply.
const EXPOSURE_LIMIT: u64 = 3_000_000;
/// How long a thread the watchdog had to rescue replies without handoff.
const BAN: u64 = 1_000_000_000;
/// The watchdog's period while replies are being made.
const TICK: Duration = Duration::from_millis(2);
/// With no reply for this long the watchdog sleeps until the next one.
const QUIET: u64 = 50_000_000;

/// One queue thread's handoff state.
pub(crate) struct Slot {
    tid: libc::pid_t,
    /// When the thread last became SCHED_IDLE for a reply; 0 while it is
    /// not. Whoever swaps it back to 0 restores the normal policy.
    exposed_since: AtomicU64,
    /// No handoff for this thread before this time.
    banned_until: AtomicU64,
}

pub(crate) struct Handoff {
    enabled: bool,
    slots: Mutex<Vec<Arc<Slot>>>,
    last_reply: AtomicU64,
    on_revoke: Box<dyn Fn() + Send + Sync>,
    watchdog: Mutex<Option<std::thread::Thread>>,
    watchdog_started: AtomicBool,
}

fn now_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn set_policy(tid: libc::pid_t, policy: libc::c_int) -> bool {
    let p = libc::sched_param { sched_priority: 0 };
    unsafe { libc::sched_setscheduler(tid, policy, &p) == 0 }
}

fn gettid() -> libc::pid_t {
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
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

impl Handoff {
    /// `on_revoke` hears each time the watchdog takes a thread back.
    pub(crate) fn new(wanted: bool, on_revoke: Box<dyn Fn() + Send + Sync>) -> Arc<Handoff> {
        let enabled = wanted && policy_round_trip_allowed();
        if wanted && !enabled {
            tracing::info!(
                "queue threads reply without CPU handoff: cannot change their scheduling policy"
            );
        }
        Arc::new(Handoff {
            enabled,
            slots: Mutex::new(Vec::new()),
            last_reply: AtomicU64::new(0),
            on_revoke,
            watchdog: Mutex::new(None),
            watchdog_started: AtomicBool::new(false),
        })
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// The calling queue thread's slot, until the returned guard drops.
    pub(crate) fn join(self: &Arc<Self>) -> Option<Member> {
        if !self.enabled {
            return None;
        }
        self.start_watchdog();
        let slot = Arc::new(Slot {
            tid: gettid(),
            exposed_since: AtomicU64::new(0),
            banned_until: AtomicU64::new(0),
        });
        if let Ok(mut v) = self.slots.lock() {
            v.push(slot.clone());
        }
        Some(Member {
            handoff: self.clone(),
            slot,
        })
    }

    fn start_watchdog(self: &Arc<Self>) {
        if self.watchdog_started.swap(true, Relaxed) {
            return;
        }
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("casafs-handoff".into())
            .stack_size(64 * 1024)
            .spawn(move || watch(weak));
        match spawned {
            Ok(t) => {
                if let Ok(mut w) = self.watchdog.lock() {
                    *w = Some(t.thread().clone());
                }
            }
            Err(e) => {
                // Without the watchdog nobody could rescue a starved thread.
                tracing::warn!("queue threads reply without CPU handoff: {e}");
                if let Ok(mut v) = self.slots.lock() {
                    for s in v.iter() {
                        s.banned_until.store(u64::MAX, Relaxed);
                    }
                    v.clear();
                }
            }
        }
    }

    fn wake_watchdog(&self) {
        if let Ok(w) = self.watchdog.lock()
            && let Some(t) = w.as_ref()
        {
            t.unpark();
        }
    }

    /// One watchdog pass: restores the normal policy of every thread
    /// exposed for too long. Returns whether replies are still being made.
    fn tick(&self) -> bool {
        let now = now_ns();
        let slots = match self.slots.lock() {
            Ok(v) => v.clone(),
            Err(_) => return false,
        };
        for s in slots {
            let since = s.exposed_since.load(Relaxed);
            if since != 0
                && now.saturating_sub(since) > EXPOSURE_LIMIT
                && s.exposed_since
                    .compare_exchange(since, 0, Relaxed, Relaxed)
                    .is_ok()
            {
                set_policy(s.tid, libc::SCHED_OTHER);
                s.banned_until.store(now + BAN, Relaxed);
                (self.on_revoke)();
            }
        }
        now.saturating_sub(self.last_reply.load(Relaxed)) < QUIET
    }
}

fn watch(handoff: Weak<Handoff>) {
    loop {
        let busy = match handoff.upgrade() {
            Some(h) => h.tick(),
            None => return,
        };
        if busy {
            std::thread::sleep(TICK);
        } else {
            // Woken by the next reply; the timeout notices the end.
            std::thread::park_timeout(Duration::from_secs(1));
        }
    }
}

/// A queue thread's membership; leaving removes its slot.
pub(crate) struct Member {
    handoff: Arc<Handoff>,
    slot: Arc<Slot>,
}

impl Member {
    /// Before committing a reply: becomes SCHED_IDLE if the handoff is on
    /// for this thread. Returns whether it did.
    pub(crate) fn before_reply(&self) -> bool {
        let now = now_ns();
        if now < self.slot.banned_until.load(Relaxed) {
            return false;
        }
        self.slot.exposed_since.store(now, Relaxed);
        if now.saturating_sub(self.handoff.last_reply.swap(now, Relaxed)) >= QUIET {
            self.handoff.wake_watchdog();
        }
        if !set_policy(0, libc::SCHED_IDLE) {
            self.slot.exposed_since.store(0, Relaxed);
            return false;
        }
        // The watchdog may have taken the slot back between the two steps,
        // before the policy changed: then nobody else restores it.
        if self.slot.exposed_since.load(Relaxed) == 0 {
            set_policy(0, libc::SCHED_OTHER);
            return false;
        }
        true
    }

    /// Once the reply is committed and the thread runs again.
    pub(crate) fn after_reply(&self) {
        if self.slot.exposed_since.swap(0, Relaxed) != 0 {
            set_policy(0, libc::SCHED_OTHER);
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.after_reply();
        if let Ok(mut v) = self.handoff.slots.lock() {
            v.retain(|s| !Arc::ptr_eq(s, &self.slot));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> libc::c_int {
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn off_when_not_wanted() {
        let h = Handoff::new(false, Box::new(|| {}));
        assert!(!h.enabled());
        assert!(h.join().is_none());
    }

    #[test]
    fn a_reply_is_made_idle_and_the_thread_comes_back_to_normal() {
        let h = Handoff::new(true, Box::new(|| {}));
        assert!(
            h.enabled(),
            "the tests run as root, who may change policies"
        );
        std::thread::spawn(move || {
            let m = h.join().unwrap();
            assert!(m.before_reply());
            assert_eq!(policy(), libc::SCHED_IDLE);
            m.after_reply();
            assert_eq!(policy(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_watchdog_takes_back_a_thread_left_idle_and_bans_it() {
        let revoked = Arc::new(AtomicU64::new(0));
        let r = revoked.clone();
        let h = Handoff::new(
            true,
            Box::new(move || {
                r.fetch_add(1, Relaxed);
            }),
        );
        assert!(
            h.enabled(),
            "the tests run as root, who may change policies"
        );
        let h2 = h.clone();
        std::thread::spawn(move || {
            let m = h2.join().unwrap();
            assert!(m.before_reply());
            // Stay exposed well past the limit, as a thread on a busy CPU.
            let start = std::time::Instant::now();
            while policy() == libc::SCHED_IDLE && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(policy(), libc::SCHED_OTHER);
            // Banned: the next reply goes without the handoff.
            assert!(!m.before_reply());
            assert_eq!(policy(), libc::SCHED_OTHER);
            m.after_reply();
        })
        .join()
        .unwrap();
        assert_eq!(revoked.load(Relaxed), 1);
    }
}
