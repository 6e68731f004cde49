//! Two-process transfer demo: host memory over UCX, printing bandwidth.
//!
//! `kvxfer-demo [--size BYTES] [--iters N]` starts a target process (itself,
//! as `kvxfer-demo target`), WRITEs and READs between the two, verifies the
//! data through a sync message and prints GB/s for each direction;
//! `--stats` then prints the initiator's counters (`kvx_agent_stats`).
//!
//! `kvxfer-demo info [--stats [IP:PORT]]`: the backend the environment
//! selects; with `--stats`, this process's counters (`kvx_stats_snapshot`),
//! or those of a running process whose `KVX_METRICS_ADDR` is IP:PORT (its
//! `/stats` page), pretty-printed.

use kvxfer::dispatch::kvx_transfer_state;
use kvxfer::harness::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.windows(2).find(|w| w[0] == name).and_then(|w| w[1].parse().ok()).unwrap_or(default)
}

/// Target: register a buffer, announce it, verify on request, exit on "quit".
fn target(size: usize) {
    let agent = Agent::new("kvxfer-demo-target");
    let buffer = vec![0u8; size];
    agent.register(&[&buffer]);
    println!("READY {} {} {}", agent.conn_info(), buffer.as_ptr() as u64, size);
    std::io::stdout().flush().unwrap();
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line.unwrap();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("verify") => {
                let seed: u64 = words.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                let got = agent.wait_notifications(1, 30_000);
                let expected = pattern(size, seed);
                let ok = got.len() == 1 && got[0].1 == format!("written {seed}").into_bytes() && buffer == expected;
                println!("VERIFIED {}", if ok { "ok" } else { "BAD" });
                std::io::stdout().flush().unwrap();
            }
            Some("fill") => {
                let seed: u64 = words.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                // SAFETY of the test: nobody transfers into this buffer while we fill it.
                let p = buffer.as_ptr() as *mut u8;
                let data = pattern(size, seed);
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, size) };
                println!("FILLED");
                std::io::stdout().flush().unwrap();
            }
            _ => break,
        }
    }
}

/// `info [--stats [IP:PORT]]`.
fn info(args: &[String]) {
    println!(
        "kvxfer {} on {}",
        unsafe { std::ffi::CStr::from_ptr(kvxfer::ffi::library::kvx_version()).to_string_lossy() },
        backend_line()
    );
    let Some(at) = args.iter().position(|a| a == "--stats") else { return };
    let snapshot: serde_json::Value = match args.get(at + 1) {
        Some(addr) => {
            use std::io::Read;
            let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
            s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
            write!(s, "GET /stats HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
            let mut response = String::new();
            s.read_to_string(&mut response).unwrap();
            let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{addr}/stats is not JSON: {e}"))
        }
        None => process_stats(),
    };
    println!("{}", serde_json::to_string_pretty(&snapshot).unwrap());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("info") {
        return info(&args[2..]);
    }
    let size = arg(&args, "--size", 64 << 20) as usize;
    if args.get(1).map(String::as_str) == Some("target") {
        return target(size);
    }
    let iters = arg(&args, "--iters", 20).max(1);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["target", "--size", &size.to_string()])
        // One endpoint per process and address: the initiator serves KVX_METRICS_ADDR.
        .env_remove("KVX_METRICS_ADDR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot start the target process");
    let mut to_child = child.stdin.take().unwrap();
    let mut from_child = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = from_child.next().expect("target exited").unwrap();
    let words: Vec<&str> = ready.split_whitespace().collect();
    assert_eq!(words[0], "READY", "unexpected target output: {ready}");
    let (info, remote_addr) = (words[1].to_string(), words[2].parse::<u64>().unwrap());

    let agent = Agent::new("kvxfer-demo-initiator");
    let seed = 42;
    let src = pattern(size, seed);
    let local = agent.register(&[&src]);
    ok(agent.load_by_info("kvxfer-demo-target", &info));
    let remote = vec![kvxfer::core::memory::kvx_memory_desc { addr: remote_addr, len: size as u64, device_id: 0 }];
    println!(
        "kvxfer {} on {}: {} MiB host memory, {iters} transfers each way, target at {info}",
        unsafe { std::ffi::CStr::from_ptr(kvxfer::ffi::library::kvx_version()).to_string_lossy() },
        backend_line(),
        size >> 20
    );

    let run = |op: u32, sync: Option<&[u8]>| {
        let started = Instant::now();
        for i in 0..iters {
            let last = i + 1 == iters;
            let x = agent.submit(op, &local, &remote, "kvxfer-demo-target", if last { sync } else { None }).unwrap();
            assert_eq!(x.wait(TIMEOUT_MS), kvx_transfer_state::KVX_TRANSFER_SUCCESS, "{}", x.status_text());
        }
        let secs = started.elapsed().as_secs_f64();
        (size as f64 * iters as f64) / secs / 1e9
    };
    let write_gbps = run(WRITE, Some(format!("written {seed}").as_bytes()));
    writeln!(to_child, "verify {seed}").unwrap();
    let verdict = from_child.next().unwrap().unwrap();
    println!("WRITE: {write_gbps:.2} GB/s  (target check: {verdict})");

    writeln!(to_child, "fill 7").unwrap();
    assert_eq!(from_child.next().unwrap().unwrap(), "FILLED");
    let read_gbps = run(READ, None);
    let read_ok = src == pattern(size, 7);
    println!("READ:  {read_gbps:.2} GB/s  (data check: {})", if read_ok { "ok" } else { "BAD" });
    if args.iter().any(|a| a == "--stats") {
        println!("{}", serde_json::to_string_pretty(&agent.stats()).unwrap());
    }
    writeln!(to_child, "quit").unwrap();
    let _ = child.wait();
    if !verdict.ends_with("ok") || !read_ok {
        std::process::exit(1);
    }
}

fn backend_line() -> String {
    let mut info: kvxfer::ffi::library::kvx_backend_info = unsafe { std::mem::zeroed() };
    info.struct_size = std::mem::size_of_val(&info);
    unsafe { ok(kvxfer::ffi::library::kvx_backend_info_get(0, &mut info)) };
    let s = |p: *const std::ffi::c_char| unsafe { std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned() };
    format!("{} {} ({})", s(info.name), s(info.library_version), s(info.library_path))
}
