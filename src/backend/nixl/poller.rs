//! The thread that keeps a NIXL agent moving when NIXL's own progress thread
//! is off (and collects notifications either way): it polls briskly while
//! its owner is busy and backs off to 1 ms when idle, so a small host keeps
//! its cores for the transfers.

use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

const BRISK: Duration = Duration::from_micros(20);
const IDLE: Duration = Duration::from_millis(1);

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
    /// Run `tick` (returns whether there is work in flight) until stopped or the owner is gone.
    pub fn spawn<T: Send + Sync + 'static>(
        owner: Weak<T>,
        waker: Arc<Waker>,
        tick: fn(&T) -> bool,
    ) -> crate::core::error::Result<Poller> {
        let w = waker.clone();
        let thread = std::thread::Builder::new()
            .name("kvx-nixl-poll".into())
            .spawn(move || {
                let mut pause = BRISK;
                while !w.stop.load(Ordering::Acquire) {
                    let Some(owner) = owner.upgrade() else { return };
                    let busy = tick(&owner);
                    drop(owner);
                    pause = if busy { BRISK } else { (pause * 2).min(IDLE) };
                    let mut woken = w.woken.lock();
                    if !*woken {
                        w.cond.wait_for(&mut woken, pause);
                    }
                    *woken = false;
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
