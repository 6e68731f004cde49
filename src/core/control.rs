//! The control channel: a small TCP listener that answers one request per
//! connection (an agent's descriptor, or a connection-manager handshake).
//! It plays the part of NIXL's listener thread and TensorRT-LLM's ZMQ socket.
//! Frames are `u32` little-endian length + a `wire::ControlMessage`, in an
//! authentication envelope when a deployment secret is set (`auth`): the
//! request is checked (MAC, freshness, not replayed) before it is parsed,
//! and the reply is bound to the request's nonce. Listeners serve only the
//! addresses `KVX_ALLOWED_PEERS` allows.

use super::auth::{PeerAuth, Purpose, NONCE_LEN};
use super::error::{kvx_status, Error, Result};
use super::net::AllowedPeers;
use super::wire::{ControlMessage, MAX_FRAME};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the server waits on one client before dropping it, so a stuck
/// or hostile client cannot block the listener.
const SERVER_IO_TIMEOUT: Duration = Duration::from_secs(5);

pub trait ControlHandler: Send + Sync + 'static {
    fn handle(&self, request: ControlMessage, from: SocketAddr) -> ControlMessage;
}

pub struct ControlServer {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What a listener needs to judge a client before its request is handled.
struct Gate {
    auth: PeerAuth,
    allowed: AllowedPeers,
    /// Nonces of requests seen within the freshness window: a recorded request is not served twice.
    seen: Mutex<HashMap<[u8; NONCE_LEN], Instant>>,
}

impl Gate {
    fn first_use(&self, nonce: [u8; NONCE_LEN]) -> bool {
        let now = Instant::now();
        let mut seen = self.seen.lock();
        if seen.len() >= 4096 {
            // Twice the window: a request older than that is refused as stale anyway.
            let keep = 2 * self.auth.max_age();
            seen.retain(|_, at| now.duration_since(*at) < keep);
        }
        seen.insert(nonce, now).is_none()
    }
}

/// Listen queue length unless `KVX_LISTEN_BACKLOG` says otherwise: room for
/// hundreds of peers connecting at one moment (the kernel caps it at
/// `net.core.somaxconn`).
pub const DEFAULT_BACKLOG: i32 = 1024;

/// The listen queue length: `KVX_LISTEN_BACKLOG` when it is a positive number, else the default.
pub fn backlog() -> i32 {
    backlog_from(std::env::var("KVX_LISTEN_BACKLOG").ok().as_deref())
}

fn backlog_from(value: Option<&str>) -> i32 {
    match value.map(|v| v.trim().parse::<i32>()) {
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            crate::log_at!(Warn, "KVX_LISTEN_BACKLOG={:?} is not a positive number; using {DEFAULT_BACKLOG}", value);
            DEFAULT_BACKLOG
        }
        None => DEFAULT_BACKLOG,
    }
}

/// Clients waiting for a serving thread, and how many threads serve.
#[derive(Default)]
struct Clients {
    queue: std::collections::VecDeque<TcpStream>,
    serving: usize,
}

/// Threads serving one listener's clients at most; more clients wait in a
/// queue those threads drain, so the accepting thread never serves anyone.
const MAX_CLIENT_THREADS: usize = 32;
/// Accepted clients waiting beyond this are closed at once (they retry or fail at their timeout).
const MAX_QUEUED_CLIENTS: usize = 8192;

impl ControlServer {
    /// A connection manager's listener: on `settings.listen_ip`, else the address
    /// `interface_var` (TensorRT-LLM's interface variable) names, else the
    /// default route's; with the connection info peers reach it by.
    pub fn start_for_manager(
        settings: &super::request::ConnectionManagerSettings,
        interface_var: &str,
        handler: Arc<dyn ControlHandler>,
    ) -> Result<(Self, String)> {
        let ip = super::net::choose_listen_ip(settings.listen_ip.as_deref(), interface_var)?;
        let server = Self::start(ip, settings.listen_port, handler, settings.auth.clone(), "kvx-cm-listen")?;
        let address = super::net::format_connection_info(&server.local_addr());
        Ok((server, address))
    }

    pub fn start(
        ip: IpAddr,
        port: u16,
        handler: Arc<dyn ControlHandler>,
        auth: PeerAuth,
        thread_name: &str,
    ) -> Result<Self> {
        Self::start_gated(ip, port, handler, auth, AllowedPeers::from_env()?, thread_name)
    }

    fn start_gated(
        ip: IpAddr,
        port: u16,
        handler: Arc<dyn ControlHandler>,
        auth: PeerAuth,
        allowed: AllowedPeers,
        thread_name: &str,
    ) -> Result<Self> {
        let gate = Arc::new(Gate { auth, allowed, seen: Mutex::new(HashMap::new()) });
        let listener = TcpListener::bind(SocketAddr::new(ip, port))
            .map_err(|e| Error::system(&format!("cannot listen on {ip}:{port}"), e))?;
        // Listening again on a listening socket sets its queue length (std's is 128).
        // SAFETY: a valid socket descriptor owned by `listener`.
        if unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), backlog()) } != 0 {
            return Err(Error::system("setting the listen queue length", std::io::Error::last_os_error()));
        }
        let local = listener.local_addr().map_err(|e| Error::system("listener address", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let clients = Arc::new(Mutex::new(Clients::default()));
        let thread = std::thread::Builder::new()
            .name(thread_name.into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop_flag.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    // Addresses outside the allowlist are closed before a byte is read.
                    match stream.peer_addr() {
                        Ok(from) if gate.allowed.allows(from.ip()) => {}
                        Ok(from) => {
                            crate::log_at!(Debug, "control connection from {from} closed: not in KVX_ALLOWED_PEERS");
                            continue;
                        }
                        Err(_) => continue,
                    }
                    dispatch(stream, &clients, &handler, &gate);
                }
            })
            .map_err(|e| Error::system("cannot start listener thread", e))?;
        Ok(ControlServer { local, stop, thread: Some(thread) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// Hand an accepted client to a serving thread: a new one while fewer than
/// `MAX_CLIENT_THREADS` serve (a slow client cannot stall others), else the queue.
fn dispatch(stream: TcpStream, clients: &Arc<Mutex<Clients>>, handler: &Arc<dyn ControlHandler>, gate: &Arc<Gate>) {
    let mut state = clients.lock();
    if state.serving >= MAX_CLIENT_THREADS {
        if state.queue.len() < MAX_QUEUED_CLIENTS {
            state.queue.push_back(stream);
        }
        return;
    }
    state.serving += 1;
    drop(state);
    let (clients2, handler, gate) = (clients.clone(), handler.clone(), gate.clone());
    let spawned = std::thread::Builder::new().name("kvx-ctl-client".into()).spawn(move || {
        let mut next = Some(stream);
        while let Some(stream) = next {
            serve_logged(stream, handler.as_ref(), &gate);
            let mut state = clients2.lock();
            next = state.queue.pop_front();
            if next.is_none() {
                state.serving -= 1;
            }
        }
    });
    if spawned.is_err() {
        // The stream went with the closure: that client sees its connection closed.
        clients.lock().serving -= 1;
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.local, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_logged(stream: TcpStream, handler: &dyn ControlHandler, gate: &Gate) {
    if let Err(e) = serve_one(stream, handler, gate) {
        crate::log_at!(Debug, "control request dropped: {e}");
    }
}

fn serve_one(mut stream: TcpStream, handler: &dyn ControlHandler, gate: &Gate) -> Result<()> {
    let from = stream.peer_addr().map_err(|e| Error::system("peer address", e))?;
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + SERVER_IO_TIMEOUT;
    // A client that closes without a word is a liveness probe (`listener_gone`): nothing to answer.
    stream.set_read_timeout(Some(SERVER_IO_TIMEOUT)).map_err(|e| Error::system("socket", e))?;
    if matches!(stream.peek(&mut [0u8; 1]), Ok(0)) {
        return Ok(());
    }
    let mut nonce = [0u8; NONCE_LEN];
    let request = read_frame(&mut stream, deadline).and_then(|bytes| {
        let opened = gate.auth.open(Purpose::ControlRequest, &bytes, b"", &format!("control request from {from}"))?;
        if gate.auth.is_enabled() && !gate.first_use(opened.nonce) {
            return Err(Error::auth(format!("control request from {from} is a replay of one already served")));
        }
        nonce = opened.nonce;
        ControlMessage::decode(opened.payload)
    });
    let reply = match request {
        Ok(request) => handler.handle(request, from),
        Err(e) => {
            // Authentication failures keep their status name, so the client reports KVX_ERR_AUTH.
            let reason = if e.status == kvx_status::KVX_ERR_AUTH { e.to_string() } else { e.message.clone() };
            let refused = ControlMessage::Refused { reason };
            let _ =
                write_frame(&mut stream, &gate.auth.seal(Purpose::ControlReply, refused.encode(), &nonce).0, deadline);
            return Err(e);
        }
    };
    write_frame(&mut stream, &gate.auth.seal(Purpose::ControlReply, reply.encode(), &nonce).0, deadline)
}

/// Send one request and wait for its reply, all within `timeout`; both are
/// authenticated when `auth` has a secret.
pub fn request(
    addr: SocketAddr,
    message: &ControlMessage,
    auth: &PeerAuth,
    timeout: Duration,
) -> Result<ControlMessage> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout.max(Duration::from_millis(1)))
        .map_err(|e| Error::system(&format!("cannot reach {addr}"), e))?;
    let _ = stream.set_nodelay(true);
    let (sealed, nonce) = auth.seal(Purpose::ControlRequest, message.encode(), b"");
    write_frame(&mut stream, &sealed, deadline)?;
    let bytes = read_frame(&mut stream, deadline)?;
    let opened = match auth.open(Purpose::ControlReply, &bytes, &nonce, &format!("reply from {addr}")) {
        Ok(opened) => opened,
        Err(mut e) => {
            // The peer's own words help the operator, marked as unverified.
            if let Ok(ControlMessage::Refused { reason }) = ControlMessage::decode(PeerAuth::unverified_payload(&bytes))
            {
                e.message = format!("{} (the reply, unverified, says: {reason})", e.message);
            }
            return Err(e);
        }
    };
    let reply = ControlMessage::decode(opened.payload)?;
    if let ControlMessage::Refused { reason } = &reply {
        if reason.starts_with(kvx_status::KVX_ERR_AUTH.name()) {
            return Err(Error::auth(format!("{addr} refused: {reason}")));
        }
        return Err(Error::peer(format!("{addr} refused: {reason}")));
    }
    Ok(reply)
}

/// How long a liveness probe waits for the TCP handshake.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);

/// True only when the control listener at `addr` is certainly gone: its host
/// refuses the connection (the process exited or closed its listener). A
/// stopped, busy or unreachable peer is not gone; calls on it end at their timeout.
pub fn listener_gone(addr: SocketAddr) -> bool {
    matches!(TcpStream::connect_timeout(&addr, PROBE_TIMEOUT), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

fn remaining(deadline: Instant) -> Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Error::timeout("control channel timed out"));
    }
    Ok(left)
}

fn write_frame(stream: &mut TcpStream, body: &[u8], deadline: Instant) -> Result<()> {
    stream.set_write_timeout(Some(remaining(deadline)?)).map_err(|e| Error::system("socket", e))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(body);
    stream.write_all(&frame).map_err(|e| Error::system("control send", e))
}

fn read_frame(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    read_exact(stream, &mut len, deadline)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(Error::malformed(format!("control frame of {len} bytes exceeds {MAX_FRAME}")));
    }
    let mut body = vec![0u8; len];
    read_exact(stream, &mut body, deadline)?;
    Ok(body)
}

fn read_exact(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        stream.set_read_timeout(Some(remaining(deadline)?)).map_err(|e| Error::system("socket", e))?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(Error::peer("control connection closed early")),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::system("control receive", e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    struct Echo;
    impl ControlHandler for Echo {
        fn handle(&self, request: ControlMessage, _from: SocketAddr) -> ControlMessage {
            match request {
                ControlMessage::GetAgentDesc { expected_name } => {
                    ControlMessage::AgentDesc { desc: expected_name.into_bytes() }
                }
                _ => ControlMessage::Refused { reason: "unexpected".into() },
            }
        }
    }

    #[test]
    fn request_reply_and_refusal() {
        let server =
            ControlServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, Arc::new(Echo), PeerAuth::none(), "test-ctl")
                .unwrap();
        let reply = request(
            server.local_addr(),
            &ControlMessage::GetAgentDesc { expected_name: "x".into() },
            &PeerAuth::none(),
            Duration::from_secs(2),
        )
        .unwrap();
        assert_eq!(reply, ControlMessage::AgentDesc { desc: b"x".to_vec() });
        let err = request(
            server.local_addr(),
            &ControlMessage::AgentDesc { desc: vec![] },
            &PeerAuth::none(),
            Duration::from_secs(2),
        )
        .unwrap_err();
        assert_eq!(err.status, crate::core::error::kvx_status::KVX_ERR_PEER);
    }

    #[test]
    fn garbage_and_silence_do_not_block_the_server() {
        let server =
            ControlServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, Arc::new(Echo), PeerAuth::none(), "test-ctl")
                .unwrap();
        let mut s = TcpStream::connect(server.local_addr()).unwrap();
        s.write_all(&[255, 255, 255, 255]).unwrap();
        drop(s);
        let idle = TcpStream::connect(server.local_addr()).unwrap();
        let started = Instant::now();
        let reply = request(
            server.local_addr(),
            &ControlMessage::GetAgentDesc { expected_name: "y".into() },
            &PeerAuth::none(),
            Duration::from_secs(10),
        );
        assert!(reply.is_ok());
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(idle);
    }

    #[test]
    fn a_closed_listener_is_gone_a_silent_one_is_not() {
        let server =
            ControlServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, Arc::new(Echo), PeerAuth::none(), "test-ctl")
                .unwrap();
        let addr = server.local_addr();
        assert!(!listener_gone(addr));
        drop(server);
        assert!(listener_gone(addr));
        // Accepted by the kernel but never served (as a stopped process's listener is): not gone.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!listener_gone(silent.local_addr().unwrap()));
    }

    fn keyed(key: &[u8]) -> PeerAuth {
        PeerAuth::with_keys(vec![key.to_vec()], crate::core::auth::DEFAULT_MAX_AGE).unwrap()
    }

    #[test]
    fn authenticated_requests_are_served_and_others_refused() {
        let key = keyed(b"control channel key 0123");
        let server =
            ControlServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, Arc::new(Echo), key.clone(), "test-ctl").unwrap();
        let get = ControlMessage::GetAgentDesc { expected_name: "x".into() };
        let timeout = Duration::from_secs(2);
        assert_eq!(
            request(server.local_addr(), &get, &key, timeout).unwrap(),
            ControlMessage::AgentDesc { desc: b"x".to_vec() }
        );
        for (client, why) in [(PeerAuth::none(), "no key"), (keyed(b"some other key 0123456"), "MAC mismatch")] {
            let err = request(server.local_addr(), &get, &client, timeout).unwrap_err();
            assert_eq!(err.status, kvx_status::KVX_ERR_AUTH, "{err}");
            assert!(err.message.contains(why), "{err}");
        }
        // A keyed client refuses an unauthenticated listener's reply.
        let open =
            ControlServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, Arc::new(Echo), PeerAuth::none(), "test-ctl")
                .unwrap();
        let err = request(open.local_addr(), &get, &key, timeout).unwrap_err();
        assert_eq!(err.status, kvx_status::KVX_ERR_AUTH, "{err}");
    }

    #[test]
    fn addresses_outside_the_allowlist_are_closed_unserved() {
        let get = ControlMessage::GetAgentDesc { expected_name: "x".into() };
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let elsewhere = AllowedPeers::parse("10.9.9.0/24").unwrap();
        let server =
            ControlServer::start_gated(localhost, 0, Arc::new(Echo), PeerAuth::none(), elsewhere, "test-ctl").unwrap();
        let started = Instant::now();
        let err = request(server.local_addr(), &get, &PeerAuth::none(), Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.status, kvx_status::KVX_ERR_PEER, "{err}");
        assert!(started.elapsed() < Duration::from_secs(2), "closed at once, not left to time out");
        let here = AllowedPeers::parse("127.0.0.0/8").unwrap();
        let server =
            ControlServer::start_gated(localhost, 0, Arc::new(Echo), PeerAuth::none(), here, "test-ctl").unwrap();
        assert!(request(server.local_addr(), &get, &PeerAuth::none(), Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn a_replayed_request_is_refused() {
        let key = keyed(b"control channel key 0123");
        let server =
            ControlServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, Arc::new(Echo), key.clone(), "test-ctl").unwrap();
        let (sealed, _) =
            key.seal(Purpose::ControlRequest, ControlMessage::GetAgentDesc { expected_name: "x".into() }.encode(), b"");
        let send = |bytes: &[u8]| {
            let mut s = TcpStream::connect(server.local_addr()).unwrap();
            write_frame(&mut s, bytes, Instant::now() + Duration::from_secs(2)).unwrap();
            let reply = read_frame(&mut s, Instant::now() + Duration::from_secs(2)).unwrap();
            ControlMessage::decode(PeerAuth::unverified_payload(&reply)).unwrap()
        };
        assert_eq!(send(&sealed), ControlMessage::AgentDesc { desc: b"x".to_vec() });
        match send(&sealed) {
            ControlMessage::Refused { reason } => assert!(reason.contains("replay"), "{reason}"),
            other => panic!("replay served: {other:?}"),
        }
    }

    #[test]
    fn backlog_is_configurable_and_defaults_large() {
        assert_eq!(backlog_from(None), DEFAULT_BACKLOG);
        const { assert!(DEFAULT_BACKLOG >= 512) };
        assert_eq!(backlog_from(Some("2048")), 2048);
        assert_eq!(backlog_from(Some("0")), DEFAULT_BACKLOG);
        assert_eq!(backlog_from(Some("many")), DEFAULT_BACKLOG);
    }

    /// A handler as slow as a handshake: more clients than serving threads all get answers.
    struct Slow;
    impl ControlHandler for Slow {
        fn handle(&self, request: ControlMessage, from: SocketAddr) -> ControlMessage {
            std::thread::sleep(Duration::from_millis(20));
            Echo.handle(request, from)
        }
    }

    #[test]
    fn a_storm_of_clients_is_served_without_refusals() {
        let server =
            ControlServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, Arc::new(Slow), PeerAuth::none(), "test-ctl")
                .unwrap();
        let addr = server.local_addr();
        let clients = 4 * MAX_CLIENT_THREADS;
        let barrier = Arc::new(std::sync::Barrier::new(clients));
        let started = Instant::now();
        let answers: Vec<_> = (0..clients)
            .map(|i| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let name = format!("client-{i}");
                    let reply = request(
                        addr,
                        &ControlMessage::GetAgentDesc { expected_name: name.clone() },
                        &PeerAuth::none(),
                        Duration::from_secs(20),
                    );
                    reply.map(|r| r == ControlMessage::AgentDesc { desc: name.into_bytes() })
                })
            })
            .collect();
        for a in answers {
            assert_eq!(a.join().unwrap().map_err(|e| e.to_string()), Ok(true));
        }
        // Served by MAX_CLIENT_THREADS threads at once: about 4 rounds of 20 ms, far from serial (2.6 s).
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    }

    #[test]
    fn unreachable_peer_is_a_peer_error() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let err = request(
            port,
            &ControlMessage::GetAgentDesc { expected_name: "z".into() },
            &PeerAuth::none(),
            Duration::from_millis(500),
        )
        .unwrap_err();
        assert_eq!(err.status, crate::core::error::kvx_status::KVX_ERR_PEER);
    }
}
