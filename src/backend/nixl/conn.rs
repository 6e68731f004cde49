//! Connection manager over NIXL. Peers meet through kvxfer's control channel
//! (exchanging NIXL metadata and connection ids, no MPI), then each message
//! travels as one NIXL notification: a small header naming the receiver's
//! connection id and the tag, then the payload. Receives match on
//! (connection, tag) in arrival order; `recv_connect` matches the tag alone.
//!
//! NIXL notifications are copied on both sides, so this path suits control
//! messages and moderate payloads; bulk KV data belongs on the agent's
//! one-sided READ/WRITE, as TensorRT-LLM's NIXL transceiver does.

use super::handle::{NixlHandle, NixlOptions};
use super::poller::{Doorbell, Poller, Waker};
use crate::core::auth::PeerAuth;
use crate::core::connections::{answer_connect, ConnectionCache};
use crate::core::control::{self, ControlHandler, ControlServer};
use crate::core::error::{kvx_status, Error, Result};
use crate::core::net;
use crate::core::notify::MAX_QUEUED_BYTES;
use crate::core::stats::{PeerStats, Scope, ScopeKind};
use crate::core::wire::{ControlMessage, Reader, Writer};
use crate::dispatch::{Connection, ConnectionManager, ConnectionManagerSettings};
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

const MESSAGE_MAGIC: u32 = 0x4d58_564b; // "KVXM"
const MESSAGE_VERSION: u8 = 1;
const HEADER_LEN: usize = 4 + 1 + 4 + 4;
/// Largest message: NIXL copies it whole into one notification.
pub const MAX_MESSAGE: usize = 256 << 20;
/// The poller stays brisk this long after a send, so NIXL can finish it.
const SEND_GRACE: Duration = Duration::from_millis(20);
/// How often a waiting receive asks whether its peer's process still exists.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

fn encode_message(conn_id: u32, tag: u32, data: &[u8]) -> Vec<u8> {
    let mut w = Writer { bytes: Vec::with_capacity(HEADER_LEN + data.len()) };
    w.u32(MESSAGE_MAGIC).u8(MESSAGE_VERSION).u32(conn_id).u32(tag).raw(data);
    w.bytes
}

/// `(receiver's connection id, tag, payload)` of a received message.
pub fn decode_message(bytes: &[u8]) -> Result<(u32, u32, &[u8])> {
    let mut r = Reader::new(bytes);
    if r.u32("message magic")? != MESSAGE_MAGIC {
        return Err(Error::malformed("not a kvxfer connection message"));
    }
    let version = r.u8("message version")?;
    if version != MESSAGE_VERSION {
        return Err(Error::malformed(format!("connection message version {version} is not supported")));
    }
    let conn = r.u32("connection id")?;
    let tag = r.u32("tag")?;
    Ok((conn, tag, &bytes[HEADER_LEN..]))
}

struct Message {
    conn_id: u32,
    sender: String,
    tag: u32,
    data: Vec<u8>,
}

#[derive(Default)]
struct Mailbox {
    messages: VecDeque<Message>,
    bytes: usize,
}

pub struct NixlConnection {
    local_id: u32,
    peer_id: u32,
    peer_name: String,
    peer_address: String,
    /// The peer manager's control listener, probed while a receive waits:
    /// NIXL notifications have no keepalive that would report the peer's death.
    peer_listener: Option<SocketAddr>,
    last_probe: Mutex<Instant>,
    core: Weak<CmCore>,
    timeout: Duration,
    failure: Mutex<Option<String>>,
    stats: Arc<PeerStats>,
}

struct CmCore {
    handle: NixlHandle,
    address: Mutex<String>,
    timeout: Duration,
    next_id: AtomicU32,
    by_id: RwLock<HashMap<u32, Arc<NixlConnection>>>,
    cache: ConnectionCache<NixlConnection>,
    running: AtomicBool,
    mailbox: Mutex<Mailbox>,
    arrived: Condvar,
    /// Milliseconds since `epoch` of the last send, to keep the poller brisk after it.
    last_send_ms: AtomicU64,
    epoch: Instant,
    waker: Arc<Waker>,
    auth: PeerAuth,
    /// The poller's last failure, so one that repeats every round is logged once.
    poll_failure: crate::core::log::OnChange,
    stats: Arc<Scope>,
}

pub struct NixlConnectionManager {
    // Field order is drop order: stop serving and polling before the core goes.
    listener: Mutex<Option<ControlServer>>,
    poller: Option<Poller>,
    core: Arc<CmCore>,
}

fn tick(core: &CmCore) -> bool {
    let mut got = false;
    let result = core.handle.poll_notifications(|sender, bytes| match decode_message(bytes) {
        Ok((conn_id, tag, data)) => {
            let mut mailbox = core.mailbox.lock();
            if mailbox.bytes + data.len() > MAX_QUEUED_BYTES {
                crate::log_at!(Error, "message from {sender:?} dropped: {} bytes already queued", mailbox.bytes);
                return;
            }
            mailbox.bytes += data.len();
            mailbox.messages.push_back(Message { conn_id, sender: sender.to_owned(), tag, data: data.to_vec() });
            got = true;
        }
        Err(e) => crate::log_at!(Error, "malformed message from {sender:?} dropped: {e}"),
    });
    let failure = result.err().map(|e| format!("NIXL connection manager: {e}"));
    core.poll_failure.report(crate::core::log::Level::Warn, failure);
    if got {
        core.arrived.notify_all();
    }
    let since_send =
        (core.epoch.elapsed().as_millis() as u64).saturating_sub(core.last_send_ms.load(Ordering::Relaxed));
    got || since_send < SEND_GRACE.as_millis() as u64
}

impl CmCore {
    fn check_running(&self) -> Result<()> {
        if !self.running.load(Ordering::Acquire) {
            return Err(Error::new(kvx_status::KVX_ERR_CANCELED, "connection manager was shut down"));
        }
        Ok(())
    }

    fn new_connection(
        self: &Arc<Self>,
        local_id: u32,
        peer_id: u32,
        peer_metadata: &[u8],
        peer_address: String,
        started: Instant,
    ) -> Result<Arc<NixlConnection>> {
        let stats = self.stats.peer(&peer_address);
        let peer_name = self.handle.load_metadata(peer_metadata).inspect_err(|_| {
            self.stats.connection_setup(&stats, started, false);
        })?;
        stats.set_transport(&self.handle.plugin);
        self.stats.connection_setup(&stats, started, true);
        let conn = Arc::new(NixlConnection {
            local_id,
            peer_id,
            peer_name,
            peer_listener: net::parse_connection_info(&peer_address).ok(),
            last_probe: Mutex::new(Instant::now()),
            peer_address,
            core: Arc::downgrade(self),
            timeout: self.timeout,
            failure: Mutex::new(None),
            stats,
        });
        self.by_id.write().insert(local_id, conn.clone());
        // Messages may have arrived before the connection was known: let waiters look again.
        self.arrived.notify_all();
        Ok(conn)
    }

    /// Take the first message `accept` wants, waiting until `deadline` while `alive` holds
    /// (checked only while waiting: a message already here is taken at once).
    fn take(
        &self,
        deadline: Option<Instant>,
        alive: impl Fn() -> Result<()>,
        mut accept: impl FnMut(&Message) -> bool,
    ) -> Result<Message> {
        loop {
            let mut mailbox = self.mailbox.lock();
            let mut found = None;
            for (i, m) in mailbox.messages.iter().enumerate() {
                if accept(m) {
                    found = Some(i);
                    break;
                }
            }
            if let Some(i) = found {
                let m = mailbox.messages.remove(i).expect("index from the scan");
                mailbox.bytes -= m.data.len();
                return Ok(m);
            }
            // Wake at least every 100 ms to notice shutdown and peer failure.
            let wake = Instant::now() + Duration::from_millis(100);
            let until = deadline.map_or(wake, |d| d.min(wake));
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::timeout("no message arrived in time"));
            }
            self.arrived.wait_until(&mut mailbox, until);
            drop(mailbox);
            // Outside the lock: a liveness check may wait on the network.
            alive()?;
        }
    }
}

struct Listener(Weak<CmCore>);

impl ControlHandler for Listener {
    fn handle(&self, request: ControlMessage, _from: SocketAddr) -> ControlMessage {
        let Some(core) = self.0.upgrade() else {
            return ControlMessage::Refused { reason: "connection manager is shutting down".into() };
        };
        let started = Instant::now();
        answer_connect(request, core.check_running().is_ok(), |peer_id, endpoint, client_address| {
            let metadata = core.handle.local_metadata()?;
            let local_id = core.next_id.fetch_add(1, Ordering::Relaxed);
            let conn = core.new_connection(local_id, peer_id, endpoint, client_address.clone(), started)?;
            core.cache.insert_accepted(client_address, conn);
            Ok((local_id, metadata))
        })
    }
}

/// A NIXL agent name unique among every process that might meet this one.
fn unique_agent_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("kvx-cm-{}-{}-{}-{nanos:08x}", host.trim(), std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

impl NixlConnectionManager {
    fn connect(&self, address: &str, deadline: Option<Instant>) -> Result<Arc<NixlConnection>> {
        let core = &self.core;
        let started = Instant::now();
        let addr = net::parse_connection_info(address)?;
        let local_id = core.next_id.fetch_add(1, Ordering::Relaxed);
        let timeout = deadline.map_or(core.timeout, |d| d.saturating_duration_since(Instant::now()));
        let request = ControlMessage::Connect {
            client_conn_id: local_id as u64,
            endpoint: core.handle.local_metadata()?,
            client_address: core.address.lock().clone(),
        };
        let reply = control::request(addr, &request, &core.auth, timeout).map_err(|e| {
            let peer = core.stats.peer(address);
            core.stats.connection_setup(&peer, started, false);
            let e = e.context(&format!("connecting to {address}"));
            peer.log_failure(crate::core::log::Level::Warn, "connect_failed", e.status, &e.message, Vec::new());
            e
        })?;
        let ControlMessage::Accept { server_conn_id, endpoint } = reply else {
            return Err(Error::malformed(format!("unexpected reply from {address}")));
        };
        let peer_id = u32::try_from(server_conn_id).map_err(|_| Error::malformed("peer connection id out of range"))?;
        core.new_connection(local_id, peer_id, &endpoint, address.to_owned(), started)
    }
}

impl ConnectionManager for NixlConnectionManager {
    type Connection = NixlConnection;

    fn create(settings: &ConnectionManagerSettings) -> Result<Self> {
        let options = NixlOptions::resolve(None, 0, &[], None);
        let core = Arc::new(CmCore {
            handle: NixlHandle::create(&unique_agent_name(), &options)?,
            address: Mutex::new(String::new()),
            timeout: Duration::from_millis(settings.timeout_ms),
            next_id: AtomicU32::new(1),
            by_id: RwLock::new(HashMap::new()),
            cache: ConnectionCache::default(),
            running: AtomicBool::new(true),
            mailbox: Mutex::new(Mailbox::default()),
            arrived: Condvar::new(),
            last_send_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            waker: Arc::new(Waker::default()),
            auth: settings.auth.clone(),
            poll_failure: Default::default(),
            stats: Scope::new(ScopeKind::ConnectionManager, "NIXL", ""),
        });
        let poller = Poller::spawn(Arc::downgrade(&core), core.waker.clone(), tick)?;
        let (server, address) = ControlServer::start_for_manager(
            settings,
            "TRTLLM_NIXL_INTERFACE",
            Arc::new(Listener(Arc::downgrade(&core))),
        )?;
        // Peers ring this side's doorbell after each send, at the listener's address.
        if let Some(bell) = net::parse_connection_info(&address).ok().and_then(Doorbell::bind) {
            core.waker.install_doorbell(bell);
        }
        *core.address.lock() = address;
        core.stats.set_name(&core.address.lock());
        Ok(NixlConnectionManager { listener: Mutex::new(Some(server)), poller: Some(poller), core })
    }

    fn timeout_ms(&self) -> u64 {
        self.core.timeout.as_millis() as u64
    }

    fn local_address(&self) -> Result<String> {
        Ok(self.core.address.lock().clone())
    }

    fn get_connections(&self, addresses: &[&str], deadline: Option<Instant>) -> Result<Vec<*const NixlConnection>> {
        self.core.check_running()?;
        self.core.cache.get_or_connect(addresses, |address| self.connect(address, deadline))
    }

    fn recv_connect(&self, tag: u32, data: &mut [u8], deadline: Option<Instant>) -> Result<*const NixlConnection> {
        let core = &self.core;
        core.check_running()?;
        let mut from = None;
        let message = core.take(
            deadline,
            || core.check_running(),
            |m| {
                if m.tag != tag {
                    return false;
                }
                match core.by_id.read().get(&m.conn_id) {
                    Some(c) if c.peer_name == m.sender => {
                        from = Some(Arc::as_ptr(c));
                        true
                    }
                    _ => false,
                }
            },
        );
        let message = message.map_err(|e| {
            if e.status == kvx_status::KVX_ERR_TIMEOUT {
                Error::timeout(format!("no message with tag {tag} arrived in time"))
            } else {
                e
            }
        })?;
        copy_exact(&message.data, data)?;
        from.ok_or_else(|| Error::new(kvx_status::KVX_ERR_INTERNAL, "matched a message without its connection"))
    }

    fn is_running(&self) -> bool {
        self.core.running.load(Ordering::Acquire)
    }

    fn shutdown(&self) {
        self.core.running.store(false, Ordering::Release);
        self.listener.lock().take();
        self.core.arrived.notify_all();
    }

    fn stats(&self) -> &Arc<Scope> {
        &self.core.stats
    }
}

impl Drop for NixlConnectionManager {
    fn drop(&mut self) {
        self.shutdown();
        self.poller.take();
        self.core.cache.clear();
        let conns: Vec<_> = self.core.by_id.write().drain().map(|(_, c)| c).collect();
        drop(conns);
    }
}

fn copy_exact(message: &[u8], into: &mut [u8]) -> Result<()> {
    if message.len() != into.len() {
        return Err(Error::new(
            kvx_status::KVX_ERR_SIZE_MISMATCH,
            format!("received {} bytes, expected {}", message.len(), into.len()),
        ));
    }
    // Device buffers are written with a CUDA copy (messages travel as NIXL notifications, in host memory).
    crate::cuda::write_bytes(into.as_mut_ptr() as u64, message)
}

impl NixlConnection {
    fn core(&self) -> Result<Arc<CmCore>> {
        self.core.upgrade().ok_or_else(|| Error::new(kvx_status::KVX_ERR_CANCELED, "connection manager was destroyed"))
    }

    fn check_alive(&self) -> Result<()> {
        match &*self.failure.lock() {
            Some(why) => Err(Error::peer(format!("connection to {} failed earlier: {why}", self.peer_address))),
            None => Ok(()),
        }
    }

    /// Fail the connection once its peer's process is certainly gone (checked every `PROBE_INTERVAL`).
    fn probe_peer(&self) -> Result<()> {
        let Some(listener) = self.peer_listener else { return Ok(()) };
        {
            let mut last = self.last_probe.lock();
            if last.elapsed() < PROBE_INTERVAL {
                return Ok(());
            }
            *last = Instant::now();
        }
        if control::listener_gone(listener) {
            self.failure.lock().get_or_insert_with(|| {
                format!("its manager's listener {listener} refuses connections (the peer is gone)")
            });
            return self.check_alive();
        }
        Ok(())
    }
}

impl Connection for NixlConnection {
    const MAX_MESSAGE: usize = MAX_MESSAGE;

    fn timeout_ms(&self) -> u64 {
        self.timeout.as_millis() as u64
    }

    fn send(&self, tag: u32, data: &[u8], _deadline: Option<Instant>) -> Result<()> {
        let core = self.core()?;
        core.check_running()?;
        self.check_alive()?;
        // Notifications carry host bytes: a device buffer is staged through the host first.
        let staged;
        let data = if crate::cuda::pointer_location(data.as_ptr() as u64).0
            == crate::core::memory::kvx_memory_type::KVX_MEMORY_VRAM
        {
            staged = crate::cuda::read_bytes(data.as_ptr() as u64, data.len())?;
            &staged[..]
        } else {
            data
        };
        // NIXL copies the message when posting it, so the caller's buffer is free on return.
        let result = core.handle.send_notification(&self.peer_name, &encode_message(self.peer_id, tag, data));
        core.last_send_ms.store(core.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        core.waker.wake();
        if let (Ok(()), Some(peer)) = (&result, self.peer_listener) {
            // The peer's poller may be in a long pause: tell it to look now.
            core.waker.ring_peer(peer);
        }
        result.map_err(|e| {
            *self.failure.lock() = Some(e.message.clone());
            e.context(&format!("send to {}", self.peer_address))
        })
    }

    fn recv(&self, tag: u32, data: &mut [u8], deadline: Option<Instant>) -> Result<()> {
        let core = self.core()?;
        core.check_running()?;
        self.check_alive()?;
        let alive = || core.check_running().and_then(|()| self.check_alive()).and_then(|()| self.probe_peer());
        let message =
            core.take(deadline, alive, |m| m.conn_id == self.local_id && m.tag == tag && m.sender == self.peer_name);
        let message = message.map_err(|e| {
            if e.status == kvx_status::KVX_ERR_TIMEOUT {
                Error::timeout(format!("recv from {} (tag {tag}) timed out", self.peer_address))
            } else {
                e
            }
        })?;
        copy_exact(&message.data, data)
    }

    fn peer_address(&self) -> String {
        self.peer_address.clone()
    }

    fn stats(&self) -> &Arc<PeerStats> {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_hostile_bytes_are_refused() {
        let bytes = encode_message(7, 42, b"payload");
        assert_eq!(decode_message(&bytes).unwrap(), (7, 42, &b"payload"[..]));
        for cut in 0..HEADER_LEN {
            assert!(decode_message(&bytes[..cut]).is_err());
        }
        let mut wrong = bytes.clone();
        wrong[0] ^= 1;
        assert!(decode_message(&wrong).is_err());
        let mut version = bytes;
        version[4] = 9;
        assert!(decode_message(&version).is_err());
    }
}
