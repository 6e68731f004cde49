//! Transfers between real processes over UCX shared memory and TCP, and a
//! peer killed mid-transfer.

mod common;
use common::*;
use kvxfer::core::memory::kvx_memory_desc;
use kvxfer::dispatch::kvx_transfer_state::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

const TARGET_SIZE: usize = 64 << 20;

struct Target {
    child: Child,
    stdin: ChildStdin,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    info: String,
    addr: u64,
}

fn start_target(tls: Option<&str>) -> Target {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvxfer-demo"));
    cmd.args(["target", "--size", &TARGET_SIZE.to_string()]).stdin(Stdio::piped()).stdout(Stdio::piped());
    if let Some(t) = tls {
        cmd.env("UCX_TLS", t);
    }
    let mut child = cmd.spawn().unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.next().unwrap().unwrap();
    let w: Vec<&str> = ready.split_whitespace().collect();
    assert_eq!(w[0], "READY");
    let (info, addr) = (w[1].to_string(), w[2].parse().unwrap());
    Target { child, stdin, lines, info, addr }
}

/// Initiator side, run in a child process so each run can force its own UCX_TLS.
#[test]
#[ignore = "run by transfers_between_processes with UCX_TLS set"]
fn initiator_child() {
    let Ok(info) = std::env::var("KVX_TEST_TARGET") else { return };
    let addr: u64 = std::env::var("KVX_TEST_TARGET_ADDR").unwrap().parse().unwrap();
    let agent = Agent::new("initiator");
    ok(agent.load_by_info("kvxfer-demo-target", &info));
    let src = pattern(TARGET_SIZE, 11);
    let back = vec![0u8; TARGET_SIZE];
    let ls = agent.register(&[&src]);
    let lb = agent.register(&[&back]);
    // Sizes from 1 B to 64 MiB, one descriptor each.
    for size in [1usize, 7, 4096, 65536, 1 << 20, 16 << 20, 64 << 20] {
        let l = [kvx_memory_desc { addr: ls[0].addr, len: size as u64, device_id: 0 }];
        let r = [kvx_memory_desc { addr, len: size as u64, device_id: 0 }];
        agent.submit(WRITE, &l, &r, "kvxfer-demo-target", None).unwrap().expect_success();
        let lbk = [kvx_memory_desc { addr: lb[0].addr, len: size as u64, device_id: 0 }];
        agent.submit(READ, &lbk, &r, "kvxfer-demo-target", None).unwrap().expect_success();
        assert!(back[..size] == src[..size], "size {size}");
    }
    // Many descriptors per request: 1..4096 scattered 1 KiB pieces, reversed on the remote side.
    for count in [1usize, 16, 512, 4096] {
        let piece = 1024u64;
        let l: Vec<_> = (0..count as u64)
            .map(|i| kvx_memory_desc { addr: ls[0].addr + i * 2 * piece, len: piece, device_id: 0 })
            .collect();
        let r: Vec<_> = (0..count as u64)
            .map(|i| kvx_memory_desc { addr: addr + (count as u64 - 1 - i) * piece, len: piece, device_id: 0 })
            .collect();
        agent.submit(WRITE, &l, &r, "kvxfer-demo-target", None).unwrap().expect_success();
        let lbk: Vec<_> = (0..count as u64)
            .map(|i| kvx_memory_desc { addr: lb[0].addr + i * piece, len: piece, device_id: 0 })
            .collect();
        agent.submit(READ, &lbk, &r, "kvxfer-demo-target", None).unwrap().expect_success();
        for i in 0..count {
            let s = i * 2 * piece as usize;
            assert!(
                back[i * piece as usize..(i + 1) * piece as usize] == src[s..s + piece as usize],
                "count {count} piece {i}"
            );
        }
    }
    // Full buffer with a sync message: the target verifies content on receipt.
    let full = [kvx_memory_desc { addr, len: TARGET_SIZE as u64, device_id: 0 }];
    let data = pattern(TARGET_SIZE, 5);
    let ld = agent.register(&[&data]);
    agent.submit(WRITE, &ld, &full, "kvxfer-demo-target", Some(b"written 5")).unwrap().expect_success();
    println!("INITIATOR PASS");
}

#[test]
fn transfers_between_processes() {
    for tls in ["tcp", "sm,self"] {
        let mut target = start_target(Some(tls));
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["initiator_child", "--exact", "--ignored", "--nocapture"])
            .env("UCX_TLS", tls)
            .env("KVX_TEST_TARGET", &target.info)
            .env("KVX_TEST_TARGET_ADDR", target.addr.to_string())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("INITIATOR PASS"), "UCX_TLS={tls}: {text}");
        writeln!(target.stdin, "verify 5").unwrap();
        let verdict = target.lines.next().unwrap().unwrap();
        assert_eq!(verdict, "VERIFIED ok", "UCX_TLS={tls}");
        writeln!(target.stdin, "quit").unwrap();
        target.child.wait().unwrap();
    }
}

#[test]
fn killed_peer_fails_pending_and_later_transfers() {
    let mut target = start_target(None);
    let agent = Agent::new("survivor");
    ok(agent.load_by_info("kvxfer-demo-target", &target.info));
    let src = vec![3u8; TARGET_SIZE];
    let l = agent.register(&[&src]);
    let r = [kvx_memory_desc { addr: target.addr, len: TARGET_SIZE as u64, device_id: 0 }];
    agent.submit(WRITE, &l, &r, "kvxfer-demo-target", None).unwrap().expect_success();
    // Keep transfers in flight while the peer dies.
    let inflight: Vec<_> = (0..4).map(|_| agent.submit(WRITE, &l, &r, "kvxfer-demo-target", None).unwrap()).collect();
    target.child.kill().unwrap();
    target.child.wait().unwrap();
    let started = Instant::now();
    let mut failed = false;
    for _ in 0..200 {
        match agent.submit(WRITE, &l, &r, "kvxfer-demo-target", None) {
            Err(_) => {
                failed = true;
                break;
            }
            Ok(x) => {
                if x.wait(2_000) == KVX_TRANSFER_FAILURE {
                    failed = true;
                    break;
                }
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    assert!(failed, "transfers to a dead peer kept succeeding");
    assert!(started.elapsed() < Duration::from_secs(30), "peer failure took {:?}", started.elapsed());
    for x in inflight {
        assert_ne!(x.wait(TIMEOUT_MS), KVX_TRANSFER_IN_PROGRESS, "a transfer to a dead peer hung");
    }
    // After invalidate, a restarted peer is reachable again.
    ok(agent.invalidate("kvxfer-demo-target"));
    let mut again = start_target(None);
    ok(agent.load_by_info("kvxfer-demo-target", &again.info));
    let r2 = [kvx_memory_desc { addr: again.addr, len: TARGET_SIZE as u64, device_id: 0 }];
    agent.submit(WRITE, &l, &r2, "kvxfer-demo-target", None).unwrap().expect_success();
    writeln!(again.stdin, "quit").unwrap();
    again.child.wait().unwrap();
}

/// TensorRT-LLM's cancel path against a peer in another process (TCP, so a
/// 64 MiB write takes long enough to be caught running): `wait(1)` then
/// `release()` is true, the transfer ends failed, and the same peer then
/// receives a correct transfer, checked by the peer itself.
#[test]
fn release_mid_transfer_cancels_and_the_peer_takes_the_next_transfer() {
    let mut target = start_target(Some("tcp"));
    let agent = Agent::new("canceller");
    ok(agent.load_by_info("kvxfer-demo-target", &target.info));
    let junk = pattern(TARGET_SIZE, 99);
    let lj = agent.register(&[&junk]);
    let full = [kvx_memory_desc { addr: target.addr, len: TARGET_SIZE as u64, device_id: 0 }];
    let mut caught = None;
    for _ in 0..5 {
        let x = agent.submit(WRITE, &lj, &full, "kvxfer-demo-target", None).unwrap();
        if x.wait(1) != KVX_TRANSFER_IN_PROGRESS {
            x.expect_success();
            continue;
        }
        assert!(x.cancel(), "release() of a running transfer must succeed: {}", x.status_text());
        assert_eq!(x.wait(0), KVX_TRANSFER_FAILURE, "a cancelled transfer never reports success");
        let text = x.status_text();
        assert!(text.contains("KVX_ERR_CANCELED"), "{text}");
        caught = Some(text);
        break;
    }
    let text = caught.expect("no 64 MiB write over TCP was still running after 1 ms");
    assert!(text.contains("peer stays usable"), "{text}");
    // Released means the memory is ours again: overwrite it and send it whole.
    ok(agent.deregister(&lj));
    drop(junk);
    let data = pattern(TARGET_SIZE, 7);
    let ld = agent.register(&[&data]);
    agent.submit(WRITE, &ld, &full, "kvxfer-demo-target", Some(b"written 7")).unwrap().expect_success();
    writeln!(target.stdin, "verify 7").unwrap();
    assert_eq!(target.lines.next().unwrap().unwrap(), "VERIFIED ok", "after: {text}");
    writeln!(target.stdin, "quit").unwrap();
    target.child.wait().unwrap();
}

/// The cancel path when posted work cannot drain: the peer process is stopped
/// (SIGSTOP), so a 64 MiB write over TCP stalls. `release()` must still return
/// true within its bound (the transport let go of the memory), end the
/// transfer failed and mark the peer failed instead of leaving it half used.
#[test]
fn release_of_a_stalled_transfer_gives_the_memory_back_and_fails_the_peer() {
    let mut target = start_target(Some("tcp"));
    let agent = Agent::new("stalled-canceller");
    ok(agent.load_by_info("kvxfer-demo-target", &target.info));
    let data = pattern(TARGET_SIZE, 3);
    let ld = agent.register(&[&data]);
    let full = [kvx_memory_desc { addr: target.addr, len: TARGET_SIZE as u64, device_id: 0 }];
    agent.submit(WRITE, &ld, &full, "kvxfer-demo-target", None).unwrap().expect_success();
    let pid = target.child.id().to_string();
    let signal = |sig: &str| assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
    signal("-STOP");
    // Several writes, so the stopped peer's socket buffers cannot take them all.
    let xfers: Vec<_> = (0..4).map(|_| agent.submit(WRITE, &ld, &full, "kvxfer-demo-target", None).unwrap()).collect();
    let stalled = xfers.iter().filter(|x| x.wait(200) == KVX_TRANSFER_IN_PROGRESS).count();
    let started = Instant::now();
    let released: Vec<bool> = xfers.iter().map(|x| x.cancel()).collect();
    let took = started.elapsed();
    let texts: Vec<String> = xfers.iter().map(|x| x.status_text()).collect();
    signal("-CONT");
    assert!(stalled > 0, "no write stalled against a stopped peer: {texts:?}");
    assert!(released.iter().all(|&r| r), "release() of a stalled transfer failed: {texts:?}");
    assert!(took < Duration::from_secs(12), "cancelling {} transfers took {took:?}", xfers.len());
    for x in &xfers {
        assert_eq!(x.wait(0), KVX_TRANSFER_FAILURE, "{}", x.status_text());
    }
    assert!(texts.iter().any(|t| t.contains("marked failed")), "{texts:?}");
    // Released: the memory is the caller's again, so deregistering it is safe now.
    ok(agent.deregister(&ld));
    writeln!(target.stdin, "quit").unwrap();
    target.child.wait().unwrap();
}
