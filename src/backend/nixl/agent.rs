//! Transfer agent over NIXL. The agent descriptor is NIXL's own metadata
//! (sealed with the agent's listener and a checksum, which NIXL ignores), so kvxfer agents and stock
//! NIXL agents load each other by descriptor. Connection info is kvxfer's
//! control channel, or NIXL's own listener when peers may be stock NIXL
//! agents (`KVX_NIXL_STOCK_PEERS=1`). READ/WRITE are NIXL transfer requests
//! with the sync message as NIXL's completion notification.

use super::handle::{NixlHandle, NixlOptions};
use super::poller::{Poller, Waker};
use super::sys::*;
use crate::core::auth::PeerAuth;
use crate::core::coalesce::coalesce;
use crate::core::control::{self, ControlServer};
use crate::core::descriptor_service::{self, DescribedAgent};
use crate::core::error::{kvx_status, Error, Result};
use crate::core::memory::{kvx_memory_desc, kvx_memory_type, Registrations};
use crate::core::net;
use crate::core::notify::NotificationQueue;
use crate::core::stats::{kvx_xfer_path, PeerStats, Scope, ScopeKind, TransferRecord};
use crate::core::wire;
use crate::dispatch::{kvx_transfer_op, kvx_transfer_state, AgentSettings, Transfer, TransferAgent, TransferRequest};
use once_cell::sync::OnceCell;
use parking_lot::Mutex;
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// A loaded peer, and the transfers in flight to it (failed when it is invalidated).
struct RemoteAgent {
    /// The metadata it was loaded from, so reloading the same bytes is a no-op.
    metadata: Option<Vec<u8>>,
    pending: Vec<Weak<TransferShared>>,
    /// Why the peer failed (a transfer to it failed or timed out): later calls
    /// fail closed until it is invalidated and loaded again.
    failed: Option<String>,
    stats: Arc<PeerStats>,
}

struct AgentCore {
    handle: NixlHandle,
    timeout: Duration,
    local: Mutex<Registrations<()>>,
    remotes: Mutex<HashMap<String, RemoteAgent>>,
    /// Live peers invalidated here but kept loaded in NIXL, by name, with the
    /// descriptor they were loaded from. NIXL 1.5.1's `invalidateRemoteMD`
    /// keeps the peer's UCX endpoint and its TCP connections (one per
    /// interface) until the process exits, so every invalidate + reload of a
    /// live peer would add descriptors for good; reloading the same
    /// descriptor reuses the connection instead. Different metadata (a
    /// restarted peer), a peer found gone, or more than `MAX_DORMANT` of them
    /// make kvxfer invalidate in NIXL after all.
    dormant: Mutex<HashMap<String, Vec<u8>>>,
    unreachable: Mutex<UnreachableMetadata>,
    /// Where peers fetch this agent's metadata (empty: nowhere), sealed into
    /// the metadata too; set once the listener is up.
    connection_info: OnceCell<String>,
    notifications: NotificationQueue,
    /// Transfers in flight. The poller drives them (so data and sync
    /// messages move even when nobody waits) and releases those whose
    /// handle was destroyed while they ran.
    inflight: Mutex<Vec<Arc<TransferShared>>>,
    waker: Arc<Waker>,
    auth: PeerAuth,
    /// Peers whose NIXL load failed, and how often: NIXL 1.5.1 can keep a name
    /// it failed to load half-registered (later loads of it fail, invalidate
    /// finds nothing), so the next load of that peer uses a fresh NIXL name.
    load_generations: Mutex<HashMap<String, u32>>,
    /// The poller's last failure, so one that repeats every round is logged once.
    poll_failure: crate::core::log::OnChange,
    stats: Arc<Scope>,
    /// NIXL's plugin, the transport of every transfer.
    transport: Arc<CString>,
    /// `TRTLLM_NIXL_DISABLE_COALESCE` / `TRTLLM_NIXL_ENABLE_COALESCE`, read at creation.
    coalesce: bool,
}

pub struct NixlAgent {
    // Field order is drop order: stop serving metadata, then the poller, then the core.
    /// kvxfer's control channel serving this agent's metadata (the default):
    /// each load is one short-lived request, so a peer that dies leaves no
    /// socket behind. None when none was asked for, or NIXL's listener serves.
    _metadata_server: Option<ControlServer>,
    /// NIXL's own listener serves and fetches metadata, so stock NIXL agents
    /// (TensorRT-LLM's among them) and this one load each other by connection
    /// info. NIXL 1.5.1 leaves two CLOSE_WAIT sockets behind for each peer that dies.
    nixl_listener: bool,
    poller: Option<Poller>,
    core: Arc<AgentCore>,
}

/// How long a metadata fetch through NIXL's listener waits before it is sent once more.
const STOCK_FETCH_RETRY: Duration = Duration::from_secs(1);

/// `KVX_NIXL_STOCK_PEERS=1`: peers may be stock NIXL agents. Their unsealed
/// metadata is accepted, and connection info goes through NIXL's listener.
fn stock_peers() -> bool {
    std::env::var("KVX_NIXL_STOCK_PEERS").is_ok_and(|v| v == "1")
}

impl DescribedAgent for AgentCore {
    fn agent_name(&self) -> &str {
        &self.handle.name
    }
    fn describe(&self) -> Result<Vec<u8>> {
        let metadata = wire::seal_nixl_metadata(
            self.handle.local_metadata()?,
            self.connection_info.get().map_or("", String::as_str),
        );
        Ok(descriptor_service::seal(&self.auth, metadata))
    }
}

impl AgentCore {
    fn drain_notifications(&self) -> Result<bool> {
        let mut any = false;
        self.handle.poll_notifications(|sender, message| {
            any = true;
            if message.len() > wire::MAX_NOTIFICATION {
                crate::log_at!(Error, "notification from {sender:?} dropped: {} bytes is too large", message.len());
            } else {
                self.notifications.push(sender.to_owned(), message.to_vec());
            }
        })?;
        Ok(any)
    }

    /// Poll every transfer in flight; whether any of them ended.
    fn drive_transfers(&self) -> bool {
        let running: Vec<_> = self.inflight.lock().clone();
        let unsettled = |all: &[Arc<TransferShared>]| all.iter().filter(|t| t.outcome.lock().is_none()).count();
        let before = unsettled(&running);
        for t in &running {
            t.poll(self);
            if t.orphaned.load(Ordering::Acquire) {
                t.finish_if_settled(self);
            }
        }
        self.inflight.lock().retain(|t| {
            t.outcome.lock().is_none() || (t.orphaned.load(Ordering::Acquire) && t.request.lock().is_some())
        });
        unsettled(&running) < before
    }

    fn wake_poller(&self) {
        self.waker.wake();
    }

    /// The name NIXL knows peer `name` by: its own, until a load of it failed.
    fn nixl_name<'a>(&self, name: &'a str) -> Cow<'a, str> {
        match self.load_generations.lock().get(name) {
            Some(generation) => Cow::Owned(format!("{name}#kvxfer-load-{generation}")),
            None => Cow::Borrowed(name),
        }
    }

    /// A load of `name` failed inside NIXL: load it under another NIXL name next time.
    fn retire_nixl_name(&self, name: &str) {
        *self.load_generations.lock().entry(name.to_owned()).or_insert(0) += 1;
    }

    fn ensure_loaded(&self, name: &str) -> Result<()> {
        if name == self.handle.name {
            return Ok(());
        }
        match self.remotes.lock().get(name) {
            None => Err(Error::not_found(format!("remote agent {name:?} is not loaded"))),
            Some(RemoteAgent { failed: Some(why), .. }) => {
                Err(Error::peer(format!("agent {name:?} failed earlier ({why}); invalidate and load it again")))
            }
            Some(_) => Ok(()),
        }
    }

    /// `ensure_loaded`, and the counters of the peer's transfers, in one look.
    fn loaded_peer_stats(&self, name: &str) -> Result<Arc<PeerStats>> {
        if name == self.handle.name {
            return Ok(self.stats.peer(name));
        }
        let healthy = self.remotes.lock().get(name).filter(|r| r.failed.is_none()).map(|r| r.stats.clone());
        match healthy {
            Some(stats) => Ok(stats),
            // Not loaded, or failed: the error says which.
            None => self.ensure_loaded(name).map(|()| self.stats.peer(name)),
        }
    }

    fn mark_failed(&self, name: &str, why: &Error) {
        if let Some(remote) = self.remotes.lock().get_mut(name) {
            if remote.failed.is_none() {
                remote.failed = Some(why.message.clone());
                remote.stats.failed(&why.message);
            }
        }
    }

    fn forget(&self, name: &str, why: &str) {
        let removed = self.remotes.lock().remove(name);
        if let Some(remote) = removed {
            for t in remote.pending.iter().filter_map(Weak::upgrade) {
                t.fail(self, Error::peer(format!("agent {name:?} {why}")));
            }
        }
    }

    /// Forget a peer here and in NIXL; its transfers in flight fail.
    fn drop_peer(&self, name: &str, why: &str) -> Result<()> {
        self.forget(name, why);
        self.dormant.lock().remove(name);
        self.handle.invalidate(&self.nixl_name(name))
    }

    /// Forget a peer here; a healthy one loaded from a descriptor stays loaded in NIXL (see `dormant`).
    fn put_to_sleep(&self, name: &str) -> Result<()> {
        let removed = self.remotes.lock().get(name).map(|r| (r.failed.is_none(), r.metadata.clone()));
        let Some((true, Some(descriptor))) = removed else {
            return self.drop_peer(name, "was invalidated");
        };
        self.forget(name, "was invalidated");
        let evicted = {
            let mut dormant = self.dormant.lock();
            let evicted = if dormant.len() >= MAX_DORMANT && !dormant.contains_key(name) {
                dormant.keys().next().cloned().inspect(|k| {
                    dormant.remove(k);
                })
            } else {
                None
            };
            dormant.insert(name.to_owned(), descriptor);
            evicted
        };
        if let Some(old) = evicted {
            let _ = self.handle.invalidate(&self.nixl_name(&old));
        }
        Ok(())
    }

    /// A dormant peer of another descriptor, or one that is gone, is invalidated in NIXL now.
    fn wake_dormant(&self, name: &str, descriptor: &[u8]) -> bool {
        let mut dormant = self.dormant.lock();
        match dormant.get(name) {
            Some(d) if d == descriptor => {
                dormant.remove(name);
                true
            }
            Some(_) => {
                dormant.remove(name);
                drop(dormant);
                let _ = self.handle.invalidate(&self.nixl_name(name));
                false
            }
            None => false,
        }
    }

    fn release_dormant(&self, name: &str) {
        if self.dormant.lock().remove(name).is_some() {
            let _ = self.handle.invalidate(&self.nixl_name(name));
        }
    }

    /// Connect now, so the first transfer does not pay for it (and a dead peer shows here).
    fn connect_early(&self, name: &str) {
        if let Err(e) = self.handle.make_connection(&self.nixl_name(name)) {
            crate::log_at!(Debug, "NIXL agent {:?}: early connection to {name:?} not made: {e}", self.handle.name);
        }
    }

    /// Record a peer NIXL now knows, whose setup began at `started`.
    fn remember(&self, name: &str, metadata: Option<Vec<u8>>, started: Instant) {
        let stats = self.stats.peer(name);
        stats.set_transport(&self.handle.plugin);
        stats.loaded();
        self.stats.connection_setup(&stats, started, true);
        self.remotes.lock().insert(name.to_owned(), RemoteAgent { metadata, pending: Vec::new(), failed: None, stats });
    }

    /// A peer load that failed: counted, and logged once per peer and status.
    fn load_failed(&self, name: &str, started: Instant, e: &Error) {
        let peer = self.stats.peer(name);
        self.stats.connection_setup(&peer, started, false);
        peer.log_failure(crate::core::log::Level::Warn, "load_failed", e.status, &e.message, Vec::new());
    }
}

/// One poller round: collect notifications (driving NIXL's progress too) and reap orphans.
/// Whether anything happened: the poller stays brisk while things do.
fn tick(core: &AgentCore) -> bool {
    let drained = core.drain_notifications();
    let failure = drained.as_ref().err().map(|e| format!("NIXL agent {:?}: {e}", core.handle.name));
    core.poll_failure.report(crate::core::log::Level::Warn, failure);
    let got = drained.unwrap_or(false);
    let ended = core.drive_transfers();
    got || ended
}

/// Metadata whose agent could not be reached when it was loaded. NIXL 1.5.1
/// keeps one socket for every such load, so a descriptor retried within
/// `UNREACHABLE_FOR` is refused here instead of handed to NIXL again (a
/// restarted peer publishes new metadata; one that was only cut off for a
/// moment can be loaded by descriptor again after that, and by connection
/// info at once, since the fetch shows it is alive).
#[derive(Default)]
struct UnreachableMetadata {
    recent: VecDeque<(u64, Instant)>,
}

/// Invalidated live peers kept loaded in NIXL at most (see `AgentCore::dormant`).
const MAX_DORMANT: usize = 4096;

const UNREACHABLE_FOR: Duration = Duration::from_secs(60);
const MAX_UNREACHABLE_REMEMBERED: usize = 1024;

impl UnreachableMetadata {
    fn fingerprint(metadata: &[u8]) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        metadata.hash(&mut hasher);
        hasher.finish()
    }

    fn forget_old(&mut self) {
        while self.recent.front().is_some_and(|(_, at)| at.elapsed() >= UNREACHABLE_FOR)
            || self.recent.len() > MAX_UNREACHABLE_REMEMBERED
        {
            self.recent.pop_front();
        }
    }

    fn contains(&mut self, fingerprint: u64) -> bool {
        self.forget_old();
        self.recent.iter().any(|(f, _)| *f == fingerprint)
    }

    fn record(&mut self, fingerprint: u64) {
        self.recent.push_back((fingerprint, Instant::now()));
        self.forget_old();
    }
}

/// Every range must lie in one registration of the stated memory type.
fn check_registered(
    regions: &Registrations<()>,
    side: &str,
    mem_type: kvx_memory_type,
    descs: &[kvx_memory_desc],
) -> Result<()> {
    for (i, d) in descs.iter().enumerate() {
        match regions.find_containing(d.addr, d.len) {
            None => {
                return Err(Error::new(
                    kvx_status::KVX_ERR_NOT_REGISTERED,
                    format!("descriptor {i}: {side} range {:#x}+{} is not registered with this agent", d.addr, d.len),
                ))
            }
            Some((_, r)) if r.mem_type != mem_type => {
                return Err(Error::invalid(format!(
                    "descriptor {i}: {side} range is registered as {:?}, request says {:?}",
                    r.mem_type, mem_type
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// A free port for NIXL's listener: NIXL cannot report the port it bound, so pick one first.
fn free_port(ip: std::net::IpAddr) -> Result<u16> {
    let probe = std::net::TcpListener::bind((ip, 0)).map_err(|e| Error::system("choosing a listener port", e))?;
    Ok(probe.local_addr().map_err(|e| Error::system("choosing a listener port", e))?.port())
}

/// A NIXL agent serving its metadata on NIXL's listener, and its connection
/// info. A port picked for NIXL can be taken by someone else before NIXL binds
/// it; then try another.
fn create_with_nixl_listener(settings: &AgentSettings) -> Result<(NixlHandle, String)> {
    let options =
        |port| NixlOptions::resolve(settings.progress_thread, settings.num_workers, &settings.backend_params, port);
    if !settings.use_listener {
        // NIXL fetches peers' metadata through its listener thread, so an agent that
        // loads peers by connection info needs one: unadvertised, on an ephemeral port.
        return Ok((NixlHandle::create(&settings.name, &options(Some(0)))?, String::new()));
    }
    let ip = net::choose_listen_ip(settings.listen_ip.as_deref(), "TRTLLM_NIXL_INTERFACE")?;
    let attempts = if settings.listen_port != 0 { 1 } else { 5 };
    let mut last = None;
    for _ in 0..attempts {
        let port = if settings.listen_port != 0 { settings.listen_port } else { free_port(ip)? };
        match NixlHandle::create(&settings.name, &options(Some(port))) {
            Ok(handle) => return Ok((handle, net::format_connection_info(&std::net::SocketAddr::new(ip, port)))),
            Err(e) if e.status == kvx_status::KVX_ERR_TRANSPORT => {
                last = Some(e.context(&format!("listening on port {port}")))
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("at least one attempt"))
}

impl NixlAgent {
    /// A peer's metadata once its MAC is verified. Stock NIXL agents cannot
    /// authenticate: with `KVX_NIXL_STOCK_PEERS=1` their (unsealed) metadata
    /// passes, but kvxfer's own metadata without a valid MAC never does.
    fn authenticated<'a>(&self, name: &str, bytes: &'a [u8]) -> Result<&'a [u8]> {
        match descriptor_service::open(&self.core.auth, name, bytes) {
            Err(e) if e.status == kvx_status::KVX_ERR_AUTH && stock_peers() && wire::is_stock_nixl_metadata(bytes) => {
                crate::log_at!(
                    Debug,
                    "loading stock NIXL metadata of {name:?} unauthenticated (KVX_NIXL_STOCK_PEERS=1)"
                );
                Ok(bytes)
            }
            other => other,
        }
    }

    /// Load a peer's (sealed) metadata. `just_fetched`: it came from the peer's
    /// listener a moment ago, so the peer was alive and the metadata is current.
    fn load_descriptor(&self, name: &str, descriptor: &[u8], just_fetched: bool, started: Instant) -> Result<()> {
        self.load_descriptor_inner(name, descriptor, just_fetched, started)
            .inspect_err(|e| self.core.load_failed(name, started, e))
    }

    fn load_descriptor_inner(&self, name: &str, descriptor: &[u8], just_fetched: bool, started: Instant) -> Result<()> {
        if name == self.core.handle.name {
            return Ok(()); // NIXL serves loop-back transfers without loading itself.
        }
        let descriptor = self.authenticated(name, descriptor)?;
        let known =
            self.core.remotes.lock().get(name).map(|r| r.failed.is_none() && r.metadata.as_deref() == Some(descriptor));
        match known {
            Some(true) => return Ok(()),
            Some(false) => {
                // New metadata for a known name (a restarted peer): NIXL must forget the old first.
                let _ = self.core.drop_peer(name, "was reloaded");
            }
            None => {}
        }
        let opened = wire::open_nixl_metadata(descriptor, stock_peers())?;
        let (metadata, fingerprint) = (opened.metadata, UnreachableMetadata::fingerprint(opened.metadata));
        if !just_fetched && self.core.unreachable.lock().contains(fingerprint) {
            return Err(Error::peer(format!(
                "agent {name:?} could not be reached with this metadata before; load its current metadata (a restarted peer publishes new metadata)"
            )));
        }
        // Loading an exited agent's metadata costs a socket inside NIXL: ask its
        // listener first (also right after a fetch, which the agent may not have outlived).
        let listener = opened.listener.and_then(|l| net::parse_connection_info(l).ok());
        if let Some(listener) = listener {
            if control::listener_gone(listener) {
                self.core.release_dormant(name);
                self.core.unreachable.lock().record(fingerprint);
                return Err(Error::peer(format!(
                    "agent {name:?} has exited: its listener {listener} refuses connections"
                )));
            }
        }
        let carried = wire::nixl_metadata_name(metadata)?;
        if carried != name {
            return Err(Error::invalid(format!("descriptor belongs to agent {carried:?}, not {name:?}")));
        }
        if self.core.wake_dormant(name, descriptor) {
            // Still loaded in NIXL from the same descriptor: reuse its connection.
            self.core.remember(name, Some(descriptor.to_vec()), started);
            return Ok(());
        }
        let nixl_name = self.core.nixl_name(name).into_owned();
        let renamed;
        let metadata = if nixl_name != name {
            renamed = wire::rename_nixl_metadata(metadata, &nixl_name)?;
            &renamed[..]
        } else {
            metadata
        };
        let loaded = self.core.handle.load_metadata(metadata).map_err(|e| {
            // The peer's listener answered just now: it lives, so what NIXL could not use is its metadata.
            if e.status == kvx_status::KVX_ERR_PEER && listener.is_some() {
                Error::malformed(format!("{} (agent {name:?} is alive: its metadata is malformed)", e.message))
            } else {
                e
            }
        });
        let loaded = loaded.inspect_err(|e| {
            // A half-loaded peer may block later loads of its NIXL name: clear it, and use another.
            let _ = self.core.handle.invalidate(&nixl_name);
            self.core.retire_nixl_name(name);
            if e.status == kvx_status::KVX_ERR_PEER {
                self.core.unreachable.lock().record(fingerprint);
            }
        })?;
        if loaded != nixl_name {
            if !self.core.remotes.lock().contains_key(&loaded) {
                let _ = self.core.handle.invalidate(&loaded);
            }
            return Err(Error::invalid(format!("descriptor belongs to agent {loaded:?}, not {name:?}")));
        }
        self.core.connect_early(name);
        self.core.remember(name, Some(descriptor.to_vec()), started);
        Ok(())
    }

    /// The local list lies in memory registered here with the request's type (and, to
    /// this agent itself, the remote list too), or the error says which rule broke.
    /// A peer's memory is checked by NIXL itself when it prepares the request, before
    /// anything is posted; `explain_refusal` names the offending range then.
    fn check_local(
        &self,
        req: &TransferRequest<'_>,
        local: &[kvx_memory_desc],
        remote: &[kvx_memory_desc],
        is_self: bool,
    ) -> Result<()> {
        let regions = self.core.local.lock();
        check_registered(&regions, "local", req.local_type, local)?;
        if is_self {
            check_registered(&regions, "remote", req.remote_type, remote)?;
        }
        Ok(())
    }

    /// NIXL refused to prepare a request to a peer (`refused`; its C API says "backend
    /// error" for every reason): when a remote range lies outside what the peer
    /// registered, say which; otherwise keep NIXL's word.
    fn explain_refusal(&self, req: &TransferRequest<'_>, nixl_name: &str, refused: Error) -> Error {
        let handle = &self.core.handle;
        let remote = req.remote;
        if handle.check_remote(nixl_name, req.remote_type, remote).unwrap_or(true) {
            return refused;
        }
        // Name the first offending descriptor (error path only: one check each).
        let first_bad = remote
            .iter()
            .enumerate()
            .find(|(_, d)| !handle.check_remote(nixl_name, req.remote_type, std::slice::from_ref(d)).unwrap_or(true));
        let what = first_bad.map_or("a remote range".to_owned(), |(i, d)| {
            format!("descriptor {i}: remote range {:#x}+{}", d.addr, d.len)
        });
        Error::new(
            kvx_status::KVX_ERR_NOT_REGISTERED,
            format!("{what} is outside the memory {:?} registered (or of another memory type)", req.remote_name),
        )
    }
}

impl TransferAgent for NixlAgent {
    type Transfer = NixlTransfer;

    fn create(settings: &AgentSettings) -> Result<Self> {
        if stock_peers() {
            crate::log_at!(
                Warn,
                "KVX_NIXL_STOCK_PEERS=1: agent {:?} accepts metadata from stock NIXL agents, which cannot be \
                 authenticated{}, and serves and fetches metadata through NIXL's own listener, which kvxfer cannot \
                 authenticate or restrict (KVX_ALLOWED_PEERS does not apply to it). Only kvxfer framing checks stand \
                 between a peer's bytes and NIXL",
                settings.name,
                if settings.auth.is_enabled() { " even though KVX_AUTH_KEY is set" } else { "" }
            );
        }
        let (handle, nixl_listener) = if stock_peers() {
            let (handle, connection_info) = create_with_nixl_listener(settings)?;
            (handle, Some(connection_info))
        } else {
            let options =
                NixlOptions::resolve(settings.progress_thread, settings.num_workers, &settings.backend_params, None);
            (NixlHandle::create(&settings.name, &options)?, None)
        };
        let transport = Arc::new(CString::new(handle.plugin.clone()).unwrap_or_default());
        let core = Arc::new(AgentCore {
            handle,
            timeout: Duration::from_millis(settings.timeout_ms),
            local: Mutex::new(Registrations::new(crate::cuda::locate_pointer)),
            remotes: Mutex::new(HashMap::new()),
            dormant: Mutex::new(HashMap::new()),
            unreachable: Mutex::new(UnreachableMetadata::default()),
            connection_info: OnceCell::new(),
            notifications: NotificationQueue::default(),
            inflight: Mutex::new(Vec::new()),
            waker: Arc::new(Waker::default()),
            auth: settings.auth.clone(),
            load_generations: Mutex::new(HashMap::new()),
            poll_failure: Default::default(),
            stats: Scope::new(ScopeKind::Agent, "NIXL", &settings.name),
            transport,
            coalesce: super::handle::coalescing_from_env(),
        });
        let poller = Poller::spawn(Arc::downgrade(&core), core.waker.clone(), tick)?;
        let (metadata_server, connection_info) = match &nixl_listener {
            Some(connection_info) => (None, connection_info.clone()),
            None => {
                let server = descriptor_service::serve(settings, &core)?;
                let connection_info = descriptor_service::connection_info(server.as_ref());
                (server, connection_info)
            }
        };
        core.connection_info.set(connection_info).expect("set once, here");
        Ok(NixlAgent {
            _metadata_server: metadata_server,
            nixl_listener: nixl_listener.is_some(),
            poller: Some(poller),
            core,
        })
    }

    fn timeout_ms(&self) -> u64 {
        self.core.timeout.as_millis() as u64
    }

    fn register_memory(&self, mem_type: kvx_memory_type, descs: &[kvx_memory_desc]) -> Result<()> {
        let handle = &self.core.handle;
        self.core.local.lock().register(mem_type, descs, |new| {
            handle.register(mem_type, new, true)?;
            Ok(vec![(); new.len()])
        })
    }

    fn deregister_memory(&self, _mem_type: kvx_memory_type, descs: &[kvx_memory_desc]) -> Result<()> {
        // One NIXL call per memory type: a call per region took 324 ms for 10,000 regions.
        let mut released: Vec<(kvx_memory_type, kvx_memory_desc)> = Vec::new();
        self.core.local.lock().deregister(descs, |d, region| released.push((region.mem_type, d)))?;
        let mut failures = Vec::new();
        for mem_type in [kvx_memory_type::KVX_MEMORY_DRAM, kvx_memory_type::KVX_MEMORY_VRAM] {
            let batch: Vec<kvx_memory_desc> =
                released.iter().filter(|(t, _)| *t == mem_type).map(|(_, d)| *d).collect();
            if !batch.is_empty() {
                if let Err(e) = self.core.handle.register(mem_type, &batch, false) {
                    failures.push(e);
                }
            }
        }
        failures.into_iter().next().map_or(Ok(()), Err)
    }

    fn local_descriptor(&self) -> Result<Vec<u8>> {
        self.core.describe()
    }

    fn connection_info(&self) -> Result<String> {
        Ok(self.core.connection_info.get().cloned().unwrap_or_default())
    }

    fn load_remote(&self, name: &str, descriptor: &[u8]) -> Result<()> {
        self.load_descriptor(name, descriptor, false, Instant::now())
    }

    fn load_remote_by_connection_info(
        &self,
        name: &str,
        connection_info: &str,
        deadline: Option<Instant>,
    ) -> Result<()> {
        let started = Instant::now();
        let addr = net::parse_connection_info(connection_info)?;
        let known = self.core.remotes.lock().get(name).map(|r| r.failed.is_none());
        // Already loaded and healthy; a restarted peer is picked up after `invalidate_remote`.
        if known == Some(true) {
            return Ok(());
        }
        let deadline = deadline.unwrap_or_else(|| Instant::now() + self.core.timeout);
        if !self.nixl_listener {
            let descriptor = descriptor_service::fetch(
                name,
                connection_info,
                &self.core.auth,
                deadline.saturating_duration_since(Instant::now()),
            )
            .inspect_err(|e| self.core.load_failed(name, started, e))?;
            return self.load_descriptor(name, &descriptor, true, started);
        }
        if known == Some(false) {
            let _ = self.core.drop_peer(name, "failed and is loaded again");
        }
        let handle = &self.core.handle;
        // NIXL's listener loads the peer under its own name.
        self.core.load_generations.lock().remove(name);
        handle.fetch_metadata(name, &addr.ip().to_string(), addr.port())?;
        // NIXL 1.5.1 may send the request on a socket to an earlier process at that
        // address (a restarted peer), which never answers: ask once more, on a fresh request.
        let mut retry_at =
            Some(Instant::now() + STOCK_FETCH_RETRY.min(deadline.saturating_duration_since(Instant::now()) / 2));
        // NIXL loads the answer on its listener thread: poll until it is usable, as TensorRT-LLM does.
        loop {
            if handle.check_remote(name, kvx_memory_type::KVX_MEMORY_DRAM, &[])? {
                break;
            }
            if retry_at.is_some_and(|at| Instant::now() >= at) {
                retry_at = None;
                crate::log_at!(Info, "agent {name:?} did not answer at {connection_info} yet: asking again");
                handle.fetch_metadata(name, &addr.ip().to_string(), addr.port())?;
            }
            if Instant::now() >= deadline {
                return Err(Error::timeout(format!(
                    "agent {name:?} did not answer at {connection_info} in time (is that its name and listener?)"
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.core.connect_early(name);
        self.core.remember(name, None, started);
        Ok(())
    }

    fn invalidate_remote(&self, name: &str) -> Result<()> {
        match self.core.remotes.lock().get(name) {
            None => return Err(Error::not_found(format!("remote agent {name:?} is not loaded"))),
            Some(remote) => remote.stats.invalidated(),
        }
        self.core.put_to_sleep(name)
    }

    fn check_remote_descs(&self, name: &str, mem_type: kvx_memory_type, descs: &[kvx_memory_desc]) -> Result<bool> {
        if name == self.core.handle.name {
            return Ok(check_registered(&self.core.local.lock(), "remote", mem_type, descs).is_ok());
        }
        if !self.core.remotes.lock().contains_key(name) {
            return Ok(false);
        }
        self.core.handle.check_remote(&self.core.nixl_name(name), mem_type, descs)
    }

    fn submit(&self, req: &TransferRequest<'_>) -> Result<NixlTransfer> {
        let core = &self.core;
        let peer = core.loaded_peer_stats(req.remote_name)?;
        let is_self = req.remote_name == core.handle.name;
        let nixl_name = core.nixl_name(req.remote_name);
        let op = match req.op {
            kvx_transfer_op::KVX_OP_READ => NIXL_CAPI_XFER_OP_READ,
            kvx_transfer_op::KVX_OP_WRITE => NIXL_CAPI_XFER_OP_WRITE,
        };
        let prepare = |local: &[kvx_memory_desc], remote: &[kvx_memory_desc]| {
            core.handle.prepare(op, (req.local_type, local), (req.remote_type, remote), &nixl_name, req.sync_message)
        };
        // Merge runs contiguous on both sides (one NIXL descriptor each); a merged run
        // that crosses two registrations on either side falls back to the request as given.
        let (merged_local, merged_remote) = if core.coalesce {
            coalesce(req.local, req.remote)
        } else {
            (Cow::Borrowed(req.local), Cow::Borrowed(req.remote))
        };
        let mut prepared = None;
        let mut posted_descs = req.local.len();
        if matches!(merged_local, Cow::Owned(_))
            && self.check_local(req, &merged_local, &merged_remote, is_self).is_ok()
        {
            if let Ok(merged) = prepare(&merged_local, &merged_remote) {
                posted_descs = merged_local.len();
                prepared = Some(merged);
            }
        }
        let prepared = match prepared {
            Some(merged) => merged,
            None => {
                self.check_local(req, req.local, req.remote, is_self)?;
                // NIXL checks the peer's side here, before anything is posted.
                prepare(req.local, req.remote).map_err(|e| {
                    if is_self {
                        e
                    } else {
                        self.explain_refusal(req, &nixl_name, e)
                    }
                })?
            }
        };
        let (request, posted) = prepared.post()?;
        // Posted: from here on it is a transfer (a refusal above is counted by the dispatch layer).
        let record = TransferRecord::start(
            &peer,
            req.op,
            req.bounds.bytes,
            req.local.len(),
            posted_descs,
            kvx_xfer_path::KVX_PATH_NIXL,
            core.transport.clone(),
        );
        let shared = Arc::new(TransferShared {
            request: Mutex::new(Some(request)),
            outcome: Mutex::new(None),
            deadline: Instant::now() + core.timeout,
            remote: req.remote_name.to_owned(),
            orphaned: AtomicBool::new(false),
            record,
            cancel_note: Mutex::new(None),
        });
        if posted == NIXL_CAPI_SUCCESS {
            shared.settle(core, Ok(()));
        } else {
            if let Some(remote) = core.remotes.lock().get_mut(req.remote_name) {
                remote.pending.retain(|w| w.upgrade().is_some_and(|t| t.outcome.lock().is_none()));
                remote.pending.push(Arc::downgrade(&shared));
            }
            core.inflight.lock().push(shared.clone());
            // Only a transfer still running needs the poller; waking it costs
            // a thread switch and a datagram, as much as a small transfer.
            core.wake_poller();
        }
        Ok(NixlTransfer { shared, core: core.clone() })
    }

    fn notify(&self, name: &str, message: &[u8]) -> Result<()> {
        if message.len() > wire::MAX_NOTIFICATION {
            return Err(Error::invalid(format!("notification exceeds {} bytes", wire::MAX_NOTIFICATION)));
        }
        if name == self.core.handle.name {
            self.core.notifications.push(name.to_owned(), message.to_vec());
            return Ok(());
        }
        self.core.ensure_loaded(name)?;
        self.core.handle.send_notification(&self.core.nixl_name(name), message)?;
        self.core.wake_poller();
        Ok(())
    }

    fn take_notifications(&self) -> Result<Vec<(String, Vec<u8>)>> {
        // Deliver anything already arrived before reporting.
        self.core.drain_notifications()?;
        let arrived = self.core.notifications.drain();
        self.core.stats.notifications_drained(&arrived);
        Ok(arrived)
    }

    fn stats(&self) -> &Arc<Scope> {
        &self.core.stats
    }

    fn copy_files(request: &crate::dispatch::FileCopy<'_>) -> Result<&'static std::ffi::CStr> {
        super::files::copy(request)
    }
}

impl Drop for NixlAgent {
    fn drop(&mut self) {
        self.poller.take();
        // Transfers still running end now: NIXL aborts them when released.
        for t in self.core.inflight.lock().drain(..) {
            t.settle(&self.core, Err(Error::new(kvx_status::KVX_ERR_CANCELED, "agent destroyed")));
            t.finish_if_settled(&self.core);
        }
    }
}

struct TransferShared {
    /// The NIXL request until it is released.
    request: Mutex<Option<nixl_capi_xfer_req_t>>,
    outcome: Mutex<Option<Result<()>>>,
    deadline: Instant,
    /// The peer, failed closed when this transfer fails or times out.
    remote: String,
    /// Its handle was destroyed: the poller releases it when it ends.
    orphaned: AtomicBool,
    record: TransferRecord,
    /// What a cancel did, shown after the transfer's outcome.
    cancel_note: Mutex<Option<String>>,
}

// SAFETY: the request pointer is only used under its lock, through a thread-safe NIXL agent.
unsafe impl Send for TransferShared {}
unsafe impl Sync for TransferShared {}

impl TransferShared {
    /// Record the first outcome; later ones are ignored (a peer or timeout failure still fails the peer closed).
    fn settle(&self, core: &AgentCore, outcome: Result<()>) {
        if let Err(e) = &outcome {
            if matches!(e.status, kvx_status::KVX_ERR_PEER | kvx_status::KVX_ERR_TIMEOUT) {
                core.mark_failed(&self.remote, e);
            }
        }
        let mut slot = self.outcome.lock();
        if slot.is_none() {
            self.record.finish(&outcome);
            *slot = Some(outcome);
        }
    }

    /// Fail a transfer still running: NIXL aborts it when released.
    fn fail(&self, core: &AgentCore, error: Error) {
        self.settle(core, Err(error));
        self.finish_if_settled(core);
    }

    /// Ask NIXL how the transfer is doing (this also progresses it); fail it past its deadline.
    fn poll(&self, core: &AgentCore) {
        if self.outcome.lock().is_some() {
            return;
        }
        let status = match *self.request.lock() {
            // SAFETY: the request is this transfer's, and released only after it is taken out of the slot.
            Some(req) => unsafe { core.handle.transfer_status(req) },
            None => return,
        };
        match status {
            NIXL_CAPI_SUCCESS => self.settle(core, Ok(())),
            NIXL_CAPI_IN_PROG if Instant::now() >= self.deadline => {
                self.settle(core, Err(Error::timeout("transfer did not complete within the agent's timeout")));
            }
            NIXL_CAPI_IN_PROG => {}
            s => self.settle(core, Err(Error::peer(format!("transfer failed: NIXL status {s} ({})", status_name(s))))),
        }
    }

    /// Release the NIXL request once the outcome is known; true when released.
    fn finish_if_settled(&self, core: &AgentCore) -> bool {
        if self.outcome.lock().is_none() {
            return false;
        }
        if let Some(req) = self.request.lock().take() {
            // SAFETY: taking it out of the slot makes this the request's only and last use.
            unsafe { core.handle.release(req) };
        }
        true
    }

    fn state(&self) -> kvx_transfer_state {
        match &*self.outcome.lock() {
            None => kvx_transfer_state::KVX_TRANSFER_IN_PROGRESS,
            Some(Ok(())) => kvx_transfer_state::KVX_TRANSFER_SUCCESS,
            Some(Err(_)) => kvx_transfer_state::KVX_TRANSFER_FAILURE,
        }
    }
}

/// Bounds of the pause between looks of a transfer wait.
const WAIT_PAUSE_LEAST: Duration = Duration::from_micros(20);
const WAIT_PAUSE_MOST: Duration = Duration::from_millis(20);

pub struct NixlTransfer {
    shared: Arc<TransferShared>,
    core: Arc<AgentCore>,
}

impl Transfer for NixlTransfer {
    fn is_completed(&self) -> bool {
        self.shared.poll(&self.core);
        self.shared.state() == kvx_transfer_state::KVX_TRANSFER_SUCCESS
    }

    fn wait(&self, deadline: Option<Instant>) -> kvx_transfer_state {
        // Most small transfers end inside their post: no clock to read then.
        let state = self.shared.state();
        if state != kvx_transfer_state::KVX_TRANSFER_IN_PROGRESS {
            self.shared.finish_if_settled(&self.core);
            return state;
        }
        let limit = deadline.map_or(self.shared.deadline, |d| d.min(self.shared.deadline));
        let started = Instant::now();
        loop {
            self.shared.poll(&self.core);
            let mut state = self.shared.state();
            if state == kvx_transfer_state::KVX_TRANSFER_IN_PROGRESS && Instant::now() >= limit {
                // Past the limit: one more look, which at the transfer's own deadline also fails it.
                self.shared.poll(&self.core);
                state = self.shared.state();
            }
            if state != kvx_transfer_state::KVX_TRANSFER_IN_PROGRESS || Instant::now() >= limit {
                if state != kvx_transfer_state::KVX_TRANSFER_IN_PROGRESS {
                    self.shared.finish_if_settled(&self.core);
                }
                return state;
            }
            // Polling drives NIXL's progress: spin briefly for small transfers, then pause for
            // about 1% of the time waited so far, so a transfer stalled on a silent peer costs
            // a few wake-ups a second.
            let waited = started.elapsed();
            if waited < Duration::from_micros(200) {
                std::thread::yield_now();
            } else {
                let pause = super::poller::pause_after(waited, WAIT_PAUSE_LEAST, WAIT_PAUSE_MOST);
                std::thread::sleep(pause.min(limit.saturating_duration_since(Instant::now())));
            }
        }
    }

    fn release(&self) -> bool {
        self.shared.finish_if_settled(&self.core)
    }

    fn last_status(&self) -> String {
        let outcome = match &*self.shared.outcome.lock() {
            None => "in progress".into(),
            Some(Ok(())) => "success".into(),
            Some(Err(e)) => e.to_string(),
        };
        match self.shared.cancel_note.lock().as_ref() {
            Some(note) => format!("{outcome}; {note}"),
            None => outcome,
        }
    }

    fn record(&self) -> &TransferRecord {
        &self.shared.record
    }

    fn cancel(&self) -> bool {
        let canceled = {
            let mut outcome = self.shared.outcome.lock();
            let first = outcome.is_none();
            if first {
                let why =
                    Err(Error::new(kvx_status::KVX_ERR_CANCELED, "transfer canceled by release() while in flight"));
                self.shared.record.finish(&why);
                *outcome = Some(why);
            }
            first
        };
        if !canceled {
            return self.shared.finish_if_settled(&self.core);
        }
        let (released, note) = self.drain_and_release();
        *self.shared.cancel_note.lock() = Some(note);
        released
    }
}

/// How long a cancel lets NIXL finish what it posted before it aborts the request.
const CANCEL_DRAIN: Duration = Duration::from_secs(2);

impl NixlTransfer {
    /// Let NIXL finish the posted request for a short while (the peer stays
    /// usable), else abort it by releasing it and mark the peer failed, as
    /// an aborted request may leave the connection in an unknown state.
    fn drain_and_release(&self) -> (bool, String) {
        let drain_until = Instant::now() + CANCEL_DRAIN;
        let mut request = self.shared.request.lock();
        let Some(req) = *request else {
            return (true, "the request was already released".into());
        };
        // SAFETY: the request is this transfer's and still in its slot, whose lock we hold.
        let poll = || unsafe { self.core.handle.transfer_status(req) };
        let mut status = poll();
        while status == NIXL_CAPI_IN_PROG && Instant::now() < drain_until {
            std::thread::sleep(Duration::from_micros(50));
            status = poll();
        }
        request.take();
        // SAFETY: taken out of the slot under its lock: this is the request's last use.
        let released = unsafe { self.core.handle.release(req) };
        drop(request);
        if status != NIXL_CAPI_IN_PROG {
            let how = if status == NIXL_CAPI_SUCCESS { "finished" } else { "ended" };
            return (true, format!("what was already posted {how} in NIXL; the peer stays usable"));
        }
        let why = Error::peer("a transfer to this peer was canceled and NIXL had to abort it");
        self.core.mark_failed(&self.shared.remote, &why);
        if released == NIXL_CAPI_SUCCESS {
            (true, "NIXL aborted the request; the peer is marked failed (invalidate and load it again)".into())
        } else {
            let name = status_name(released);
            (false, format!("NIXL could not abort the request (status {released}, {name}); the peer is marked failed"))
        }
    }
}

impl Drop for NixlTransfer {
    fn drop(&mut self) {
        // Still running: the caller's memory must stay valid until it ends (documented);
        // the poller releases the NIXL request then.
        self.shared.orphaned.store(true, Ordering::Release);
        self.shared.finish_if_settled(&self.core);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_metadata_is_remembered_per_content_and_bounded() {
        let mut memo = UnreachableMetadata::default();
        let dead = UnreachableMetadata::fingerprint(b"metadata of a dead peer");
        let restarted = UnreachableMetadata::fingerprint(b"metadata of its restart");
        assert!(!memo.contains(dead));
        memo.record(dead);
        assert!(memo.contains(dead));
        assert!(!memo.contains(restarted));
        for i in 0..2 * MAX_UNREACHABLE_REMEMBERED as u64 {
            memo.record(i);
        }
        assert_eq!(memo.recent.len(), MAX_UNREACHABLE_REMEMBERED);
        assert!(!memo.contains(dead), "the oldest entries go first");
    }
}
