//! Forged agent descriptors all the way into a real UCX or NIXL load.
//!
//! Each input edits a genuine descriptor (from a live agent in a child
//! process) and seals the result the way a forger would: with a valid MAC
//! under the deployment key (an insider), or with only a valid checksum.
//! The child loads it, READs 64 bytes from the genuine buffer when the load
//! succeeds, and invalidates the peer. The child is this binary re-run with
//! `KVX_FUZZ_LOAD_CHILD` set, so a crash inside UCX or NIXL kills the child,
//! not the fuzzer: it is counted, its input saved to `KVX_FUZZ_COUNTED_DIR`,
//! and a fresh child serves the next input.
//!
//! What must hold (a panic, so libFuzzer keeps the input):
//! - a forgery without a MAC, sent to an agent holding the key, is refused
//!   (`KVX_ERR_AUTH` or `KVX_ERR_MALFORMED`) without a crash or a hang:
//!   nothing unauthenticated reaches the transport;
//! - no input makes kvxfer panic (`KVX_ERR_PANIC`);
//! - the genuine descriptor, unedited and MACed, loads and its READ succeeds
//!   (so the target can tell a working child from a broken one).
//!
//! Crashes and hangs of forgeries that reach the transport (a MAC under the
//! key, or a checksum against an agent without one) are what only UCX or
//! NIXL can judge: counted, printed at exit as
//! `KVX-FUZZ agent_load <backend> <wrapping>: cases=... refused=... loaded=... crashes=... hangs=...`.
#![no_main]
use kvxfer::core::auth::{PeerAuth, Purpose, DEFAULT_MAX_AGE};
use kvxfer::core::buffer::kvx_bytes;
use kvxfer::core::config::{kvx_agent_config, kvx_transfer_request};
use kvxfer::core::error::kvx_status::{self, *};
use kvxfer::core::memory::kvx_memory_desc;
use kvxfer::core::wire;
use kvxfer::dispatch::kvx_transfer_state;
use kvxfer::ffi::agent::*;
use kvxfer::ffi::library::*;
use kvxfer::ffi::status::kvx_last_error;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

const KEY: &[u8] = b"agent_load fuzz deployment key 0123456789";
const UCX: u32 = 1;
const NIXL: u32 = 2;
/// A load (and its READ) not answered by then is a hang.
const HANG_LIMIT: Duration = Duration::from_secs(15);
const PAGE: usize = 4096;
/// At most this many edits per input.
const MAX_EDITS: usize = 16;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap_or(0)).collect()
}

fn backend_name(backend: u32) -> &'static str {
    if backend == NIXL {
        "nixl"
    } else {
        "ucx"
    }
}

// ------------------------------------------------------------ the child

fn last_error() -> String {
    // SAFETY: kvx_last_error returns a NUL-terminated string owned by this thread.
    unsafe { CStr::from_ptr(kvx_last_error()).to_string_lossy().replace(' ', "_") }
}

/// A real agent in this process, `name`, keyed or not.
fn create_agent(backend: u32, name: &CStr, key: Option<&[u8]>) -> Result<*mut kvx_agent, String> {
    // SAFETY: the config outlives the call; the strings it points to outlive it too.
    unsafe {
        let mut cfg: kvx_agent_config = std::mem::zeroed();
        assert_eq!(kvx_agent_config_init(&mut cfg), KVX_OK);
        cfg.name = name.as_ptr();
        cfg.backend = backend;
        cfg.timeout_ms = 5_000;
        if let Some(key) = key {
            cfg.auth_key = key.as_ptr();
            cfg.auth_key_len = key.len();
        }
        let mut agent = std::ptr::null_mut();
        match kvx_agent_create(&cfg, &mut agent) {
            KVX_OK => Ok(agent),
            st => Err(format!("{st:?}_{}", last_error())),
        }
    }
}

/// One page between two `PROT_NONE` guard pages, registered with `agent`.
fn guarded_page(agent: *mut kvx_agent) -> kvx_memory_desc {
    // SAFETY: a private anonymous mapping of three pages, kept for the process's life.
    unsafe {
        let base = libc::mmap(
            std::ptr::null_mut(),
            3 * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        ) as *mut u8;
        assert_ne!(base as *mut libc::c_void, libc::MAP_FAILED);
        assert_eq!(libc::mprotect(base.cast(), PAGE, libc::PROT_NONE), 0);
        assert_eq!(libc::mprotect(base.add(2 * PAGE).cast(), PAGE, libc::PROT_NONE), 0);
        let page = kvx_memory_desc { addr: base as u64 + PAGE as u64, len: PAGE as u64, device_id: 0 };
        assert_eq!(kvx_agent_register_memory(agent, 0, &page, 1), KVX_OK);
        page
    }
}

/// Load `desc` into `loader` as "victim"; when it loads, READ 64 bytes of
/// the victim's genuine page, then invalidate. The answer: status, READ.
fn load_and_read(loader: *mut kvx_agent, local: kvx_memory_desc, remote: kvx_memory_desc, desc: &[u8]) -> String {
    let victim = CString::new("victim").unwrap();
    // SAFETY: every pointer passed lives across its call.
    unsafe {
        let st = kvx_agent_load_remote(loader, victim.as_ptr(), desc.as_ptr(), desc.len());
        let why = last_error();
        if st != KVX_OK {
            return format!("{st:?} none {why}");
        }
        let (local, remote) = ([kvx_memory_desc { len: 64, ..local }], [kvx_memory_desc { len: 64, ..remote }]);
        let req = kvx_transfer_request {
            op: 0, // READ
            src_type: 0,
            src_descs: local.as_ptr(),
            dst_type: 0,
            dst_descs: remote.as_ptr(),
            count: 1,
            remote_name: victim.as_ptr(),
            sync_message: std::ptr::null(),
            sync_message_len: 0,
            has_sync_message: false,
        };
        let mut xfer = std::ptr::null_mut();
        let read = match kvx_agent_submit(loader, &req, &mut xfer) {
            KVX_OK => {
                let mut state = kvx_transfer_state::KVX_TRANSFER_IN_PROGRESS;
                let waited = kvx_xfer_wait(xfer, 3_000, &mut state);
                kvx_xfer_destroy(xfer);
                format!("{waited:?}/{state:?}")
            }
            st => format!("{st:?}"),
        };
        let _ = kvx_agent_invalidate_remote(loader, victim.as_ptr());
        format!("KVX_OK {read} -")
    }
}

/// The child: a victim agent (whose descriptor is forged) and a loader
/// agent (which loads the forgeries) in one process, serving hex lines on
/// stdin with one `RESULT` line each on stdout.
fn serve(backend: u32, keyed: bool) -> ! {
    let key = keyed.then_some(KEY);
    let victim_name = CString::new("victim").unwrap();
    let loader_name = CString::new("loader").unwrap();
    let (victim, loader) = match (create_agent(backend, &victim_name, key), create_agent(backend, &loader_name, key)) {
        (Ok(v), Ok(l)) => (v, l),
        (Err(why), _) | (_, Err(why)) => {
            println!("UNAVAILABLE {why}");
            std::process::exit(0);
        }
    };
    let remote = guarded_page(victim);
    let local = guarded_page(loader);
    let mut genuine = kvx_bytes { data: std::ptr::null_mut(), len: 0 };
    // SAFETY: `genuine` is freed below, once.
    let descriptor = unsafe {
        assert_eq!(kvx_agent_get_local_desc(victim, &mut genuine), KVX_OK);
        let bytes = std::slice::from_raw_parts(genuine.data, genuine.len).to_vec();
        kvx_bytes_free(&mut genuine);
        bytes
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY {}", hex(&descriptor)).unwrap();
    out.flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let answer = load_and_read(loader, local, remote, &unhex(line.trim()));
        writeln!(out, "RESULT {answer}").unwrap();
        out.flush().unwrap();
    }
    std::process::exit(0)
}

// ------------------------------------------------------------ the parent

/// How the forger seals its edit.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Wrapping {
    /// A valid MAC under the deployment key: reaches the transport.
    Mac,
    /// A valid checksum, no MAC, against an agent with the key: refused.
    ChecksumKeyed,
    /// A valid checksum against an agent without a key: reaches the transport.
    ChecksumUnkeyed,
}

impl Wrapping {
    fn child_has_key(self) -> bool {
        self != Wrapping::ChecksumUnkeyed
    }
}

enum Outcome {
    Answered(Vec<String>),
    Crashed(String),
    Hung,
}

struct Victim {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    genuine: Vec<u8>,
}

impl Victim {
    fn start(backend: u32, keyed: bool) -> Result<Victim, String> {
        let exe = std::env::current_exe().unwrap();
        let stderr = if std::env::var_os("KVX_FUZZ_CHILD_STDERR").is_some() { Stdio::inherit() } else { Stdio::null() };
        let mut child = Command::new(exe)
            .env("KVX_FUZZ_LOAD_CHILD", format!("{backend} {}", keyed as u8))
            .env("KVX_LOG", "error")
            // The child exits without tearing its agents down: nothing to report.
            .env("ASAN_OPTIONS", format!("{}:detect_leaks=0", std::env::var("ASAN_OPTIONS").unwrap_or_default()))
            .env_remove("KVX_AUTH_KEY")
            .env_remove("KVX_AUTH_KEY_FILE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // UCX logs to stdout too, forged bytes included: only the child's
            // own lines count, and a line need not be UTF-8.
            for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line);
                let Some(at) = ["READY", "UNAVAILABLE", "RESULT"].iter().find_map(|tag| line.find(tag)) else {
                    continue;
                };
                if tx.send(line[at..].to_string()).is_err() {
                    return;
                }
            }
        });
        let first = lines.recv_timeout(Duration::from_secs(60)).map_err(|_| "the child did not start".to_string())?;
        let mut words = first.split_whitespace();
        match words.next() {
            Some("READY") => {
                let genuine = unhex(words.next().unwrap_or(""));
                Ok(Victim { child, stdin, lines, genuine })
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                Err(first)
            }
        }
    }

    fn ask(&mut self, desc: &[u8]) -> Outcome {
        if writeln!(self.stdin, "{}", hex(desc)).and_then(|_| self.stdin.flush()).is_err() {
            return self.crashed();
        }
        match self.lines.recv_timeout(HANG_LIMIT) {
            Ok(line) => Outcome::Answered(line.split_whitespace().skip(1).map(str::to_owned).collect()),
            Err(RecvTimeoutError::Disconnected) => self.crashed(),
            Err(RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                Outcome::Hung
            }
        }
    }

    fn crashed(&mut self) -> Outcome {
        use std::os::unix::process::ExitStatusExt;
        // A child that closed its output may still be dying (a crash report):
        // give it a moment, then end it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let status = self.child.wait().unwrap();
        Outcome::Crashed(match status.signal() {
            Some(sig) => format!("signal {sig}"),
            None => format!("exit {status}"),
        })
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct Tally {
    cases: usize,
    loaded: usize,
    statuses: BTreeMap<String, usize>,
    crashes: usize,
    hangs: usize,
}

#[derive(Default)]
struct Fuzzer {
    /// One child per backend and key; `Err` once the backend proved unavailable.
    victims: BTreeMap<(u32, bool), Result<Victim, String>>,
    tallies: BTreeMap<(u32, Wrapping), Tally>,
    saved: usize,
}

fn fuzzer() -> &'static Mutex<Fuzzer> {
    static FUZZER: OnceLock<Mutex<Fuzzer>> = OnceLock::new();
    FUZZER.get_or_init(|| {
        extern "C" fn print_tallies() {
            let Ok(f) = fuzzer().lock() else { return };
            for ((backend, wrapping), t) in &f.tallies {
                eprintln!(
                    "KVX-FUZZ agent_load {} {wrapping:?}: cases={} refused={} loaded={} crashes={} hangs={} statuses={:?}",
                    backend_name(*backend),
                    t.cases,
                    t.cases - t.loaded - t.crashes - t.hangs,
                    t.loaded,
                    t.crashes,
                    t.hangs,
                    t.statuses
                );
            }
        }
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(print_tallies) };
        Mutex::new(Fuzzer::default())
    })
}

/// Apply the input's edits (4 bytes each: kind, position as u16, value) to
/// `body`. Positions wrap around the current length.
fn edit(mut body: Vec<u8>, edits: &[u8]) -> Vec<u8> {
    for e in edits.chunks_exact(4).take(MAX_EDITS) {
        let at = u16::from_le_bytes([e[1], e[2]]) as usize % (body.len() + 1);
        match e[0] % 4 {
            0 if at < body.len() => body[at] = e[3],
            1 if at < body.len() => body[at] ^= e[3].max(1),
            2 => body.truncate(at),
            3 => body.insert(at, e[3]),
            _ => {}
        }
    }
    body
}

/// The forged descriptor: the genuine one's payload edited, with its inner
/// seal (checksum, NIXL trailer) made valid again, then wrapped.
fn forge(backend: u32, genuine: &[u8], edits: &[u8], wrapping: Wrapping) -> Vec<u8> {
    let payload = PeerAuth::unverified_payload(genuine);
    let forged = if backend == UCX {
        // A UCX descriptor ends with the checksum of what precedes it.
        let body = edit(payload[..payload.len().saturating_sub(8)].to_vec(), edits);
        let mut sealed = body.clone();
        sealed.extend_from_slice(&wire::checksum(&body).to_le_bytes());
        sealed
    } else {
        let opened = wire::open_nixl_metadata(payload, false).expect("the genuine NIXL descriptor opens");
        let listener = opened.listener.unwrap_or("").to_owned();
        wire::seal_nixl_metadata(edit(opened.metadata.to_vec(), edits), &listener)
    };
    match wrapping {
        Wrapping::Mac => {
            PeerAuth::with_keys(vec![KEY.to_vec()], DEFAULT_MAX_AGE)
                .unwrap()
                .seal(Purpose::AgentDescriptor, forged, b"")
                .0
        }
        _ => forged,
    }
}

fn save(f: &mut Fuzzer, data: &[u8], what: &str) {
    let Some(dir) = std::env::var_os("KVX_FUZZ_COUNTED_DIR") else { return };
    let _ = std::fs::create_dir_all(&dir);
    f.saved += 1;
    let path = std::path::Path::new(&dir).join(format!("{what}-{}-{}", std::process::id(), f.saved));
    let _ = std::fs::write(path, data);
}

fn run(data: &[u8]) {
    let Some((&selector, edits)) = data.split_first() else { return };
    let backend = if selector & 1 == 0 { UCX } else { NIXL };
    let wrapping = [Wrapping::Mac, Wrapping::ChecksumKeyed, Wrapping::ChecksumUnkeyed][(selector as usize >> 1) % 3];
    let keyed = wrapping.child_has_key();
    let mut f = fuzzer().lock().unwrap();
    let slot = f.victims.entry((backend, keyed)).or_insert_with(|| Victim::start(backend, keyed));
    let victim = match slot {
        Ok(v) => v,
        Err(why) => {
            static SAID: OnceLock<()> = OnceLock::new();
            SAID.get_or_init(|| eprintln!("KVX-FUZZ agent_load: {} unavailable: {why}", backend_name(backend)));
            return;
        }
    };
    let desc = forge(backend, &victim.genuine, edits, wrapping);
    let unedited = edits.chunks_exact(4).next().is_none();
    let outcome = victim.ask(&desc);
    let reaches_transport = wrapping != Wrapping::ChecksumKeyed;
    let tally = f.tallies.entry((backend, wrapping)).or_default();
    tally.cases += 1;
    match &outcome {
        Outcome::Answered(words) => {
            let status = words.first().cloned().unwrap_or_default();
            assert_ne!(status, format!("{:?}", kvx_status::KVX_ERR_PANIC), "kvxfer panicked: {words:?}");
            if status == "KVX_OK" {
                tally.loaded += 1;
            }
            *tally.statuses.entry(status.clone()).or_default() += 1;
            if !reaches_transport {
                assert!(
                    status == "KVX_ERR_AUTH" || status == "KVX_ERR_MALFORMED",
                    "{} agent with the key accepted a descriptor without a MAC: {words:?}",
                    backend_name(backend)
                );
            }
            if unedited && wrapping == Wrapping::Mac {
                let read = words.get(1).map(String::as_str).unwrap_or("");
                assert!(
                    status == "KVX_OK" && read.ends_with("KVX_TRANSFER_SUCCESS"),
                    "{}: the genuine descriptor did not load and read: {words:?}",
                    backend_name(backend)
                );
            }
        }
        Outcome::Crashed(how) if !reaches_transport => {
            panic!("{}: a descriptor without a MAC crashed an agent with the key ({how})", backend_name(backend))
        }
        Outcome::Hung if !reaches_transport => {
            panic!("{}: a descriptor without a MAC hung an agent with the key", backend_name(backend))
        }
        Outcome::Crashed(_) => tally.crashes += 1,
        Outcome::Hung => tally.hangs += 1,
    }
    if !matches!(outcome, Outcome::Answered(_)) {
        let what = if matches!(outcome, Outcome::Hung) { "hang" } else { "crash" };
        save(&mut f, data, &format!("{}-{what}", backend_name(backend)));
        let fresh = Victim::start(backend, keyed);
        f.victims.insert((backend, keyed), fresh);
    }
}

fuzz_target!(
    init: {
        if let Ok(which) = std::env::var("KVX_FUZZ_LOAD_CHILD") {
            let mut w = which.split_whitespace();
            let backend = w.next().and_then(|b| b.parse().ok()).unwrap_or(UCX);
            serve(backend, w.next() == Some("1"));
        }
    },
    |data: &[u8]| run(data)
);
