//! GPU transfers between two processes, each bound to its own GPU, through
//! kvxfer's C ABI: correctness checks and a KV-shaped measurement mode.
//!
//! ```text
//! kvxfer-gpu check                 device memory end to end on the backend the
//!                                  environment selects (TRTLLM_USE_NIXL_KVCACHE=1
//!                                  for NIXL), and the range checks against a
//!                                  guarded allocation; exits non-zero on any mismatch
//! kvxfer-gpu bench [--iters N] [--json PATH] [--systems ipc,transport,nixl] [--same-gpu]
//!                  [--workloads staging,paged]   (name prefixes; default all)
//!                                  Llama-3-70B, 4k-token prompt (1.25 GiB) GPU0 -> GPU1
//!                                  (both on GPU 0 with --same-gpu or on a one-GPU machine):
//!                                  staging and paged layouts, READ and WRITE, over UCX
//!                                  (batched IPC path and plain transport) and NIXL, one
//!                                  request and 8 concurrent requests from 8 threads, and
//!                                  the gather-transfer-scatter baseline; ratios to the
//!                                  cuMemcpyPeer (same device: cuMemcpy) ceiling measured
//!                                  first, and every goal with MET / NOT MET
//! kvxfer-gpu kernels [--iters N]  one process, one GPU: the batched-copy kernels'
//!                                  own rate (list on the device, with its upload, read
//!                                  in place from pinned host memory; one warp or one
//!                                  block per entry), the batch layer's submit from a
//!                                  ready list and from descriptor pairs merged into
//!                                  runs (as a request lists), on one thread and on a
//!                                  request's slices,
//!                                  the request checks, the listing pool's hand-off and
//!                                  the stores of list entries alone (pinned, pageable),
//!                                  against same-device cuMemcpy: what the kernels can
//!                                  do apart from what listing costs
//! ```
//! Internal roles: `initiator` (GPU 0) starts `target` (GPU 1, or 0 on a
//! one-GPU machine or with KVX_GPU_SAME_DEVICE=1) and drives it over
//! stdin/stdout. Every wait is bounded.

use kvxfer::core::memory::kvx_memory_desc;
use kvxfer::cuda::batch::{copy_and_wait, Copy};
use kvxfer::cuda::memory::{peer_copy, Allocation, DeviceBuffer};
use kvxfer::dispatch::kvx_transfer_state;
use kvxfer::ffi::conn::*;
use kvxfer::harness::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Lines, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const TARGET: &str = "kvxfer-gpu-target";
const POISON: u8 = 0xAB;
/// Llama-3-70B: 80 layers x 8 KV heads x 128 x 2 (K, V) x 2 bytes = 320 KiB per token.
const LLAMA70B_BYTES_PER_TOKEN: u64 = 80 * 8 * 128 * 2 * 2;
const PROMPT_TOKENS: u64 = 4096;

fn die(msg: &str) -> ! {
    eprintln!("kvxfer-gpu: {msg}");
    std::process::exit(2)
}

fn opt(args: &[String], name: &str) -> Option<String> {
    args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone())
}

fn num(args: &[String], name: &str, default: u64) -> u64 {
    opt(args, name).map_or(default, |v| v.parse().unwrap_or_else(|_| die(&format!("{name}: not a number"))))
}

fn say(line: &str) {
    println!("{line}");
    std::io::stdout().flush().unwrap();
}

/// Deterministic bytes, fast enough for gigabytes (one hash per 8 bytes).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut x = (i as u64).wrapping_add(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    out
}

/// Descriptor `i` moves `len` bytes between local offset `pad + i*stride`
/// and remote offset `pad + perm(i)*stride`; `perm` scatters blocks so
/// neighbours are not contiguous on both sides (as in a paged KV pool).
#[derive(Debug, Clone, Copy)]
struct Layout {
    count: u64,
    len: u64,
    gap: u64,
    pad: u64,
    permute: bool,
}

impl Layout {
    fn parse(words: &[&str]) -> Layout {
        let n = |i: usize| words[i].parse::<u64>().unwrap_or_else(|_| die("bad layout"));
        Layout { count: n(0), len: n(1), gap: n(2), pad: n(3), permute: n(4) == 1 }
    }
    fn words(&self) -> String {
        format!("{} {} {} {} {}", self.count, self.len, self.gap, self.pad, self.permute as u8)
    }
    fn stride(&self) -> u64 {
        self.len + self.gap
    }
    fn span(&self) -> u64 {
        self.pad + self.count * self.stride()
    }
    fn remote_block(&self, i: u64) -> u64 {
        // 7919 is prime and divides no count used here, so this is a permutation.
        if self.permute {
            (i * 7919) % self.count
        } else {
            i
        }
    }
    fn local_offset(&self, i: u64) -> u64 {
        self.pad + i * self.stride()
    }
    fn remote_offset(&self, i: u64) -> u64 {
        self.pad + self.remote_block(i) * self.stride()
    }
    fn descs(&self, local: &DeviceBuffer, remote: (u64, u32)) -> (Vec<kvx_memory_desc>, Vec<kvx_memory_desc>) {
        (0..self.count)
            .map(|i| {
                (
                    kvx_memory_desc {
                        addr: local.ptr() + self.local_offset(i),
                        len: self.len,
                        device_id: local.device(),
                    },
                    kvx_memory_desc { addr: remote.0 + self.remote_offset(i), len: self.len, device_id: remote.1 },
                )
            })
            .unzip()
    }
    /// What the destination holds after a transfer of `source` (which has
    /// source offsets `from`) into a poisoned buffer (destination offsets `to`).
    fn expected(&self, size: usize, source: &[u8], from: impl Fn(u64) -> u64, to: impl Fn(u64) -> u64) -> Vec<u8> {
        let mut out = vec![POISON; size];
        for i in 0..self.count {
            let (f, t, l) = (from(i) as usize, to(i) as usize, self.len as usize);
            out[t..t + l].copy_from_slice(&source[f..f + l]);
        }
        out
    }
}

fn allocation(name: &str) -> Allocation {
    match name {
        "plain" => Allocation::Plain,
        "vmm" => Allocation::Vmm,
        _ => die("--alloc: plain or vmm"),
    }
}

fn target_device() -> u32 {
    if kvxfer::cuda::device_count() >= 2 && std::env::var("KVX_GPU_SAME_DEVICE").map_or(true, |v| v != "1") {
        1
    } else {
        0
    }
}

/// Target: owns device buffers on its GPU and verifies or fills them on request.
fn target(args: &[String]) {
    let device = target_device();
    kvxfer::cuda::bind_thread_to_device(device).unwrap_or_else(|e| die(&e.to_string()));
    let size = num(args, "--size", 64 << 20) as usize;
    let agent = Agent::new(TARGET);
    let cm = Cm::new();
    let mut buffers: HashMap<String, DeviceBuffer> = HashMap::new();
    for kind in ["plain", "vmm"] {
        let buf = DeviceBuffer::new(device, size, allocation(kind)).unwrap_or_else(|e| die(&e.to_string()));
        ok(agent.register_descs(VRAM, &[kvx_memory_desc { addr: buf.ptr(), len: size as u64, device_id: device }]));
        buffers.insert(kind.into(), buf);
    }
    // Where the gather-transfer-scatter baseline lands before its scatter.
    let staging = DeviceBuffer::new(device, size, Allocation::Plain).unwrap_or_else(|e| die(&e.to_string()));
    ok(agent.register_descs(VRAM, &[kvx_memory_desc { addr: staging.ptr(), len: size as u64, device_id: device }]));
    let host = pattern(1 << 20, 0);
    agent.register(&[&host]);
    say(&format!(
        "READY {} {} {} {} {} {} {} {}",
        agent.conn_info(),
        cm.address(),
        device,
        buffers["plain"].ptr(),
        buffers["vmm"].ptr(),
        host.as_ptr() as u64,
        size,
        staging.ptr()
    ));
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            // poison ALLOC
            Some("poison") => {
                buffers[words[1]].fill(POISON).unwrap();
                say("DONE");
            }
            // fill ALLOC SEED
            Some("fill") => {
                let seed = words[2].parse().unwrap();
                buffers[words[1]].upload(0, &pattern(size, seed)).unwrap();
                say("DONE");
            }
            // verify-write ALLOC SEED LAYOUT...: wait for the sync message, then compare everything
            Some("verify-write") => {
                let seed: u64 = words[2].parse().unwrap();
                let layout = Layout::parse(&words[3..]);
                let got = agent.wait_notifications(1, 60_000);
                let note_ok = got.len() == 1 && got[0].1 == format!("written {seed}").into_bytes();
                let source = pattern(layout.span() as usize, seed);
                let expected = layout.expected(size, &source, |i| layout.local_offset(i), |i| layout.remote_offset(i));
                let data_ok = buffers[words[1]].download(0, size).unwrap() == expected;
                say(&format!(
                    "VERIFIED {} note={note_ok} data={data_ok}",
                    if note_ok && data_ok { "ok" } else { "BAD" }
                ));
            }
            // scatter LAYOUT...: block i of the staging buffer (packed) to its place in the plain buffer
            Some("scatter") => {
                let layout = Layout::parse(&words[1..]);
                let copies: Vec<Copy> = (0..layout.count)
                    .map(|i| Copy {
                        src: staging.ptr() + i * layout.len,
                        dst: buffers["plain"].ptr() + layout.remote_offset(i),
                        len: layout.len,
                    })
                    .collect();
                match copy_and_wait(device, &copies) {
                    Ok(()) => say("DONE"),
                    Err(e) => say(&format!("FAILED {}", e.to_string().replace(' ', "_"))),
                }
            }
            // guarded: a 3 MiB allocation, poisoned, of which only the middle MiB is
            // registered; answers its base and the descriptor that now includes it
            Some("guarded") => {
                let buf = DeviceBuffer::new(device, GUARDED_ALLOC as usize, Allocation::Plain).unwrap();
                buf.fill(POISON).unwrap();
                let middle = kvx_memory_desc { addr: buf.ptr() + GUARD, len: GUARD, device_id: device };
                ok(agent.register_descs(VRAM, &[middle]));
                let desc: String = agent.desc().iter().map(|b| format!("{b:02x}")).collect();
                say(&format!("GUARDED {} {desc}", buf.ptr()));
                buffers.insert("guarded".into(), buf);
            }
            // verify-guard SEED: the middle MiB holds pattern(SEED), the rest is still poison
            Some("verify-guard") => {
                let seed: u64 = words[1].parse().unwrap();
                let mut expected = vec![POISON; GUARDED_ALLOC as usize];
                expected[GUARD as usize..2 * GUARD as usize].copy_from_slice(&pattern(GUARD as usize, seed));
                let got = buffers["guarded"].download(0, GUARDED_ALLOC as usize).unwrap();
                match got.iter().zip(&expected).position(|(g, e)| g != e) {
                    None => say("GUARD ok"),
                    Some(at) => say(&format!("GUARD BAD first wrong byte at offset {at:#x} of the allocation")),
                }
            }
            // cm-echo SIZE: receive a message into device memory from any peer, check it, send it back
            Some("cm-echo") => {
                let len: usize = words[1].parse().unwrap();
                let buf = DeviceBuffer::new(device, len, Allocation::Plain).unwrap();
                buf.fill(0).unwrap();
                let mut conn = std::ptr::null();
                let st = unsafe { kvx_cm_recv_connect(cm.raw, 7, buf.ptr() as *mut _, len, TIMEOUT_MS, &mut conn) };
                let recv_ok = st == kvxfer::kvx_status::KVX_OK && buf.download(0, len).unwrap() == pattern(len, 11);
                let sent = if recv_ok {
                    unsafe { kvx_conn_send(conn, 8, buf.ptr() as *const _, len, TIMEOUT_MS) }
                } else {
                    st
                };
                say(&format!(
                    "ECHOED {} recv={recv_ok} send={sent:?} {}",
                    if recv_ok { "ok" } else { "BAD" },
                    if recv_ok { String::new() } else { last_error() }
                ));
            }
            _ => break,
        }
    }
}

struct Peer {
    staging: u64,
    child: Child,
    to: ChildStdin,
    from: Lines<BufReader<ChildStdout>>,
    info: String,
    cm_address: String,
    device: u32,
    plain: u64,
    vmm: u64,
    host: u64,
}

impl Peer {
    fn start(size: u64) -> Peer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["target", "--size", &size.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| die(&format!("cannot start the target: {e}")));
        let to = child.stdin.take().unwrap();
        let mut from = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = from.next().unwrap_or_else(|| die("target exited before READY")).unwrap();
        let w: Vec<&str> = ready.split_whitespace().collect();
        if w.first() != Some(&"READY") {
            die(&format!("unexpected target output: {ready}"));
        }
        let n = |i: usize| w[i].parse::<u64>().unwrap();
        Peer {
            staging: n(8),
            info: w[1].into(),
            cm_address: w[2].into(),
            device: n(3) as u32,
            plain: n(4),
            vmm: n(5),
            host: n(6),
            to,
            from,
            child,
        }
    }
    fn ask(&mut self, line: &str) -> String {
        writeln!(self.to, "{line}").unwrap();
        self.from.next().unwrap_or_else(|| die(&format!("target exited during {line:?}"))).unwrap()
    }
    fn remote(&self, alloc: &str) -> (u64, u32) {
        (if alloc == "vmm" { self.vmm } else { self.plain }, self.device)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = writeln!(self.to, "quit");
        let _ = self.child.wait();
    }
}

/// Whether plain device memory between these two processes takes UCX's
/// batched CUDA IPC path (UCX backend, `KVX_UCX_IPC` not 0).
fn ipc_path_expected() -> bool {
    backend_under_test() == kvxfer::core::select::kvx_backend::KVX_BACKEND_UCX
        && std::env::var("KVX_UCX_IPC").map_or(true, |v| v != "0")
}

/// The guarded allocation (`target guarded`): three of these, the middle one registered.
const GUARD: u64 = 1 << 20;
const GUARDED_ALLOC: u64 = 3 * GUARD;

/// Ranges outside what the target registered, inside the same allocation:
/// refused before anything is copied, on whichever path the backend takes
/// (UCX's batched CUDA IPC copy computes these addresses itself). With
/// `forge_ipc`, the target's descriptor is first altered so that the IPC
/// entry of the guarded region claims to start 2.5 MiB into its 3 MiB
/// allocation: kvxfer must refuse that mapping (the driver says how large the
/// allocation is), and the transfer then travels UCX's transport, landing
/// right. Afterwards every guard byte must still be poison.
fn check_guard(agent: &Agent, peer: &mut Peer, forge_ipc: bool) -> Result<(), String> {
    let answer = peer.ask("guarded");
    let w: Vec<&str> = answer.split_whitespace().collect();
    if w.first() != Some(&"GUARDED") || w.len() < 3 {
        return Err(format!("target: {answer}"));
    }
    let base: u64 = w[1].parse().unwrap();
    let genuine: Vec<u8> =
        (0..w[2].len() / 2).map(|i| u8::from_str_radix(&w[2][2 * i..2 * i + 2], 16).unwrap()).collect();
    let desc = if forge_ipc {
        use kvxfer::core::wire::AgentDescriptor;
        let mut d = AgentDescriptor::decode(kvxfer::core::auth::PeerAuth::unverified_payload(&genuine))
            .map_err(|e| format!("decode the target's descriptor: {e}"))?;
        let index = d.regions.iter().position(|r| r.addr == base + GUARD).ok_or("no guarded region")? as u32;
        let ipc = d.ipc.as_mut().ok_or("the target exported no IPC handles")?;
        let entry = ipc.regions.iter_mut().find(|e| e.region == index).ok_or("no IPC entry for the guarded region")?;
        entry.offset = GUARDED_ALLOC - GUARD / 2;
        d.encode()
    } else {
        genuine
    };
    let _ = agent.invalidate(TARGET);
    let st = agent.load(TARGET, &desc);
    if st != kvxfer::kvx_status::KVX_OK {
        return Err(format!("load: {st:?} {}", last_error()));
    }
    let seed = 77;
    let local = DeviceBuffer::new(0, GUARD as usize, Allocation::Plain).map_err(|e| e.to_string())?;
    local.upload(0, &pattern(GUARD as usize, seed)).unwrap();
    let whole = [kvx_memory_desc { addr: local.ptr(), len: GUARD, device_id: 0 }];
    ok(agent.register_descs(VRAM, &whole));
    let result = (|| {
        let remote = [kvx_memory_desc { addr: base + GUARD, len: GUARD, device_id: peer.device }];
        let x = agent
            .submit_typed(WRITE, (VRAM, &whole), (VRAM, &remote), TARGET, None)
            .map_err(|(s, e)| format!("WRITE into the registered MiB: {s:?} {e}"))?;
        if x.wait(TIMEOUT_MS) != kvx_transfer_state::KVX_TRANSFER_SUCCESS {
            return Err(format!("WRITE into the registered MiB: {}", x.status_text()));
        }
        let batched = x.info().info.path == kvxfer::core::stats::kvx_xfer_path::KVX_PATH_CUDA_IPC_BATCH as u32;
        if forge_ipc && batched {
            return Err("the forged IPC entry was mapped: the batched copy ran".into());
        }
        if !forge_ipc && ipc_path_expected() && !batched {
            return Err(
                "the genuine WRITE did not take the batched CUDA IPC path, whose addresses kvxfer computes".into()
            );
        }
        let piece = GUARD / 16;
        for (what, at) in [
            ("straddling the registered start", base + GUARD - piece / 2),
            ("straddling the registered end", base + 2 * GUARD - piece / 2),
            ("inside the guard before", base + 4096),
            ("inside the guard after", base + 2 * GUARD + 4096),
        ] {
            let local = [kvx_memory_desc { len: piece, ..whole[0] }];
            let remote = [kvx_memory_desc { addr: at, len: piece, device_id: peer.device }];
            if let Ok(x) = agent.submit_typed(WRITE, (VRAM, &local), (VRAM, &remote), TARGET, None) {
                if x.wait(TIMEOUT_MS) == kvx_transfer_state::KVX_TRANSFER_SUCCESS {
                    return Err(format!("a WRITE {what} succeeded"));
                }
            }
        }
        match peer.ask(&format!("verify-guard {seed}")) {
            ok if ok == "GUARD ok" => Ok(()),
            bad => Err(format!("target: {bad}")),
        }
    })();
    let _ = agent.deregister_typed(&whole);
    // The other checks go on against the genuine descriptor.
    let _ = agent.invalidate(TARGET);
    ok(agent.load_by_info(TARGET, &peer.info));
    result
}

/// One transfer to completion; Ok(seconds the submit call itself took).
fn run_once(
    agent: &Agent,
    op: u32,
    local: &[kvx_memory_desc],
    remote: &[kvx_memory_desc],
    sync: Option<&[u8]>,
) -> Result<f64, String> {
    run_phased(agent, op, local, remote, sync).map(|(submit, _)| submit)
}

/// Where one request's time went, in seconds: from the submit call to the
/// transfer's record being posted (checks and listing), from posted to
/// completed (the copy's tail and noticing its end), and from completed to
/// the waiter's return (its wake-up).
#[derive(Clone, Copy)]
struct Phases {
    to_posted: f64,
    to_completed: f64,
    to_woken: f64,
}

/// `run_once`, with the request's phases from its record (wall clock, as the record keeps them).
fn run_phased(
    agent: &Agent,
    op: u32,
    local: &[kvx_memory_desc],
    remote: &[kvx_memory_desc],
    sync: Option<&[u8]>,
) -> Result<(f64, Phases), String> {
    let unix_ns = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let began = unix_ns();
    let t = Instant::now();
    let x = agent
        .submit_typed(op, (VRAM, local), (VRAM, remote), TARGET, sync)
        .map_err(|(s, e)| format!("submit: {s:?} {e}"))?;
    let submit = t.elapsed().as_secs_f64();
    let state = x.wait(TIMEOUT_MS * 3);
    let woken = unix_ns();
    if state != kvx_transfer_state::KVX_TRANSFER_SUCCESS {
        return Err(format!("transfer: {}", x.status_text()));
    }
    let info = x.info().info;
    let (posted, completed) = (info.post_time_ns as u128, info.completion_time_ns as u128);
    let seconds = |from: u128, to: u128| to.saturating_sub(from) as f64 / 1e9;
    let phases = Phases {
        to_posted: seconds(began, posted),
        to_completed: seconds(posted, completed),
        to_woken: seconds(completed, woken),
    };
    Ok((submit, phases))
}

/// WRITE then READ with `layout` between local and remote buffers of `alloc`, data verified on both sides.
fn check_layout(
    agent: &Agent,
    peer: &mut Peer,
    size: u64,
    alloc: &str,
    layout: Layout,
    seed: u64,
) -> Result<(), String> {
    let device = 0;
    let local = DeviceBuffer::new(device, size as usize, allocation(alloc)).map_err(|e| e.to_string())?;
    let desc = [kvx_memory_desc { addr: local.ptr(), len: size, device_id: device }];
    if agent.register_descs(VRAM, &desc) != kvxfer::kvx_status::KVX_OK {
        return Err(format!("register local {alloc}: {}", last_error()));
    }
    let (l, r) = layout.descs(&local, peer.remote(alloc));
    local.upload(0, &pattern(size as usize, seed)).unwrap();
    peer.ask(&format!("poison {alloc}"));
    let note = format!("written {seed}");
    run_once(agent, WRITE, &l, &r, Some(note.as_bytes()))?;
    let verdict = peer.ask(&format!("verify-write {alloc} {seed} {}", layout.words()));
    if !verdict.starts_with("VERIFIED ok") {
        return Err(format!("WRITE: target says {verdict}"));
    }
    peer.ask(&format!("fill {alloc} {}", seed + 1));
    local.fill(POISON).unwrap();
    run_once(agent, READ, &l, &r, None)?;
    let source = pattern(size as usize, seed + 1);
    let expected = layout.expected(size as usize, &source, |i| layout.remote_offset(i), |i| layout.local_offset(i));
    let read_ok = local.download(0, size as usize).unwrap() == expected;
    let _ = agent.deregister_typed(&desc);
    if !read_ok {
        return Err("READ: data mismatch at the initiator".into());
    }
    Ok(())
}

/// Requests from `threads` threads at once, each a slice of `descs`; Err on the first failure.
fn concurrently(
    agent: &Agent,
    op: u32,
    (l, r): (&[kvx_memory_desc], &[kvx_memory_desc]),
    threads: usize,
) -> Result<(), String> {
    let (ls, rs) = (split(l, threads), split(r, threads));
    let start = std::sync::Barrier::new(ls.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = ls
            .iter()
            .zip(&rs)
            .map(|(lp, rp)| {
                let start = &start;
                scope.spawn(move || {
                    kvxfer::cuda::bind_thread_to_device(0).map_err(|e| e.to_string())?;
                    start.wait();
                    run_once(agent, op, lp, rp, None).map(|_| ())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
    })
}

/// WRITE then READ of `layout` as CONCURRENT requests from as many threads, data verified on both sides.
fn check_concurrent(agent: &Agent, peer: &mut Peer, size: u64, layout: Layout, seed: u64) -> Result<(), String> {
    let local = DeviceBuffer::new(0, size as usize, Allocation::Plain).map_err(|e| e.to_string())?;
    let desc = [kvx_memory_desc { addr: local.ptr(), len: size, device_id: 0 }];
    if agent.register_descs(VRAM, &desc) != kvxfer::kvx_status::KVX_OK {
        return Err(format!("register local: {}", last_error()));
    }
    let (l, r) = layout.descs(&local, peer.remote("plain"));
    local.upload(0, &pattern(size as usize, seed)).unwrap();
    peer.ask("poison plain");
    concurrently(agent, WRITE, (&l, &r), CONCURRENT)?;
    // Every request completed: the notification follows all of them.
    if agent.notify(TARGET, format!("written {seed}").as_bytes()) != kvxfer::kvx_status::KVX_OK {
        return Err(format!("notify: {}", last_error()));
    }
    let verdict = peer.ask(&format!("verify-write plain {seed} {}", layout.words()));
    if !verdict.starts_with("VERIFIED ok") {
        return Err(format!("WRITE: target says {verdict}"));
    }
    peer.ask(&format!("fill plain {}", seed + 1));
    local.fill(POISON).unwrap();
    concurrently(agent, READ, (&l, &r), CONCURRENT)?;
    let source = pattern(size as usize, seed + 1);
    let expected = layout.expected(size as usize, &source, |i| layout.remote_offset(i), |i| layout.local_offset(i));
    let read_ok = local.download(0, size as usize).unwrap() == expected;
    let _ = agent.deregister_typed(&desc);
    if !read_ok {
        return Err("READ: data mismatch at the initiator".into());
    }
    Ok(())
}

trait DeregisterTyped {
    fn deregister_typed(&self, descs: &[kvx_memory_desc]) -> kvxfer::kvx_status;
}

impl DeregisterTyped for Agent {
    fn deregister_typed(&self, descs: &[kvx_memory_desc]) -> kvxfer::kvx_status {
        unsafe { kvxfer::ffi::agent::kvx_agent_deregister_memory(self.raw, VRAM, descs.as_ptr(), descs.len()) }
    }
}

/// Device memory end to end on the selected backend; prints one line per case.
fn check() {
    kvxfer::cuda::bind_thread_to_device(0).unwrap_or_else(|e| die(&e.to_string()));
    let size: u64 = 64 << 20;
    let mut peer = Peer::start(size);
    let agent = Agent::new("kvxfer-gpu-initiator");
    ok(agent.load_by_info(TARGET, &peer.info));
    let backend = format!("{:?}", backend_under_test());
    let mut failures = 0;
    let mut report = |name: &str, r: Result<(), String>| {
        match &r {
            Ok(()) => say(&format!("CHECK ok   {backend} {name}")),
            Err(e) => say(&format!("CHECK FAIL {backend} {name}: {e}")),
        }
        failures += r.is_err() as u32;
    };
    let whole = Layout { count: 1, len: size, gap: 0, pad: 0, permute: false };
    let paged = Layout { count: 4096, len: 16 << 10, gap: 0, pad: 0, permute: true };
    // Lengths and offsets not multiples of 16 take the kernel's byte path.
    let odd = Layout { count: 2000, len: 4099, gap: 5, pad: 3, permute: true };
    // Every size class: entries longer than one warp's share (several blocks each).
    let large = Layout { count: 64, len: 200 << 10, gap: 0, pad: 0, permute: true };
    // Ends that share their alignment modulo 4 but not 16: 4-byte words between byte heads and tails.
    let words = Layout { count: 600, len: (100 << 10) + 6, gap: 2, pad: 4, permute: true };
    for alloc in ["plain", "vmm"] {
        for (name, layout) in [
            ("one 64 MiB descriptor", whole),
            ("4096 x 16 KiB scattered", paged),
            ("2000 x 4099 B unaligned", odd),
            ("64 x 200 KiB scattered", large),
            ("600 x 100 KiB+6 B, 4-byte aligned", words),
        ] {
            let r = check_layout(&agent, &mut peer, size, alloc, layout, 100);
            report(&format!("{alloc} VRAM<->VRAM {name}"), r);
        }
    }
    // Host memory on one side, device memory on the other.
    let mixed = (|| {
        let local = DeviceBuffer::new(0, 1 << 20, Allocation::Plain).map_err(|e| e.to_string())?;
        let desc = [kvx_memory_desc { addr: local.ptr(), len: 1 << 20, device_id: 0 }];
        ok(agent.register_descs(VRAM, &desc));
        local.fill(POISON).unwrap();
        let remote = [kvx_memory_desc { addr: peer.host, len: 1 << 20, device_id: 0 }];
        let x = agent
            .submit_typed(READ, (VRAM, &desc), (DRAM, &remote), TARGET, None)
            .map_err(|(s, e)| format!("{s:?} {e}"))?;
        if x.wait(TIMEOUT_MS) != kvx_transfer_state::KVX_TRANSFER_SUCCESS {
            return Err(x.status_text());
        }
        let good = local.download(0, 1 << 20).unwrap() == pattern(1 << 20, 0);
        let _ = agent.deregister_typed(&desc);
        if good {
            Ok(())
        } else {
            Err("data mismatch".into())
        }
    })();
    report("READ host memory (target) into VRAM (initiator)", mixed);
    let many = Layout { count: 16384, len: 4 << 10, gap: 0, pad: 0, permute: true };
    report(
        &format!("plain VRAM<->VRAM 16384 x 4 KiB as {CONCURRENT} concurrent requests"),
        check_concurrent(&agent, &mut peer, size, many, 300),
    );
    // Connection manager send/recv with device buffers on both sides.
    let cm_case = (|| {
        let cm = Cm::new();
        let len = 1usize << 20;
        let conns = cm.connect(&[peer.cm_address.clone()]);
        let buf = DeviceBuffer::new(0, len, Allocation::Plain).map_err(|e| e.to_string())?;
        buf.upload(0, &pattern(len, 11)).unwrap();
        writeln!(peer.to, "cm-echo {len}").unwrap();
        let st = unsafe { kvx_conn_send(conns[0].0, 7, buf.ptr() as *const _, len, TIMEOUT_MS) };
        if st != kvxfer::kvx_status::KVX_OK {
            return Err(format!("send: {st:?} {}", last_error()));
        }
        // Post the receive before waiting for the target's report: over UCX its
        // (rendezvous) send completes only once this receive has taken the data.
        let echo = DeviceBuffer::new(0, len, Allocation::Plain).map_err(|e| e.to_string())?;
        echo.fill(0).unwrap();
        let st = unsafe { kvx_conn_recv(conns[0].0, 8, echo.ptr() as *mut _, len, TIMEOUT_MS) };
        let echoed = peer.from.next().unwrap().unwrap();
        if !echoed.starts_with("ECHOED ok") {
            return Err(format!("target: {echoed}"));
        }
        if st != kvxfer::kvx_status::KVX_OK {
            return Err(format!("recv: {st:?} {}", last_error()));
        }
        if echo.download(0, len).unwrap() != pattern(len, 11) {
            Err("echo mismatch".into())
        } else {
            Ok(())
        }
    })();
    report("connection send/recv, 1 MiB device buffers both sides", cm_case);
    report(
        "writes outside the registered MiB of a 3 MiB allocation refused, guard bytes intact",
        check_guard(&agent, &mut peer, false),
    );
    if ipc_path_expected() {
        report(
            "an IPC entry claiming past its allocation is not mapped; the WRITE lands through UCX",
            check_guard(&agent, &mut peer, true),
        );
    }
    drop(agent);
    drop(peer);
    if failures > 0 {
        std::process::exit(1);
    }
}

/// Measurement workloads: (name, layout) over the same 1.25 GiB.
fn workloads() -> Vec<(String, Layout)> {
    let total = LLAMA70B_BYTES_PER_TOKEN * PROMPT_TOKENS;
    let mut out = vec![(
        "staging 80 x 16 MiB".to_string(),
        Layout { count: 80, len: total / 80, gap: 0, pad: 0, permute: false },
    )];
    for kib in [32u64, 16, 4] {
        let len = kib << 10;
        out.push((
            format!("paged {} x {kib} KiB", total / len),
            Layout { count: total / len, len, gap: 0, pad: 0, permute: true },
        ));
    }
    out
}

/// `kvxfer-gpu kernels`: see the module's usage text.
fn kernels(args: &[String]) {
    use kvxfer::cuda::batch::{kernel_seconds, list_write_ns, Batch, ListSource, Writer, SMALL_MAX};
    let reps = num(args, "--iters", 5).max(1) as usize;
    let total = (LLAMA70B_BYTES_PER_TOKEN * PROMPT_TOKENS) as usize;
    let fail = |e: kvxfer::core::error::Error| -> ! { die(&e.to_string()) };
    let src = DeviceBuffer::new(0, total, Allocation::Plain).unwrap_or_else(|e| fail(e));
    let dst = DeviceBuffer::new(0, total, Allocation::Plain).unwrap_or_else(|e| fail(e));
    let data = pattern(total, 11);
    src.upload(0, &data).unwrap_or_else(|e| fail(e));
    let mut times: Vec<f64> = (0..reps + 1)
        .map(|_| {
            let t = Instant::now();
            peer_copy(dst.ptr(), 0, src.ptr(), 0, total).unwrap_or_else(|e| fail(e));
            t.elapsed().as_secs_f64()
        })
        .collect();
    let ceiling = total as f64 / median_of(&mut times[1..]) / 1e9;
    say(&format!("ceiling: same-device cuMemcpy of {total} bytes: {ceiling:.1} GB/s"));
    let rate = |seconds: f64| {
        let gbps = total as f64 / seconds / 1e9;
        format!("{gbps:.1} GB/s ({:.0}%)", 100.0 * gbps / ceiling)
    };
    for (name, layout) in workloads().into_iter().filter(|(_, l)| l.len <= SMALL_MAX) {
        let copies: Vec<Copy> = (0..layout.count)
            .map(|i| Copy {
                src: src.ptr() + layout.local_offset(i),
                dst: dst.ptr() + layout.remote_offset(i),
                len: layout.len,
            })
            .collect();
        dst.fill(POISON).unwrap_or_else(|e| fail(e));
        copy_and_wait(0, &copies).unwrap_or_else(|e| fail(e));
        let expected = layout.expected(total, &data, |i| layout.local_offset(i), |i| layout.remote_offset(i));
        let verified = dst.download(0, total).unwrap_or_else(|e| fail(e)) == expected;
        let timed = |small_max: u64, source: ListSource| {
            rate(kernel_seconds(0, &copies, small_max, source, reps).unwrap_or_else(|e| fail(e)))
        };
        let warp = timed(SMALL_MAX, ListSource::Device);
        let warp_upload = timed(SMALL_MAX, ListSource::Uploaded);
        let warp_host = timed(SMALL_MAX, ListSource::Host);
        let block = timed(0, ListSource::Device);
        let (local, remote) = layout.descs(&src, (dst.ptr(), 0));
        // A slice of the ready list, or of the descriptor pairs merged into runs as a request lists them.
        let from_copies = |range: std::ops::Range<usize>, writer: &mut Writer<'_>| {
            copies[range].iter().try_for_each(|c| writer.push(*c))
        };
        let from_pairs = |range: std::ops::Range<usize>, writer: &mut Writer<'_>| {
            kvxfer::core::coalesce::runs(&local[range.clone()], &remote[range])
                .try_for_each(|run| writer.push(Copy { src: run.local.addr, dst: run.remote.addr, len: run.len() }))
        };
        // The batch layer's submit-call and completion seconds (medians).
        let listed =
            |source: ListSource,
             slices: &[std::ops::Range<usize>],
             fill: &(dyn Fn(std::ops::Range<usize>, &mut Writer<'_>) -> kvxfer::Result<()> + Sync)| {
                let (mut submits, mut wholes) = (Vec::new(), Vec::new());
                for _ in 0..reps + 1 {
                    let t = Instant::now();
                    let batch = Batch::with_source(0, copies.len(), source).unwrap_or_else(|e| fail(e));
                    let pending = batch.submit_sliced(slices, fill).unwrap_or_else(|e| fail(e));
                    submits.push(t.elapsed().as_secs_f64());
                    if !pending.wait(Instant::now() + Duration::from_secs(60)).unwrap_or_else(|e| fail(e)) {
                        die("batched copy did not finish within 60 s");
                    }
                    wholes.push(t.elapsed().as_secs_f64());
                }
                let (submit_s, whole_s) = (median_of(&mut submits[1..]), median_of(&mut wholes[1..]));
                format!(
                    "submit {:.3} ms ({:.2} ns per entry), to completion {:.3} ms: {}",
                    submit_s * 1e3,
                    submit_s * 1e9 / copies.len() as f64,
                    whole_s * 1e3,
                    rate(whole_s)
                )
            };
        let everything = 0..copies.len();
        let whole = std::slice::from_ref(&everything);
        let sliced = kvxfer::core::parallel::slices(copies.len());
        let one_uploaded = listed(ListSource::Uploaded, whole, &from_copies);
        let one_host = listed(ListSource::Host, whole, &from_copies);
        let sliced_uploaded = listed(ListSource::Uploaded, &sliced, &from_copies);
        let sliced_host = listed(ListSource::Host, &sliced, &from_copies);
        let one_pairs = listed(ListSource::Host, whole, &from_pairs);
        let sliced_pairs = listed(ListSource::Host, &sliced, &from_pairs);
        // The checks every submit runs first (kvx_agent_submit's descriptor pass), on the same descriptors.
        let request =
            kvxfer::core::config::kvx_transfer_request::new(WRITE, (VRAM, &local), (VRAM, &remote), c"peer", None);
        let mut checks: Vec<f64> = (0..reps + 1)
            .map(|_| {
                let t = Instant::now();
                // SAFETY: the request's pointers are valid for `count` descriptors.
                unsafe { kvxfer::core::config::transfer_request(&request) }.unwrap_or_else(|e| fail(e));
                t.elapsed().as_secs_f64()
            })
            .collect();
        let checks_s = median_of(&mut checks[1..]);
        say(&format!(
            "KERNELS|{name}|kernel, one warp per entry: {warp}|with list upload: {warp_upload}|list read from pinned host memory: {warp_host}|one block per entry: {block}|request checks: {:.3} ms|data {}",
            checks_s * 1e3,
            if verified { "verified" } else { "WRONG" },
        ));
        say(&format!(
            "LISTING|{name}|one thread, list uploaded: {one_uploaded}|one thread, list read in place: {one_host}|{n} threads (as a request), uploaded: {sliced_uploaded}|{n} threads, read in place: {sliced_host}|from descriptor pairs merged into runs (as a request lists), one thread: {one_pairs}|{n} threads: {sliced_pairs}",
            n = sliced.len(),
        ));
        let writes = list_write_ns(0, copies.len(), reps.max(5)).unwrap_or_else(|e| fail(e));
        let writes: Vec<String> = writes.iter().map(|(kind, ns)| format!("{kind}: {ns:.2} ns per entry")).collect();
        say(&format!(
            "LISTWRITE|{name}|{} entries of 24 bytes written on one thread|{}",
            copies.len(),
            writes.join("|")
        ));
        if !verified {
            die("batched copy delivered wrong data");
        }
    }
    for threads in [2usize, 5, 8] {
        let mut hand_offs: Vec<f64> = (0..1000)
            .map(|_| {
                let t = Instant::now();
                kvxfer::core::parallel::on_threads(threads, |_| ());
                t.elapsed().as_secs_f64()
            })
            .collect();
        say(&format!(
            "POOL|{threads} threads, empty jobs: p50 {:.1} us, p99 {:.1} us",
            median_of(&mut hand_offs) * 1e6,
            percentile(&mut hand_offs, 0.99) * 1e6
        ));
    }
}

/// Requests in flight at once in the concurrent case, each from its own thread.
const CONCURRENT: usize = 8;

/// Timings of one case: per-request (or per-round) seconds and submit-call seconds.
struct Timed {
    times: Vec<f64>,
    submits: Vec<f64>,
    latencies: Vec<f64>,
    outcome: Result<(), String>,
}

/// Run `once` (which returns the seconds its request or round took) after one
/// warm-up (mapping, kernel load, UCX protocol selection) until both
/// `min_iters` runs and half a second are reached; paths that take seconds per
/// request get one timed run, so the whole bench stays bounded.
fn timed(min_iters: usize, mut once: impl FnMut(&mut Timed) -> Result<f64, String>) -> Timed {
    let mut t = Timed { times: Vec::new(), submits: Vec::new(), latencies: Vec::new(), outcome: Ok(()) };
    let warm = Instant::now();
    t.outcome = once(&mut t).map(|_| ());
    t.submits.clear();
    t.latencies.clear();
    let wanted = if warm.elapsed() > Duration::from_secs(2) { 1 } else { min_iters };
    let started = Instant::now();
    while t.outcome.is_ok()
        && (t.times.len() < wanted || (wanted > 1 && started.elapsed() < Duration::from_millis(500)))
        && started.elapsed() < Duration::from_secs(20)
    {
        match once(&mut t) {
            Ok(seconds) => t.times.push(seconds),
            Err(e) => t.outcome = Err(e),
        }
    }
    t
}

/// The request's descriptors cut into `parts` contiguous slices, one per thread.
fn split<T>(v: &[T], parts: usize) -> Vec<&[T]> {
    let per = v.len().div_ceil(parts);
    v.chunks(per.max(1)).collect()
}

/// Initiator of the measurement: one backend, every workload, both directions; prints RESULT lines.
fn initiator(args: &[String]) {
    kvxfer::cuda::bind_thread_to_device(0).unwrap_or_else(|e| die(&e.to_string()));
    let total = LLAMA70B_BYTES_PER_TOKEN * PROMPT_TOKENS;
    let min_iters = num(args, "--iters", 5) as usize;
    let baseline = args.iter().any(|a| a == "--baseline");
    let mut peer = Peer::start(total);
    let agent = Agent::new("kvxfer-gpu-initiator");
    ok(agent.load_by_info(TARGET, &peer.info));
    let local = DeviceBuffer::new(0, total as usize, Allocation::Plain).unwrap_or_else(|e| die(&e.to_string()));
    ok(agent.register_descs(VRAM, &[kvx_memory_desc { addr: local.ptr(), len: total, device_id: 0 }]));
    let staging = DeviceBuffer::new(0, total as usize, Allocation::Plain).unwrap_or_else(|e| die(&e.to_string()));
    ok(agent.register_descs(VRAM, &[kvx_memory_desc { addr: staging.ptr(), len: total, device_id: 0 }]));
    let seed = 7;
    let source = pattern(total as usize, seed);
    let only = opt(args, "--workloads");
    for (name, layout) in workloads() {
        if only.as_ref().is_some_and(|w| !w.split(',').any(|w| name.starts_with(w))) {
            continue;
        }
        let (l, r) = layout.descs(&local, peer.remote("plain"));
        for (op, op_name) in [(WRITE, "WRITE"), (READ, "READ")] {
            // Fresh data and a poisoned destination for every case; each case verifies all of it.
            let prepare = |peer: &mut Peer| {
                if op == WRITE {
                    local.upload(0, &source).unwrap();
                    peer.ask("poison plain");
                } else {
                    peer.ask(&format!("fill plain {seed}"));
                    local.fill(POISON).unwrap();
                }
            };
            let verify = |peer: &mut Peer, written: bool| -> Result<(), String> {
                if op == WRITE {
                    if !written {
                        return Err("no verified WRITE".into());
                    }
                    let v = peer.ask(&format!("verify-write plain {seed} {}", layout.words()));
                    if v.starts_with("VERIFIED ok") {
                        Ok(())
                    } else {
                        Err(v)
                    }
                } else {
                    let expected = layout.expected(
                        total as usize,
                        &source,
                        |i| layout.remote_offset(i),
                        |i| layout.local_offset(i),
                    );
                    if local.download(0, total as usize).unwrap() == expected {
                        Ok(())
                    } else {
                        Err("READ data mismatch".into())
                    }
                }
            };
            let note = format!("written {seed}");
            // One request at a time.
            prepare(&mut peer);
            let mut phases = Vec::new();
            let t = timed(min_iters, |t| {
                let at = Instant::now();
                let (submit, phased) = run_phased(&agent, op, &l, &r, None)?;
                t.submits.push(submit);
                phases.push(phased);
                Ok(at.elapsed().as_secs_f64())
            });
            let written =
                t.outcome.is_ok() && (op == READ || run_once(&agent, op, &l, &r, Some(note.as_bytes())).is_ok());
            let verified = t.outcome.clone().and_then(|_| verify(&mut peer, written));
            let median = report("single", &name, op_name, &layout, &t, &verified, total);
            // The warm-up's phases are left out, as its time is.
            let phase = |pick: fn(&Phases) -> f64| median_of(&mut phases.iter().skip(1).map(pick).collect::<Vec<_>>());
            say(&format!(
                "PHASES|single|{name}|{op_name}|submit to posted (checks, listing) {:.3} ms|posted to completed {:.3} ms|completed to waiter woken {:.1} us",
                phase(|p| p.to_posted) * 1e3,
                phase(|p| p.to_completed) * 1e3,
                phase(|p| p.to_woken) * 1e6,
            ));
            // CONCURRENT requests from as many threads, each a slice of the same workload;
            // timed per round (all submitted together, until the last completes).
            if median < 0.5 {
                prepare(&mut peer);
                let (ls, rs) = (split(&l, CONCURRENT), split(&r, CONCURRENT));
                // A round runs from the threads' common start to the last completion (thread start-up excluded).
                let t = timed(min_iters, |t| {
                    let start = std::sync::Barrier::new(ls.len());
                    let results: Vec<Result<(Instant, f64, f64), String>> = std::thread::scope(|scope| {
                        let handles: Vec<_> = ls
                            .iter()
                            .zip(&rs)
                            .map(|(lp, rp)| {
                                let (agent, start) = (&agent, &start);
                                scope.spawn(move || {
                                    kvxfer::cuda::bind_thread_to_device(0).map_err(|e| e.to_string())?;
                                    start.wait();
                                    let at = Instant::now();
                                    let submit = run_once(agent, op, lp, rp, None)?;
                                    Ok((at, submit, at.elapsed().as_secs_f64()))
                                })
                            })
                            .collect();
                        handles
                            .into_iter()
                            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
                            .collect()
                    });
                    let mut span: Option<(Instant, Instant)> = None;
                    for r in results {
                        let (at, submit, latency) = r?;
                        t.submits.push(submit);
                        t.latencies.push(latency);
                        let end = at + Duration::from_secs_f64(latency);
                        span = Some(span.map_or((at, end), |(s, e)| (s.min(at), e.max(end))));
                    }
                    Ok(span.map_or(0.0, |(s, e)| (e - s).as_secs_f64()))
                });
                // The data of the last round is verified; the notification follows every request's completion.
                let written = t.outcome.is_ok()
                    && (op == READ || agent.notify(TARGET, note.as_bytes()) == kvxfer::kvx_status::KVX_OK);
                let verified = t.outcome.clone().and_then(|_| verify(&mut peer, written));
                report(&format!("{CONCURRENT} concurrent"), &name, op_name, &layout, &t, &verified, total);
            }
            // What a TensorRT-LLM user has without a batched path: a gather kernel into one
            // staging buffer, one transfer of it, a scatter kernel at the target; end to end.
            if baseline && op == WRITE && layout.count > 80 {
                prepare(&mut peer);
                let gather: Vec<Copy> = (0..layout.count)
                    .map(|i| Copy {
                        src: local.ptr() + layout.local_offset(i),
                        dst: staging.ptr() + i * layout.len,
                        len: layout.len,
                    })
                    .collect();
                let one_l = [kvx_memory_desc { addr: staging.ptr(), len: total, device_id: 0 }];
                let one_r = [kvx_memory_desc { addr: peer.staging, len: total, device_id: peer.device }];
                let round = |peer: &mut Peer, sync: Option<&[u8]>| -> Result<f64, String> {
                    let at = Instant::now();
                    copy_and_wait(0, &gather).map_err(|e| e.to_string())?;
                    run_once(&agent, WRITE, &one_l, &one_r, sync)?;
                    let done = peer.ask(&format!("scatter {}", layout.words()));
                    if done != "DONE" {
                        return Err(format!("target scatter: {done}"));
                    }
                    Ok(at.elapsed().as_secs_f64())
                };
                let t = {
                    let peer = &mut peer;
                    timed(min_iters, |t| {
                        let seconds = round(peer, None)?;
                        t.latencies.push(seconds);
                        Ok(seconds)
                    })
                };
                let written = t.outcome.is_ok() && round(&mut peer, Some(note.as_bytes())).is_ok();
                let verified = t.outcome.clone().and_then(|_| verify(&mut peer, written));
                report("gather-transfer-scatter", &name, op_name, &layout, &t, &verified, total);
            }
        }
    }
}

/// Print one RESULT line; the median seconds per request (or round).
fn report(
    case: &str,
    name: &str,
    op: &str,
    layout: &Layout,
    t: &Timed,
    verified: &Result<(), String>,
    total: u64,
) -> f64 {
    let median = median_of(&mut t.times.clone());
    let submit_ms = median_of(&mut t.submits.clone()) * 1e3;
    let mut lat = t.latencies.clone();
    if lat.is_empty() {
        lat = t.times.clone();
    }
    let (p50, p99) = (percentile(&mut lat.clone(), 0.5) * 1e3, percentile(&mut lat, 0.99) * 1e3);
    let status = match (&t.outcome, verified) {
        (Err(e), _) | (Ok(_), Err(e)) => format!("FAILED {}", e.replace([' ', '|'], "_")),
        _ => "verified".into(),
    };
    say(&format!(
        "RESULT|{case}|{name}|{op}|{}|{}|{:.3}|{}|{status}|{submit_ms:.3}|{:.3}|{p50:.3}|{p99:.3}",
        layout.count,
        layout.len,
        total as f64 / median / 1e9,
        t.times.len(),
        median * 1e3
    ));
    median
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

fn median_of(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// cuMemcpyPeer of the same bytes in both directions, data verified: GB/s (0->1, 1->0).
fn ceiling(total: usize, iters: usize) -> (f64, f64) {
    let (a, b) = (0u32, target_device());
    let src = DeviceBuffer::new(a, total, Allocation::Plain).unwrap_or_else(|e| die(&e.to_string()));
    let dst = DeviceBuffer::new(b, total, Allocation::Plain).unwrap_or_else(|e| die(&e.to_string()));
    kvxfer::cuda::memory::enable_peer_access(a, b).unwrap_or_else(|e| die(&e.to_string()));
    let one_way = |from: &DeviceBuffer, to: &DeviceBuffer| {
        let data = pattern(total, 3 + from.device() as u64);
        from.upload(0, &data).unwrap();
        to.fill(POISON).unwrap();
        peer_copy(to.ptr(), to.device(), from.ptr(), from.device(), total).unwrap();
        let mut times: Vec<f64> = (0..iters)
            .map(|_| {
                let t = Instant::now();
                peer_copy(to.ptr(), to.device(), from.ptr(), from.device(), total).unwrap();
                t.elapsed().as_secs_f64()
            })
            .collect();
        if to.download(0, total).unwrap() != data {
            die("peer copy delivered wrong data");
        }
        times.sort_by(|x, y| x.partial_cmp(y).unwrap());
        total as f64 / times[times.len() / 2] / 1e9
    };
    let forward = one_way(&src, &dst);
    let backward = one_way(&dst, &src);
    (forward, backward)
}

struct Row {
    system: String,
    case: String,
    workload: String,
    op: String,
    descs: u64,
    len: u64,
    gbps: f64,
    iters: u64,
    status: String,
    submit_ms: f64,
    total_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Row {
    fn ok(&self) -> bool {
        self.status == "verified"
    }
}

/// One goal's verdict: what was compared, the measured figure, and whether it holds.
struct Goal {
    goal: String,
    measured: String,
    met: Option<bool>,
}

/// Every goal the rows can judge (a goal whose case did not run, or did not verify, is NOT MET).
fn goals(rows: &[Row], ceiling: (f64, f64), same_device: bool) -> Vec<Goal> {
    let find = |system: &str, case: &str, workload: &str, op: &str| {
        rows.iter().find(|r| r.system == system && r.case == case && r.workload.starts_with(workload) && r.op == op)
    };
    let share = |r: &Row| 100.0 * r.gbps / if r.op == "WRITE" { ceiling.0 } else { ceiling.1 };
    let mut out = Vec::new();
    let ipc = "kvxfer-ucx (batched IPC)";
    let targets: &[(&str, f64)] = if same_device {
        &[("staging", 85.0), ("paged 40960", 85.0), ("paged 81920", 85.0), ("paged 327680", 60.0)]
    } else {
        &[("staging", 98.0), ("paged 40960", 90.0), ("paged 81920", 90.0), ("paged 327680", 80.0)]
    };
    let ceiling_name = if same_device { "same-device cuMemcpy" } else { "cuMemcpyPeer" };
    for &(workload, want) in targets {
        for op in ["WRITE", "READ"] {
            let row = find(ipc, "single", workload, op);
            out.push(Goal {
                goal: format!("batched {workload} {op} >= {want:.0}% of {ceiling_name}"),
                measured: row
                    .map_or("not run".into(), |r| format!("{:.1}% ({:.1} GB/s, {})", share(r), r.gbps, r.status)),
                met: Some(row.is_some_and(|r| r.ok() && share(r) >= want)),
            });
        }
    }
    for op in ["WRITE", "READ"] {
        let row = find(ipc, "single", "paged 327680", op);
        let ns = row.map(|r| r.submit_ms * 1e6 / r.descs as f64);
        out.push(Goal {
            goal: format!("submit call <= 3 ns per descriptor at 327,680 descriptors ({op})"),
            measured: ns.map_or("not run".into(), |ns| format!("{ns:.2} ns ({:.3} ms)", row.unwrap().submit_ms)),
            met: Some(ns.is_some_and(|ns| ns <= 3.0)),
        });
    }
    for single in rows.iter().filter(|r| r.system == ipc && r.case == "single") {
        let Some(conc) = find(ipc, &format!("{CONCURRENT} concurrent"), &single.workload, &single.op) else { continue };
        let ratio = conc.gbps / single.gbps;
        out.push(Goal {
            goal: format!("{CONCURRENT} concurrent requests >= 90% of one request: {} {}", single.workload, single.op),
            measured: format!(
                "{:.0}% ({:.1} vs {:.1} GB/s; request p50 {:.2} ms, p99 {:.2} ms; {})",
                100.0 * ratio,
                conc.gbps,
                single.gbps,
                conc.p50_ms,
                conc.p99_ms,
                conc.status
            ),
            met: Some(conc.ok() && single.ok() && ratio >= 0.9),
        });
    }
    for w in rows.iter().filter(|r| r.op == "WRITE") {
        let Some(r) = find(&w.system, &w.case, &w.workload, "READ") else { continue };
        if w.case == "gather-transfer-scatter" {
            continue;
        }
        out.push(Goal {
            goal: format!("READ no more than 2x slower than WRITE: {} {} {}", w.system, w.case, w.workload),
            measured: format!("READ {:.1} GB/s, WRITE {:.1} GB/s ({:.2}x)", r.gbps, w.gbps, w.gbps / r.gbps),
            met: Some(r.ok() && w.ok() && r.gbps * 2.0 >= w.gbps),
        });
    }
    for base in rows.iter().filter(|r| r.case == "gather-transfer-scatter") {
        let Some(batched) = find(ipc, "single", &base.workload, &base.op) else { continue };
        let speedup = base.total_ms / batched.total_ms;
        out.push(Goal {
            goal: format!("batched >= 1.5x gather-transfer-scatter: {} {}", base.workload, base.op),
            measured: format!(
                "{speedup:.2}x ({:.2} ms vs {:.2} ms; baseline {})",
                batched.total_ms, base.total_ms, base.status
            ),
            met: Some(base.ok() && batched.ok() && speedup >= 1.5),
        });
    }
    out.push(Goal {
        goal: "1 prefill process to 4 decode processes: aggregate >= 90% of one request".into(),
        measured: "not measured (needs 5 GPUs; not part of this program yet)".into(),
        met: None,
    });
    out
}

fn verdict(g: &Goal) -> &'static str {
    match g.met {
        Some(true) => "MET",
        Some(false) => "NOT MET",
        None => "NOT MEASURED",
    }
}

/// Text for a JSON string value.
fn json_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number (NaN and infinities, which JSON lacks, as null).
fn json_number(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "null".into()
    }
}

/// Runs every system's initiator in its own process tree and prints the table.
fn bench(args: &[String]) {
    let total = (LLAMA70B_BYTES_PER_TOKEN * PROMPT_TOKENS) as usize;
    let iters = num(args, "--iters", 5);
    if args.iter().any(|a| a == "--same-gpu") {
        std::env::set_var("KVX_GPU_SAME_DEVICE", "1");
    }
    let same_device = target_device() == 0;
    let (fwd, back) = ceiling(total, 10);
    let mut rows: Vec<Row> = Vec::new();
    type Env = &'static [(&'static str, &'static str)];
    let systems: [(&str, &str, Env); 3] = [
        ("ipc", "kvxfer-ucx (batched IPC)", &[("TRTLLM_USE_NIXL_KVCACHE", "0"), ("KVX_UCX_IPC", "1")]),
        ("transport", "kvxfer-ucx (transport)", &[("TRTLLM_USE_NIXL_KVCACHE", "0"), ("KVX_UCX_IPC", "0")]),
        ("nixl", "kvxfer-nixl", &[("TRTLLM_USE_NIXL_KVCACHE", "1"), ("TRTLLM_USE_UCX_KVCACHE", "0")]),
    ];
    let wanted = opt(args, "--systems").unwrap_or_else(|| "ipc,transport,nixl".into());
    for (key, system, env) in systems {
        if !wanted.split(',').any(|w| w == key) {
            continue;
        }
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["initiator", "--iters", &iters.to_string()]).stdout(Stdio::piped());
        if let Some(w) = opt(args, "--workloads") {
            cmd.args(["--workloads", &w]);
        }
        if key == "ipc" {
            cmd.arg("--baseline");
        }
        for (k, v) in env.iter() {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap_or_else(|e| die(&format!("cannot start the {system} initiator: {e}")));
        let text = String::from_utf8_lossy(&out.stdout);
        for phases in text.lines().filter_map(|l| l.strip_prefix("PHASES|")) {
            say(&format!("PHASES|{system}|{phases}"));
        }
        let mut got = 0;
        for line in text.lines().filter(|l| l.starts_with("RESULT|")) {
            let f: Vec<&str> = line.split('|').collect();
            let float = |i: usize| f.get(i).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
            rows.push(Row {
                system: system.into(),
                case: f[1].into(),
                workload: f[2].into(),
                op: f[3].into(),
                descs: f[4].parse().unwrap_or(0),
                len: f[5].parse().unwrap_or(0),
                gbps: float(6),
                iters: f[7].parse().unwrap_or(0),
                status: f[8].into(),
                submit_ms: float(9),
                total_ms: float(10),
                p50_ms: float(11),
                p99_ms: float(12),
            });
            got += 1;
        }
        if got == 0 || !out.status.success() {
            eprintln!("kvxfer-gpu: {system} initiator exited with {} after {got} results", out.status);
        }
    }
    let gpu = gpu_name();
    let ceiling_name = if same_device { "same-device cuMemcpy" } else { "cuMemcpyPeer" };
    let header = format!(
        "kvxfer-gpu bench: Llama-3-70B 4096-token prompt = {:.2} GiB, GPU0 -> GPU{} ({gpu}); ceiling {ceiling_name} 0->{t} {fwd:.1} GB/s, {t}->0 {back:.1} GB/s",
        total as f64 / (1u64 << 30) as f64,
        target_device(),
        t = target_device()
    );
    let mut table = vec![
        header,
        "| system | case | workload | op | GB/s | of ceiling | vs kvxfer-nixl | ms per request or round (submit call) | request p50 / p99 ms | timed runs | data |".into(),
        "|---|---|---|---|---|---|---|---|---|---|---|".into(),
    ];
    for r in &rows {
        let ceiling = if r.op == "WRITE" { fwd } else { back };
        let nixl = rows
            .iter()
            .find(|n| {
                n.system == "kvxfer-nixl" && n.case == r.case && n.workload == r.workload && n.op == r.op && n.ok()
            })
            .map(|n| n.gbps);
        let vs_nixl = nixl.map_or("-".to_string(), |n| format!("{:.2}x", r.gbps / n));
        table.push(format!(
            "| {} | {} | {} | {} | {:.1} | {:.0}% | {} | {:.2} ({:.2}) | {:.2} / {:.2} | {} | {} |",
            r.system,
            r.case,
            r.workload,
            r.op,
            r.gbps,
            100.0 * r.gbps / ceiling,
            vs_nixl,
            r.total_ms,
            r.submit_ms,
            r.p50_ms,
            r.p99_ms,
            r.iters,
            r.status
        ));
    }
    let verdicts = goals(&rows, (fwd, back), same_device);
    table.push(String::new());
    table.push("| goal | measured | verdict |".into());
    table.push("|---|---|---|".into());
    for g in &verdicts {
        table.push(format!("| {} | {} | {} |", g.goal, g.measured, verdict(g)));
    }
    if same_device {
        table.push("Both processes on one GPU: the two-GPU (NVLink) goals are not measured in this run.".into());
    }
    say(&table.join("\n"));
    if let Some(path) = opt(args, "--json") {
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"system\":{},\"case\":{},\"workload\":{},\"op\":{},\"descriptors\":{},\"descriptor_bytes\":{},\"gbps\":{},\"ms_per_request\":{},\"submit_ms\":{},\"p50_ms\":{},\"p99_ms\":{},\"timed_runs\":{},\"status\":{}}}",
                    json_text(&r.system),
                    json_text(&r.case),
                    json_text(&r.workload),
                    json_text(&r.op),
                    r.descs,
                    r.len,
                    json_number(r.gbps),
                    json_number(r.total_ms),
                    json_number(r.submit_ms),
                    json_number(r.p50_ms),
                    json_number(r.p99_ms),
                    r.iters,
                    json_text(&r.status)
                )
            })
            .collect();
        let goal_items: Vec<String> = verdicts
            .iter()
            .map(|g| {
                format!(
                    "{{\"goal\":{},\"measured\":{},\"verdict\":{}}}",
                    json_text(&g.goal),
                    json_text(&g.measured),
                    json_text(verdict(g))
                )
            })
            .collect();
        let json = format!(
            "{{\"gpu\":{},\"same_device\":{same_device},\"bytes\":{total},\"ceiling\":{},\"ceiling_gbps_0_to_target\":{},\"ceiling_gbps_target_to_0\":{},\"results\":[{}],\"goals\":[{}]}}\n",
            json_text(&gpu),
            json_text(ceiling_name),
            json_number(fwd),
            json_number(back),
            items.join(","),
            goal_items.join(",")
        );
        std::fs::write(&path, json).unwrap_or_else(|e| die(&format!("{path}: {e}")));
    }
}

fn gpu_name() -> String {
    let mut name = [0 as std::ffi::c_char; 128];
    let mut dev = 0;
    unsafe {
        cudarc::driver::sys::cuDeviceGet(&mut dev, 0);
        cudarc::driver::sys::cuDeviceGetName(name.as_mut_ptr(), 128, dev);
        std::ffi::CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    if !matches!(mode, "check" | "bench" | "kernels" | "initiator" | "target") {
        die("usage: kvxfer-gpu check | kernels [--iters N] | bench [--iters N] [--json PATH] [--systems ipc,transport,nixl] [--same-gpu] [--workloads PREFIXES]");
    }
    if kvxfer::cuda::device_count() == 0 {
        say("SKIP: no CUDA driver or GPU on this machine; kvxfer-gpu needs one");
        return;
    }
    match mode {
        "check" => check(),
        "bench" => bench(&args),
        "kernels" => kernels(&args),
        "initiator" => initiator(&args),
        _ => target(&args),
    }
}
