//! Observability on the backend the environment selects (UCX by default,
//! NIXL with TRTLLM_USE_NIXL_KVCACHE=1): per-transfer facts, counters per
//! agent, manager and peer from many threads, the Prometheus endpoint
//! scraped during transfers and parsed with a Prometheus text parser
//! (`prometheus-parse`), and JSON logs that report a failing peer once.
//!
//! The endpoint and the log format are read once per process, so those
//! tests run this binary again as a child with the variables set.

mod common;
use common::*;
use kvxfer::core::memory::kvx_memory_desc;
use kvxfer::core::stats::{kvx_xfer_info, kvx_xfer_path};
use kvxfer::dispatch::kvx_transfer_state;
use kvxfer::ffi::observe::*;
use kvxfer::kvx_status::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

const CHILD_ROLE: &str = "KVX_OBS_TEST_ROLE";

fn expected_path() -> u32 {
    match backend_under_test() {
        kvxfer::core::select::kvx_backend::KVX_BACKEND_NIXL => kvx_xfer_path::KVX_PATH_NIXL as u32,
        _ => kvx_xfer_path::KVX_PATH_UCX as u32,
    }
}

/// Contiguous pieces of `buf`: `n` descriptors of `len` bytes each.
fn pieces(buf: &[u8], n: usize, len: usize) -> Vec<kvx_memory_desc> {
    (0..n)
        .map(|i| kvx_memory_desc { addr: buf.as_ptr() as u64 + (i * len) as u64, len: len as u64, device_id: 0 })
        .collect()
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn transfer_facts_and_counters_agree_across_threads() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 25;
    const DESCS: usize = 4;
    const LEN: usize = 4096;
    let a = Agent::new("obs-a");
    let b = Agent::new("obs-b");
    let src = vec![7u8; THREADS * DESCS * LEN];
    let dst = vec![0u8; THREADS * DESCS * LEN];
    a.register(&[&src]);
    b.register(&[&dst]);
    ok(a.load_by_info("obs-b", &b.conn_info()));
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (a, src, dst) = (&a, &src, &dst);
            s.spawn(move || {
                let off = t * DESCS * LEN;
                let local = pieces(&src[off..], DESCS, LEN);
                let remote = pieces(&dst[off..], DESCS, LEN);
                for i in 0..PER_THREAD {
                    let op = if i % 5 == 4 { READ } else { WRITE };
                    let x = a.submit(op, &local, &remote, "obs-b", Some(b"done")).unwrap();
                    // Facts and snapshots are read while other threads transfer.
                    let _ = x.info();
                    let _ = a.stats();
                    x.expect_success();
                    let f = x.info();
                    assert_eq!(f.peer, "obs-b");
                    assert_eq!(f.info.state, kvx_transfer_state::KVX_TRANSFER_SUCCESS as u32);
                    assert_eq!(f.info.status, KVX_OK as i32);
                    assert_eq!(f.info.op, op);
                    assert_eq!(f.info.bytes, (DESCS * LEN) as u64);
                    assert_eq!(f.info.descs, DESCS as u64);
                    assert_eq!(f.info.posted_descs, 1, "contiguous descriptors coalesce into one");
                    assert_eq!(f.info.path, expected_path());
                    assert!(!f.transport.is_empty(), "the transport is named");
                    assert!(f.info.post_time_ns > 0 && f.info.completion_time_ns >= f.info.post_time_ns, "{f:?}");
                    assert!(f.info.duration_ns > 0);
                }
            });
        }
    });
    let total = (THREADS * PER_THREAD) as u64;
    let reads = (THREADS * PER_THREAD / 5) as u64;
    let bytes = (DESCS * LEN) as u64;
    let stats = a.stats();
    assert_eq!(stats["schema"], 1);
    assert_eq!(stats["kind"], "agent");
    assert_eq!(stats["name"], "obs-a");
    for c in [&stats["counters"], &stats["peers"]["obs-b"]] {
        assert_eq!(num(&c["transfers_started"]), total, "{stats}");
        assert_eq!(num(&c["transfers_completed"]), total, "{stats}");
        assert_eq!(c["transfers_failed"], serde_json::json!({}), "{stats}");
        assert_eq!(num(&c["transfers_in_flight"]), 0);
        assert_eq!(num(&c["bytes_written"]), (total - reads) * bytes);
        assert_eq!(num(&c["bytes_read"]), reads * bytes);
        assert_eq!(num(&c["peers_loaded"]), 1);
        assert_eq!(num(&c["connection_setups"]), 1);
    }
    assert!(!stats["peers"]["obs-b"]["transport"].as_str().unwrap().is_empty(), "{stats}");
    let latency: u64 = stats["latency_seconds"]["64KiB"]["count"].as_u64().unwrap();
    assert_eq!(latency, total, "every request of 16 KiB falls in the 64KiB class: {stats}");
    // Sync messages arrive as notifications at b.
    let got = b.wait_notifications(total as usize, 10_000);
    assert_eq!(got.len() as u64, total);
    assert_eq!(num(&b.stats()["peers"]["obs-a"]["notifications_received"]), total);
    // Notifications sent with kvx_agent_notify are counted per peer.
    ok(a.notify("obs-b", b"hello"));
    assert_eq!(num(&a.stats()["peers"]["obs-b"]["notifications_sent"]), 1);
    // The process snapshot holds both agents.
    let all = process_stats();
    let names: Vec<&str> = all["scopes"].as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).collect();
    assert!(names.contains(&"obs-a") && names.contains(&"obs-b"), "{names:?}");
    ok(a.invalidate("obs-b"));
    assert_eq!(num(&a.stats()["peers"]["obs-b"]["peers_invalidated"]), 1);
}

#[test]
fn connection_manager_counts_messages_per_peer() {
    let (m1, m2) = (Cm::new(), Cm::new());
    let to2 = m1.connect(&[m2.address()]).pop().unwrap();
    for i in 0..10u32 {
        ok(to2.send(i, &[i as u8; 100]));
        let mut got = [0u8; 100];
        m2.recv_connect(i, &mut got, TIMEOUT_MS).unwrap();
    }
    let s1 = m1.stats();
    assert_eq!(s1["kind"], "connection_manager");
    assert_eq!(s1["name"], m1.address());
    let peer = &s1["peers"][m2.address()];
    assert_eq!(num(&peer["messages_sent"]), 10, "{s1}");
    assert_eq!(num(&peer["message_bytes_sent"]), 1000);
    assert_eq!(num(&peer["connection_setups"]), 1);
    // Messages taken by recv_connect count on the connection they arrived on.
    let s2 = m2.stats();
    assert_eq!(num(&s2["peers"][m1.address()]["messages_received"]), 10, "{s2}");
    assert_eq!(num(&s2["peers"][m1.address()]["message_bytes_received"]), 1000);
    assert_eq!(num(&s2["counters"]["connection_setups"]), 1, "the accepted connection: {s2}");
    assert!(s1["connection_setup_seconds"]["sum_seconds"].as_f64().unwrap() > 0.0);
    // A receive that times out is a failure by status, on the peer it was waited for.
    let mut buf = [0u8; 4];
    assert_eq!(to2.recv(99, &mut buf, 50), KVX_ERR_TIMEOUT);
    assert_eq!(num(&m1.stats()["peers"][m2.address()]["message_failures"]["KVX_ERR_TIMEOUT"]), 1);
}

#[test]
fn bad_arguments_are_refused() {
    let a = Agent::new("obs-args");
    let buf = vec![0u8; 64];
    let d = a.register(&[&buf]);
    let x = a.submit(WRITE, &d, &d, "obs-args", None).unwrap();
    x.expect_success();
    let mut info: kvx_xfer_info = unsafe { std::mem::zeroed() };
    unsafe {
        assert_eq!(kvx_xfer_info_get(std::ptr::null(), &mut info), KVX_ERR_INVALID_ARGUMENT);
        assert_eq!(kvx_xfer_info_get(x.raw, std::ptr::null_mut()), KVX_ERR_INVALID_ARGUMENT);
        info.struct_size = std::mem::size_of::<kvx_xfer_info>() - 1;
        assert_eq!(kvx_xfer_info_get(x.raw, &mut info), KVX_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("struct_size"), "{}", last_error());
        assert_eq!(kvx_agent_stats(std::ptr::null(), std::ptr::null_mut()), KVX_ERR_INVALID_ARGUMENT);
        assert_eq!(kvx_agent_stats(a.raw, std::ptr::null_mut()), KVX_ERR_INVALID_ARGUMENT);
        assert_eq!(kvx_cm_stats(std::ptr::null(), std::ptr::null_mut()), KVX_ERR_INVALID_ARGUMENT);
        assert_eq!(kvx_stats_snapshot(std::ptr::null_mut()), KVX_ERR_INVALID_ARGUMENT);
        assert_eq!(kvx_metrics_address(std::ptr::null_mut()), KVX_ERR_INVALID_ARGUMENT);
    }
    // A refused submission is counted by status, not as a started transfer.
    let outside = [kvx_memory_desc { addr: 8, len: 64, device_id: 0 }];
    assert!(a.submit(WRITE, &outside, &d, "obs-args", None).is_err());
    let s = a.stats();
    assert_eq!(s["counters"]["submits_refused"]["KVX_ERR_NOT_REGISTERED"], 1, "{s}");
    assert_eq!(num(&s["counters"]["transfers_started"]), 1);
}

/// Run this test binary's `test` alone as a child with `env`; its stdout and stderr.
fn run_child(test: &str, role: &str, env: &[(&str, &str)]) -> (String, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([test, "--exact", "--nocapture", "--test-threads", "1"]).env(CHILD_ROLE, role);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "child {role} failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

fn scrape(addr: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

/// Sample value of `name` whose labels include every pair of `labels`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.samples.iter().find_map(|s| {
        let matches = s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v));
        match (&s.value, matches) {
            (prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v), true) => Some(*v),
            (prometheus_parse::Value::Untyped(v), true) => Some(*v),
            _ => None,
        }
    })
}

fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text parses")
}

#[test]
fn prometheus_endpoint_serves_counters_during_transfers() {
    if std::env::var(CHILD_ROLE).as_deref() != Ok("metrics") {
        assert_eq!(metrics_address(), "", "off unless KVX_METRICS_ADDR is set");
        run_child(
            "prometheus_endpoint_serves_counters_during_transfers",
            "metrics",
            &[("KVX_METRICS_ADDR", "127.0.0.1:0")],
        );
        return;
    }
    let a = Agent::new("prom-a");
    let b = Agent::new("prom-b");
    let addr = metrics_address();
    assert!(!addr.is_empty(), "the endpoint started with the first agent");
    let src = vec![1u8; 1 << 20];
    let dst = vec![0u8; 1 << 20];
    let (l, r) = (a.register(&[&src]), b.register(&[&dst]));
    ok(a.load_by_info("prom-b", &b.conn_info()));
    const N: u64 = 300;
    let backend = match backend_under_test() {
        kvxfer::core::select::kvx_backend::KVX_BACKEND_NIXL => "NIXL",
        _ => "UCX",
    };
    let done = std::sync::atomic::AtomicBool::new(false);
    let scraped = std::sync::atomic::AtomicUsize::new(0);
    let mut n = 0u64;
    let scrapes = std::thread::scope(|s| {
        let scraper = s.spawn(|| {
            let mut seen = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                let (head, body) = scrape(&addr, "/metrics");
                assert!(head.starts_with("HTTP/1.1 200") && head.contains("text/plain; version=0.0.4"), "{head}");
                let parsed = parse(&body);
                let labels = [("name", "prom-a"), ("backend", backend), ("kind", "agent")];
                if let Some(v) = sample(&parsed, "kvx_transfers_started_total", &labels) {
                    seen.push(v);
                    scraped.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        });
        // At least N transfers, and more until three scrapes saw them running.
        while n < N || scraped.load(std::sync::atomic::Ordering::Acquire) < 3 {
            a.submit(WRITE, &l, &r, "prom-b", None).unwrap().expect_success();
            n += 1;
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        scraper.join().unwrap()
    });
    assert!(scrapes.len() >= 2, "scraped while transfers ran: {scrapes:?}");
    assert!(scrapes.windows(2).all(|w| w[0] <= w[1]), "counters never go back: {scrapes:?}");
    let (_, body) = scrape(&addr, "/metrics");
    let parsed = parse(&body);
    let me = [("name", "prom-a"), ("backend", backend)];
    assert_eq!(sample(&parsed, "kvx_transfers_completed_total", &me), Some(n as f64), "{body}");
    assert_eq!(
        sample(&parsed, "kvx_transfer_bytes_total", &[me[0], me[1], ("direction", "write")]),
        Some((n << 20) as f64)
    );
    assert_eq!(sample(&parsed, "kvx_peer_transfers_completed_total", &[me[0], ("peer", "prom-b")]), Some(n as f64));
    assert_eq!(sample(&parsed, "kvx_transfers_in_flight", &me), Some(0.0));
    // The 1 MiB requests land in the 1MiB class of the latency histogram.
    let hist = parsed
        .samples
        .iter()
        .find(|s| {
            s.metric == "kvx_transfer_duration_seconds"
                && s.labels.get("size_class") == Some("1MiB")
                && s.labels.get("name") == Some("prom-a")
        })
        .expect("latency histogram");
    match &hist.value {
        prometheus_parse::Value::Histogram(buckets) => {
            let inf = buckets.iter().find(|b| b.less_than == f64::INFINITY).expect("+Inf bucket");
            assert_eq!(inf.count, n as f64);
        }
        other => panic!("not a histogram: {other:?}"),
    }
    // The same counters as JSON.
    let (head, json) = scrape(&addr, "/stats");
    assert!(head.contains("application/json"));
    let v: Value = serde_json::from_str(&json).unwrap();
    let a_scope = v["scopes"].as_array().unwrap().iter().find(|s| s["name"] == "prom-a").unwrap().clone();
    assert_eq!(num(&a_scope["counters"]["transfers_completed"]), n);
    assert!(scrape(&addr, "/nothing").0.starts_with("HTTP/1.1 404"));
    // `kvxfer-demo info --stats IP:PORT` reads the same from outside the process.
    let out = Command::new(env!("CARGO_BIN_EXE_kvxfer-demo")).args(["info", "--stats", &addr]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let (first, json) = text.split_once('\n').unwrap();
    assert!(first.starts_with("kvxfer "), "{first}");
    let v: Value = serde_json::from_str(json).unwrap();
    let a_scope = v["scopes"].as_array().unwrap().iter().find(|s| s["name"] == "prom-a").unwrap().clone();
    assert_eq!(num(&a_scope["counters"]["transfers_completed"]), n);
}

#[test]
fn json_logs_report_a_failing_peer_once() {
    if std::env::var(CHILD_ROLE).as_deref() != Ok("logs") {
        let (_, stderr) = run_child("json_logs_report_a_failing_peer_once", "logs", &[("KVX_LOG_FORMAT", "json")]);
        let lines: Vec<Value> = stderr
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        for l in &lines {
            for key in ["time", "level", "pid", "event", "message"] {
                assert!(l.get(key).is_some(), "{key} missing: {l}");
            }
        }
        let about_peer: Vec<&Value> =
            lines.iter().filter(|l| l["peer"] == "logs-b" && l["agent"] == "logs-a").collect();
        assert!(!about_peer.is_empty(), "the failure is logged with agent and peer: {stderr}");
        assert!(about_peer.iter().all(|l| l["status"].as_str().is_some_and(|s| s.starts_with("KVX_ERR"))));
        // 20 failed attempts, each status logged once (not once per retry).
        let mut statuses: Vec<&str> = about_peer.iter().map(|l| l["status"].as_str().unwrap()).collect();
        let n = statuses.len();
        statuses.sort();
        statuses.dedup();
        assert_eq!(statuses.len(), n, "a status was logged twice for one peer: {about_peer:?}");
        return;
    }
    let a = Agent::try_new_on(AUTO, "logs-a", true, 2_000).unwrap();
    let b = Agent::try_new_on(AUTO, "logs-b", true, 2_000).unwrap();
    let src = vec![1u8; 4096];
    let dst = vec![0u8; 4096];
    let l = a.register(&[&src]);
    let r = b.register(&[&dst]);
    ok(a.load_by_info("logs-b", &b.conn_info()));
    a.submit(WRITE, &l, &r, "logs-b", None).unwrap().expect_success();
    drop(b);
    let (mut failures, until) = (0, Instant::now() + Duration::from_secs(30));
    while failures < 20 && Instant::now() < until {
        match a.submit(WRITE, &l, &r, "logs-b", None) {
            Err(_) => failures += 1,
            Ok(x) if x.wait(5_000) == kvx_transfer_state::KVX_TRANSFER_FAILURE => failures += 1,
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    assert_eq!(failures, 20, "the dead peer fails transfers");
    let s = a.stats();
    let peer = &s["peers"]["logs-b"];
    let failed: u64 = peer["transfers_failed"].as_object().unwrap().values().map(num).sum::<u64>()
        + peer["submits_refused"].as_object().unwrap().values().map(num).sum::<u64>();
    assert_eq!(failed, 20, "every attempt is counted: {s}");
}
