//! Counters every backend shares: per agent or connection manager (a
//! `Scope`), per peer (`PeerStats`), latency histograms by request size, and
//! the facts of each transfer (`TransferRecord`, read through
//! `kvx_xfer_info`). Counting is a few relaxed atomic adds per transfer;
//! `KVX_STATS=0` turns counters, histograms and transfer timestamps off
//! (a transfer's bytes, descriptors, path, peer and status are always kept).
//!
//! Scopes register themselves in one process-wide list, which the
//! Prometheus endpoint (`core::metrics`) and the JSON snapshots read.

use super::error::{kvx_status, Error, Result};
use super::log::{self, Level};
use super::request::{kvx_transfer_op, kvx_transfer_state};
use once_cell::sync::{Lazy, OnceCell};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Version of the JSON snapshots (`kvx_agent_stats`, `kvx_cm_stats`); fields are only added.
pub const SNAPSHOT_SCHEMA: u32 = 1;

static ENABLED: Lazy<AtomicBool> = Lazy::new(|| AtomicBool::new(std::env::var("KVX_STATS").map_or(true, |v| v != "0")));

/// Whether counters are kept (`KVX_STATS`, default on).
pub fn enabled() -> bool {
    ENABLED.load(Relaxed)
}

/// Turn counting on or off at run time (the benchmark measures its cost this way).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Relaxed);
}

/// How a transfer travelled.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum kvx_xfer_path {
    KVX_PATH_UNKNOWN = 0,
    /// UCX RMA (`ucp_put_nbx`/`ucp_get_nbx`); `transport` names UCX's transports.
    KVX_PATH_UCX = 1,
    /// kvxfer's batched CUDA IPC copy (same host, device to device).
    KVX_PATH_CUDA_IPC_BATCH = 2,
    /// A NIXL transfer request; `transport` names NIXL's plugin.
    KVX_PATH_NIXL = 3,
}

impl kvx_xfer_path {
    pub fn name(self) -> &'static str {
        match self {
            kvx_xfer_path::KVX_PATH_UNKNOWN => "unknown",
            kvx_xfer_path::KVX_PATH_UCX => "ucx",
            kvx_xfer_path::KVX_PATH_CUDA_IPC_BATCH => "cuda_ipc_batch",
            kvx_xfer_path::KVX_PATH_NIXL => "nixl",
        }
    }
}

/// Slots of the failures-by-status counters: index `-status`, 0 for anything unknown.
const STATUS_SLOTS: usize = 32;

fn status_slot(status: kvx_status) -> usize {
    let s = -(status as i32);
    if s > 0 && (s as usize) < STATUS_SLOTS {
        s as usize
    } else {
        0
    }
}

fn status_of_slot(slot: usize) -> Option<kvx_status> {
    kvx_status::ALL.iter().copied().find(|s| status_slot(*s) == slot && (*s as i32) < 0)
}

/// Upper bounds (seconds) of the latency buckets; the last bucket is +Inf.
pub const LATENCY_BOUNDS: [f64; 19] = [
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Request size classes of the latency histograms: (label, largest request in the class).
pub const SIZE_CLASSES: [(&str, u64); 5] =
    [("64KiB", 64 << 10), ("1MiB", 1 << 20), ("16MiB", 16 << 20), ("256MiB", 256 << 20), ("inf", u64::MAX)];

fn size_class(bytes: u64) -> usize {
    SIZE_CLASSES.iter().position(|(_, max)| bytes <= *max).unwrap_or(SIZE_CLASSES.len() - 1)
}

/// A fixed-bucket histogram of durations.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe_ns(&self, ns: u64) {
        // Integer bounds: no float work on the transfer path.
        static BOUNDS_NS: Lazy<[u64; LATENCY_BOUNDS.len()]> =
            Lazy::new(|| LATENCY_BOUNDS.map(|b| (b * 1e9).round() as u64));
        let i = BOUNDS_NS.iter().position(|b| ns <= *b).unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// (sum in seconds, count, per-bucket counts `(upper bound, count)` without +Inf).
    pub fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> =
            LATENCY_BOUNDS.iter().enumerate().map(|(i, bound)| (*bound, self.buckets[i].load(Relaxed))).collect();
        let total = buckets.iter().map(|b| b.1).sum::<u64>() + self.buckets[LATENCY_BOUNDS.len()].load(Relaxed);
        (self.sum_ns.load(Relaxed) as f64 * 1e-9, total, buckets)
    }

    fn json(&self) -> Value {
        let (sum, count, buckets) = self.read();
        // Cumulative, as Prometheus shows them.
        let cumulative: Vec<Value> = buckets
            .iter()
            .scan(0u64, |at, (le, n)| {
                *at += n;
                Some(json!({"le": le, "count": *at}))
            })
            .collect();
        json!({"count": count, "sum_seconds": sum, "buckets": cumulative})
    }
}

/// Counters kept both per scope and per peer.
#[derive(Default)]
pub struct Counters {
    pub transfers_started: AtomicU64,
    pub transfers_completed: AtomicU64,
    pub transfers_failed: [AtomicU64; STATUS_SLOTS],
    /// Submissions refused before anything was posted, by status.
    pub submits_refused: [AtomicU64; STATUS_SLOTS],
    /// Bytes of completed WRITEs (local to peer) and READs (peer to local).
    pub bytes_written: AtomicU64,
    pub bytes_read: AtomicU64,
    pub inflight: AtomicI64,
    pub notifications_sent: AtomicU64,
    pub notifications_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub messages_received: AtomicU64,
    pub message_bytes_sent: AtomicU64,
    pub message_bytes_received: AtomicU64,
    pub message_failures: [AtomicU64; STATUS_SLOTS],
    pub connection_setups: AtomicU64,
    pub connection_setup_failures: AtomicU64,
    pub connection_setup_ns: AtomicU64,
    pub peers_loaded: AtomicU64,
    pub peers_invalidated: AtomicU64,
    pub peers_failed: AtomicU64,
}

fn by_status(slots: &[AtomicU64; STATUS_SLOTS]) -> Value {
    let mut out = serde_json::Map::new();
    for (i, n) in slots.iter().enumerate() {
        let n = n.load(Relaxed);
        if n > 0 {
            let name = status_of_slot(i).map_or("KVX_UNKNOWN_STATUS", kvx_status::name);
            out.insert(name.into(), Value::from(n));
        }
    }
    Value::Object(out)
}

impl Counters {
    /// Failures by status name (nonzero only), for exposition.
    pub fn failures(slots: &[AtomicU64; STATUS_SLOTS]) -> Vec<(&'static str, u64)> {
        slots
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let n = n.load(Relaxed);
                (n > 0).then(|| (status_of_slot(i).map_or("KVX_UNKNOWN_STATUS", kvx_status::name), n))
            })
            .collect()
    }

    fn json(&self) -> Value {
        json!({
            "transfers_started": self.transfers_started.load(Relaxed),
            "transfers_completed": self.transfers_completed.load(Relaxed),
            "transfers_failed": by_status(&self.transfers_failed),
            "submits_refused": by_status(&self.submits_refused),
            "transfers_in_flight": self.inflight.load(Relaxed).max(0),
            "bytes_written": self.bytes_written.load(Relaxed),
            "bytes_read": self.bytes_read.load(Relaxed),
            "notifications_sent": self.notifications_sent.load(Relaxed),
            "notifications_received": self.notifications_received.load(Relaxed),
            "messages_sent": self.messages_sent.load(Relaxed),
            "messages_received": self.messages_received.load(Relaxed),
            "message_bytes_sent": self.message_bytes_sent.load(Relaxed),
            "message_bytes_received": self.message_bytes_received.load(Relaxed),
            "message_failures": by_status(&self.message_failures),
            "connection_setups": self.connection_setups.load(Relaxed),
            "connection_setup_failures": self.connection_setup_failures.load(Relaxed),
            "connection_setup_seconds": self.connection_setup_ns.load(Relaxed) as f64 * 1e-9,
            "peers_loaded": self.peers_loaded.load(Relaxed),
            "peers_invalidated": self.peers_invalidated.load(Relaxed),
            "peers_failed": self.peers_failed.load(Relaxed),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeKind {
    Agent,
    ConnectionManager,
}

impl ScopeKind {
    pub fn name(self) -> &'static str {
        match self {
            ScopeKind::Agent => "agent",
            ScopeKind::ConnectionManager => "connection_manager",
        }
    }
}

/// Peers tracked per scope; past this, new peers count under `OTHER_PEERS`
/// (a peer cannot grow our memory or a scrape without bound by changing names).
const MAX_PEERS: usize = 4096;
pub const OTHER_PEERS: &str = "(other)";

/// The counters of one agent or connection manager.
pub struct Scope {
    pub kind: ScopeKind,
    pub backend: &'static str,
    name: Mutex<String>,
    pub counters: Counters,
    /// Latency of successful transfers, by request size class.
    pub latency: [Histogram; SIZE_CLASSES.len()],
    pub connection_setup: Histogram,
    peers: Mutex<HashMap<String, Arc<PeerStats>>>,
}

static SCOPES: Mutex<Vec<Weak<Scope>>> = Mutex::new(Vec::new());

impl Scope {
    /// A new scope, listed process-wide for as long as it lives. Starts the
    /// Prometheus endpoint on first use when `KVX_METRICS_ADDR` asks for one.
    pub fn new(kind: ScopeKind, backend: &'static str, name: &str) -> Arc<Scope> {
        let scope = Arc::new(Scope {
            kind,
            backend,
            name: Mutex::new(name.to_owned()),
            counters: Counters::default(),
            latency: Default::default(),
            connection_setup: Histogram::default(),
            peers: Mutex::new(HashMap::new()),
        });
        let mut all = SCOPES.lock();
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&scope));
        drop(all);
        super::metrics::start_from_environment();
        scope
    }

    /// Every live scope, in creation order.
    pub fn all() -> Vec<Arc<Scope>> {
        SCOPES.lock().iter().filter_map(Weak::upgrade).collect()
    }

    pub fn name(&self) -> String {
        self.name.lock().clone()
    }

    /// Name a scope whose name is known only after creation (a manager's listener address).
    pub fn set_name(&self, name: &str) {
        *self.name.lock() = name.to_owned();
    }

    /// Count drained notifications against their senders.
    pub fn notifications_drained(self: &Arc<Self>, arrived: &[(String, Vec<u8>)]) {
        for (sender, _) in arrived {
            self.peer(sender).notification_received();
        }
    }

    /// The counters of peer `name` (kept after the peer is invalidated, as counters are).
    pub fn peer(self: &Arc<Self>, name: &str) -> Arc<PeerStats> {
        let mut peers = self.peers.lock();
        if let Some(p) = peers.get(name) {
            return p.clone();
        }
        let key = if peers.len() >= MAX_PEERS { OTHER_PEERS } else { name };
        peers
            .entry(key.to_owned())
            .or_insert_with(|| {
                Arc::new(PeerStats {
                    scope: self.clone(),
                    name: key.to_owned(),
                    c_name: CString::new(key.replace('\0', "")).unwrap_or_default(),
                    counters: Counters::default(),
                    transport: Mutex::new(String::new()),
                    last_failure_logged: AtomicI32::new(0),
                })
            })
            .clone()
    }

    /// Every peer's counters, sorted by name.
    pub fn peers(&self) -> Vec<Arc<PeerStats>> {
        let mut all: Vec<_> = self.peers.lock().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// A connection setup (peer load, manager connection) that took since `started`.
    pub fn connection_setup(&self, peer: &PeerStats, started: Instant, ok: bool) {
        if !enabled() {
            return;
        }
        let ns = started.elapsed().as_nanos() as u64;
        for c in [&self.counters, &peer.counters] {
            if ok {
                c.connection_setups.fetch_add(1, Relaxed);
                c.connection_setup_ns.fetch_add(ns, Relaxed);
            } else {
                c.connection_setup_failures.fetch_add(1, Relaxed);
            }
        }
        if ok {
            self.connection_setup.observe_ns(ns);
        }
    }

    /// The JSON snapshot of this scope (`kvx_agent_stats`, `kvx_cm_stats`).
    pub fn snapshot(&self) -> Value {
        let latency: serde_json::Map<String, Value> =
            SIZE_CLASSES.iter().zip(&self.latency).map(|((label, _), h)| (label.to_string(), h.json())).collect();
        let peers: serde_json::Map<String, Value> = self
            .peers()
            .iter()
            .map(|p| {
                let mut v = p.counters.json();
                v["transport"] = Value::String(p.transport());
                (p.name.clone(), v)
            })
            .collect();
        json!({
            "schema": SNAPSHOT_SCHEMA,
            "kind": self.kind.name(),
            "name": self.name(),
            "backend": self.backend,
            "stats_enabled": enabled(),
            "counters": self.counters.json(),
            "latency_seconds": latency,
            "connection_setup_seconds": self.connection_setup.json(),
            "peers": peers,
        })
    }
}

/// Every live scope's snapshot (`kvx_stats_snapshot`).
pub fn process_snapshot() -> Value {
    json!({
        "schema": SNAPSHOT_SCHEMA,
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
        "scopes": Scope::all().iter().map(|s| s.snapshot()).collect::<Vec<_>>(),
    })
}

/// One peer of a scope: its counters, and what the transport chose for it.
pub struct PeerStats {
    pub scope: Arc<Scope>,
    pub name: String,
    c_name: CString,
    pub counters: Counters,
    transport: Mutex<String>,
    /// Status of the last failure logged for this peer (0: none since the last success),
    /// so a caller retrying a failing peer logs once, not once per retry.
    last_failure_logged: AtomicI32,
}

impl PeerStats {
    fn both(&self, f: impl Fn(&Counters)) {
        f(&self.scope.counters);
        f(&self.counters);
    }

    pub fn transport(&self) -> String {
        self.transport.lock().clone()
    }

    pub fn set_transport(&self, transport: &str) {
        *self.transport.lock() = transport.to_owned();
    }

    pub fn loaded(&self) {
        if enabled() {
            self.both(|c| {
                c.peers_loaded.fetch_add(1, Relaxed);
            });
        }
    }

    pub fn invalidated(&self) {
        if enabled() {
            self.both(|c| {
                c.peers_invalidated.fetch_add(1, Relaxed);
            });
        }
    }

    /// The peer failed (its connection broke, or a transfer to it failed it closed). Logged once.
    pub fn failed(&self, why: &str) {
        if enabled() {
            self.both(|c| {
                c.peers_failed.fetch_add(1, Relaxed);
            });
        }
        self.log_failure(Level::Warn, "peer_failed", kvx_status::KVX_ERR_PEER, why, Vec::new());
    }

    pub fn notification_sent(&self) {
        if enabled() {
            self.both(|c| {
                c.notifications_sent.fetch_add(1, Relaxed);
            });
        }
    }

    pub fn notification_received(&self) {
        if enabled() {
            self.both(|c| {
                c.notifications_received.fetch_add(1, Relaxed);
            });
        }
    }

    /// A manager message sent (`sent`) or received, or its failure.
    pub fn message(&self, sent: bool, bytes: usize, outcome: &Result<()>) {
        match outcome {
            Ok(()) => {
                if enabled() {
                    self.both(|c| {
                        let (n, b) = if sent {
                            (&c.messages_sent, &c.message_bytes_sent)
                        } else {
                            (&c.messages_received, &c.message_bytes_received)
                        };
                        n.fetch_add(1, Relaxed);
                        b.fetch_add(bytes as u64, Relaxed);
                    });
                }
                self.succeeded();
            }
            Err(e) => {
                if enabled() {
                    self.both(|c| {
                        c.message_failures[status_slot(e.status)].fetch_add(1, Relaxed);
                    });
                }
                let event = if sent { "send_failed" } else { "recv_failed" };
                self.log_failure(Level::Warn, event, e.status, &e.message, vec![("bytes", Value::from(bytes))]);
            }
        }
    }

    /// A submission refused before anything was posted.
    pub fn submit_refused(&self, error: &Error) {
        if enabled() {
            self.both(|c| {
                c.submits_refused[status_slot(error.status)].fetch_add(1, Relaxed);
            });
        }
        // The caller's own mistakes are its errors to report; only the peer's are logged.
        if matches!(
            error.status,
            kvx_status::KVX_ERR_PEER | kvx_status::KVX_ERR_TIMEOUT | kvx_status::KVX_ERR_TRANSPORT
        ) {
            self.log_failure(Level::Warn, "submit_refused", error.status, &error.message, Vec::new());
        }
    }

    fn succeeded(&self) {
        if self.last_failure_logged.load(Relaxed) != 0 {
            self.last_failure_logged.store(0, Relaxed);
        }
    }

    /// Log a failure unless the same status was already logged for this peer since its last success.
    pub fn log_failure(
        &self,
        level: Level,
        event: &str,
        status: kvx_status,
        message: &str,
        fields: Vec<(&str, Value)>,
    ) {
        if self.last_failure_logged.swap(status as i32, Relaxed) == status as i32 {
            return;
        }
        let agent = self.scope.name();
        log::event(
            level,
            &log::Event {
                event,
                agent: Some(&agent),
                peer: Some(&self.name),
                status: Some(status.name()),
                fields: [vec![("backend", Value::from(self.scope.backend))], fields].concat(),
            },
            format_args!("{} {agent:?}: {event} with peer {:?}: {message}", self.scope.kind.name(), self.name),
        );
    }
}

fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// When and how a transfer ended.
#[derive(Clone, Copy)]
struct Ending {
    duration_ns: u64,
    status: kvx_status,
}

/// The facts of one transfer, kept by its backend and counted in its peer's and scope's counters.
pub struct TransferRecord {
    peer: Arc<PeerStats>,
    pub op: kvx_transfer_op,
    pub bytes: u64,
    pub descs: u64,
    pub posted_descs: u64,
    pub path: kvx_xfer_path,
    /// The transport under the path ("tcp", "rc_mlx5,cuda_copy", NIXL's plugin), shared by a peer's transfers.
    pub transport: Arc<CString>,
    /// Zero when counting is off.
    posted_unix_ns: u64,
    started: Option<Instant>,
    ending: OnceCell<Ending>,
}

impl TransferRecord {
    /// A transfer being posted now: counted as started and in flight.
    pub fn start(
        peer: &Arc<PeerStats>,
        op: kvx_transfer_op,
        bytes: u64,
        descs: usize,
        posted_descs: usize,
        path: kvx_xfer_path,
        transport: Arc<CString>,
    ) -> TransferRecord {
        let on = enabled();
        if on {
            peer.both(|c| {
                c.transfers_started.fetch_add(1, Relaxed);
                c.inflight.fetch_add(1, Relaxed);
            });
        }
        TransferRecord {
            peer: peer.clone(),
            op,
            bytes,
            descs: descs as u64,
            posted_descs: posted_descs as u64,
            path,
            transport,
            posted_unix_ns: if on { unix_ns() } else { 0 },
            started: on.then(Instant::now),
            ending: OnceCell::new(),
        }
    }

    pub fn peer(&self) -> &Arc<PeerStats> {
        &self.peer
    }

    /// Record the outcome; only the first call counts (and returns true).
    /// Failures are logged once per peer and status.
    pub fn finish(&self, outcome: &Result<()>) -> bool {
        let status = outcome.as_ref().map_or_else(|e| e.status, |_| kvx_status::KVX_OK);
        let duration_ns = self.started.map_or(0, |t| t.elapsed().as_nanos() as u64);
        let ending = Ending { duration_ns, status };
        if self.ending.set(ending).is_err() {
            return false;
        }
        if self.started.is_some() {
            let scope = &self.peer.scope;
            self.peer.both(|c| {
                c.inflight.fetch_sub(1, Relaxed);
                match outcome {
                    Ok(()) => {
                        c.transfers_completed.fetch_add(1, Relaxed);
                        let moved = match self.op {
                            kvx_transfer_op::KVX_OP_WRITE => &c.bytes_written,
                            kvx_transfer_op::KVX_OP_READ => &c.bytes_read,
                        };
                        moved.fetch_add(self.bytes, Relaxed);
                    }
                    Err(e) => {
                        c.transfers_failed[status_slot(e.status)].fetch_add(1, Relaxed);
                    }
                }
            });
            if outcome.is_ok() {
                scope.latency[size_class(self.bytes)].observe_ns(duration_ns);
            }
        }
        match outcome {
            Ok(()) => self.peer.succeeded(),
            Err(e) => self.peer.log_failure(
                Level::Warn,
                "transfer_failed",
                e.status,
                &e.message,
                vec![
                    ("op", Value::from(if self.op == kvx_transfer_op::KVX_OP_WRITE { "write" } else { "read" })),
                    ("bytes", Value::from(self.bytes)),
                    ("descriptors", Value::from(self.descs)),
                    ("path", Value::from(self.path.name())),
                    ("transport", Value::from(self.transport.to_string_lossy())),
                ],
            ),
        }
        true
    }

    /// Fill `out` (its `struct_size` already checked) with this transfer's facts.
    pub fn fill(&self, out: &mut kvx_xfer_info) {
        let ending = self.ending.get();
        let state = match ending {
            None => kvx_transfer_state::KVX_TRANSFER_IN_PROGRESS,
            Some(e) if e.status == kvx_status::KVX_OK => kvx_transfer_state::KVX_TRANSFER_SUCCESS,
            Some(_) => kvx_transfer_state::KVX_TRANSFER_FAILURE,
        };
        out.op = self.op as u32;
        out.state = state as u32;
        out.status = ending.map_or(kvx_status::KVX_IN_PROGRESS, |e| e.status) as i32;
        out.path = self.path as u32;
        out.bytes = self.bytes;
        out.descs = self.descs;
        out.posted_descs = self.posted_descs;
        out.post_time_ns = self.posted_unix_ns;
        // The posting time plus the monotonic duration: one wall-clock read per transfer, not two.
        out.completion_time_ns = match ending {
            Some(e) if self.started.is_some() => self.posted_unix_ns + e.duration_ns,
            _ => 0,
        };
        out.duration_ns =
            ending.map_or_else(|| self.started.map_or(0, |t| t.elapsed().as_nanos() as u64), |e| e.duration_ns);
        out.peer = self.peer.c_name.as_ptr();
        out.transport = self.transport.as_ptr();
    }

    /// One line for a TensorRT-LLM status string, e.g. after a failure.
    pub fn describe(&self) -> String {
        let ending = self.ending.get();
        format!(
            "peer {:?}, {} {} bytes in {} descriptor(s) ({} posted) over {} ({}), {}",
            self.peer.name,
            if self.op == kvx_transfer_op::KVX_OP_WRITE { "write" } else { "read" },
            self.bytes,
            self.descs,
            self.posted_descs,
            self.path.name(),
            self.transport.to_string_lossy(),
            match ending {
                None => "in progress".to_owned(),
                Some(e) if self.started.is_some() =>
                    format!("ended {} after {} us", e.status.name(), e.duration_ns / 1000),
                Some(e) => format!("ended {}", e.status.name()),
            }
        )
    }
}

/// A transfer's completion and its record together: whoever completes it
/// first also records the outcome, so the counters and the state agree.
pub struct TrackedCompletion {
    done: super::completion::Completion<()>,
    pub record: TransferRecord,
}

impl TrackedCompletion {
    pub fn new(record: TransferRecord) -> TrackedCompletion {
        TrackedCompletion { done: Default::default(), record }
    }

    /// Record the outcome; the first one wins. Returns whether this call won.
    pub fn complete(&self, outcome: Result<()>) -> bool {
        if !self.record.finish(&outcome) {
            return false;
        }
        self.done.complete(outcome)
    }

    pub fn peek(&self) -> Option<Result<()>> {
        self.done.peek()
    }

    pub fn is_done(&self) -> bool {
        self.done.is_done()
    }

    pub fn wait(&self, deadline: Option<Instant>, pump: impl FnMut()) -> Option<Result<()>> {
        self.done.wait(deadline, pump)
    }
}

/// What `kvx_xfer_info` reports about one transfer. Versioned by size: set
/// `struct_size = sizeof(kvx_xfer_info)` before the call; fields are only
/// ever appended. Strings stay valid until the transfer handle is destroyed.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct kvx_xfer_info {
    /// Set by the caller to `sizeof(kvx_xfer_info)`.
    pub struct_size: usize,
    /// `kvx_transfer_op` value.
    pub op: u32,
    /// `kvx_transfer_state` value at the time of the call.
    pub state: u32,
    /// `KVX_IN_PROGRESS` while running, `KVX_OK` on success, the failure's status otherwise.
    pub status: i32,
    /// `kvx_xfer_path` value: how the transfer travelled.
    pub path: u32,
    /// Bytes the request moves.
    pub bytes: u64,
    /// Descriptors in the request, and operations (or NIXL descriptors) posted after coalescing.
    pub descs: u64,
    pub posted_descs: u64,
    /// Wall-clock nanoseconds since the Unix epoch when it was posted and when it ended
    /// (0: still running, or counting off with `KVX_STATS=0`).
    pub post_time_ns: u64,
    pub completion_time_ns: u64,
    /// Monotonic nanoseconds from posting to its end (so far, while running).
    pub duration_ns: u64,
    /// The peer's name (NUL-terminated).
    pub peer: *const c_char,
    /// The transport under the path, e.g. "tcp" or "sysv,cma" for UCX, the plugin for NIXL.
    pub transport: *const c_char,
}

/// Check the caller's `struct_size` for a versioned output struct.
pub fn check_struct_size(size: usize, needed: usize, what: &str) -> Result<()> {
    if size < needed {
        return Err(Error::invalid(format!("{what}->struct_size is {size}, smaller than sizeof({what}) = {needed}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_and_buckets() {
        assert_eq!(size_class(0), 0);
        assert_eq!(size_class(64 << 10), 0);
        assert_eq!(size_class((64 << 10) + 1), 1);
        assert_eq!(size_class(u64::MAX), 4);
        let h = Histogram::default();
        h.observe_ns(5_000);
        h.observe_ns(1_000_000);
        h.observe_ns(100_000_000_000);
        let (sum, count, buckets) = h.read();
        assert_eq!(count, 3);
        assert!((sum - 100.001005).abs() < 1e-6);
        assert_eq!(buckets[0], (10e-6, 1));
        assert_eq!(buckets.iter().find(|(le, _)| *le == 1e-3).unwrap().1, 1);
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 2, "100 s lands in +Inf only");
    }

    #[test]
    fn records_count_once_and_by_status() {
        let scope = Scope::new(ScopeKind::Agent, "UCX", "stats-unit");
        let peer = scope.peer("p");
        let transport = Arc::new(CString::new("tcp").unwrap());
        let ok = TransferRecord::start(
            &peer,
            kvx_transfer_op::KVX_OP_WRITE,
            100,
            3,
            1,
            kvx_xfer_path::KVX_PATH_UCX,
            transport.clone(),
        );
        let bad = TransferRecord::start(
            &peer,
            kvx_transfer_op::KVX_OP_READ,
            50,
            1,
            1,
            kvx_xfer_path::KVX_PATH_UCX,
            transport,
        );
        assert_eq!(scope.counters.inflight.load(Relaxed), 2);
        ok.finish(&Ok(()));
        ok.finish(&Err(Error::peer("late")));
        bad.finish(&Err(Error::timeout("slow")));
        for c in [&scope.counters, &peer.counters] {
            assert_eq!(c.transfers_started.load(Relaxed), 2);
            assert_eq!(c.transfers_completed.load(Relaxed), 1);
            assert_eq!(c.bytes_written.load(Relaxed), 100);
            assert_eq!(c.bytes_read.load(Relaxed), 0);
            assert_eq!(c.inflight.load(Relaxed), 0);
            assert_eq!(Counters::failures(&c.transfers_failed), vec![("KVX_ERR_TIMEOUT", 1)]);
        }
        let snap = scope.snapshot();
        assert_eq!(snap["peers"]["p"]["transfers_failed"]["KVX_ERR_TIMEOUT"], 1);
        assert_eq!(snap["latency_seconds"]["64KiB"]["count"], 1);
        let mut info: kvx_xfer_info = unsafe { std::mem::zeroed() };
        ok.fill(&mut info);
        assert_eq!(info.state, kvx_transfer_state::KVX_TRANSFER_SUCCESS as u32);
        assert_eq!((info.bytes, info.descs, info.posted_descs, info.status), (100, 3, 1, 0));
        assert!(info.completion_time_ns >= info.post_time_ns && info.post_time_ns > 0);
    }
}
