//! The thread that keeps a NIXL agent moving when NIXL's own progress thread
//! is off (and collects notifications either way). NIXL offers no event to
//! sleep on, so the thread polls, with a pause that grows with the time since
//! anything last happened (work posted, a notification arrived, a transfer
//! ended): about 1% of that time, between 20 µs and 50 ms
//! (`KVX_NIXL_MAX_POLL_US` changes the upper bound). Busy agents poll
//! briskly; an idle one, or one whose owner is blocked waiting on a silent
//! peer, wakes about 20 times a second, and a message arriving after a long
//! quiet spell waits at most 50 ms for the next look.

use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const BRISK: Duration = Duration::from_micros(20);
/// The longest pause unless `KVX_NIXL_MAX_POLL_US` says otherwise.
const IDLE: Duration = Duration::from_millis(50);

/// The longest pause: `KVX_NIXL_MAX_POLL_US` (microseconds, at least `BRISK`),
/// else `IDLE`. Shorter pauses cost CPU and help peers whose transfers need
/// this side's progress (UCX over TCP emulates RMA with messages the target
/// must progress, when nobody on the target polls).
fn longest_pause() -> Duration {
    static LONGEST: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *LONGEST.get_or_init(|| longest_pause_from(std::env::var("KVX_NIXL_MAX_POLL_US").ok().as_deref()))
}

fn longest_pause_from(value: Option<&str>) -> Duration {
    match value.map(|v| v.trim().parse::<u64>()) {
        Some(Ok(us)) => Duration::from_micros(us).max(BRISK),
        Some(Err(_)) => {
            crate::log_at!(Warn, "KVX_NIXL_MAX_POLL_US={value:?} is not a number of microseconds; using {IDLE:?}");
            IDLE
        }
        None => IDLE,
    }
}
/// The pause is the time since the last activity divided by this.
const BACKOFF_DIVISOR: u32 = 100;

/// The pause before the next look, `quiet` after the last activity.
pub fn pause_after(quiet: Duration, least: Duration, most: Duration) -> Duration {
    (quiet / BACKOFF_DIVISOR).clamp(least, most)
}

#[derive(Default)]
pub struct Waker {
    woken: Mutex<bool>,
    cond: Condvar,
    stop: AtomicBool,
}

impl Waker {
    /// Poll now (work was just posted).
    pub fn wake(&self) {
        *self.woken.lock() = true;
        self.cond.notify_one();
    }
}

pub struct Poller {
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    /// Run `tick` (returns whether anything happened) until stopped or the owner is gone.
    pub fn spawn<T: Send + Sync + 'static>(
        owner: Weak<T>,
        waker: Arc<Waker>,
        tick: fn(&T) -> bool,
    ) -> crate::core::error::Result<Poller> {
        let w = waker.clone();
        let thread = std::thread::Builder::new()
            .name("kvx-nixl-poll".into())
            .spawn(move || {
                let mut last_activity = Instant::now();
                let longest = longest_pause();
                while !w.stop.load(Ordering::Acquire) {
                    let Some(owner) = owner.upgrade() else { return };
                    if tick(&owner) {
                        last_activity = Instant::now();
                    }
                    drop(owner);
                    let pause = pause_after(last_activity.elapsed(), BRISK, longest);
                    let mut woken = w.woken.lock();
                    if !*woken {
                        w.cond.wait_for(&mut woken, pause);
                    }
                    if std::mem::take(&mut *woken) {
                        last_activity = Instant::now();
                    }
                }
            })
            .map_err(|e| crate::core::error::Error::system("starting the NIXL poller", e))?;
        Ok(Poller { waker, thread: Some(thread) })
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.waker.stop.store(true, Ordering::Release);
        self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_grows_with_quiet_time_within_bounds() {
        assert_eq!(pause_after(Duration::ZERO, BRISK, IDLE), BRISK);
        assert_eq!(pause_after(Duration::from_millis(100), BRISK, IDLE), Duration::from_millis(1));
        assert_eq!(pause_after(Duration::from_secs(60), BRISK, IDLE), IDLE);
    }

    #[test]
    fn longest_pause_is_configurable() {
        assert_eq!(longest_pause_from(None), IDLE);
        assert_eq!(longest_pause_from(Some("1000")), Duration::from_millis(1));
        assert_eq!(longest_pause_from(Some("0")), BRISK);
        assert_eq!(longest_pause_from(Some("soon")), IDLE);
    }
}
