//! A small Rust wrapper over the C ABI, used by the demo, the tests and the
//! benchmarks so they exercise exactly what C and C++ callers use. Failures
//! panic with `kvx_last_error`: fine for tools and tests, not a library API.
#![allow(dead_code, clippy::missing_safety_doc)]

use crate::core::buffer::{kvx_bytes, kvx_notification_list};
use crate::core::config::{kvx_agent_config, kvx_cm_config, kvx_transfer_request};
use crate::core::memory::kvx_memory_desc;
use crate::dispatch::kvx_transfer_state;
use crate::ffi::agent::*;
use crate::ffi::conn::*;
use crate::ffi::library::*;
use crate::ffi::observe::*;
use crate::ffi::status::*;
use crate::kvx_status;
use std::ffi::{CStr, CString};

pub const DRAM: u32 = 0;
pub const VRAM: u32 = 1;
pub const READ: u32 = 0;
pub const WRITE: u32 = 1;
pub const TIMEOUT_MS: i64 = 20_000;
/// `kvx_backend` values, for tests parameterised by backend.
pub const AUTO: u32 = 0;
pub const UCX: u32 = 1;
pub const NIXL: u32 = 2;

/// Loopback, unless `KVX_LISTEN_IP` names another address (tests between network namespaces).
fn listen_ip() -> String {
    std::env::var("KVX_LISTEN_IP").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "127.0.0.1".into())
}

/// Whether `backend` can be loaded here; the reason when it cannot.
pub fn backend_available(backend: u32) -> Result<(), String> {
    let mut info: kvx_backend_info = unsafe { std::mem::zeroed() };
    info.struct_size = std::mem::size_of::<kvx_backend_info>();
    match unsafe { kvx_backend_info_get(backend, &mut info) } {
        kvx_status::KVX_OK => Ok(()),
        st => Err(format!("{st:?}: {}", last_error())),
    }
}

/// The backend these tests run on: `TRTLLM_USE_*_KVCACHE`, as for any caller.
pub fn backend_under_test() -> crate::core::select::kvx_backend {
    let mut chosen = 0u32;
    unsafe { ok(kvx_backend_resolve(0, &mut chosen)) };
    crate::core::select::kvx_backend::from_raw(chosen).unwrap()
}

pub fn last_error() -> String {
    unsafe { CStr::from_ptr(kvx_last_error()).to_string_lossy().into_owned() }
}

#[track_caller]
pub fn ok(status: kvx_status) {
    assert_eq!(status, kvx_status::KVX_OK, "{}", last_error());
}

pub fn take_bytes(mut b: kvx_bytes) -> Vec<u8> {
    let v = if b.data.is_null() { Vec::new() } else { unsafe { std::slice::from_raw_parts(b.data, b.len).to_vec() } };
    unsafe { kvx_bytes_free(&mut b) };
    v
}

pub struct Agent {
    pub raw: *mut kvx_agent,
    pub name: String,
}

unsafe impl Send for Agent {}
unsafe impl Sync for Agent {}

impl Agent {
    pub fn new(name: &str) -> Agent {
        Self::try_new(name, true).unwrap_or_else(|(s, e)| panic!("agent {name}: {s:?} {e}"))
    }

    pub fn try_new(name: &str, listen: bool) -> Result<Agent, (kvx_status, String)> {
        Self::try_new_on(AUTO, name, listen, 0)
    }

    /// An agent on a chosen backend; `timeout_ms` 0 keeps the default.
    pub fn try_new_on(backend: u32, name: &str, listen: bool, timeout_ms: u64) -> Result<Agent, (kvx_status, String)> {
        Self::try_new_keyed(backend, name, listen, timeout_ms, None)
    }

    /// As `try_new_on`, with the config's deployment secret (None: the environment's).
    pub fn try_new_keyed(
        backend: u32,
        name: &str,
        listen: bool,
        timeout_ms: u64,
        auth_key: Option<&[u8]>,
    ) -> Result<Agent, (kvx_status, String)> {
        Self::try_new_at(backend, name, listen, 0, timeout_ms, auth_key)
    }

    /// As `try_new_keyed`, listening on `port` (0: any).
    pub fn try_new_at(
        backend: u32,
        name: &str,
        listen: bool,
        port: u16,
        timeout_ms: u64,
        auth_key: Option<&[u8]>,
    ) -> Result<Agent, (kvx_status, String)> {
        let cname = CString::new(name).unwrap();
        let ip = CString::new(listen_ip()).unwrap();
        let mut cfg: kvx_agent_config = unsafe { std::mem::zeroed() };
        unsafe { ok(kvx_agent_config_init(&mut cfg)) };
        cfg.name = cname.as_ptr();
        cfg.listen_ip = ip.as_ptr();
        cfg.use_listen_thread = listen;
        cfg.listen_port = port;
        cfg.backend = backend;
        cfg.timeout_ms = timeout_ms;
        if let Some(key) = auth_key {
            cfg.auth_key = key.as_ptr();
            cfg.auth_key_len = key.len();
        }
        let mut raw = std::ptr::null_mut();
        let st = unsafe { kvx_agent_create(&cfg, &mut raw) };
        if st != kvx_status::KVX_OK {
            return Err((st, last_error()));
        }
        Ok(Agent { raw, name: name.into() })
    }

    pub fn register(&self, bufs: &[&[u8]]) -> Vec<kvx_memory_desc> {
        let descs = descs_of(bufs);
        unsafe { ok(kvx_agent_register_memory(self.raw, DRAM, descs.as_ptr(), descs.len())) };
        descs
    }

    /// Register `descs` as memory of type `mem_type` (DRAM or VRAM).
    pub fn register_descs(&self, mem_type: u32, descs: &[kvx_memory_desc]) -> kvx_status {
        unsafe { kvx_agent_register_memory(self.raw, mem_type, descs.as_ptr(), descs.len()) }
    }

    pub fn deregister(&self, descs: &[kvx_memory_desc]) -> kvx_status {
        unsafe { kvx_agent_deregister_memory(self.raw, DRAM, descs.as_ptr(), descs.len()) }
    }

    pub fn desc(&self) -> Vec<u8> {
        let mut b = kvx_bytes::EMPTY;
        unsafe { ok(kvx_agent_get_local_desc(self.raw, &mut b)) };
        take_bytes(b)
    }

    pub fn conn_info(&self) -> String {
        let mut b = kvx_bytes::EMPTY;
        unsafe { ok(kvx_agent_get_connection_info(self.raw, &mut b)) };
        String::from_utf8(take_bytes(b)).unwrap()
    }

    pub fn load(&self, name: &str, desc: &[u8]) -> kvx_status {
        let n = CString::new(name).unwrap();
        unsafe { kvx_agent_load_remote(self.raw, n.as_ptr(), desc.as_ptr(), desc.len()) }
    }

    pub fn load_by_info(&self, name: &str, info: &str) -> kvx_status {
        self.load_by_info_within(name, info, TIMEOUT_MS)
    }

    pub fn load_by_info_within(&self, name: &str, info: &str, timeout_ms: i64) -> kvx_status {
        let n = CString::new(name).unwrap();
        let i = CString::new(info).unwrap();
        unsafe { kvx_agent_load_remote_by_connection_info(self.raw, n.as_ptr(), i.as_ptr(), timeout_ms) }
    }

    pub fn invalidate(&self, name: &str) -> kvx_status {
        let n = CString::new(name).unwrap();
        unsafe { kvx_agent_invalidate_remote(self.raw, n.as_ptr()) }
    }

    pub fn check(&self, name: &str, descs: &[kvx_memory_desc]) -> bool {
        let n = CString::new(name).unwrap();
        let mut out = false;
        unsafe { ok(kvx_agent_check_remote_descs(self.raw, n.as_ptr(), DRAM, descs.as_ptr(), descs.len(), &mut out)) };
        out
    }

    pub fn submit(
        &self,
        op: u32,
        local: &[kvx_memory_desc],
        remote: &[kvx_memory_desc],
        to: &str,
        sync: Option<&[u8]>,
    ) -> Result<Xfer, (kvx_status, String)> {
        self.submit_typed(op, (DRAM, local), (DRAM, remote), to, sync)
    }

    /// Submit with explicit memory types of the local and remote side.
    pub fn submit_typed(
        &self,
        op: u32,
        (local_type, local): (u32, &[kvx_memory_desc]),
        (remote_type, remote): (u32, &[kvx_memory_desc]),
        to: &str,
        sync: Option<&[u8]>,
    ) -> Result<Xfer, (kvx_status, String)> {
        assert_eq!(local.len(), remote.len());
        let n = CString::new(to).unwrap();
        let req = kvx_transfer_request::new(op, (local_type, local), (remote_type, remote), &n, sync);
        let mut raw = std::ptr::null_mut();
        let st = unsafe { kvx_agent_submit(self.raw, &req, &mut raw) };
        if st != kvx_status::KVX_OK {
            return Err((st, last_error()));
        }
        Ok(Xfer { raw })
    }

    pub fn notify(&self, to: &str, msg: &[u8]) -> kvx_status {
        let n = CString::new(to).unwrap();
        unsafe { kvx_agent_notify(self.raw, n.as_ptr(), msg.as_ptr(), msg.len()) }
    }

    /// How many notifications arrived, taken and freed without copying them
    /// (what a C caller polling for a reply does).
    pub fn poll_notifications(&self) -> usize {
        let mut list: *mut kvx_notification_list = std::ptr::null_mut();
        unsafe {
            ok(kvx_agent_get_notifications(self.raw, &mut list));
            let n = kvx_notification_list_len(list);
            kvx_notification_list_free(list);
            n
        }
    }

    pub fn notifications(&self) -> Vec<(String, Vec<u8>)> {
        let mut list: *mut kvx_notification_list = std::ptr::null_mut();
        unsafe { ok(kvx_agent_get_notifications(self.raw, &mut list)) };
        let n = unsafe { kvx_notification_list_len(list) };
        let mut out = Vec::new();
        for i in 0..n {
            let (mut s, mut m, mut l) = (std::ptr::null(), std::ptr::null(), 0usize);
            unsafe { ok(kvx_notification_list_get(list, i, &mut s, &mut m, &mut l)) };
            let sender = unsafe { CStr::from_ptr(s).to_string_lossy().into_owned() };
            let msg = if l == 0 { Vec::new() } else { unsafe { std::slice::from_raw_parts(m, l).to_vec() } };
            out.push((sender, msg));
        }
        unsafe { kvx_notification_list_free(list) };
        out
    }

    /// Poll notifications until at least `n` arrived or the deadline passes.
    pub fn wait_notifications(&self, n: usize, ms: u64) -> Vec<(String, Vec<u8>)> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(ms);
        let mut all = Vec::new();
        while all.len() < n && std::time::Instant::now() < deadline {
            all.extend(self.notifications());
            if all.len() < n {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        all
    }
}

impl Agent {
    /// `kvx_agent_stats`, parsed.
    pub fn stats(&self) -> serde_json::Value {
        let mut b = kvx_bytes::EMPTY;
        unsafe { ok(kvx_agent_stats(self.raw, &mut b)) };
        serde_json::from_slice(&take_bytes(b)).expect("kvx_agent_stats gives JSON")
    }
}

/// `kvx_stats_snapshot`, parsed.
pub fn process_stats() -> serde_json::Value {
    let mut b = kvx_bytes::EMPTY;
    unsafe { ok(kvx_stats_snapshot(&mut b)) };
    serde_json::from_slice(&take_bytes(b)).expect("kvx_stats_snapshot gives JSON")
}

/// `kvx_metrics_address` ("" when off).
pub fn metrics_address() -> String {
    let mut b = kvx_bytes::EMPTY;
    unsafe { ok(kvx_metrics_address(&mut b)) };
    String::from_utf8(take_bytes(b)).unwrap()
}

/// A transfer's facts with its strings copied out.
#[derive(Debug, Clone)]
pub struct XferFacts {
    pub info: crate::core::stats::kvx_xfer_info,
    pub peer: String,
    pub transport: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        unsafe { kvx_agent_destroy(self.raw) };
    }
}

pub struct Xfer {
    pub raw: *mut kvx_xfer,
}

unsafe impl Send for Xfer {}

impl Xfer {
    pub fn wait(&self, ms: i64) -> kvx_transfer_state {
        let mut st = kvx_transfer_state::KVX_TRANSFER_IN_PROGRESS;
        unsafe { ok(kvx_xfer_wait(self.raw, ms, &mut st)) };
        st
    }
    /// `kvx_xfer_info_get`.
    pub fn info(&self) -> XferFacts {
        let mut info: crate::core::stats::kvx_xfer_info = unsafe { std::mem::zeroed() };
        info.struct_size = std::mem::size_of_val(&info);
        unsafe { ok(kvx_xfer_info_get(self.raw, &mut info)) };
        let text = |p: *const std::ffi::c_char| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        XferFacts { peer: text(info.peer), transport: text(info.transport), info }
    }

    pub fn status_text(&self) -> String {
        let mut b = kvx_bytes::EMPTY;
        unsafe { ok(kvx_xfer_last_status(self.raw, &mut b)) };
        String::from_utf8_lossy(&take_bytes(b)).into_owned()
    }
    #[track_caller]
    pub fn expect_success(&self) {
        let st = self.wait(TIMEOUT_MS);
        assert_eq!(st, kvx_transfer_state::KVX_TRANSFER_SUCCESS, "{}", self.status_text());
    }
    pub fn release(&self) -> bool {
        let mut out = false;
        unsafe { ok(kvx_xfer_release(self.raw, &mut out)) };
        out
    }
    /// TensorRT-LLM's `release()`: cancels a transfer still in flight.
    pub fn cancel(&self) -> bool {
        let mut out = false;
        unsafe { ok(kvx_xfer_cancel(self.raw, &mut out)) };
        out
    }
    pub fn is_completed(&self) -> bool {
        let mut out = false;
        unsafe { ok(kvx_xfer_is_completed(self.raw, &mut out)) };
        out
    }
}

impl Drop for Xfer {
    fn drop(&mut self) {
        unsafe { kvx_xfer_destroy(self.raw) };
    }
}

pub fn descs_of(bufs: &[&[u8]]) -> Vec<kvx_memory_desc> {
    bufs.iter().map(|b| kvx_memory_desc { addr: b.as_ptr() as u64, len: b.len() as u64, device_id: 0 }).collect()
}

pub struct Cm {
    pub raw: *mut kvx_cm,
}

unsafe impl Send for Cm {}
unsafe impl Sync for Cm {}

pub struct Conn(pub *const kvx_conn);
unsafe impl Send for Conn {}
unsafe impl Sync for Conn {}

impl Cm {
    // No Default: `new` panics when no backend loads, which a default value should never do.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Cm {
        Self::try_new_on(AUTO, 0).unwrap_or_else(|(s, e)| panic!("connection manager: {s:?} {e}"))
    }

    /// A manager on a chosen backend; `timeout_ms` 0 keeps the default.
    pub fn try_new_on(backend: u32, timeout_ms: u64) -> Result<Cm, (kvx_status, String)> {
        Self::try_new_keyed(backend, timeout_ms, None)
    }

    /// As `try_new_on`, with the config's deployment secret (None: the environment's).
    pub fn try_new_keyed(backend: u32, timeout_ms: u64, auth_key: Option<&[u8]>) -> Result<Cm, (kvx_status, String)> {
        let ip = CString::new(listen_ip()).unwrap();
        let mut cfg: kvx_cm_config = unsafe { std::mem::zeroed() };
        unsafe { ok(kvx_cm_config_init(&mut cfg)) };
        cfg.listen_ip = ip.as_ptr();
        cfg.backend = backend;
        cfg.timeout_ms = timeout_ms;
        if let Some(key) = auth_key {
            cfg.auth_key = key.as_ptr();
            cfg.auth_key_len = key.len();
        }
        let mut raw = std::ptr::null_mut();
        let st = unsafe { kvx_cm_create(&cfg, &mut raw) };
        if st != kvx_status::KVX_OK {
            return Err((st, last_error()));
        }
        Ok(Cm { raw })
    }
    pub fn address(&self) -> String {
        let mut b = kvx_bytes::EMPTY;
        unsafe { ok(kvx_cm_get_local_address(self.raw, &mut b)) };
        String::from_utf8(take_bytes(b)).unwrap()
    }
    pub fn connect(&self, addrs: &[String]) -> Vec<Conn> {
        self.try_connect(addrs, TIMEOUT_MS).unwrap_or_else(|(s, e)| panic!("connect: {s:?} {e}"))
    }
    pub fn shutdown(&self) {
        unsafe { ok(kvx_cm_shutdown(self.raw)) };
    }
    /// `connect`, returning the failure instead of panicking.
    pub fn try_connect(&self, addrs: &[String], ms: i64) -> Result<Vec<Conn>, (kvx_status, String)> {
        let c: Vec<CString> = addrs.iter().map(|a| CString::new(a.as_str()).unwrap()).collect();
        let ptrs: Vec<*const std::ffi::c_char> = c.iter().map(|s| s.as_ptr()).collect();
        let mut out = vec![std::ptr::null(); addrs.len()];
        let st = unsafe { kvx_cm_get_connections(self.raw, ptrs.as_ptr(), ptrs.len(), ms, out.as_mut_ptr()) };
        if st != kvx_status::KVX_OK {
            return Err((st, last_error()));
        }
        Ok(out.into_iter().map(Conn).collect())
    }
    pub fn recv_connect(&self, tag: u32, buf: &mut [u8], ms: i64) -> Result<Conn, (kvx_status, String)> {
        let mut out = std::ptr::null();
        let st = unsafe { kvx_cm_recv_connect(self.raw, tag, buf.as_mut_ptr() as *mut _, buf.len(), ms, &mut out) };
        if st != kvx_status::KVX_OK {
            return Err((st, last_error()));
        }
        Ok(Conn(out))
    }
}

impl Cm {
    /// `kvx_cm_stats`, parsed.
    pub fn stats(&self) -> serde_json::Value {
        let mut b = kvx_bytes::EMPTY;
        unsafe { ok(kvx_cm_stats(self.raw, &mut b)) };
        serde_json::from_slice(&take_bytes(b)).expect("kvx_cm_stats gives JSON")
    }
}

impl Drop for Cm {
    fn drop(&mut self) {
        unsafe { kvx_cm_destroy(self.raw) };
    }
}

impl Conn {
    pub fn send(&self, tag: u32, data: &[u8]) -> kvx_status {
        unsafe { kvx_conn_send(self.0, tag, data.as_ptr() as *const _, data.len(), TIMEOUT_MS) }
    }
    pub fn recv(&self, tag: u32, data: &mut [u8], ms: i64) -> kvx_status {
        unsafe { kvx_conn_recv(self.0, tag, data.as_mut_ptr() as *mut _, data.len(), ms) }
    }
}

pub use crate::core::rng::XorShift;

/// Deterministic test bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = XorShift::new(seed);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// Measuring one process against many peers (the scale benchmark and tests):
/// its own CPU time, descriptors, threads and memory, and peer processes run
/// from the `kvxfer-scale` program.
pub mod scale {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Child, ChildStdin, Command, Stdio};
    use std::time::{Duration, Instant};

    /// CPU time of this process (user + system), in seconds.
    pub fn cpu_seconds() -> f64 {
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage fills the struct.
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(usage.ru_utime) + tv(usage.ru_stime)
    }

    pub fn open_descriptors() -> i64 {
        std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as i64 - 1)
    }

    pub fn status_field(key: &str) -> i64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    pub fn threads() -> i64 {
        status_field("Threads:")
    }

    pub fn rss_kib() -> i64 {
        status_field("VmRSS:")
    }

    /// The kernel's count of connections dropped because a listen queue was full (all listeners on this host).
    pub fn listen_overflows() -> i64 {
        let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
        if lines.len() < 2 {
            return 0;
        }
        let names: Vec<&str> = lines[0].split_whitespace().collect();
        let values: Vec<&str> = lines[1].split_whitespace().collect();
        names.iter().position(|n| *n == "ListenOverflows").and_then(|i| values.get(i)?.parse().ok()).unwrap_or(0)
    }

    /// Open descriptors once they are back at `base`, or after `SETTLE` (sockets a
    /// transport closes in the background, after the call returned, count as released).
    pub fn settled_descriptors(base: i64) -> i64 {
        let deadline = Instant::now() + SETTLE;
        loop {
            let now = open_descriptors();
            if now <= base || Instant::now() >= deadline {
                return now;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub const SETTLE: Duration = Duration::from_secs(3);

    pub struct PeerProcess {
        child: Child,
        stdin: ChildStdin,
        lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
        /// (name, connection info or manager address) of each handle it holds.
        pub handles: Vec<(String, String)>,
    }

    impl PeerProcess {
        /// Start `program peer ROLE BACKEND COUNT PREFIX` and read the handles it announces.
        pub fn spawn(program: &std::path::Path, role: &str, backend: &str, count: usize, prefix: &str) -> PeerProcess {
            let mut child = Command::new(program)
                .args(["peer", role, backend, &count.to_string(), prefix])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("starting a peer process");
            let stdin = child.stdin.take().unwrap();
            let lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let mut p = PeerProcess { child, stdin, lines, handles: Vec::new() };
            loop {
                let line = p.next_line();
                let mut words = line.split_whitespace();
                match words.next() {
                    Some("H") => p.handles.push((words.next().unwrap().into(), words.next().unwrap().into())),
                    Some("READY") => break,
                    _ => panic!("peer said {line:?}"),
                }
            }
            p
        }

        pub fn next_line(&mut self) -> String {
            self.lines.next().expect("peer process ended").expect("peer output")
        }

        pub fn say(&mut self, line: &str) {
            writeln!(self.stdin, "{line}").and_then(|_| self.stdin.flush()).expect("peer process gone");
        }
    }

    impl Drop for PeerProcess {
        fn drop(&mut self) {
            let _ = writeln!(self.stdin, "quit");
            let _ = self.stdin.flush();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// `n` peer handles spread over at most `max_processes` processes of `program`.
    pub fn spawn_peers(
        program: &std::path::Path,
        role: &str,
        backend: &str,
        n: usize,
        max_processes: usize,
    ) -> Vec<PeerProcess> {
        let processes = n.min(max_processes).max(1);
        let mut out = Vec::new();
        for p in 0..processes {
            let count = n / processes + usize::from(p < n % processes);
            out.push(PeerProcess::spawn(program, role, backend, count, &format!("peer{n}-{p}-{}", std::process::id())));
        }
        out
    }
}
