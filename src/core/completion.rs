//! A one-shot completion that transport callbacks fill in and callers wait on
//! with a deadline. Waiters may drive progress themselves for a moment
//! (`pump`), which saves a thread hand-off on the fast path, then sleep on a
//! condition variable that only the outcome (or the deadline) ends: a waiter
//! blocked for long costs no wake-ups.

use super::error::Result;
use parking_lot::{Condvar, Mutex};
use std::time::{Duration, Instant};

pub struct Completion<T> {
    outcome: Mutex<Option<Result<T>>>,
    cv: Condvar,
}

impl<T: Clone> Default for Completion<T> {
    fn default() -> Self {
        Completion { outcome: Mutex::new(None), cv: Condvar::new() }
    }
}

/// How long a waiter spins on `pump` before sleeping on the condition
/// variable; short, so an idle wait costs no CPU.
const SPIN: Duration = Duration::from_micros(50);

impl<T: Clone> Completion<T> {
    /// Record the outcome; the first one wins. Returns whether this call won.
    pub fn complete(&self, outcome: Result<T>) -> bool {
        let mut slot = self.outcome.lock();
        if slot.is_some() {
            return false;
        }
        *slot = Some(outcome);
        self.cv.notify_all();
        true
    }

    pub fn peek(&self) -> Option<Result<T>> {
        self.outcome.lock().clone()
    }

    pub fn is_done(&self) -> bool {
        self.outcome.lock().is_some()
    }

    /// Wait until done or `deadline` (None = no deadline); `None` on timeout.
    /// The outcome is set and signalled under the lock the sleeper checks it
    /// under, so no wake-up is lost and the sleep needs no upper bound.
    pub fn wait(&self, deadline: Option<Instant>, mut pump: impl FnMut()) -> Option<Result<T>> {
        let spin_until = Instant::now() + SPIN;
        loop {
            if let Some(o) = self.peek() {
                return Some(o);
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return None;
            }
            if now >= spin_until {
                break;
            }
            pump();
            std::hint::spin_loop();
        }
        let mut slot = self.outcome.lock();
        while slot.is_none() {
            match deadline {
                Some(d) => {
                    if self.cv.wait_until(&mut slot, d).timed_out() {
                        break;
                    }
                }
                None => self.cv.wait(&mut slot),
            }
        }
        slot.clone()
    }
}

/// Deadline for a timeout in milliseconds where negative means "none".
pub fn deadline_from_ms(timeout_ms: i64) -> Option<Instant> {
    if timeout_ms < 0 {
        None
    } else {
        Some(Instant::now() + Duration::from_millis(timeout_ms as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_outcome_wins_and_waiters_wake() {
        let c = Arc::new(Completion::<u32>::default());
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.wait(None, || {}));
        std::thread::sleep(Duration::from_millis(20));
        assert!(c.complete(Ok(5)));
        assert!(!c.complete(Ok(6)));
        assert_eq!(t.join().unwrap(), Some(Ok(5)));
    }

    #[test]
    fn times_out() {
        let c = Completion::<()>::default();
        let started = Instant::now();
        assert!(c.wait(Some(Instant::now() + Duration::from_millis(30)), || {}).is_none());
        assert!(started.elapsed() >= Duration::from_millis(30));
    }
}
