//! Faults between real processes: a peer killed with SIGKILL mid-transfer,
//! during connection setup and while a receiver waits; a peer stopped with
//! SIGSTOP (timeouts); the network cut between two network namespaces.
//!
//! In every case the survivor's pending and later calls must fail with
//! `KVX_ERR_PEER` or `KVX_ERR_TIMEOUT` within the timeout, its descriptors and
//! threads must be released, everything that completed before the fault must
//! be intact, and after `invalidate` it must reach a restarted peer again.
//!
//! Peers (and, where a scenario needs its own UCX_TLS or network namespace,
//! the survivor too) are this test binary re-run as the ignored test
//! `fault_child`. `scripts/stress/faults.sh` repeats each scenario 50 times
//! through the ignored test `fault_repeat`. Every scenario runs once per
//! backend that loads here.

mod common;
use common::*;
use kvxfer::core::memory::kvx_memory_desc;
use kvxfer::dispatch::kvx_transfer_state::*;
use kvxfer::kvx_status::{self, *};
use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// Survivor timeout in scenarios that wait for it to expire.
const SHORT_TIMEOUT_MS: u64 = 3_000;
/// How soon a dead peer must be noticed, on both backends. UCX's keepalive
/// (1 s) catches it in a second or two; NIXL's transport reports the broken
/// connection to transfers, and a waiting NIXL receive probes its peer's
/// control listener every 500 ms.
const DETECT_LIMIT: Duration = Duration::from_secs(10);
const PEER_BUF: usize = 16 << 20;
const CHUNK: usize = 1 << 20;
const CHUNKS: usize = 32;
/// Peers killed mid-flood per round of `kill_while_flooding`.
const KILLS_WHILE_FLOODING: usize = 5;

// ---------------------------------------------------------------- the peer

/// How to start peers: plain, or inside a network namespace with its own address.
#[derive(Clone, Default)]
struct Launcher {
    backend: u32,
    netns: Option<String>,
    listen_ip: Option<String>,
    tls: Option<String>,
    /// Peers dump core here when they crash (unset: core dumps as the system says).
    core_dir: Option<String>,
}

struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: std::io::Lines<BufReader<ChildStdout>>,
    name: String,
    info: String,
    addr: u64,
    cm_addr: String,
}

impl Launcher {
    fn start(&self, name: &str) -> Peer {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(["fault_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env("KVX_FAULT_ROLE", "peer")
            .env("KVX_FAULT_NAME", name)
            .env("KVX_FAULT_BACKEND", self.backend.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(ip) = &self.listen_ip {
            cmd.env("KVX_LISTEN_IP", ip);
        }
        if let Some(tls) = &self.tls {
            cmd.env("UCX_TLS", tls);
        }
        if let Some(dir) = &self.core_dir {
            cmd.env("KVX_FAULT_CORE_DIR", dir);
        }
        let mut child = cmd.spawn().expect("start peer");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = expect_line(&mut lines, "READY");
        let w: Vec<&str> = ready.split_whitespace().collect();
        Peer {
            child,
            stdin,
            lines,
            name: name.into(),
            info: w[1].into(),
            addr: w[2].parse().unwrap(),
            cm_addr: w[3].into(),
        }
    }
}

/// Next line starting with `prefix`, skipping the test harness's own output.
fn expect_line(lines: &mut std::io::Lines<BufReader<ChildStdout>>, prefix: &str) -> String {
    for line in lines.by_ref() {
        // libtest may have printed "test fault_child ... " on the same line.
        let line = line.unwrap();
        if let Some(at) = line.find(prefix) {
            return line[at..].to_string();
        }
    }
    panic!("peer exited before printing {prefix}");
}

impl Peer {
    fn command(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }
    fn expect(&mut self, prefix: &str) -> String {
        expect_line(&mut self.lines, prefix)
    }
    fn signal(&self, sig: i32) {
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0, "kill({sig})");
    }
    fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.child.wait().unwrap();
    }
    fn quit(mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
    fn remote(&self, offset: u64, len: usize) -> [kvx_memory_desc; 1] {
        [kvx_memory_desc { addr: self.addr + offset, len: len as u64, device_id: 0 }]
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The peer process: an agent with a registered buffer holding a known
/// pattern, and a connection manager, driven by commands on stdin.
fn peer_main() {
    if let Ok(dir) = std::env::var("KVX_FAULT_CORE_DIR") {
        // A crash dumps core (in `dir`), as a serving process with core dumps on would.
        let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
        // SAFETY: plain system calls on this process.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &unlimited);
            libc::prctl(libc::PR_SET_DUMPABLE, 1);
        }
        std::env::set_current_dir(dir).unwrap();
        // SIGUSR2 makes the peer fault at once, whatever it is doing (a SIGSEGV sent
        // from outside would not do: Rust's stack overflow handler ignores it).
        extern "C" fn crash(_: libc::c_int) {
            // SAFETY: deliberately not: a write through a null pointer.
            unsafe { std::ptr::null_mut::<u8>().write_volatile(1) };
        }
        // SAFETY: installs a handler for a signal nothing else uses here.
        unsafe { libc::signal(libc::SIGUSR2, crash as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
    let name = std::env::var("KVX_FAULT_NAME").unwrap();
    let backend: u32 = std::env::var("KVX_FAULT_BACKEND").unwrap().parse().unwrap();
    let agent = Agent::try_new_on(backend, &name, true, 0).unwrap();
    let cm = Cm::try_new_on(backend, 0).unwrap();
    let buffer = pattern(PEER_BUF, 77);
    agent.register(&[&buffer]);
    let staging = vec![0u8; CHUNK];
    let staged = agent.register(&[&staging]);
    println!("READY {} {} {}", agent.conn_info(), buffer.as_ptr() as u64, cm.address());
    std::io::stdout().flush().unwrap();
    let mut conn = None;
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.first().copied() {
            Some("load") => {
                let st = agent.load_by_info(w[1], w[2]);
                println!("LOADED {st:?}");
            }
            // Write chunks of known content into the survivor, each followed by a sync message.
            Some("stream") => {
                let (to, addr): (&str, u64) = (w[1], w[2].parse().unwrap());
                for i in 0..CHUNKS {
                    let content = pattern(CHUNK, 1000 + i as u64);
                    // SAFETY of the test: no transfer uses the staging buffer between writes.
                    unsafe { std::ptr::copy_nonoverlapping(content.as_ptr(), staging.as_ptr() as *mut u8, CHUNK) };
                    let r = [kvx_memory_desc { addr: addr + (i * CHUNK) as u64, len: CHUNK as u64, device_id: 0 }];
                    let msg = format!("chunk {i}");
                    match agent.submit(WRITE, &staged, &r, to, Some(msg.as_bytes())) {
                        Ok(x) if x.wait(TIMEOUT_MS) == KVX_TRANSFER_SUCCESS => println!("WROTE {i}"),
                        _ => break,
                    }
                    std::io::stdout().flush().unwrap();
                    std::thread::sleep(Duration::from_millis(20));
                }
                println!("STREAMED");
            }
            // Notifications to the survivor as fast as they go, until killed: a kill
            // then lands inside a send with high probability.
            Some("flood") => {
                println!("FLOODING");
                std::io::stdout().flush().unwrap();
                let msg = [7u8; 4096];
                while agent.notify(w[1], &msg) == KVX_OK {}
                println!("FLOOD ENDED");
            }
            Some("desc") => {
                println!("DESC {}", agent.desc().iter().map(|b| format!("{b:02x}")).collect::<String>());
            }
            Some("connect") => {
                conn = Some(cm.connect(&[w[1].to_string()]).pop().unwrap());
                println!("CONNECTED");
            }
            Some("send") => {
                let (tag, len, seed): (u32, usize, u64) =
                    (w[1].parse().unwrap(), w[2].parse().unwrap(), w[3].parse().unwrap());
                let st = conn.as_ref().unwrap().send(tag, &pattern(len, seed));
                println!("SENT {st:?}");
            }
            _ => break,
        }
        std::io::stdout().flush().unwrap();
    }
}

// ------------------------------------------------------------ measurements

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

/// Open descriptors and threads of this process. UCX gives each worker one
/// timerfd on its first endpoint and keeps it for the worker's life: not
/// counted (the 50-round runs of scripts/stress/faults.sh show it never grows).
fn resources() -> (usize, usize) {
    let fds = fd_targets().iter().filter(|t| !t.contains("timerfd")).count();
    (fds, count_dir("/proc/self/task"))
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Wait until the survivor's view of resources drops back to `baseline`
/// (UCX closes endpoints in its progress thread, so allow it a moment);
/// what is still held when it does not.
fn released(baseline: (usize, usize), what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut now = resources();
    while (now.0 > baseline.0 || now.1 > baseline.1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        now = resources();
    }
    if now.0 <= baseline.0 && now.1 <= baseline.1 {
        return Ok(());
    }
    let open: Vec<String> = fd_targets().iter().map(|t| describe_socket(t)).collect();
    Err(format!("{what}: fds/threads {now:?} > baseline {baseline:?}; open: {open:?}"))
}

#[track_caller]
fn assert_released(baseline: (usize, usize), what: &str) {
    if let Err(e) = released(baseline, what) {
        panic!("{e}");
    }
}

fn is_peer_or_timeout(st: kvx_status) -> bool {
    st == KVX_ERR_PEER || st == KVX_ERR_TIMEOUT
}

/// Status and error text of a load by connection info (with an explicit timeout).
fn load_status(agent: &Agent, name: &str, info: &str, timeout_ms: i64) -> (kvx_status, String) {
    let (n, i) = (CString::new(name).unwrap(), CString::new(info).unwrap());
    let st = unsafe {
        kvxfer::ffi::agent::kvx_agent_load_remote_by_connection_info(agent.raw, n.as_ptr(), i.as_ptr(), timeout_ms)
    };
    (st, last_error())
}

fn connect_status(cm: &Cm, address: &str, timeout_ms: i64) -> (kvx_status, String) {
    let a = CString::new(address).unwrap();
    let ptrs = [a.as_ptr()];
    let mut out = [std::ptr::null()];
    let st =
        unsafe { kvxfer::ffi::conn::kvx_cm_get_connections(cm.raw, ptrs.as_ptr(), 1, timeout_ms, out.as_mut_ptr()) };
    (st, last_error())
}

/// A descriptor target, with its TCP state and addresses when it is a TCP socket (for failure reports).
fn describe_socket(target: &str) -> String {
    let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) else {
        return target.to_owned();
    };
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[9] == inode {
                // Columns: local address, remote address, state (hex, 08 = CLOSE_WAIT, 0A = LISTEN).
                return format!("tcp {} -> {} state {}", f[1], f[2], f[3]);
            }
        }
    }
    target.to_owned()
}

fn fd_targets() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    v.sort();
    v
}

/// After the peer died: submits fail (at once or when waited on) with a
/// peer/timeout status, within `DETECT_LIMIT`. Returns how long it took.
fn wait_until_refused(agent: &Agent, peer: &Peer, local: &[kvx_memory_desc]) -> Duration {
    let started = Instant::now();
    let r = peer.remote(0, local[0].len as usize);
    loop {
        match agent.submit(WRITE, local, &r, &peer.name, None) {
            Err((st, msg)) => {
                assert!(is_peer_or_timeout(st), "submit to a dead peer: {st:?} {msg}");
                break;
            }
            Ok(x) => {
                if x.wait(DETECT_LIMIT.as_millis() as i64) == KVX_TRANSFER_FAILURE {
                    break;
                }
            }
        }
        assert!(
            started.elapsed() < DETECT_LIMIT,
            "transfers to a dead peer kept succeeding for {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let detected = started.elapsed();
    later_calls_fail(agent, &peer.name, local, &r);
    detected
}

/// After a peer failed, later calls fail too: refused with KVX_ERR_PEER or
/// KVX_ERR_TIMEOUT, or accepted and then failed within the timeout.
fn later_calls_fail(agent: &Agent, name: &str, local: &[kvx_memory_desc], remote: &[kvx_memory_desc]) {
    let started = Instant::now();
    match agent.submit(WRITE, local, remote, name, None) {
        Err((st, msg)) => assert!(is_peer_or_timeout(st), "later submit: {st:?} {msg}"),
        Ok(x) => assert_eq!(x.wait(-1), KVX_TRANSFER_FAILURE, "a later transfer to a failed peer: {}", x.status_text()),
    }
    let st = agent.notify(name, b"anyone?");
    assert!(is_peer_or_timeout(st), "later notify: {st:?} {}", last_error());
    assert!(started.elapsed() < DETECT_LIMIT, "later calls took {:?}", started.elapsed());
}

/// After `invalidate`, a restarted peer is reachable: WRITE then READ back.
/// Returns the restarted peer, still running.
#[must_use]
fn reconnect_and_verify(
    agent: &Agent,
    launcher: &Launcher,
    name: &str,
    local: &[kvx_memory_desc],
    src: &[u8],
    back: &[u8],
    back_d: &[kvx_memory_desc],
) -> Peer {
    let st = agent.invalidate(name);
    assert!(st == KVX_OK || st == KVX_ERR_NOT_FOUND, "invalidate: {st:?} {}", last_error());
    let again = launcher.start(name);
    ok(agent.load_by_info(name, &again.info));
    let len = src.len();
    agent.submit(WRITE, local, &again.remote(0, len), name, None).unwrap().expect_success();
    agent.submit(READ, back_d, &again.remote(0, len), name, None).unwrap().expect_success();
    assert!(back == src, "data read back from the restarted peer differs");
    again
}

// --------------------------------------------------------------- scenarios

type Report = String;

/// SIGKILL while transfers run in both directions. Completed READs and every
/// chunk the peer announced with a sync message must be intact afterwards.
fn kill_mid_transfer(l: &Launcher) -> Report {
    let agent = Agent::try_new_on(l.backend, "survivor", true, 0).unwrap();
    let inbox = vec![0u8; CHUNK * CHUNKS];
    agent.register(&[&inbox]);
    let src = pattern(PEER_BUF, 5);
    let local = agent.register(&[&src]);
    let back = vec![0u8; PEER_BUF];
    let back_d = agent.register(&[&back]);
    let mut peer = l.start("victim");
    let baseline = resources();
    ok(agent.load_by_info("victim", &peer.info));
    peer.command(&format!("load survivor {}", agent.conn_info()));
    assert_eq!(peer.expect("LOADED"), "LOADED KVX_OK");

    // A completed READ before the fault: its bytes must be the peer's.
    agent.submit(READ, &back_d, &peer.remote(0, PEER_BUF), "victim", None).unwrap().expect_success();
    assert!(back == pattern(PEER_BUF, 77), "completed READ returned wrong bytes");

    peer.command(&format!("stream survivor {}", inbox.as_ptr() as u64));
    let mut notes = agent.wait_notifications(3, 20_000);
    assert!(notes.len() >= 3, "peer streamed only {} chunks", notes.len());
    let inflight: Vec<_> = (0..8)
        .map(|i| {
            let op = if i % 2 == 0 { WRITE } else { READ };
            let d = if op == WRITE { &local } else { &back_d };
            agent.submit(op, d, &peer.remote(0, PEER_BUF), "victim", None).unwrap()
        })
        .collect();
    let killed = Instant::now();
    // When the peer is gone, reaped at once as a supervising parent would: UCX's
    // shared-memory keepalive takes an exited but unreaped process (a zombie) for alive.
    let pid = peer.child.id() as libc::pid_t;
    let gone = l.core_dir.is_some().then(|| {
        std::thread::spawn(move || {
            let mut status = 0;
            // SAFETY: reaps this test's own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            (killed.elapsed(), status)
        })
    });
    if l.core_dir.is_some() {
        // A real fault (not a SIGSEGV sent from outside, which Rust's stack
        // overflow handler ignores): the peer's memory is written out before it exits.
        peer.signal(libc::SIGUSR2);
    } else {
        peer.kill9();
    }
    let mut failed = 0;
    for x in &inflight {
        let st = x.wait(-1);
        assert_ne!(st, KVX_TRANSFER_IN_PROGRESS, "a transfer to a dead peer hung");
        failed += (st == KVX_TRANSFER_FAILURE) as usize;
    }
    let settle = killed.elapsed();
    let (exited, status) = gone.map_or((settle, 0), |g| g.join().unwrap());
    assert!(settle < DETECT_LIMIT, "in-flight transfers took {settle:?} to fail (the peer was gone after {exited:?})");
    // Over shared memory they may all finish before the kill lands; over TCP 128 MiB cannot.
    if l.tls.as_deref() == Some("tcp") {
        assert!(failed > 0, "over TCP no transfer was in flight at the kill: the scenario tested nothing");
    }
    let detect = wait_until_refused(&agent, &peer, &local);
    let mut crash = String::new();
    if let Some(dir) = &l.core_dir {
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV, "peer status {status:#x}");
        let core: u64 = std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum();
        crash =
            format!(" peer_exit_ms={} core_bytes={core} core_dumped={}", exited.as_millis(), libc::WCOREDUMP(status));
    }

    // Nothing that completed is lost: every announced chunk holds its bytes.
    notes.extend(agent.notifications());
    for (sender, msg) in &notes {
        assert_eq!(sender, "victim");
        let i: usize = std::str::from_utf8(msg).unwrap().strip_prefix("chunk ").unwrap().parse().unwrap();
        assert!(
            inbox[i * CHUNK..(i + 1) * CHUNK] == pattern(CHUNK, 1000 + i as u64)[..],
            "announced chunk {i} is corrupt"
        );
    }
    drop(inflight);
    ok(agent.invalidate("victim"));
    assert_released(baseline, "after SIGKILL + invalidate");
    // Reaching a restarted peer is this scenario's SIGKILL form's to check (and
    // where the open restarted-peer stall of docs/failure-model.md is tracked);
    // the crash form is about noticing the crash.
    if l.core_dir.is_none() {
        reconnect_and_verify(&agent, l, "victim", &local, &src, &back, &back_d).quit();
    }
    format!(
        "inflight_failed={failed}/8 settle_ms={} detect_ms={} chunks_kept={}{crash}",
        settle.as_millis(),
        detect.as_millis(),
        notes.len()
    )
}

/// SIGKILL while the peer floods this agent with notifications, several
/// times: a peer killed inside a send must not leave this agent unable to
/// reach (or hear from) the next one.
fn kill_while_flooding(l: &Launcher) -> Report {
    let agent = Agent::try_new_on(l.backend, "survivor", true, 0).unwrap();
    let src = pattern(PEER_BUF, 5);
    let local = agent.register(&[&src]);
    let back = vec![0u8; PEER_BUF];
    let back_d = agent.register(&[&back]);
    let mut heard = 0;
    for _ in 0..KILLS_WHILE_FLOODING {
        let mut peer = l.start("flooder");
        ok(agent.load_by_info("flooder", &peer.info));
        peer.command(&format!("load survivor {}", agent.conn_info()));
        assert_eq!(peer.expect("LOADED"), "LOADED KVX_OK");
        peer.command("flood survivor");
        peer.expect("FLOODING");
        heard += agent.wait_notifications(100, 20_000).len();
        peer.kill9();
        drop(agent.notifications());
        // The next peer is reached, and heard: its notification arrives.
        let mut next = reconnect_and_verify(&agent, l, "flooder", &local, &src, &back, &back_d);
        next.command(&format!("load survivor {}", agent.conn_info()));
        assert_eq!(next.expect("LOADED"), "LOADED KVX_OK");
        next.command("flood survivor");
        next.expect("FLOODING");
        let notes = agent.wait_notifications(1, 10_000);
        assert!(!notes.is_empty(), "no notification from the next peer arrived after a peer was killed mid-send");
        drop(next);
        let st = agent.invalidate("flooder");
        assert!(st == KVX_OK || st == KVX_ERR_NOT_FOUND, "invalidate: {st:?} {}", last_error());
    }
    format!("kills={KILLS_WHILE_FLOODING} notifications_heard={heard}")
}

/// As `kill_mid_transfer`, but the peer crashes (a write through a null
/// pointer, SIGSEGV) with core dumps on: while the kernel writes its memory
/// out the process still exists; once it is gone its peer must notice as fast
/// as after a SIGKILL.
fn crash_mid_transfer(l: &Launcher) -> Report {
    let dir = std::env::temp_dir().join(format!("kvx-fault-core-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let l = Launcher { core_dir: Some(dir.to_string_lossy().into_owned()), ..l.clone() };
    let report = std::panic::catch_unwind(|| kill_mid_transfer(&l));
    let _ = std::fs::remove_dir_all(&dir);
    report.unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// SIGKILL while the survivor is connecting: the peer is stopped so the
/// connection attempt is certainly in progress, then killed.
fn kill_during_setup(l: &Launcher) -> Report {
    let agent = Agent::try_new_on(l.backend, "survivor", true, 0).unwrap();
    let cm = Cm::try_new_on(l.backend, 0).unwrap();
    let src = pattern(CHUNK, 9);
    let local = agent.register(&[&src]);
    let back = vec![0u8; CHUNK];
    let back_d = agent.register(&[&back]);
    let baseline = resources();
    let mut times = Vec::new();
    for what in ["agent", "cm"] {
        let mut peer = l.start("victim");
        let baseline_with_peer = resources();
        peer.signal(libc::SIGSTOP);
        let started = Instant::now();
        let (st, msg) = std::thread::scope(|s| {
            let call = s.spawn(|| match what {
                "agent" => load_status(&agent, "victim", &peer.info, SHORT_TIMEOUT_MS as i64),
                _ => connect_status(&cm, &peer.cm_addr, SHORT_TIMEOUT_MS as i64),
            });
            std::thread::sleep(Duration::from_millis(300));
            peer.signal(libc::SIGKILL);
            call.join().unwrap()
        });
        let took = started.elapsed();
        peer.child.wait().unwrap();
        assert!(is_peer_or_timeout(st), "{what} setup to a killed peer: {st:?} {msg}");
        assert!(took < DETECT_LIMIT, "{what} setup took {took:?}");
        times.push(took.as_millis());
        assert_released(baseline_with_peer, "after a failed connection setup");
    }
    // A kill racing the handshake at random points: the call either fails
    // cleanly or succeeds, and then the first transfer fails cleanly.
    let mut raced_ok = 0;
    for delay_us in [0u64, 200, 1_000, 3_000] {
        let mut peer = l.start("victim");
        let _ = agent.invalidate("victim");
        let (st, msg) = std::thread::scope(|s| {
            let (agent, info) = (&agent, peer.info.clone());
            let call = s.spawn(move || load_status(agent, "victim", &info, SHORT_TIMEOUT_MS as i64));
            std::thread::sleep(Duration::from_micros(delay_us));
            peer.kill9();
            call.join().unwrap()
        });
        if st == KVX_OK {
            raced_ok += 1;
            wait_until_refused(&agent, &peer, &local);
        } else {
            assert!(is_peer_or_timeout(st), "raced setup: {st:?} {msg}");
        }
    }
    // Reconnecting is checked even when something was held (reported after it).
    let held = released(baseline, "after raced setups");
    reconnect_and_verify(&agent, l, "victim", &local, &src, &back, &back_d).quit();
    held.unwrap_or_else(|e| panic!("{e}"));
    format!("agent_setup_fail_ms={} cm_setup_fail_ms={} raced_loads_ok={raced_ok}/4", times[0], times[1])
}

/// SIGKILL while the survivor waits in `kvx_conn_recv` for the peer.
fn kill_while_receiving(l: &Launcher) -> Report {
    let cm = Cm::try_new_on(l.backend, 0).unwrap();
    let mut peer = l.start("victim");
    let conn = cm.connect(std::slice::from_ref(&peer.cm_addr)).pop().unwrap();
    peer.command(&format!("connect {}", cm.address()));
    peer.expect("CONNECTED");
    peer.command("send 7 65536 3");
    let mut got = vec![0u8; 65536];
    ok(conn.recv(7, &mut got, TIMEOUT_MS));
    assert_eq!(peer.expect("SENT"), "SENT KVX_OK");
    assert!(got == pattern(65536, 3), "completed receive is corrupt");
    let started = Instant::now();
    let st = std::thread::scope(|s| {
        let waiting = s.spawn(|| {
            let mut buf = vec![0u8; 65536];
            conn.recv(8, &mut buf, TIMEOUT_MS)
        });
        std::thread::sleep(Duration::from_millis(300));
        peer.kill9();
        waiting.join().unwrap()
    });
    let took = started.elapsed();
    assert!(is_peer_or_timeout(st), "receive from a killed peer: {st:?} {}", last_error());
    assert!(took < DETECT_LIMIT, "waiting receive took {took:?} to fail");
    // Later calls on the dead connection fail at once.
    let later = Instant::now();
    assert!(is_peer_or_timeout(conn.send(9, b"x")), "{}", last_error());
    assert!(is_peer_or_timeout(conn.recv(9, &mut got, TIMEOUT_MS)), "{}", last_error());
    assert!(later.elapsed() < DETECT_LIMIT);
    // A restarted peer gets a fresh connection that works.
    let mut again = l.start("victim2");
    let conn2 = cm.connect(&[again.cm_addr.clone()]).pop().unwrap();
    again.command(&format!("connect {}", cm.address()));
    again.expect("CONNECTED");
    again.command("send 7 4096 4");
    ok(conn2.recv(7, &mut got[..4096], TIMEOUT_MS));
    assert!(got[..4096] == pattern(4096, 4)[..]);
    again.quit();
    format!("recv_fail_ms={} status={st:?}", took.as_millis())
}

/// A survivor with a short timeout, a source and a read-back buffer, loaded
/// and connected to `peer` on both handles. Field order is drop order: the
/// agent goes before the buffers it registered.
struct Survivor {
    agent: Agent,
    /// Owns `conn`.
    _cm: Cm,
    conn: Conn,
    src: Vec<u8>,
    local: Vec<kvx_memory_desc>,
    back: Vec<u8>,
    back_d: Vec<kvx_memory_desc>,
}

fn connected_survivor(l: &Launcher, peer: &Peer) -> Survivor {
    let agent = Agent::try_new_on(l.backend, "survivor", true, SHORT_TIMEOUT_MS).unwrap();
    let cm = Cm::try_new_on(l.backend, SHORT_TIMEOUT_MS).unwrap();
    let src = pattern(PEER_BUF, 5);
    let local = agent.register(&[&src]);
    let back = vec![0u8; PEER_BUF];
    let back_d = agent.register(&[&back]);
    ok(agent.load_by_info(&peer.name, &peer.info));
    let conn = cm.connect(std::slice::from_ref(&peer.cm_addr)).pop().unwrap();
    Survivor { agent, _cm: cm, conn, src, local, back, back_d }
}

/// SIGSTOP: the peer is alive but does nothing. Calls that need it must end
/// with KVX_ERR_TIMEOUT (or the transfer fail) at their timeout, not hang.
fn stopped_peer(l: &Launcher) -> Report {
    let peer = l.start("sleeper");
    let sv = connected_survivor(l, &peer);
    let (agent, local, back_d, conn, src, back) =
        (&sv.agent, &sv.local[..], &sv.back_d[..], &sv.conn, &sv.src, &sv.back);
    agent.submit(WRITE, local, &peer.remote(0, PEER_BUF), "sleeper", None).unwrap().expect_success();
    peer.signal(libc::SIGSTOP);
    let limit = Duration::from_millis(SHORT_TIMEOUT_MS) + Duration::from_secs(3);

    // A transfer needs the peer's progress over TCP: it must fail at its deadline.
    let t = Instant::now();
    let mut xfer_state = KVX_TRANSFER_SUCCESS;
    for _ in 0..8 {
        let x = agent.submit(WRITE, local, &peer.remote(0, PEER_BUF), "sleeper", None).unwrap();
        xfer_state = x.wait(-1);
        assert_ne!(xfer_state, KVX_TRANSFER_IN_PROGRESS);
        if xfer_state == KVX_TRANSFER_FAILURE {
            assert!(
                x.status_text().contains("KVX_ERR_TIMEOUT") || x.status_text().contains("timed out"),
                "{}",
                x.status_text()
            );
            break;
        }
        // One-sided transports (shared memory) complete without the peer's CPU.
        assert!(l.tls.as_deref() != Some("tcp"), "a WRITE over TCP to a stopped peer succeeded");
    }
    let xfer_ms = t.elapsed().as_millis();
    let t = Instant::now();
    let (load, msg) = load_status(agent, "sleeper-again", &peer.info, SHORT_TIMEOUT_MS as i64);
    assert_eq!(load, KVX_ERR_TIMEOUT, "{msg}");
    let load_ms = t.elapsed().as_millis();
    let fresh = Cm::try_new_on(l.backend, SHORT_TIMEOUT_MS).unwrap();
    let t = Instant::now();
    let (st, msg) = connect_status(&fresh, &peer.cm_addr, -1);
    assert_eq!(st, KVX_ERR_TIMEOUT, "{msg}");
    let connect_ms = t.elapsed().as_millis();
    let t = Instant::now();
    let mut buf = vec![0u8; 1024];
    assert_eq!(conn.recv(1, &mut buf, -1), KVX_ERR_TIMEOUT, "{}", last_error());
    let recv_ms = t.elapsed().as_millis();
    for (what, ms) in [("transfer", xfer_ms), ("load", load_ms), ("connect", connect_ms), ("recv", recv_ms)] {
        assert!(ms < limit.as_millis(), "{what} took {ms} ms against a timeout of {SHORT_TIMEOUT_MS} ms");
    }
    // The stalled peer resumes: after invalidate it is usable again.
    peer.signal(libc::SIGCONT);
    ok(agent.invalidate("sleeper"));
    ok(agent.load_by_info("sleeper", &peer.info));
    agent.submit(READ, back_d, &peer.remote(0, PEER_BUF), "sleeper", None).unwrap().expect_success();
    assert!(back == src, "READ after the peer resumed");
    peer.quit();
    format!("xfer_fail_ms={xfer_ms} xfer_state={xfer_state:?} load_timeout_ms={load_ms} connect_timeout_ms={connect_ms} recv_timeout_ms={recv_ms}")
}

/// The link between two network namespaces goes down mid-run (UCX over TCP).
fn network_cut(l: &Launcher) -> Report {
    let ns_peer = l.netns.clone().expect("network_cut runs with a peer namespace");
    let link = |state: &str| {
        let st = Command::new("ip").args(["-n", &ns_peer, "link", "set", "kvxveth-b", state]).status().unwrap();
        assert!(st.success(), "ip link set {state}");
    };
    let peer = l.start("remote");
    let sv = connected_survivor(l, &peer);
    let (agent, local, back_d, conn, src, back) =
        (&sv.agent, &sv.local[..], &sv.back_d[..], &sv.conn, &sv.src, &sv.back);
    agent.submit(READ, back_d, &peer.remote(0, PEER_BUF), "remote", None).unwrap().expect_success();
    assert!(*back == pattern(PEER_BUF, 77));
    link("down");
    let t = Instant::now();
    let x = agent.submit(WRITE, local, &peer.remote(0, PEER_BUF), "remote", None).unwrap();
    assert_eq!(x.wait(-1), KVX_TRANSFER_FAILURE, "a WRITE across a cut network did not fail");
    let xfer_ms = t.elapsed().as_millis();
    later_calls_fail(agent, "remote", local, &peer.remote(0, PEER_BUF));
    let t = Instant::now();
    let mut buf = vec![0u8; 1024];
    assert!(is_peer_or_timeout(conn.recv(1, &mut buf, -1)), "{}", last_error());
    let recv_ms = t.elapsed().as_millis();
    let t = Instant::now();
    let (st, msg) = load_status(agent, "remote-2", &peer.info, SHORT_TIMEOUT_MS as i64);
    assert!(is_peer_or_timeout(st), "{st:?} {msg}");
    let load_ms = t.elapsed().as_millis();
    let limit = (SHORT_TIMEOUT_MS + 3_000) as u128;
    for (what, ms) in [("transfer", xfer_ms), ("recv", recv_ms), ("load", load_ms)] {
        assert!(ms < limit, "{what} across a cut network took {ms} ms");
    }
    link("up");
    drop(peer);
    reconnect_and_verify(agent, l, "remote", local, src, back, back_d).quit();
    format!("xfer_fail_ms={xfer_ms} recv_fail_ms={recv_ms} load_fail_ms={load_ms}")
}

/// Out-of-range transfers and tampered descriptors are refused.
fn forged_descriptors(l: &Launcher) -> Report {
    let backend = l.backend;
    let victim = Agent::try_new_on(backend, "guarded", true, 0).unwrap();
    let attacker = Agent::try_new_on(backend, "attacker", true, 0).unwrap();
    let secret = pattern(8192, 1);
    let exposed = vec![0u8; 4096];
    let ed = victim.register(&[&exposed]);
    let mine = vec![0u8; 8192];
    let md = attacker.register(&[&mine]);
    ok(attacker.load_by_info("guarded", &victim.conn_info()));
    let e = ed[0];
    let cases = [
        ("unregistered memory", secret.as_ptr() as u64, 64u64),
        ("one byte past the end", e.addr + 1, e.len),
        ("starts past the end", e.addr + e.len, 1),
        ("straddles the start", e.addr - 1, 2),
        ("wraps the address space", u64::MAX - 8, 64),
        ("zero length outside", secret.as_ptr() as u64, 0),
    ];
    for (what, addr, len) in cases {
        let r = [kvx_memory_desc { addr, len, device_id: 0 }];
        let l = [kvx_memory_desc { addr: md[0].addr, len, device_id: 0 }];
        for op in [READ, WRITE] {
            let (st, msg) =
                attacker.submit(op, &l, &r, "guarded", None).err().unwrap_or_else(|| panic!("{what}: accepted"));
            assert!(st == KVX_ERR_NOT_REGISTERED || st == KVX_ERR_INVALID_ARGUMENT, "{what}: {st:?} {msg}");
        }
        assert!(!attacker.check("guarded", &r), "{what}: check_remote_descs said yes");
    }
    // A tampered descriptor is refused before UCX sees it.
    let mut forged = victim.desc();
    let at = forged.len() / 2;
    forged[at] ^= 0xff;
    assert_eq!(attacker.load("guarded-forged", &forged), KVX_ERR_MALFORMED, "{}", last_error());
    // In range still works.
    attacker
        .submit(
            WRITE,
            &md[..1].iter().map(|d| kvx_memory_desc { len: 4096, ..*d }).collect::<Vec<_>>(),
            &ed,
            "guarded",
            None,
        )
        .unwrap()
        .expect_success();
    "refused".to_string()
}

/// A descriptor whose peer has exited since: loading it is a peer error.
fn exited_peer_descriptor(l: &Launcher) -> Report {
    let backend = l.backend;
    let survivor = Agent::try_new_on(backend, "survivor", false, 0).unwrap();
    let mut peer = l.start("gone");
    peer.command("desc");
    let line = peer.expect("DESC ");
    let hex = line.trim_start_matches("DESC ").trim();
    let desc: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    peer.kill9();
    let buf = vec![0u8; 4096];
    let d = survivor.register(&[&buf]);
    let baseline = resources();
    let load_and_invalidate = || {
        let st = survivor.load("gone", &desc);
        assert!(st == KVX_ERR_PEER || st == KVX_OK, "{st:?} {}", last_error());
        if st == KVX_OK {
            // Transports that attach lazily notice at the first transfer instead.
            wait_until_refused(&survivor, &peer, &d);
        }
        let invalidated = survivor.invalidate("gone");
        assert!(
            invalidated == KVX_OK || invalidated == KVX_ERR_NOT_FOUND,
            "invalidate: {invalidated:?} {}",
            last_error()
        );
        st
    };
    let st = load_and_invalidate();
    // Retrying the same dead metadata must not cost anything more.
    let after_first = resources();
    for _ in 0..3 {
        load_and_invalidate();
    }
    assert_released(after_first, "after retrying an exited peer's descriptor");
    assert_released(baseline, "after loading an exited peer's descriptor and invalidate");
    format!("load={st:?}")
}

/// Invalidate while a notification is in flight: KVX_ERR_PEER, not a cancel.
fn invalidate_racing_notify(l: &Launcher) -> Report {
    let backend = l.backend;
    let report = {
        let sender = Agent::try_new_on(backend, "racer", false, 0).unwrap();
        let target = Agent::try_new_on(backend, "raced", true, 0).unwrap();
        let info = target.conn_info();
        let message = vec![7u8; 1 << 20];
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..100 {
            ok(sender.load_by_info("raced", &info));
            let st = std::thread::scope(|s| {
                let notify = s.spawn(|| sender.notify("raced", &message));
                std::thread::sleep(Duration::from_micros(200));
                let _ = sender.invalidate("raced");
                notify.join().unwrap()
            });
            *seen.entry(format!("{st:?}")).or_insert(0) += 1;
            assert!(st == KVX_OK || st == KVX_ERR_PEER || st == KVX_ERR_NOT_FOUND, "{st:?} {}", last_error());
            drop(target.notifications());
        }
        format!("outcomes={seen:?}")
    };
    report
}

fn scenario(name: &str) -> fn(&Launcher) -> Report {
    match name {
        "kill_mid_transfer" => kill_mid_transfer,
        "crash_mid_transfer" => crash_mid_transfer,
        "kill_while_flooding" => kill_while_flooding,
        "kill_during_setup" => kill_during_setup,
        "kill_while_receiving" => kill_while_receiving,
        "stopped_peer" => stopped_peer,
        "network_cut" => network_cut,
        "forged_descriptors" => forged_descriptors,
        "exited_peer_descriptor" => exited_peer_descriptor,
        "invalidate_racing_notify" => invalidate_racing_notify,
        other => panic!("unknown scenario {other}"),
    }
}

// ------------------------------------------------- running the scenarios

/// One survivor at a time: on 2 cores, parallel survivors and peers would
/// stretch the timings the tests bound.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `KVX_FAULT_BACKENDS` (default `ucx,nixl`) names this backend;
/// otherwise its test reports a skip.
fn backend_wanted(backend: u32) -> bool {
    let wanted = std::env::var("KVX_FAULT_BACKENDS").unwrap_or_else(|_| "ucx,nixl".into());
    let name = if backend == NIXL { "nixl" } else { "ucx" };
    let wanted = wanted.split(',').any(|w| w.trim() == name);
    if !wanted {
        report_skip(&format!("KVX_FAULT_BACKENDS does not name {name}"));
    }
    wanted
}

/// What these tests found the NIXL backend doing against the fault contract
/// (reported to its owner; some happen only in some rounds). A listed scenario
/// still runs on NIXL and its outcome is printed; a failure is reported as a
/// known gap instead of failing the test. Every other scenario must pass on NIXL.
const KNOWN_NIXL_GAPS: [(&str, &str); 1] = [
    ("kill_during_setup", "a peer killed while NIXL 1.5.1 connects to it inside loadRemoteMD (the load fails with a backend error) leaves one socket open in NIXL's UCX plugin, which invalidate does not release; kvxfer checks the peer's listener right before the load, so only a death within the load itself (about a millisecond) costs the socket"),
];

/// Run a scenario as a separate survivor process (its own backend, UCX_TLS or network namespace).
fn run_in_child(
    name: &str,
    l: &Launcher,
    survivor_netns: Option<&str>,
    survivor_ip: Option<&str>,
    rounds: usize,
) -> String {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match survivor_netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    cmd.args(["fault_repeat", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("KVX_FAULT_SCENARIO", name)
        .env("KVX_FAULT_ROUNDS", rounds.to_string())
        .env("KVX_FAULT_BACKEND", l.backend.to_string())
        .env("KVX_FAULT_PEER_NETNS", l.netns.clone().unwrap_or_default())
        .env("KVX_FAULT_PEER_IP", l.listen_ip.clone().unwrap_or_default());
    if let Some(ip) = survivor_ip {
        cmd.env("KVX_LISTEN_IP", ip);
    }
    if let Some(tls) = &l.tls {
        cmd.env("UCX_TLS", tls);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let passed = out.status.success() && text.contains("FAULTS PASSED");
    let summary = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("round ") || l.contains("passed, ") || l.starts_with("SKIPPED"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    if let Some((_, gap)) = KNOWN_NIXL_GAPS.iter().find(|(n, _)| l.backend == NIXL && *n == name) {
        if !passed {
            report_known_gap(&format!("{name} on NIXL failed as known: {gap}"));
            return format!("KNOWN NIXL GAP {name} (failed as known): {gap}\n{}", summary(&text));
        }
    }
    assert!(passed, "scenario {name} failed:\n{text}");
    if let Some(skipped) = text.lines().find(|l| l.starts_with("SKIPPED")) {
        report_skip(skipped.trim_start_matches("SKIPPED "));
    }
    summary(&text)
}

/// A scenario in a survivor process on one backend, one test at a time;
/// `tls` restricts UCX's transports in the survivor and its peers.
fn run_on_backend(backend: u32, scenario: &str, tls: Option<&str>) {
    let _serial = serial();
    if !backend_wanted(backend) {
        return;
    }
    let l = Launcher { backend, tls: tls.map(str::to_owned), ..Default::default() };
    println!("{}", run_in_child(scenario, &l, None, None, rounds()));
}

/// One test per backend, `<name>::ucx` and `<name>::nixl`, so each backend's
/// outcome (pass, failure, skip, known gap) is reported on its own.
macro_rules! on_each_backend {
    ($(#[$doc:meta])* $name:ident => $run:path) => {
        $(#[$doc])*
        mod $name {
            #[test]
            fn ucx() {
                $run(super::UCX);
            }
            #[test]
            fn nixl() {
                $run(super::NIXL);
            }
        }
    };
    ($(#[$doc:meta])* $name:ident, $scenario:literal, $tls:expr) => {
        $(#[$doc])*
        mod $name {
            #[test]
            fn ucx() {
                super::run_on_backend(super::UCX, $scenario, $tls);
            }
            #[test]
            fn nixl() {
                super::run_on_backend(super::NIXL, $scenario, $tls);
            }
        }
    };
}

on_each_backend!(sigkill_mid_transfer_fails_pending_keeps_completed_and_reconnects, "kill_mid_transfer", None);
on_each_backend!(sigkill_mid_transfer_over_tcp_fails_transfers_in_flight, "kill_mid_transfer", Some("tcp"));
on_each_backend!(sigsegv_with_core_dump_mid_transfer_fails_as_fast_as_sigkill, "crash_mid_transfer", None);
on_each_backend!(sigkill_while_peer_floods_notifications_next_peer_works, "kill_while_flooding", None);
on_each_backend!(sigkill_during_connection_setup_fails_fast, "kill_during_setup", None);
on_each_backend!(sigkill_while_receiver_waits_fails_the_receive, "kill_while_receiving", None);
on_each_backend!(sigstop_peer_forces_timeouts_over_tcp, "stopped_peer", Some("tcp"));

/// Two network namespaces joined by a veth pair; removed on drop.
struct NetnsPair {
    a: String,
    b: String,
}

/// Addresses of the two namespaces: a /30 of their own per test process, so
/// concurrent runs (CI and a stress script) never share a subnet.
fn ns_ips() -> (String, String) {
    let net = std::process::id() % 250 + 1;
    (format!("10.231.{net}.1"), format!("10.231.{net}.2"))
}

impl NetnsPair {
    fn create() -> Result<NetnsPair, String> {
        let id = std::process::id();
        let pair = NetnsPair { a: format!("kvx-a-{id}"), b: format!("kvx-b-{id}") };
        let run = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
            }
        };
        run(&["netns", "add", &pair.a])?;
        run(&["netns", "add", &pair.b])?;
        run(&[
            "-n",
            &pair.a,
            "link",
            "add",
            "kvxveth-a",
            "type",
            "veth",
            "peer",
            "name",
            "kvxveth-b",
            "netns",
            &pair.b,
        ])?;
        let (ip_a, ip_b) = ns_ips();
        run(&["-n", &pair.a, "addr", "add", &format!("{ip_a}/30"), "dev", "kvxveth-a"])?;
        run(&["-n", &pair.b, "addr", "add", &format!("{ip_b}/30"), "dev", "kvxveth-b"])?;
        for ns in [&pair.a, &pair.b] {
            run(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        run(&["-n", &pair.a, "link", "set", "kvxveth-a", "up"])?;
        run(&["-n", &pair.b, "link", "set", "kvxveth-b", "up"])?;
        // A UCX worker created in the first second after the veth comes up
        // advertises loopback only (seen on every run; 3 s always sufficed).
        std::thread::sleep(Duration::from_secs(3));
        Ok(pair)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn network_cut_on(backend: u32) {
    let _serial = serial();
    if !backend_wanted(backend) {
        return;
    }
    let pair = match NetnsPair::create() {
        Ok(p) => p,
        Err(why) => {
            report_skip(&format!("network namespaces are not permitted here ({why})"));
            return;
        }
    };
    let (ip_a, ip_b) = ns_ips();
    let l = Launcher {
        backend,
        netns: Some(pair.b.clone()),
        listen_ip: Some(ip_b),
        tls: Some("tcp".into()),
        core_dir: None,
    };
    println!("{}", run_in_child("network_cut", &l, Some(&pair.a), Some(&ip_a), rounds()));
}

on_each_backend!(network_cut_between_namespaces_fails_then_recovers => super::network_cut_on);

on_each_backend!(
    /// Forged descriptors and out-of-range transfers: a peer can only touch
    /// memory registered with the agent, and only within the registered ranges.
    forged_descriptors_and_out_of_range_transfers_are_refused,
    "forged_descriptors",
    None
);
on_each_backend!(
    /// Loading the descriptor of a peer that has exited since (the race a kill
    /// during connection setup hits) is a peer error, not a transport error.
    descriptor_of_an_exited_peer_is_a_peer_error,
    "exited_peer_descriptor",
    None
);
on_each_backend!(
    /// `invalidate` while another thread's notification is in flight: the
    /// notification fails as the peer's transfers do, with KVX_ERR_PEER (or
    /// KVX_ERR_NOT_FOUND once the name is gone), never as a bare UCX cancel.
    invalidate_racing_notify_reports_peer,
    "invalidate_racing_notify",
    None
);

/// Entry point of peer processes and of survivors run in their own process.
#[test]
#[ignore = "a peer process started by the fault tests"]
fn fault_child() {
    if std::env::var("KVX_FAULT_ROLE").as_deref() == Ok("peer") {
        peer_main();
    }
}

/// Runs `KVX_FAULT_SCENARIO` `KVX_FAULT_ROUNDS` times (scripts/stress/faults.sh)
/// and prints one line per round and the counts.
#[test]
#[ignore = "run by scripts/stress/faults.sh and by the fault tests"]
fn fault_repeat() {
    let Ok(name) = std::env::var("KVX_FAULT_SCENARIO") else { return };
    let rounds = rounds();
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let l = Launcher {
        backend: env("KVX_FAULT_BACKEND").map_or(UCX, |b| b.parse().unwrap()),
        netns: env("KVX_FAULT_PEER_NETNS"),
        listen_ip: env("KVX_FAULT_PEER_IP"),
        tls: env("UCX_TLS"),
        core_dir: None,
    };
    run_rounds(&name, &l, rounds);
}

/// Rounds per test: 1, or `KVX_FAULT_ROUNDS` (scripts/stress/faults.sh sets 50).
fn rounds() -> usize {
    std::env::var("KVX_FAULT_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(1)
}

/// Run a scenario `rounds` times; one line per round (with this process's
/// descriptors, threads and resident memory after it), then the counts.
fn run_rounds(name: &str, l: &Launcher, rounds: usize) {
    let run = scenario(name);
    if let Err(why) = backend_available(l.backend) {
        assert_eq!(l.backend, NIXL, "UCX must be available: {why}");
        println!("SKIPPED {name} on NIXL: the NIXL backend does not load here ({why})");
        println!("FAULTS PASSED");
        return;
    }
    let (mut passed, mut failed) = (0, 0);
    for round in 1..=rounds {
        let started = Instant::now();
        match std::panic::catch_unwind(|| run(l)) {
            Ok(report) => {
                passed += 1;
                let (fds, threads) = resources();
                println!(
                    "round {round} ok {}ms {report} fds={fds} threads={threads} rss_kib={}",
                    started.elapsed().as_millis(),
                    rss_kib()
                );
            }
            Err(e) => {
                failed += 1;
                let why = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                println!("round {round} FAILED {}ms: {why}", started.elapsed().as_millis());
            }
        }
    }
    println!("{name} backend={}: {passed} passed, {failed} failed", l.backend);
    if failed == 0 {
        println!("FAULTS PASSED");
    } else {
        panic!("{name}: {failed} of {rounds} rounds failed");
    }
}
