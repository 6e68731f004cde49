//! The thread that keeps a NIXL agent moving when NIXL's own progress thread
//! is off (and collects notifications either way). NIXL offers no event to
//! sleep on, so the thread polls, with a pause that grows with the time since
//! anything last happened (work left running, a notification arrived, a transfer
//! ended): about 1% of that time, between 20 µs and 50 ms
//! (`KVX_NIXL_MAX_POLL_US` changes the upper bound). Busy agents poll
//! briskly; an idle one, or one whose owner is blocked waiting on a silent
//! peer, wakes about 20 times a second, and a message arriving after a long
//! quiet spell waits at most 50 ms for the next look, unless its sender rings
//! this side's doorbell: a UDP socket on the owner's control address (same
//! port as its TCP listener) that the poller sleeps on. A datagram carries no
//! data; it only makes the poller look now, so a stranger's datagrams cost
//! wake-ups and nothing else.

use parking_lot::{Condvar, Mutex};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
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

/// What a ring sends; anything else that arrives wakes the poller all the same.
const RING: &[u8; 8] = b"KVXBELL1";

/// A UDP socket the poller sleeps on, so peers can wake it (see the module comment).
pub struct Doorbell {
    socket: UdpSocket,
    address: SocketAddr,
}

impl Doorbell {
    /// Bind at `address` (the owner's control listener's); None when the
    /// port is taken for UDP, and the poller then only backs off.
    pub fn bind(address: SocketAddr) -> Option<Doorbell> {
        let socket = UdpSocket::bind(address)
            .inspect_err(|e| crate::log_at!(Debug, "no doorbell at udp {address}: {e}; the NIXL poller backs off only"))
            .ok()?;
        socket.set_nonblocking(true).ok()?;
        let address = socket.local_addr().ok()?;
        Some(Doorbell { socket, address })
    }

    /// Wake the poller of the owner whose control listener is `peer`. Best effort:
    /// a lost datagram only means the peer looks at its next pause.
    pub fn ring(&self, peer: SocketAddr) {
        let _ = self.socket.send_to(RING, peer);
    }

    /// Sleep until a datagram arrives or `timeout` passes; whether one came (all are drained).
    fn wait(&self, timeout: Duration) -> bool {
        let mut fd = libc::pollfd { fd: self.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut fd, 1, ms) };
        let mut rang = false;
        let mut buf = [0u8; 16];
        while ready > 0 && self.socket.recv_from(&mut buf).is_ok() {
            rang = true;
        }
        rang
    }
}

#[derive(Default)]
pub struct Waker {
    woken: Mutex<bool>,
    cond: Condvar,
    stop: AtomicBool,
    /// Set once the owner's control address is known; the poller then sleeps on it.
    doorbell: OnceLock<Doorbell>,
}

impl Waker {
    /// Poll now (work was just posted).
    pub fn wake(&self) {
        *self.woken.lock() = true;
        self.cond.notify_one();
        if let Some(bell) = self.doorbell.get() {
            bell.ring(bell.address);
        }
    }

    /// Let peers wake the poller through `bell` from now on.
    pub fn install_doorbell(&self, bell: Doorbell) {
        if self.doorbell.set(bell).is_ok() {
            // The poller may be asleep on the condition variable: let it move to the socket.
            self.wake();
        }
    }

    /// Wake the poller of the owner whose control listener is `peer`, if this side has a doorbell to ring from.
    pub fn ring_peer(&self, peer: SocketAddr) {
        if let Some(bell) = self.doorbell.get() {
            bell.ring(peer);
        }
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
                    let rang = match w.doorbell.get() {
                        // A local wake rings the same bell, so the socket is the one thing to sleep on.
                        Some(bell) if !*w.woken.lock() => bell.wait(pause),
                        Some(_) => false,
                        None => {
                            let mut woken = w.woken.lock();
                            if !*woken {
                                w.cond.wait_for(&mut woken, pause);
                            }
                            false
                        }
                    };
                    if std::mem::take(&mut *w.woken.lock()) || rang {
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
    fn a_doorbell_wakes_its_sleeper_and_is_quiet_otherwise() {
        let bell = Doorbell::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(!bell.wait(Duration::from_millis(5)), "woke without a ring");
        let peer = Doorbell::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        peer.ring(bell.address);
        peer.ring(bell.address);
        // A ring that already arrived wakes at once; both are drained by one wait.
        assert!(bell.wait(Duration::from_secs(30)));
        assert!(!bell.wait(Duration::ZERO));
        // Stray bytes from anyone wake it the same way and carry nothing.
        UdpSocket::bind("127.0.0.1:0").unwrap().send_to(b"x", bell.address).unwrap();
        assert!(bell.wait(Duration::from_secs(30)));
    }

    #[test]
    fn a_poller_with_a_doorbell_looks_when_rung_after_a_quiet_spell() {
        use std::sync::atomic::AtomicUsize;
        struct Owner(AtomicUsize);
        let owner = Arc::new(Owner(AtomicUsize::new(0)));
        let waker = Arc::new(Waker::default());
        let _poller = Poller::spawn(Arc::downgrade(&owner), waker.clone(), |o: &Owner| {
            o.0.fetch_add(1, Ordering::SeqCst);
            false
        })
        .unwrap();
        let bell = Doorbell::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = bell.address;
        waker.install_doorbell(bell);
        // Quiet long enough that the pause has grown to its bound (50 ms), then
        // ring from a peer: rings arriving faster than the pause must each be seen.
        std::thread::sleep(Duration::from_secs(6));
        let peer = Doorbell::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let before = owner.0.load(Ordering::SeqCst);
        for _ in 0..20 {
            peer.ring(address);
            std::thread::sleep(Duration::from_millis(5));
        }
        let looks = owner.0.load(Ordering::SeqCst) - before;
        // 100 ms of rings 5 ms apart: the backoff alone would look about twice
        // (rings that land together count once, hence the margin).
        assert!(looks >= 6, "only {looks} looks for 20 rings");
    }

    #[test]
    fn longest_pause_is_configurable() {
        assert_eq!(longest_pause_from(None), IDLE);
        assert_eq!(longest_pause_from(Some("1000")), Duration::from_millis(1));
        assert_eq!(longest_pause_from(Some("0")), BRISK);
        assert_eq!(longest_pause_from(Some("soon")), IDLE);
    }
}
