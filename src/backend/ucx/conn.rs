//! Connection manager over UCX tag matching. Peers find each other through
//! the control channel (exchanging worker addresses and connection ids),
//! then talk with `ucp_tag_send_nbx`/`ucp_tag_recv_nbx`.
//!
//! Wire tag = (receiver's connection id << 32) | user tag. A receive on a
//! connection matches all 64 bits, so the same user tag from two peers never
//! crosses; `recv_connect` matches the low 32 bits only and learns the
//! connection from the high 32 bits of the tag that arrived.

use super::ops::Op;
use super::worker::{Endpoint, Worker, WorkerOwner};
use crate::core::auth::PeerAuth;
use crate::core::connections::{answer_connect, ConnectionCache};
use crate::core::control::{self, ControlHandler, ControlServer};
use crate::core::error::{kvx_status, Error, Result};
use crate::core::net;
use crate::core::stats::{PeerStats, Scope, ScopeKind};
use crate::core::wire::ControlMessage;
use crate::dispatch::{Connection, ConnectionManager, ConnectionManagerSettings};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::ffi::c_void;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

const FULL_MASK: u64 = u64::MAX;
const USER_TAG_MASK: u64 = 0xFFFF_FFFF;

pub struct UcxConnection {
    local_id: u32,
    peer_id: u32,
    peer_address: String,
    endpoint: Endpoint,
    timeout: Duration,
    /// Receives in flight, cancelled when the peer fails or the manager shuts down.
    pending_recvs: Mutex<Vec<Weak<Op>>>,
    /// The manager's: after `kvx_cm_shutdown`, sends and receives are cancelled.
    manager_running: Arc<AtomicBool>,
    stats: Arc<PeerStats>,
}

unsafe impl Send for UcxConnection {}
unsafe impl Sync for UcxConnection {}

struct CmCore {
    worker: WorkerOwner,
    address: Mutex<String>,
    timeout: Duration,
    next_id: AtomicU32,
    by_id: RwLock<HashMap<u32, Arc<UcxConnection>>>,
    cache: ConnectionCache<UcxConnection>,
    running: Arc<AtomicBool>,
    /// `recv_connect` calls in flight, cancelled by shutdown.
    waiting: Mutex<Vec<Weak<Op>>>,
    auth: PeerAuth,
    stats: Arc<Scope>,
}

pub struct UcxConnectionManager {
    listener: Mutex<Option<ControlServer>>,
    core: Arc<CmCore>,
}

impl CmCore {
    fn check_running(&self) -> Result<()> {
        if !self.running.load(Ordering::Acquire) {
            return Err(Error::new(kvx_status::KVX_ERR_CANCELED, "connection manager was shut down"));
        }
        Ok(())
    }

    fn new_connection(
        &self,
        local_id: u32,
        peer_id: u32,
        peer_address: String,
        endpoint: &[u8],
        started: Instant,
    ) -> Result<Arc<UcxConnection>> {
        let stats = self.stats.peer(&peer_address);
        let endpoint = Endpoint::connect(&self.worker, endpoint).inspect_err(|_| {
            self.stats.connection_setup(&stats, started, false);
        })?;
        stats.set_transport(&endpoint.transports().unwrap_or_default());
        self.stats.connection_setup(&stats, started, true);
        let conn = Arc::new(UcxConnection {
            local_id,
            peer_id,
            peer_address,
            endpoint,
            timeout: self.timeout,
            pending_recvs: Mutex::new(Vec::new()),
            manager_running: self.running.clone(),
            stats,
        });
        // When the peer fails, cancel this connection's receives so they end now.
        let weak = Arc::downgrade(&conn);
        let worker = self.worker.0.clone();
        conn.endpoint.state.on_failure.lock().push(Box::new(move || {
            let weak = weak.clone();
            worker.defer(move |_| {
                if let Some(c) = weak.upgrade() {
                    if let Err(e) = c.endpoint.state.check(&c.peer_address) {
                        c.stats.failed(&e.message);
                    }
                    for op in c.pending_recvs.lock().drain(..).filter_map(|w| w.upgrade()) {
                        op.cancel_locked();
                    }
                }
            });
        }));
        self.by_id.write().insert(local_id, conn.clone());
        Ok(conn)
    }

    fn allocate_id(&self) -> u32 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
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
            let local_id = core.allocate_id();
            let conn = core.new_connection(local_id, peer_id, client_address.clone(), endpoint, started)?;
            core.cache.insert_accepted(client_address, conn);
            Ok((local_id, core.worker.address().to_vec()))
        })
    }
}

impl UcxConnectionManager {
    fn connect(&self, address: &str, deadline: Option<Instant>) -> Result<Arc<UcxConnection>> {
        let core = &self.core;
        let started = Instant::now();
        let addr = net::parse_connection_info(address)?;
        let local_id = core.allocate_id();
        let timeout = deadline.map_or(core.timeout, |d| d.saturating_duration_since(Instant::now()));
        let own_address = core.address.lock().clone();
        let request = ControlMessage::Connect {
            client_conn_id: local_id as u64,
            endpoint: core.worker.address().to_vec(),
            client_address: own_address,
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
        core.new_connection(local_id, peer_id, address.to_owned(), &endpoint, started)
    }
}

fn post_recv(worker: &Arc<Worker>, data: &mut [u8], tag: u64, mask: u64, what: &'static str) -> Arc<Op> {
    let op = Op::new(worker, what);
    let param = op.param(true);
    let _g = worker.lock();
    // SAFETY: `data` outlives the op: every caller waits for completion or cancellation.
    let ret = unsafe {
        (worker.api().ucp_tag_recv_nbx)(worker.handle, data.as_mut_ptr() as *mut c_void, data.len(), tag, mask, &param)
    };
    op.posted(&param, ret);
    drop(_g);
    worker.wake();
    op
}

fn check_length(received: usize, expected: usize) -> Result<()> {
    if received != expected {
        return Err(Error::new(
            kvx_status::KVX_ERR_SIZE_MISMATCH,
            format!("received {received} bytes, expected {expected}"),
        ));
    }
    Ok(())
}

impl ConnectionManager for UcxConnectionManager {
    type Connection = UcxConnection;

    fn create(settings: &ConnectionManagerSettings) -> Result<Self> {
        let worker = WorkerOwner(Worker::new("kvxfer-cm")?);
        let core = Arc::new(CmCore {
            worker,
            address: Mutex::new(String::new()),
            timeout: Duration::from_millis(settings.timeout_ms),
            next_id: AtomicU32::new(1),
            by_id: RwLock::new(HashMap::new()),
            cache: ConnectionCache::default(),
            running: Arc::new(AtomicBool::new(true)),
            waiting: Mutex::new(Vec::new()),
            auth: settings.auth.clone(),
            stats: Scope::new(ScopeKind::ConnectionManager, "UCX", ""),
        });
        let (server, address) = ControlServer::start_for_manager(
            settings,
            "TRTLLM_UCX_INTERFACE",
            Arc::new(Listener(Arc::downgrade(&core))),
        )?;
        *core.address.lock() = address;
        core.stats.set_name(&core.address.lock());
        Ok(UcxConnectionManager { listener: Mutex::new(Some(server)), core })
    }

    fn timeout_ms(&self) -> u64 {
        self.core.timeout.as_millis() as u64
    }

    fn local_address(&self) -> Result<String> {
        Ok(self.core.address.lock().clone())
    }

    fn get_connections(&self, addresses: &[&str], deadline: Option<Instant>) -> Result<Vec<*const UcxConnection>> {
        self.core.check_running()?;
        self.core.cache.get_or_connect(addresses, |address| self.connect(address, deadline))
    }

    fn recv_connect(&self, tag: u32, data: &mut [u8], deadline: Option<Instant>) -> Result<*const UcxConnection> {
        self.core.check_running()?;
        let op = post_recv(&self.core.worker, data, tag as u64, USER_TAG_MASK, "recvConnect");
        {
            let mut waiting = self.core.waiting.lock();
            waiting.retain(|w| w.strong_count() > 0);
            waiting.push(Arc::downgrade(&op));
        }
        if !self.is_running() {
            let _g = self.core.worker.lock();
            op.cancel_locked();
        }
        let (sender_tag, length) = op.wait(deadline).map_err(|e| {
            if self.is_running() {
                e
            } else {
                Error::new(kvx_status::KVX_ERR_CANCELED, "connection manager was shut down")
            }
        })?;
        check_length(length, data.len())?;
        let local_id = (sender_tag >> 32) as u32;
        self.core
            .by_id
            .read()
            .get(&local_id)
            .map(Arc::as_ptr)
            .ok_or_else(|| Error::malformed(format!("message with tag {tag} names unknown connection {local_id}")))
    }

    fn is_running(&self) -> bool {
        self.core.running.load(Ordering::Acquire)
    }

    fn shutdown(&self) {
        self.core.running.store(false, Ordering::Release);
        self.listener.lock().take();
        let mut waiting: Vec<_> = self.core.waiting.lock().drain(..).filter_map(|w| w.upgrade()).collect();
        for conn in self.core.by_id.read().values() {
            waiting.extend(conn.pending_recvs.lock().drain(..).filter_map(|w| w.upgrade()));
        }
        let _g = self.core.worker.lock();
        for op in waiting {
            op.cancel_locked();
        }
    }

    fn stats(&self) -> &Arc<Scope> {
        &self.core.stats
    }
}

impl Drop for UcxConnectionManager {
    fn drop(&mut self) {
        self.shutdown();
        self.core.cache.clear();
        let conns: Vec<_> = self.core.by_id.write().drain().map(|(_, c)| c).collect();
        drop(conns);
    }
}

impl UcxConnection {
    fn check_manager_running(&self) -> Result<()> {
        if !self.manager_running.load(Ordering::Acquire) {
            return Err(Error::new(kvx_status::KVX_ERR_CANCELED, "connection manager was shut down"));
        }
        Ok(())
    }
}

impl Connection for UcxConnection {
    /// UCX's tag messages have no limit of their own: any buffer Rust can address.
    const MAX_MESSAGE: usize = isize::MAX as usize;

    fn timeout_ms(&self) -> u64 {
        self.timeout.as_millis() as u64
    }

    fn send(&self, tag: u32, data: &[u8], deadline: Option<Instant>) -> Result<()> {
        self.check_manager_running()?;
        self.endpoint.state.check(&self.peer_address)?;
        let worker = &self.endpoint.worker;
        let op = Op::new(worker, "send");
        let param = op.param(false);
        let wire_tag = ((self.peer_id as u64) << 32) | tag as u64;
        {
            let _g = worker.lock();
            match self.endpoint.handle_locked(&self.peer_address) {
                Ok(ep) => {
                    // SAFETY: `data` outlives the op: we wait for completion, or close the endpoint first.
                    let ret = unsafe {
                        (worker.api().ucp_tag_send_nbx)(
                            ep,
                            data.as_ptr() as *const c_void,
                            data.len(),
                            wire_tag,
                            &param,
                        )
                    };
                    op.posted(&param, ret);
                }
                Err(e) => {
                    // SAFETY: never handed to UCX: reclaim the reference `param` made.
                    unsafe { drop(Arc::from_raw(param.user_data as *const Op)) };
                    op.fail_unposted(e);
                }
            }
        }
        worker.wake();
        match op.done.wait(deadline, || worker.pump()) {
            Some(r) => r.map(|_| ()).map_err(|e| e.context(&format!("send to {}", self.peer_address))),
            None => {
                // A send cannot be cancelled: fail the connection so UCX drops the buffer.
                self.endpoint.state.fail("a send timed out".into());
                self.endpoint.close(true);
                let _ = op.done.wait(Some(Instant::now() + Duration::from_secs(2)), || worker.pump());
                Err(Error::timeout(format!("send to {} timed out; connection closed", self.peer_address)))
            }
        }
    }

    fn recv(&self, tag: u32, data: &mut [u8], deadline: Option<Instant>) -> Result<()> {
        self.check_manager_running()?;
        self.endpoint.state.check(&self.peer_address)?;
        let wire_tag = ((self.local_id as u64) << 32) | tag as u64;
        let op = post_recv(&self.endpoint.worker, data, wire_tag, FULL_MASK, "recv");
        {
            let mut pending = self.pending_recvs.lock();
            pending.retain(|w| w.strong_count() > 0);
            pending.push(Arc::downgrade(&op));
        }
        // The peer may have failed, or the manager shut down, between the checks and the registration above.
        if self.endpoint.state.failed.load(Ordering::Acquire) || !self.manager_running.load(Ordering::Acquire) {
            let _g = self.endpoint.worker.lock();
            op.cancel_locked();
        }
        let result = op.wait(deadline);
        if let Err(e) = &result {
            if e.status == kvx_status::KVX_ERR_CANCELED {
                self.check_manager_running()?;
                self.endpoint.state.check(&self.peer_address)?;
            }
        }
        let (_, length) = result.map_err(|e| e.context(&format!("recv from {}", self.peer_address)))?;
        check_length(length, data.len())
    }

    fn peer_address(&self) -> String {
        self.peer_address.clone()
    }

    fn stats(&self) -> &Arc<PeerStats> {
        &self.stats
    }
}
