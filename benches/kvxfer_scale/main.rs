//! kvxfer-scale: one hub against N peers, for N = 8 ... 512, on one backend.
//!
//! Scenarios (each prints a table per N, then the goal verdicts, and all of it
//! goes to the JSON file given with `--json`):
//! - `agents`: the hub agent loads N peer agents by connection info, one after
//!   the other, then invalidates them, for several cycles. Per-load times, and
//!   the hub's descriptors, threads and resident memory before, while loaded
//!   and after each invalidate.
//! - `storm`: all N peer agents load the hub at one moment (one thread each):
//!   first cold (each peer worker's first endpoint to the hub), then warm
//!   (each has loaded the hub before, as in a running deployment).
//! - `managers`: the hub manager connects to N peer managers in one
//!   `getConnections`, then makes a tagged 4 KiB round trip to each in turn.
//! - `idle`: 256 managers each blocked in `recv_connect`, and 256 idle agents,
//!   in the hub's process: its CPU time over a 10 s window, per handle.
//!
//! Peers live in other processes (this program run as `peer`), up to 16 of
//! them, with N/16 handles each at large N. The hub reports its own CPU time
//! (getrusage), which peers starving for CPU on a small machine do not inflate.
//! The transport is whatever `UCX_TLS` says (scripts/bench_scale.sh runs both).

use kvxfer::harness::scale::*;
use kvxfer::harness::*;
use kvxfer::kvx_status;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const MESSAGE: usize = 4096;
const REQUEST_TAG: u32 = 7;
const REPLY_TAG: u32 = 8;
const MAX_PEER_PROCESSES: usize = 16;
const IDLE_HANDLES: usize = 256;
const IDLE_WINDOW: Duration = Duration::from_secs(10);

fn backend_code(name: &str) -> u32 {
    match name {
        "ucx" => UCX,
        "nixl" => NIXL,
        other => panic!("backend {other:?} is not ucx or nixl"),
    }
}

#[derive(Clone, Copy)]
struct Snapshot {
    fds: i64,
    threads: i64,
    rss_kib: i64,
    cpu: f64,
}

fn snapshot() -> Snapshot {
    Snapshot { fds: open_descriptors(), threads: threads(), rss_kib: rss_kib(), cpu: cpu_seconds() }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

// ---- peer processes ----

fn spawn_peers(role: &str, backend: &str, n: usize) -> Vec<PeerProcess> {
    let own = std::env::current_exe().expect("own path");
    kvxfer::harness::scale::spawn_peers(&own, role, backend, n, MAX_PEER_PROCESSES)
}

/// `peer ROLE BACKEND COUNT PREFIX`: hold COUNT agents or managers, answer the hub.
fn peer_main(args: &[String]) {
    let (role, backend, count, prefix) =
        (&args[0], backend_code(&args[1]), args[2].parse::<usize>().unwrap(), &args[3]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut agents = Vec::new();
    let mut managers = Vec::new();
    let mut answerers = Vec::new();
    for i in 0..count {
        if role == "agent" {
            let name = format!("{prefix}-a{i}");
            let agent = Agent::try_new_on(backend, &name, true, 0).unwrap_or_else(|e| panic!("peer agent: {e:?}"));
            println!("H {name} {}", agent.conn_info());
            agents.push(Arc::new(agent));
        } else {
            let cm = Arc::new(Cm::try_new_on(backend, 0).unwrap_or_else(|e| panic!("peer manager: {e:?}")));
            println!("H - {}", cm.address());
            let (cm2, stop2) = (cm.clone(), stop.clone());
            // Answer each request with its own bytes until told to stop.
            answerers.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; MESSAGE];
                while !stop2.load(Ordering::Acquire) {
                    if let Ok(conn) = cm2.recv_connect(REQUEST_TAG, &mut buf, 500) {
                        let _ = conn.send(REPLY_TAG, &buf);
                    }
                }
            }));
            managers.push(cm);
        }
    }
    println!("READY");
    std::io::stdout().flush().unwrap();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    while let Some(Ok(line)) = lines.next() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("storm") => {
                let (hub, info) = (words[1].to_owned(), words[2].to_owned());
                if words.get(3) == Some(&"warm") {
                    // Each agent has loaded the hub once before, as in a long-running deployment.
                    for a in &agents {
                        if a.load_by_info(&hub, &info) == kvx_status::KVX_OK {
                            let _ = a.invalidate(&hub);
                        }
                    }
                }
                let barrier = Arc::new(Barrier::new(agents.len() + 1));
                let workers: Vec<_> = agents
                    .iter()
                    .map(|a| {
                        let (a, b, hub, info) = (a.clone(), barrier.clone(), hub.clone(), info.clone());
                        std::thread::spawn(move || {
                            b.wait();
                            let started = Instant::now();
                            let st = a.load_by_info(&hub, &info);
                            let took = started.elapsed();
                            if st == kvx_status::KVX_OK {
                                let _ = a.invalidate(&hub);
                            }
                            (st == kvx_status::KVX_OK, took)
                        })
                    })
                    .collect();
                println!("ARMED");
                std::io::stdout().flush().unwrap();
                let _go = lines.next();
                let go = Instant::now();
                barrier.wait();
                let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
                let last = go.elapsed();
                let failed = results.iter().filter(|(ok, _)| !ok).count();
                let times: Vec<String> = results.iter().map(|(_, t)| format!("{:.3}", t.as_secs_f64() * 1e3)).collect();
                println!("STORM {failed} {:.3} {}", last.as_secs_f64() * 1e3, times.join(","));
                std::io::stdout().flush().unwrap();
            }
            Some("quit") | None => break,
            Some(other) => eprintln!("peer: unknown command {other:?}"),
        }
    }
    stop.store(true, Ordering::Release);
    for a in answerers {
        let _ = a.join();
    }
}

// ---- results ----

#[derive(Default)]
struct Row {
    scenario: &'static str,
    n: usize,
    fields: Vec<(&'static str, f64)>,
    text: Vec<(&'static str, String)>,
}

impl Row {
    fn get(&self, key: &str) -> f64 {
        self.fields.iter().find(|(k, _)| *k == key).map_or(f64::NAN, |(_, v)| *v)
    }
    fn json(&self) -> String {
        let mut parts = vec![format!("\"scenario\":\"{}\"", self.scenario), format!("\"n\":{}", self.n)];
        parts.extend(self.fields.iter().map(|(k, v)| {
            if v.is_finite() {
                format!("\"{k}\":{v}")
            } else {
                format!("\"{k}\":null")
            }
        }));
        parts.extend(self.text.iter().map(|(k, v)| format!("\"{k}\":\"{}\"", v.replace('"', "'"))));
        format!("{{{}}}", parts.join(","))
    }
}

// ---- scenarios ----

fn agents_scenario(backend: &str, n: usize, cycles: usize, storm: bool) -> Vec<Row> {
    // One more peer than measured: the hub loads it first, so one-time costs
    // (UCX selecting protocols for its first endpoint of a kind) stay out of the figures.
    let mut peers = spawn_peers("agent", backend, n + 1);
    let mut all: Vec<(String, String)> = peers.iter().flat_map(|p| p.handles.clone()).collect();
    let warm_up = all.remove(0);
    let hub = Agent::try_new_on(backend_code(backend), &format!("hub-{}", std::process::id()), true, 0)
        .unwrap_or_else(|e| panic!("hub agent: {e:?}"));
    let mut rows = Vec::new();
    if hub.load_by_info(&warm_up.0, &warm_up.1) == kvx_status::KVX_OK {
        let _ = hub.invalidate(&warm_up.0);
    }
    let base = snapshot();
    let mut load_ms = Vec::new();
    let mut failures = 0;
    let mut loaded = base;
    let mut after_invalidate = Vec::new();
    let mut settled = Vec::new();
    let mut first_total = 0.0;
    let mut first_cpu = 0.0;
    for cycle in 0..cycles {
        let before = snapshot();
        let started = Instant::now();
        for (name, info) in &all {
            let t = Instant::now();
            if hub.load_by_info(name, info) != kvx_status::KVX_OK {
                failures += 1;
                eprintln!("load {name}: {}", last_error());
            }
            if cycle == 0 {
                load_ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        if cycle == 0 {
            first_total = started.elapsed().as_secs_f64();
            first_cpu = cpu_seconds() - before.cpu;
            loaded = snapshot();
        }
        for (name, _) in &all {
            let _ = hub.invalidate(name);
        }
        after_invalidate.push(open_descriptors() - base.fds);
        settled.push(settled_descriptors(base.fds) - base.fds);
    }
    let ms = sorted(load_ms);
    let worst_after = settled.iter().copied().max().unwrap_or(0);
    rows.push(Row {
        scenario: "agents",
        n,
        fields: vec![
            ("total_s", first_total),
            ("per_peer_ms", first_total * 1e3 / n as f64),
            ("p50_ms", percentile(&ms, 0.5)),
            ("p99_ms", percentile(&ms, 0.99)),
            ("failures", failures as f64),
            ("fds_per_peer", (loaded.fds - base.fds) as f64 / n as f64),
            ("threads_added", (loaded.threads - base.threads) as f64),
            ("rss_kib_per_peer", (loaded.rss_kib - base.rss_kib) as f64 / n as f64),
            ("fds_after_invalidate_worst", worst_after as f64),
            ("hub_cpu_ms_per_peer", first_cpu * 1e3 / n as f64),
        ],
        text: vec![
            ("fds_at_each_invalidate", after_invalidate.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(" ")),
            ("fds_settled", settled.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(" ")),
        ],
    });
    for (kind, wanted) in [("storm-cold", storm), ("storm", storm)] {
        if !wanted {
            continue;
        }
        let info = hub.conn_info();
        let warmth = if kind == "storm" { "warm" } else { "cold" };
        for p in peers.iter_mut() {
            p.say(&format!("storm {} {info} {warmth}", hub.name));
        }
        for p in peers.iter_mut() {
            assert_eq!(p.next_line(), "ARMED");
        }
        let overflows = listen_overflows();
        let cpu = cpu_seconds();
        for p in peers.iter_mut() {
            p.say("go");
        }
        let (mut failed, mut last, mut times) = (0usize, 0f64, Vec::new());
        for p in peers.iter_mut() {
            let line = p.next_line();
            let words: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(words[0], "STORM", "{line}");
            failed += words[1].parse::<usize>().unwrap();
            last = last.max(words[2].parse().unwrap());
            if let Some(list) = words.get(3) {
                times.extend(list.split(',').filter_map(|t| t.parse::<f64>().ok()));
            }
        }
        let hub_cpu = cpu_seconds() - cpu;
        let times = sorted(times);
        rows.push(Row {
            scenario: kind,
            n,
            fields: vec![
                ("last_done_ms", last),
                ("p50_ms", percentile(&times, 0.5)),
                ("p99_ms", percentile(&times, 0.99)),
                ("failures", failed as f64),
                ("listen_overflows", (listen_overflows() - overflows) as f64),
                ("hub_cpu_ms_per_peer", hub_cpu * 1e3 / n as f64),
            ],
            text: vec![],
        });
    }
    drop(hub);
    drop(peers);
    rows
}

fn managers_scenario(backend: &str, n: usize) -> Row {
    // One more peer than measured, connected first, as in the agents scenario:
    // the hub's one-time costs (UCX choosing protocols for its first endpoint,
    // the sockets of its first connection) are reported apart, not per peer.
    let peers = spawn_peers("cm", backend, n + 1);
    let mut addresses: Vec<String> = peers.iter().flat_map(|p| p.handles.iter().map(|h| h.1.clone())).collect();
    let warm_up = addresses.remove(0);
    let hub = Cm::try_new_on(backend_code(backend), 0).unwrap_or_else(|e| panic!("hub manager: {e:?}"));
    let before_warm_up = snapshot();
    let started = Instant::now();
    let warm_up_conn = hub.try_connect(&[warm_up], 120_000).unwrap_or_else(|e| panic!("warm-up connection: {e:?}"));
    let warm_up_ms = started.elapsed().as_secs_f64() * 1e3;
    let base = snapshot();
    let started = Instant::now();
    let conns = hub.try_connect(&addresses, 120_000);
    let total = started.elapsed().as_secs_f64();
    let setup_cpu = cpu_seconds() - base.cpu;
    let connected = snapshot();
    let mut rtt = Vec::new();
    let mut failures = 0;
    let conns = match conns {
        Ok(c) => c,
        Err(e) => {
            eprintln!("getConnections to {n} peers: {e:?}");
            failures = n;
            Vec::new()
        }
    };
    let out = pattern(MESSAGE, n as u64);
    let mut back = vec![0u8; MESSAGE];
    for c in &conns {
        let t = Instant::now();
        let ok = c.send(REQUEST_TAG, &out) == kvx_status::KVX_OK
            && c.recv(REPLY_TAG, &mut back, 20_000) == kvx_status::KVX_OK
            && back == out;
        if ok {
            rtt.push(t.elapsed().as_secs_f64() * 1e3);
        } else {
            failures += 1;
        }
    }
    let rtt = sorted(rtt);
    let row = Row {
        scenario: "managers",
        n,
        fields: vec![
            ("total_s", total),
            ("per_peer_ms", total * 1e3 / n as f64),
            ("rtt_p50_ms", percentile(&rtt, 0.5)),
            ("rtt_p99_ms", percentile(&rtt, 0.99)),
            ("failures", failures as f64),
            ("fds_per_peer", (connected.fds - base.fds) as f64 / n as f64),
            ("threads_added", (connected.threads - base.threads) as f64),
            ("rss_kib_per_peer", (connected.rss_kib - base.rss_kib) as f64 / n as f64),
            ("hub_cpu_ms_per_peer", setup_cpu * 1e3 / n as f64),
            ("first_conn_ms", warm_up_ms),
            ("first_conn_fds", (base.fds - before_warm_up.fds) as f64),
        ],
        text: vec![],
    };
    drop(conns);
    drop(warm_up_conn);
    drop(hub);
    drop(peers);
    row
}

/// CPU per handle of `IDLE_HANDLES` managers blocked in `recv_connect`, then of as many idle agents.
fn idle_scenario(backend: &str) -> Vec<Row> {
    let code = backend_code(backend);
    let mut rows = Vec::new();
    let managers: Vec<Arc<Cm>> =
        (0..IDLE_HANDLES).map(|_| Arc::new(Cm::try_new_on(code, 0).expect("manager"))).collect();
    let waiters: Vec<_> = managers
        .iter()
        .map(|cm| {
            let cm = cm.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 16];
                cm.recv_connect(REQUEST_TAG, &mut buf, (IDLE_WINDOW + Duration::from_secs(3)).as_millis() as i64)
                    .err()
                    .map(|e| e.0)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2)); // every receive posted and settled into its wait
    let (cpu, t) = (cpu_seconds(), Instant::now());
    std::thread::sleep(IDLE_WINDOW);
    let per_handle = (cpu_seconds() - cpu) / t.elapsed().as_secs_f64() / IDLE_HANDLES as f64 * 100.0;
    let timed_out = waiters
        .into_iter()
        .filter_map(|w| w.join().ok().flatten())
        .filter(|s| *s == kvx_status::KVX_ERR_TIMEOUT)
        .count();
    rows.push(Row {
        scenario: "idle",
        n: IDLE_HANDLES,
        fields: vec![("core_percent_per_handle", per_handle), ("waits_timed_out", timed_out as f64)],
        text: vec![("what", "manager blocked in recv_connect".into())],
    });
    drop(managers);
    let agents: Vec<Agent> = (0..IDLE_HANDLES)
        .map(|i| Agent::try_new_on(code, &format!("idle-{i}-{}", std::process::id()), true, 0).expect("agent"))
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let (cpu, t) = (cpu_seconds(), Instant::now());
    std::thread::sleep(IDLE_WINDOW);
    let per_handle = (cpu_seconds() - cpu) / t.elapsed().as_secs_f64() / IDLE_HANDLES as f64 * 100.0;
    rows.push(Row {
        scenario: "idle",
        n: IDLE_HANDLES,
        fields: vec![("core_percent_per_handle", per_handle)],
        text: vec![("what", "idle agent".into())],
    });
    drop(agents);
    rows
}

// ---- tables and verdicts ----

fn print_tables(rows: &[Row]) {
    for scenario in ["agents", "storm-cold", "storm", "managers", "idle"] {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.scenario == scenario).collect();
        let Some(first) = mine.first() else { continue };
        print!("\n{scenario}\n{:>5}", "N");
        for (k, _) in &first.fields {
            print!(" {k:>14}");
        }
        for (k, _) in &first.text {
            print!("  {k}");
        }
        println!();
        for r in mine {
            print!("{:>5}", r.n);
            for (_, v) in &r.fields {
                print!(" {v:>14.3}");
            }
            for (_, v) in &r.text {
                print!("  {v}");
            }
            println!();
        }
    }
}

struct Verdict {
    goal: String,
    met: bool,
    measured: String,
}

fn verdicts(backend: &str, rows: &[Row]) -> Vec<Verdict> {
    let mut out = Vec::new();
    let mut add = |goal: String, met: bool, measured: String| out.push(Verdict { goal, met, measured });
    let of = |s: &str| -> Vec<&Row> { rows.iter().filter(|r| r.scenario == s).collect() };
    let budget_ms = if backend == "ucx" { 1.0 } else { 3.0 };
    for scenario in ["agents", "managers"] {
        let rs = of(scenario);
        if rs.is_empty() {
            continue;
        }
        let largest = rs.iter().max_by_key(|r| r.n).unwrap();
        let reference = rs.iter().filter(|r| r.n >= 32).min_by_key(|r| r.n).unwrap_or(largest);
        let growth = largest.get("per_peer_ms") / reference.get("per_peer_ms");
        add(
            format!("{scenario}: setup linear in N (per-peer time at N={} within 3x of N={})", largest.n, reference.n),
            growth <= 3.0,
            format!("{growth:.2}x"),
        );
        let worst = rs.iter().map(|r| r.get("per_peer_ms")).fold(0.0, f64::max);
        add(
            format!("{scenario}: at most {budget_ms} ms of hub wall time per peer"),
            worst <= budget_ms,
            format!("worst {worst:.3} ms"),
        );
        let fail: f64 = rs.iter().map(|r| r.get("failures")).sum();
        add(format!("{scenario}: no failures"), fail == 0.0, format!("{fail}"));
        let cpu = rs.iter().map(|r| r.get("hub_cpu_ms_per_peer")).fold(0.0, f64::max);
        add(
            format!("{scenario}: hub CPU time per peer within that budget too"),
            cpu <= budget_ms,
            format!("worst {cpu:.3} ms"),
        );
        let fds = rs.iter().filter(|r| r.n >= 64).map(|r| r.get("fds_per_peer")).fold(0.0, f64::max);
        add(
            format!("{scenario}: at most 1 descriptor per peer while connected (N >= 64)"),
            fds <= 1.0,
            format!("{fds:.2}"),
        );
        let threads = rs.iter().map(|r| r.get("threads_added")).fold(0.0, f64::max);
        add(format!("{scenario}: no thread per peer (at most 16 added)"), threads <= 16.0, format!("{threads}"));
        let rss = rs.iter().filter(|r| r.n >= 64).map(|r| r.get("rss_kib_per_peer")).fold(0.0, f64::max);
        add(format!("{scenario}: at most 64 KiB resident per peer (N >= 64)"), rss <= 64.0, format!("{rss:.1} KiB"));
    }
    let agents = of("agents");
    if !agents.is_empty() {
        let p = agents.iter().map(|r| r.get("p99_ms") / r.get("p50_ms")).fold(0.0, f64::max);
        add("agents: per-load p99 within 5x the p50".into(), p <= 5.0, format!("worst {p:.2}x"));
        let left = agents.iter().map(|r| r.get("fds_after_invalidate_worst")).fold(f64::MIN, f64::max);
        add(
            "agents: 0 descriptors left after every invalidate (within 3 s)".into(),
            left <= 0.0,
            format!("worst {left}"),
        );
    }
    let managers = of("managers");
    let (small, big) = (managers.iter().find(|r| r.n == 8), managers.iter().find(|r| r.n == 256));
    if let (Some(s), Some(b)) = (small, big) {
        let ratio = b.get("rtt_p50_ms") / s.get("rtt_p50_ms");
        add(
            "managers: 4 KiB round trip p50 at 256 peers within 2x of 8 peers".into(),
            ratio <= 2.0,
            format!("{:.3} ms vs {:.3} ms ({ratio:.2}x)", b.get("rtt_p50_ms"), s.get("rtt_p50_ms")),
        );
    }
    for r in of("idle") {
        let what = r.text.first().map_or(String::new(), |t| t.1.clone());
        let pct = r.get("core_percent_per_handle");
        add(format!("idle: {what} costs at most 0.1% of a core"), pct <= 0.1, format!("{pct:.4}% per handle"));
    }
    if let Some(s) = of("storm-cold").into_iter().max_by_key(|r| r.n) {
        add(
            format!("storm-cold: {} simultaneous first loads, no failure and no overflow", s.n),
            s.get("failures") == 0.0 && s.get("listen_overflows") == 0.0,
            format!("{} failed, {} overflows", s.get("failures"), s.get("listen_overflows")),
        );
    }
    if let Some(s) = of("storm").into_iter().max_by_key(|r| r.n) {
        add(
            format!("storm: {} simultaneous loads, no failure", s.n),
            s.get("failures") == 0.0,
            format!("{}", s.get("failures")),
        );
        add(
            format!("storm: {} simultaneous loads, no listen-queue overflow", s.n),
            s.get("listen_overflows") == 0.0,
            format!("{}", s.get("listen_overflows")),
        );
        add(
            format!("storm: {} simultaneous loads done within 2 s", s.n),
            s.get("last_done_ms") <= 2000.0,
            format!("{:.0} ms", s.get("last_done_ms")),
        );
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("peer") {
        return peer_main(&args[1..]);
    }
    let mut backend = "ucx".to_owned();
    let mut sizes = vec![8usize, 32, 64, 128, 256, 512];
    let mut scenarios = "agents,storm,managers,idle".to_owned();
    let mut cycles = 3usize;
    let mut json = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--backend" => backend = value(),
            "--sizes" => sizes = value().split(',').map(|s| s.parse().expect("size")).collect(),
            "--scenarios" => scenarios = value(),
            "--cycles" => cycles = value().parse().expect("cycles"),
            "--json" => json = Some(value()),
            "-h" | "--help" => {
                println!("kvxfer-scale [--backend ucx|nixl] [--sizes 8,32,...] [--scenarios agents,storm,managers,idle] [--cycles 3] [--json FILE]");
                return;
            }
            other => panic!("unknown argument {other:?} (try --help)"),
        }
    }
    if let Err(why) = backend_available(backend_code(&backend)) {
        eprintln!("backend {backend} unavailable: {why}");
        std::process::exit(2);
    }
    let tls = std::env::var("UCX_TLS").unwrap_or_else(|_| "(default)".into());
    println!("kvxfer-scale: backend {backend}, UCX_TLS={tls}, sizes {sizes:?}, {} CPUs", num_cpus());
    let want = |s: &str| scenarios.split(',').any(|x| x == s);
    let mut rows = Vec::new();
    for &n in &sizes {
        if want("agents") || want("storm") {
            eprintln!("agents, N = {n}");
            rows.extend(agents_scenario(&backend, n, cycles.max(1), want("storm")));
        }
        if want("managers") {
            eprintln!("managers, N = {n}");
            rows.push(managers_scenario(&backend, n));
        }
    }
    if want("idle") {
        eprintln!("idle handles");
        rows.extend(idle_scenario(&backend));
    }
    print_tables(&rows);
    let verdicts = verdicts(&backend, &rows);
    println!("\ngoals ({backend}, UCX_TLS={tls})");
    for v in &verdicts {
        println!("  {:<8} {:<75} {}", if v.met { "MET" } else { "NOT MET" }, v.goal, v.measured);
    }
    if let Some(path) = json {
        let rows_json: Vec<String> = rows.iter().map(Row::json).collect();
        let verdicts_json: Vec<String> = verdicts
            .iter()
            .map(|v| format!("{{\"goal\":\"{}\",\"met\":{},\"measured\":\"{}\"}}", v.goal, v.met, v.measured))
            .collect();
        let text = format!(
            "{{\"backend\":\"{backend}\",\"ucx_tls\":\"{tls}\",\"cpus\":{},\"rows\":[{}],\"goals\":[{}]}}\n",
            num_cpus(),
            rows_json.join(","),
            verdicts_json.join(",")
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {path}: {e}"));
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
