//! kvxfer-bench: KV-cache-shaped transfers between two processes through
//! kvxfer's C ABI, side by side with raw `ucx_perftest` and NIXL used
//! directly, in one run. See `kvxfer-bench --help` and README "Performance".
//!
//! Process layout: the driver runs `ucx_perftest` pairs itself and, for each
//! other system, starts an initiator process (`kvxfer-bench initiator`) that
//! starts its own target (`kvxfer-bench target`). Each process loads exactly
//! one transfer library, so UCX copies never meet in one process.

mod nixl;
mod report;
mod workload;

use kvxfer::core::memory::kvx_memory_desc;
use kvxfer::dispatch::kvx_transfer_state;
use kvxfer::harness::{self, Agent};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};
use workload::*;

const HELP: &str = "\
kvxfer-bench [OPTIONS]            run the comparison (driver)

Systems and memory:
  --systems LIST     ucx_perftest,kvxfer-ucx,kvxfer-ucx-ab,kvxfer-nixl,kvxfer-nixl-ab,nixl,nixl-prep
                     (default: all). *-ab: the cost of counting: every case alternates requests
                     with counters on and off (KVX_STATS) in one process, reported as -ab-on / -ab-off
                     nixl: a new request per transfer (createXferReq, as TensorRT-LLM);
                     nixl-prep: prepared lists + indices (makeXferReq, as vLLM)
  --backend ucx|nixl kvxfer backend(s) to include (default: both)
  --mem dram|vram    memory kind (vram needs a GPU; host memory otherwise)
  --tls UCX_TLS      transports for every process (default sm,self)
Workloads:
  --layouts LIST     raw,staging,paged (default: all)
  --ops LIST         write,read (default: both)
  --models LIST      llama3-8b,llama3-70b,deepseek-v3 (default: all)
  --tp LIST          TP degrees, per-rank share (default 1,8)
  --tokens-per-block LIST   (default 16)     --prompts LIST (default 1k,4k)
  --blocks LIST      paged block placement: random (scattered on both sides, nothing
                     merges), contiguous (a fresh pool: each region one run) (default random)
  --sizes LIST       raw descriptor sizes (default 4k,16k,64k,256k,1m,4m,16m,64m)
  --counts LIST      raw descriptors per request (default 1,32,256,4096)
  --pool BYTES       buffer per side (default 256m)
Measurement:
  --time SECONDS     per case and system (default 0.3)
  --max-iters N      per case (default 5000)
  --latency-iters N  8-byte notification round trips (default 20000)
  --rounds N         repeat every system N times, interleaved; report medians
  --reg-count N --reg-size BYTES --reg-large BYTES   registration test
                     (default 10000 x 4k, and one 256m region)
Output:
  --json FILE  --csv FILE   all results (one row per case and system)
";

/// Every option `--help` lists, plus `system` (set for the initiator and target processes).
const OPTIONS: [&str; 24] = [
    "systems",
    "backend",
    "mem",
    "tls",
    "layouts",
    "ops",
    "models",
    "tp",
    "tokens-per-block",
    "prompts",
    "blocks",
    "sizes",
    "counts",
    "pool",
    "time",
    "max-iters",
    "latency-iters",
    "rounds",
    "reg-count",
    "reg-size",
    "reg-large",
    "json",
    "csv",
    "system",
];

/// Options as `--name value` pairs.
#[derive(Clone)]
pub struct Opts(BTreeMap<String, String>);

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut map = BTreeMap::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else { return Err(format!("unexpected argument {a:?}")) };
            if name == "help" {
                print!("{HELP}");
                std::process::exit(0);
            }
            if !OPTIONS.contains(&name) {
                return Err(format!("unknown option --{name} (see --help)"));
            }
            let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            map.insert(name.to_string(), value.clone());
        }
        Ok(Opts(map))
    }
    pub fn get(&self, name: &str, default: &str) -> String {
        self.0.get(name).cloned().unwrap_or_else(|| default.to_string())
    }
    pub fn list(&self, name: &str, default: &str) -> Vec<String> {
        self.get(name, default).split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
    }
    fn size(&self, name: &str, default: &str) -> u64 {
        let v = self.get(name, default);
        parse_size(&v).unwrap_or_else(|| fail(&format!("--{name}: bad size {v:?}")))
    }
    fn sizes(&self, name: &str, default: &str) -> Vec<u64> {
        self.list(name, default)
            .iter()
            .map(|v| parse_size(v).unwrap_or_else(|| fail(&format!("--{name}: bad size {v:?}"))))
            .collect()
    }
    fn num(&self, name: &str, default: &str) -> f64 {
        let v = self.get(name, default);
        v.parse().unwrap_or_else(|_| fail(&format!("--{name}: bad number {v:?}")))
    }
    fn args(&self) -> Vec<String> {
        self.0.iter().flat_map(|(k, v)| [format!("--{k}"), v.clone()]).collect()
    }
    fn without(&self, name: &str) -> Opts {
        let mut o = self.clone();
        o.0.remove(name);
        o
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("kvxfer-bench: {msg}");
    std::process::exit(2)
}

/// Every transfer case the options describe, in a fixed order.
pub fn cases(o: &Opts) -> Vec<Case> {
    let pool = o.size("pool", "256m");
    let ops: Vec<Op> = o
        .list("ops", "write,read")
        .iter()
        .map(|s| match s.as_str() {
            "write" => Op::Write,
            "read" => Op::Read,
            _ => fail(&format!("--ops: unknown {s:?}")),
        })
        .collect();
    let layouts = o.list("layouts", "raw,staging,paged");
    let blocks: Vec<Blocks> = o
        .list("blocks", "random")
        .iter()
        .map(|b| Blocks::parse(b).unwrap_or_else(|| fail("--blocks: random, contiguous")))
        .collect();
    let mut out = Vec::new();
    for &op in &ops {
        if layouts.iter().any(|l| l == "raw") {
            for size in o.sizes("sizes", "4k,16k,64k,256k,1m,4m,16m,64m") {
                for count in o.list("counts", "1,32,256,4096") {
                    let count: u64 = count.parse().unwrap_or_else(|_| fail("--counts: numbers"));
                    out.extend(raw(size, count, op, pool));
                }
            }
        }
        for model in o.list("models", "llama3-8b,llama3-70b,deepseek-v3") {
            let model = Model::find(&model).unwrap_or_else(|| fail(&format!("unknown model {model:?}")));
            for tp in o.list("tp", "1,8") {
                let tp: u64 = tp.parse().unwrap_or_else(|_| fail("--tp: numbers"));
                // MLA latents are replicated: the per-rank share does not depend on TP.
                if model.mla_dim.is_some() && tp != 1 && o.list("tp", "1,8").iter().any(|t| t == "1") {
                    continue;
                }
                for tpb in o.list("tokens-per-block", "16") {
                    let tpb: u64 = tpb.parse().unwrap_or_else(|_| fail("--tokens-per-block: numbers"));
                    for prompt in o.sizes("prompts", "1k,4k") {
                        let shape = KvShape { model, tp, tokens_per_block: tpb, prompt };
                        if layouts.iter().any(|l| l == "staging") {
                            out.push(shape.staging(op, pool));
                        }
                        if layouts.iter().any(|l| l == "paged") {
                            for &b in &blocks {
                                out.extend(shape.paged(op, pool, b, prompt ^ tpb ^ tp));
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 * 1e-6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A result row: ordered key=value fields, printed as one `RESULT` line.
#[derive(Clone, Debug, Default)]
pub struct Row(pub Vec<(String, String)>);

impl Row {
    pub fn set(&mut self, k: &str, v: impl ToString) -> &mut Self {
        let v = v.to_string().replace(char::is_whitespace, "_");
        match self.0.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v,
            None => self.0.push((k.to_string(), v)),
        }
        self
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }
    pub fn num(&self, k: &str) -> Option<f64> {
        self.get(k)?.parse().ok()
    }
    fn line(&self) -> String {
        let fields: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("RESULT {}", fields.join(" "))
    }
    fn parse(line: &str) -> Option<Row> {
        let rest = &line[line.find("RESULT ")? + "RESULT ".len()..];
        Some(Row(rest
            .split(' ')
            .filter_map(|f| f.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()))
    }
}

/// Timings of one case: request latency, post time, iterations, wall time.
struct Timings {
    total_us: Vec<f64>,
    post_us: Vec<f64>,
    wall: f64,
}

impl Timings {
    fn row(mut self, row: &mut Row, bytes: u64) {
        let iters = self.total_us.len();
        self.total_us.sort_by(f64::total_cmp);
        self.post_us.sort_by(f64::total_cmp);
        row.set("iters", iters)
            .set("gbps", format!("{:.3}", bytes as f64 * iters as f64 / self.wall / 1e9))
            .set("p50_us", format!("{:.1}", percentile(&self.total_us, 0.5)))
            .set("p99_us", format!("{:.1}", percentile(&self.total_us, 0.99)))
            .set("post_p50_us", format!("{:.1}", percentile(&self.post_us, 0.5)))
            .set("post_p99_us", format!("{:.1}", percentile(&self.post_us, 0.99)));
    }
}

/// Repeat `once` (returning post and total time) for the time budget.
fn measure(o: &Opts, mut once: impl FnMut() -> Result<(Duration, Duration), String>) -> Result<Timings, String> {
    let budget = Duration::from_secs_f64(o.num("time", "0.3"));
    let max_iters = o.num("max-iters", "5000") as usize;
    once()?; // warm-up: connections, registration caches, first-touch
    let started = Instant::now();
    let (mut total_us, mut post_us) = (Vec::new(), Vec::new());
    while total_us.len() < 3 || (started.elapsed() < budget && total_us.len() < max_iters) {
        let (post, total) = once()?;
        post_us.push(post.as_secs_f64() * 1e6);
        total_us.push(total.as_secs_f64() * 1e6);
    }
    Ok(Timings { total_us, post_us, wall: started.elapsed().as_secs_f64() })
}

/// The CPU cost of counting one transfer (its record started and finished,
/// with the peer's and the agent's counters and a histogram), measured alone.
fn counting_cost(system: &str) -> Row {
    use kvxfer::core::stats::{kvx_xfer_path, Scope, ScopeKind, TransferRecord};
    let scope = Scope::new(ScopeKind::Agent, "bench", "counting-cost");
    let peer = scope.peer("peer");
    let transport = std::sync::Arc::new(CString::new("bench").unwrap());
    let op = kvxfer::core::request::kvx_transfer_op::KVX_OP_WRITE;
    let mut best = f64::MAX;
    // The best of five rounds: the least disturbed by other load on the machine.
    for _ in 0..5 {
        let (n, started) = (100_000u32, Instant::now());
        for _ in 0..n {
            let record = TransferRecord::start(&peer, op, 4096, 4, 1, kvx_xfer_path::KVX_PATH_UCX, transport.clone());
            record.finish(&Ok(()));
        }
        best = best.min(started.elapsed().as_secs_f64() * 1e9 / n as f64);
    }
    let mut row = Row::default();
    row.set("system", format!("{system}-on"))
        .set("kind", "counting")
        .set("id", "counting-ns")
        .set("ns", format!("{best:.0}"));
    row
}

/// As `measure`, alternating requests with kvxfer's counters on and off
/// (`KVX_STATS`) so load drifting on a shared machine hits both alike: (on, off).
fn measure_ab(
    o: &Opts,
    mut once: impl FnMut() -> Result<(Duration, Duration), String>,
) -> Result<(Timings, Timings), String> {
    let budget = Duration::from_secs_f64(2.0 * o.num("time", "0.3"));
    let max_iters = 2 * o.num("max-iters", "5000") as usize;
    once()?;
    let started = Instant::now();
    let mut sides: [(Vec<f64>, Vec<f64>, f64); 2] = Default::default();
    let mut i = 0usize;
    while i < 6 || (started.elapsed() < budget && i < max_iters) {
        let side = i % 2;
        kvxfer::core::stats::set_enabled(side == 0);
        let (post, total) = once()?;
        sides[side].0.push(total.as_secs_f64() * 1e6);
        sides[side].1.push(post.as_secs_f64() * 1e6);
        sides[side].2 += total.as_secs_f64();
        i += 1;
    }
    kvxfer::core::stats::set_enabled(true);
    let [on, off] = sides;
    // Wall time of each side: the sum of its requests (they never overlap).
    Ok((
        Timings { total_us: on.0, post_us: on.1, wall: on.2 },
        Timings { total_us: off.0, post_us: off.1, wall: off.2 },
    ))
}

// ---------------------------------------------------------------- target

/// A host buffer touched once, so page faults stay out of the measurement.
fn pool_buffer(bytes: u64) -> Vec<u8> {
    vec![1u8; bytes as usize]
}

fn reply(line: &str) {
    println!("{MARK}{line}");
    std::io::stdout().flush().unwrap();
}

/// Commands from the initiator arrive on stdin; a thread forwards them so
/// a NIXL target can keep polling in between.
fn commands() -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
        let _ = tx.send("quit".into());
    });
    rx
}

fn target(o: &Opts) {
    let pool = pool_buffer(o.size("pool", "256m"));
    let base = pool.as_ptr() as u64;
    let rx = commands();
    match o.get("system", "").as_str() {
        "nixl" | "nixl-prep" => {
            let nixl = nixl::Nixl::new("bench-target").unwrap_or_else(|e| fail(&e));
            nixl.register(&[(base, pool.len() as u64)]).unwrap_or_else(|e| fail(&e));
            reply(&format!("READY {} {base}", hex(&nixl.metadata().unwrap_or_else(|e| fail(&e)))));
            let mut peer: Option<CString> = None;
            loop {
                // NIXL without a progress thread only moves while someone polls.
                let arrived = nixl.poll_notifications();
                if let Some(p) = &peer {
                    for _ in 0..arrived {
                        nixl.notify(p, b"pong0000").unwrap_or_else(|e| fail(&e));
                    }
                }
                match rx.try_recv() {
                    Ok(cmd) => {
                        let w: Vec<&str> = cmd.split_whitespace().collect();
                        match w.first().copied() {
                            Some("md") => {
                                peer = Some(
                                    CString::new(nixl.load_remote(&unhex(w[1])).unwrap_or_else(|e| fail(&e))).unwrap(),
                                );
                                reply("MDLOADED");
                            }
                            Some("cpu") => reply(&format!("CPU {}", cpu_seconds())),
                            _ => break,
                        }
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
                    Err(_) => break,
                }
            }
        }
        _ => {
            let agent =
                Agent::try_new("bench-target", true).unwrap_or_else(|(s, e)| fail(&format!("agent: {s:?} {e}")));
            agent.register(&[&pool]);
            reply(&format!("READY {} {base}", agent.conn_info()));
            while let Ok(cmd) = rx.recv() {
                let w: Vec<&str> = cmd.split_whitespace().collect();
                match w.first().copied() {
                    Some("cpu") => reply(&format!("CPU {}", cpu_seconds())),
                    Some("ping") => {
                        harness::ok(agent.load_by_info("bench-initiator", w[1]));
                        let n: usize = w[2].parse().unwrap();
                        reply("PINGREADY");
                        for _ in 0..n {
                            // Bounded: a vanished initiator must not leave this spinning.
                            let deadline = Instant::now() + Duration::from_secs(10);
                            while agent.poll_notifications() == 0 {
                                if Instant::now() > deadline {
                                    fail("no ping for 10 s");
                                }
                            }
                            harness::ok(agent.notify("bench-initiator", b"pong0000"));
                        }
                    }
                    _ => break,
                }
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()).collect()
}

// ------------------------------------------------------------- initiator

struct TargetProc {
    child: Child,
    stdin: ChildStdin,
    lines: std::io::Lines<BufReader<ChildStdout>>,
    /// First word after READY (connection info or NIXL metadata) and pool address.
    contact: String,
    base: u64,
}

impl TargetProc {
    fn start(o: &Opts) -> TargetProc {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("target")
            .args(o.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| fail(&format!("cannot start target: {e}")));
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = expect_line(&mut lines, "READY ");
        let w: Vec<&str> = ready.split_whitespace().collect();
        if w.len() != 2 {
            fail(&format!("target said READY {ready:?}"));
        }
        TargetProc { contact: w[0].to_string(), base: w[1].parse().unwrap(), child, stdin, lines }
    }
    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }
    fn expect(&mut self, prefix: &str) -> String {
        expect_line(&mut self.lines, prefix)
    }
    fn cpu(&mut self) -> f64 {
        self.send("cpu");
        self.expect("CPU ").parse().unwrap()
    }
}

/// Marks the target's protocol lines: UCX may log to the same stdout (e.g.
/// UCX_PROTO_INFO=y), with block-buffered output that can end mid-line.
const MARK: &str = "@@";

/// What follows `MARK key` in the target's next line that has it; other
/// lines are passed on to stderr.
fn expect_line(lines: &mut std::io::Lines<BufReader<ChildStdout>>, key: &str) -> String {
    let tag = format!("{MARK}{key}");
    loop {
        let line = lines
            .next()
            .and_then(|l| l.ok())
            .unwrap_or_else(|| fail(&format!("target exited while {key:?} was expected")));
        match line.find(&tag) {
            Some(at) => return line[at + tag.len()..].trim().to_string(),
            None => eprintln!("target: {line}"),
        }
    }
}

impl Drop for TargetProc {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}

/// The library under test from the initiator's side.
enum Initiator {
    Kvx(Agent),
    /// NIXL directly; `prepped`: prepared lists and indices (vLLM's way)
    /// instead of a new request from descriptor lists each time (TensorRT-LLM's way).
    Nixl {
        // Boxed: NIXL's function table is far larger than an agent handle.
        nixl: Box<nixl::Nixl>,
        peer: CString,
        prepped: bool,
    },
}

impl Initiator {
    /// Registration of many small regions and one large one.
    fn registration(&self, o: &Opts, system: &str) -> Result<Vec<Row>, String> {
        let (count, size, large) =
            (o.num("reg-count", "10000") as u64, o.size("reg-size", "4k"), o.size("reg-large", "256m"));
        let mut rows = Vec::new();
        for (n, len) in [(count, size), (1, large)] {
            let buf = pool_buffer(n * len);
            let regions: Vec<(u64, u64)> = (0..n).map(|i| (buf.as_ptr() as u64 + i * len, len)).collect();
            let (reg, desc_bytes, dereg) = match self {
                Initiator::Kvx(agent) => {
                    let slices: Vec<&[u8]> = buf.chunks(len as usize).collect();
                    let t = Instant::now();
                    let descs = agent.register(&slices);
                    let reg = t.elapsed();
                    let desc_bytes = agent.desc().len();
                    let t = Instant::now();
                    harness::ok(agent.deregister(&descs));
                    (reg, desc_bytes, t.elapsed())
                }
                Initiator::Nixl { nixl, .. } => {
                    let t = Instant::now();
                    nixl.register(&regions)?;
                    let reg = t.elapsed();
                    let desc_bytes = nixl.metadata()?.len();
                    let t = Instant::now();
                    nixl.deregister(&regions)?;
                    (reg, desc_bytes, t.elapsed())
                }
            };
            let mut row = Row::default();
            row.set("system", system)
                .set("kind", "register")
                .set("id", format!("register-{n}x{}", human(len)))
                .set("regions", n)
                .set("region_size", len)
                .set("register_ms", format!("{:.3}", reg.as_secs_f64() * 1e3))
                .set("deregister_ms", format!("{:.3}", dereg.as_secs_f64() * 1e3))
                .set("desc_bytes", desc_bytes);
            rows.push(row);
        }
        Ok(rows)
    }

    /// 8-byte notification ping-pong; one-way latency is half the round trip.
    fn latency(&self, o: &Opts, target: &mut TargetProc, system: &str) -> Result<Row, String> {
        let n = o.num("latency-iters", "20000") as usize;
        let warm = (n / 10).max(10);
        let mut rtt = Vec::with_capacity(n);
        match self {
            Initiator::Kvx(agent) => {
                target.send(&format!("ping {} {}", agent.conn_info(), n + warm));
                target.expect("PINGREADY");
                for i in 0..n + warm {
                    let t = Instant::now();
                    let st = agent.notify("bench-target", b"ping0000");
                    if st != kvxfer::kvx_status::KVX_OK {
                        return Err(format!("notify: {}", harness::last_error()));
                    }
                    while agent.poll_notifications() == 0 {}
                    if i >= warm {
                        rtt.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                }
            }
            Initiator::Nixl { nixl, peer, .. } => {
                for i in 0..n + warm {
                    let t = Instant::now();
                    nixl.notify(peer, b"ping0000")?;
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while nixl.poll_notifications() == 0 {
                        if Instant::now() > deadline {
                            return Err("NIXL notification reply lost".into());
                        }
                    }
                    if i >= warm {
                        rtt.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                }
            }
        }
        rtt.sort_by(f64::total_cmp);
        let mut row = Row::default();
        row.set("system", system)
            .set("kind", "latency")
            .set("id", "notify-8B")
            .set("iters", n)
            .set("one_way_p50_us", format!("{:.3}", percentile(&rtt, 0.5) / 2.0))
            .set("one_way_avg_us", format!("{:.3}", rtt.iter().sum::<f64>() / rtt.len() as f64 / 2.0));
        Ok(row)
    }

    /// A kvxfer case with counters on and off, alternating (see `measure_ab`).
    fn transfer_ab(&self, o: &Opts, case: &Case, lbase: u64, rbase: u64) -> Result<(Timings, Timings), String> {
        let Initiator::Kvx(agent) = self else { return Err("only kvxfer counts".into()) };
        let local: Vec<kvx_memory_desc> =
            case.pieces.iter().map(|p| kvx_memory_desc { addr: lbase + p.0, len: p.2, device_id: 0 }).collect();
        let remote: Vec<kvx_memory_desc> =
            case.pieces.iter().map(|p| kvx_memory_desc { addr: rbase + p.1, len: p.2, device_id: 0 }).collect();
        let op = if case.op == Op::Write { harness::WRITE } else { harness::READ };
        measure_ab(o, || {
            let t = Instant::now();
            let x = agent
                .submit(op, &local, &remote, "bench-target", None)
                .map_err(|(s, e)| format!("submit: {s:?} {e}"))?;
            let post = t.elapsed();
            if x.wait(60_000) != kvx_transfer_state::KVX_TRANSFER_SUCCESS {
                return Err(format!("transfer failed: {}", x.status_text()));
            }
            Ok((post, t.elapsed()))
        })
    }

    fn transfer(&self, o: &Opts, case: &Case, lbase: u64, rbase: u64) -> Result<Timings, String> {
        let write = case.op == Op::Write;
        let deadline = || Instant::now() + Duration::from_secs(60);
        match self {
            Initiator::Kvx(agent) => {
                let local: Vec<kvx_memory_desc> =
                    case.pieces.iter().map(|p| kvx_memory_desc { addr: lbase + p.0, len: p.2, device_id: 0 }).collect();
                let remote: Vec<kvx_memory_desc> =
                    case.pieces.iter().map(|p| kvx_memory_desc { addr: rbase + p.1, len: p.2, device_id: 0 }).collect();
                let op = if write { harness::WRITE } else { harness::READ };
                measure(o, || {
                    let t = Instant::now();
                    let x = agent
                        .submit(op, &local, &remote, "bench-target", None)
                        .map_err(|(s, e)| format!("submit: {s:?} {e}"))?;
                    let post = t.elapsed();
                    if x.wait(60_000) != kvx_transfer_state::KVX_TRANSFER_SUCCESS {
                        return Err(format!("transfer failed: {}", x.status_text()));
                    }
                    Ok((post, t.elapsed()))
                })
            }
            Initiator::Nixl { nixl, peer, prepped } => {
                let local = nixl.xfer_list(case.pieces.iter().map(|p| (lbase + p.0, p.2)))?;
                let remote = nixl.xfer_list(case.pieces.iter().map(|p| (rbase + p.1, p.2)))?;
                if *prepped {
                    let (local, remote) = (nixl.prep(None, &local)?, nixl.prep(Some(peer), &remote)?);
                    let indices: Vec<i32> = (0..case.pieces.len() as i32).collect();
                    return measure(o, || {
                        let t = Instant::now();
                        let req = nixl.post_prepped(write, &local, &remote, &indices)?;
                        let post = t.elapsed();
                        nixl.wait(req, deadline())?;
                        Ok((post, t.elapsed()))
                    });
                }
                measure(o, || {
                    let t = Instant::now();
                    let req = nixl.post(write, &local, &remote, peer)?;
                    let post = t.elapsed();
                    nixl.wait(req, deadline())?;
                    Ok((post, t.elapsed()))
                })
            }
        }
    }
}

fn initiator(o: &Opts) {
    let system = o.get("system", "");
    let all = cases(o);
    let mut target = TargetProc::start(o);
    let pool = pool_buffer(o.size("pool", "256m"));
    let lbase = pool.as_ptr() as u64;
    let lib = match system.as_str() {
        "nixl" | "nixl-prep" => {
            let nixl = nixl::Nixl::new("bench-initiator").unwrap_or_else(|e| fail(&e));
            nixl.register(&[(lbase, pool.len() as u64)]).unwrap_or_else(|e| fail(&e));
            let peer = nixl.load_remote(&unhex(&target.contact)).unwrap_or_else(|e| fail(&e));
            let md = hex(&nixl.metadata().unwrap_or_else(|e| fail(&e)));
            target.send(&format!("md {md}"));
            // Pings are answered only once the target knows this agent.
            target.expect("MDLOADED");
            Initiator::Nixl { nixl: Box::new(nixl), peer: CString::new(peer).unwrap(), prepped: system == "nixl-prep" }
        }
        _ => {
            let agent =
                Agent::try_new("bench-initiator", true).unwrap_or_else(|(s, e)| fail(&format!("agent: {s:?} {e}")));
            agent.register(&[&pool]);
            harness::ok(agent.load_by_info("bench-target", &target.contact));
            Initiator::Kvx(agent)
        }
    };
    let emit = |row: &Row| {
        println!("{}", row.line());
        std::io::stdout().flush().unwrap();
    };
    if system.ends_with("-ab") {
        emit(&counting_cost(&system));
        for case in &all {
            eprint!("\r[{system}] {:<48} ", case.id);
            let mut rows = [Row::default(), Row::default()];
            for (row, side) in rows.iter_mut().zip(["on", "off"]) {
                row.set("system", format!("{system}-{side}"))
                    .set("kind", "transfer")
                    .set("id", &case.id)
                    .set("layout", case.layout)
                    .set("model", &case.model)
                    .set("op", case.op.name())
                    .set("desc_size", case.desc_size)
                    .set("descs", case.pieces.len())
                    .set("bytes", case.bytes());
            }
            match lib.transfer_ab(o, case, lbase, target.base) {
                Ok((on, off)) => {
                    let [r_on, r_off] = &mut rows;
                    on.row(r_on, case.bytes());
                    off.row(r_off, case.bytes());
                }
                Err(e) => {
                    rows.iter_mut().for_each(|r| {
                        r.set("error", &e);
                    });
                    eprintln!("\n{system} {}: {e}", case.id);
                }
            }
            rows.iter().for_each(emit);
        }
        eprintln!();
        return;
    }
    match lib.registration(o, &system) {
        Ok(rows) => rows.iter().for_each(emit),
        Err(e) => eprintln!("{system}: registration: {e}"),
    }
    match lib.latency(o, &mut target, &system) {
        Ok(row) => emit(&row),
        Err(e) => eprintln!("{system}: latency: {e}"),
    }
    let started = Instant::now();
    for (i, case) in all.iter().enumerate() {
        eprint!("\r[{system}] {}/{} {:<48} {:>5.0}s ", i + 1, all.len(), case.id, started.elapsed().as_secs_f64());
        let (cpu0, tcpu0) = (cpu_seconds(), target.cpu());
        let timings = lib.transfer(o, case, lbase, target.base);
        let (cpu1, tcpu1) = (cpu_seconds(), target.cpu());
        let mut row = Row::default();
        row.set("system", &system)
            .set("kind", "transfer")
            .set("id", &case.id)
            .set("layout", case.layout)
            .set("model", &case.model)
            .set("op", case.op.name())
            .set("desc_size", case.desc_size)
            .set("descs", case.pieces.len())
            .set("bytes", case.bytes());
        match timings {
            Ok(t) => {
                t.row(&mut row, case.bytes());
                row.set("cpu_s", format!("{:.3}", cpu1 - cpu0)).set("target_cpu_s", format!("{:.3}", tcpu1 - tcpu0));
            }
            Err(e) => {
                row.set("error", &e);
                eprintln!("\n{system} {}: {e}", case.id);
            }
        }
        emit(&row);
    }
    eprintln!();
}

// ---------------------------------------------------------------- driver

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, rest) = match args.first().map(String::as_str) {
        Some("initiator") | Some("target") => (args[0].clone(), &args[1..]),
        _ => ("driver".to_string(), &args[..]),
    };
    let o = Opts::parse(rest).unwrap_or_else(|e| fail(&e));
    match mode.as_str() {
        "target" => target(&o),
        "initiator" => initiator(&o),
        _ => driver(&o),
    }
}

fn driver(o: &Opts) {
    if o.get("mem", "dram") != "dram" {
        if o.get("mem", "") != "vram" {
            fail("--mem: dram or vram");
        }
        // Device memory needs a GPU and a CUDA driver; none here means a clear error, not host numbers.
        if !kvxfer::cuda::driver_available() {
            fail("--mem vram: no CUDA driver or GPU on this machine (use --mem dram)");
        }
        fail("--mem vram: device buffers are not implemented in kvxfer-bench yet; run with --mem dram");
    }
    let tls = o.get("tls", "sm,self");
    std::env::set_var("UCX_TLS", &tls);
    let mut systems =
        o.list("systems", "ucx_perftest,kvxfer-ucx,kvxfer-ucx-ab,kvxfer-nixl,kvxfer-nixl-ab,nixl,nixl-prep");
    if let Some(b) = o.0.get("backend") {
        let keep = format!("kvxfer-{b}");
        if b != "ucx" && b != "nixl" {
            fail("--backend: ucx or nixl");
        }
        systems.retain(|s| !s.starts_with("kvxfer-") || *s == keep || *s == format!("{keep}-ab"));
    }
    let child_opts = o.without("json").without("csv").without("systems").without("backend");
    let all = cases(o);
    eprintln!(
        "kvxfer-bench: {} cases x {} systems, UCX_TLS={tls}, {} per case",
        all.len(),
        systems.len(),
        o.get("time", "0.3")
    );
    let started = Instant::now();
    let rounds = o.num("rounds", "1").max(1.0) as usize;
    let load_before = load_average();
    let mut rows: Vec<Row> = Vec::new();
    // Rounds interleave the systems, so drifting load on a shared machine hits all of them.
    for round in 1..=rounds {
        for system in &systems {
            eprintln!("== {system}, round {round}/{rounds} ({:.0}s)", started.elapsed().as_secs_f64());
            let got = match system.as_str() {
                "ucx_perftest" => report::perftest(o),
                "kvxfer-ucx" | "kvxfer-ucx-ab" | "kvxfer-nixl" | "kvxfer-nixl-ab" | "nixl" | "nixl-prep" => {
                    run_initiator(&child_opts, system)
                }
                other => fail(&format!("unknown system {other:?}")),
            };
            rows.extend(got.into_iter().map(|mut r| {
                r.set("round", round);
                r
            }));
        }
    }
    println!(
        "machine: {} cores, load average {load_before} before and {} after; {rounds} round(s), medians shown",
        cores(),
        load_average()
    );
    report::print(o, &rows);
    if let Some(path) = o.0.get("json") {
        std::fs::write(path, report::json(&rows)).unwrap_or_else(|e| fail(&format!("{path}: {e}")));
    }
    if let Some(path) = o.0.get("csv") {
        std::fs::write(path, report::csv(&rows)).unwrap_or_else(|e| fail(&format!("{path}: {e}")));
    }
    eprintln!("kvxfer-bench: done in {:.0}s", started.elapsed().as_secs_f64());
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// One initiator process (which starts its target); its RESULT lines.
fn run_initiator(o: &Opts, system: &str) -> Vec<Row> {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.arg("initiator").args(o.args()).args(["--system", system]).stdout(Stdio::piped());
    if system.starts_with("kvxfer-nixl") {
        cmd.env("TRTLLM_USE_NIXL_KVCACHE", "1").env_remove("TRTLLM_USE_UCX_KVCACHE");
    } else {
        cmd.env("TRTLLM_USE_UCX_KVCACHE", "1");
    }
    // Counting on; the -ab systems turn it off for every other request themselves.
    cmd.env("KVX_STATS", "1");
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{system}: cannot start: {e}");
            return Vec::new();
        }
    };
    let mut rows = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok) {
        match Row::parse(&line) {
            Some(row) => rows.push(row),
            None => eprintln!("{system}: {line}"),
        }
    }
    let status = child.wait().unwrap();
    if !status.success() {
        eprintln!("{system}: initiator exited with {status} after {} results", rows.len());
    }
    rows
}
