//! Device memory through kvxfer: the batched copy kernels (every size class,
//! unaligned entries, many threads at once), registration of plain and VMM
//! allocations, and two processes on two GPUs, or both on one (`kvxfer-gpu
//! check`: WRITE/READ verified on both sides, every size class, unaligned
//! entries, 8 concurrent requests, VMM, host<->device, connection send/recv
//! with device buffers, writes outside a registered range refused with guard
//! bytes around it, a forged IPC entry not mapped) on the backend the
//! environment selects; device memory to files and back (the loopback agent).
//! Without a CUDA driver and GPU (CI here) every test says so and passes.

mod common;

use common::*;
use kvxfer::core::memory::{kvx_memory_desc, kvx_memory_type};
use kvxfer::cuda::batch::{self, copy_and_wait, Copy};
use kvxfer::cuda::memory::{Allocation, DeviceBuffer};

fn gpu_present() -> bool {
    if kvxfer::cuda::device_count() == 0 {
        report_skip("no CUDA driver or GPU on this machine (GPU tests run on the GPU machine: scripts/gpu/run.sh)");
        return false;
    }
    true
}

#[test]
fn batched_copy_kernel_moves_exactly_the_listed_bytes() {
    if !gpu_present() {
        return;
    }
    let size = 16 << 20;
    let src = DeviceBuffer::new(0, size, Allocation::Plain).unwrap();
    let dst = DeviceBuffer::new(0, size, Allocation::Plain).unwrap();
    let data = pattern(size, 5);
    src.upload(0, &data).unwrap();
    dst.fill(0xAB).unwrap();
    // Aligned, unaligned, tiny, and one large entry for the copy engines.
    let mut copies = Vec::new();
    let mut expected = vec![0xABu8; size];
    let mut put = |s: usize, d: usize, len: usize| {
        copies.push(Copy { src: src.ptr() + s as u64, dst: dst.ptr() + d as u64, len: len as u64 });
        expected[d..d + len].copy_from_slice(&data[s..s + len]);
    };
    for i in 0..300usize {
        put(i * 4096, (299 - i) * 4096, 4096);
    }
    for i in 0..200usize {
        put(2 << 20 | (i * 1001 + 3), (2 << 20) + i * 1013 + 7, 997);
    }
    put(3 << 20, 3 << 20, 1);
    // Zero-length entries move nothing.
    put(3 << 20 | 64, 3 << 20 | 64, 0);
    put(0, 4 << 20, 4 << 20);
    // The large-entry kernel (several blocks per entry): aligned, co-aligned with
    // byte heads and tails, 4-byte co-aligned, and not co-aligned at all.
    put(8 << 20, 10 << 20, (1 << 20) + 48);
    put((12 << 20) + 5, (9 << 20) + 21, (300 << 10) + 7);
    put((13 << 20) + 6, (14 << 20) + 2, (200 << 10) + 2);
    put((15 << 20) + 1, (15 << 20) + (512 << 10) + 2, 100 << 10);
    // Small entries with the same cases.
    put((3 << 20) + 4096 + 3, (3 << 20) + 65536 + 19, 40 << 10);
    put((3 << 20) + (128 << 10) + 2, (3 << 20) + (256 << 10) + 6, (16 << 10) + 5);
    // Exactly at the size-class boundary, and just above it.
    put(5 << 20, (11 << 20) + (512 << 10), batch::SMALL_MAX as usize);
    put((5 << 20) + (256 << 10), 12 << 20, batch::SMALL_MAX as usize + 16);
    copy_and_wait(0, &copies).unwrap();
    let got = dst.download(0, size).unwrap();
    if let Some(at) = got.iter().zip(&expected).position(|(g, e)| g != e) {
        panic!("batched copy wrote wrong bytes, first at offset {at:#x}");
    }
}

#[test]
fn batched_copies_from_many_threads_at_once_each_land_whole() {
    if !gpu_present() {
        return;
    }
    let size = 8 << 20;
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            std::thread::spawn(move || {
                let src = DeviceBuffer::new(0, size, Allocation::Plain).unwrap();
                let dst = DeviceBuffer::new(0, size, Allocation::Plain).unwrap();
                for round in 0..5u64 {
                    let data = pattern(size, t * 100 + round);
                    src.upload(0, &data).unwrap();
                    dst.fill(0xAB).unwrap();
                    // Scattered 4 KiB blocks, a different shape per thread, so each list is distinct.
                    let blocks = size / 4096;
                    let copies: Vec<Copy> = (0..blocks as u64)
                        .map(|i| Copy {
                            src: src.ptr() + i * 4096,
                            dst: dst.ptr() + ((i * 7919 + t) % blocks as u64) * 4096,
                            len: 4096,
                        })
                        .collect();
                    copy_and_wait(0, &copies).unwrap();
                    let got = dst.download(0, size).unwrap();
                    for i in 0..blocks as u64 {
                        let to = (((i * 7919 + t) % blocks as u64) * 4096) as usize;
                        let from = (i * 4096) as usize;
                        assert!(got[to..to + 4096] == data[from..from + 4096], "thread {t} round {round} block {i}");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn plain_and_vmm_device_memory_register_with_type_and_device_from_the_pointer() {
    if !gpu_present() {
        return;
    }
    let agent = Agent::new("gpu-register");
    for kind in [Allocation::Plain, Allocation::Vmm] {
        let buf = DeviceBuffer::new(0, 4 << 20, kind).unwrap();
        assert_eq!(kvxfer::cuda::pointer_location(buf.ptr() + 100), (kvx_memory_type::KVX_MEMORY_VRAM, 0), "{kind:?}");
        let desc = [kvx_memory_desc { addr: buf.ptr(), len: 4 << 20, device_id: 0 }];
        // Device memory is refused as host memory, and registers as device memory.
        assert_ne!(agent.register_descs(DRAM, &desc), kvxfer::kvx_status::KVX_OK, "{kind:?} registered as DRAM");
        ok(agent.register_descs(VRAM, &desc));
        let mut out = false;
        let name = std::ffi::CString::new("gpu-register").unwrap();
        unsafe {
            ok(kvxfer::ffi::agent::kvx_agent_check_remote_descs(
                agent.raw,
                name.as_ptr(),
                VRAM,
                desc.as_ptr(),
                1,
                &mut out,
            ))
        };
        assert!(out, "{kind:?}: own VRAM registration not visible");
        unsafe { ok(kvxfer::ffi::agent::kvx_agent_deregister_memory(agent.raw, VRAM, desc.as_ptr(), 1)) };
    }
}

#[test]
fn two_processes_on_two_gpus_move_device_memory_correctly() {
    if !gpu_present() {
        return;
    }
    let tool = std::env::var("KVX_GPU_TOOL").unwrap_or_else(|_| env!("CARGO_BIN_EXE_kvxfer-gpu").to_string());
    // On UCX the same-host batched copy path serves plain device memory; KVX_UCX_IPC=0
    // sends it through UCX's cuda_ipc transport instead: both must be right.
    let variants: &[&str] =
        if backend_under_test() == kvxfer::core::select::kvx_backend::KVX_BACKEND_UCX { &["1", "0"] } else { &["1"] };
    for ipc in variants {
        let out = std::process::Command::new(&tool)
            .arg("check")
            .env("KVX_UCX_IPC", ipc)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        let text = String::from_utf8_lossy(&out.stdout);
        eprintln!("KVX_UCX_IPC={ipc}\n{text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "kvxfer-gpu check failed with KVX_UCX_IPC={ipc} ({})", out.status);
        assert!(text.lines().filter(|l| l.starts_with("CHECK ok")).count() >= 8, "missing check lines");
    }
}

/// TensorRT-LLM's loopback GpuToFile then FileToGpu through `kvx_file_copy` on
/// the selected backend: NIXL's GDS plugin where NIXL is selected and GDS
/// loads (the file and the second device buffer checked byte for byte), a
/// refusal that names why where it does not (the wrapper then stages), and a
/// refusal with nothing written on UCX.
#[test]
fn device_memory_to_a_file_and_back_through_the_storage_path() {
    use kvxfer::core::config::kvx_file_copy_request;
    use kvxfer::core::memory::kvx_file_desc;
    use kvxfer::core::select::{kvx_backend, resolve};
    use std::os::fd::AsRawFd;
    if !gpu_present() {
        return;
    }
    let len = (20 << 20) + 123;
    let data = pattern(len, 41);
    let src = DeviceBuffer::new(0, len, Allocation::Plain).unwrap();
    let dst = DeviceBuffer::new(0, len, Allocation::Plain).unwrap();
    src.upload(0, &data).unwrap();
    dst.fill(0).unwrap();
    let path = std::env::temp_dir().join(format!("kvx-gpu-file-{}.bin", std::process::id()));
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    let piece = kvx_file_desc { fd: file.as_raw_fd(), offset: 0, len: len as u64 };
    let copy = |buffer: &DeviceBuffer, to_file: bool| -> (kvxfer::kvx_status, String) {
        let memory = kvx_memory_desc { addr: buffer.ptr(), len: len as u64, device_id: 0 };
        let request = kvx_file_copy_request {
            mem_type: kvx_memory_type::KVX_MEMORY_VRAM as u32,
            memory: &memory,
            files: &piece,
            count: 1,
            to_file,
            multi_thread: false,
            timeout_ms: 30_000,
        };
        let mut used: *const std::ffi::c_char = std::ptr::null();
        let status = unsafe { kvxfer::ffi::files::kvx_file_copy(0, &request, &mut used) };
        let name = if used.is_null() {
            last_error()
        } else {
            unsafe { std::ffi::CStr::from_ptr(used) }.to_string_lossy().into()
        };
        (status, name)
    };
    let started = std::time::Instant::now();
    let (status, used) = copy(&src, true);
    let nixl = resolve(kvx_backend::KVX_BACKEND_AUTO).unwrap() == kvx_backend::KVX_BACKEND_NIXL;
    if !nixl || status != kvxfer::kvx_status::KVX_OK {
        let _ = std::fs::remove_file(&path);
        assert_eq!(status, kvxfer::kvx_status::KVX_ERR_UNSUPPORTED, "{used}");
        assert_eq!(file.metadata().unwrap().len(), 0, "a refused copy wrote to the file");
        if nixl {
            assert!(used.contains("GDS"), "{used}");
            return report_skip(&format!("NIXL's GDS plugins cannot serve here ({used}); the wrapper stages instead"));
        }
        assert!(used.contains("no storage path"), "{used}");
        return;
    }
    let out_ms = started.elapsed().as_secs_f64() * 1e3;
    assert!(used.starts_with("GDS"), "device memory went through {used}");
    assert!(std::fs::read(&path).unwrap() == data, "GpuToFile through {used}: the file does not hold the device bytes");
    let started = std::time::Instant::now();
    let (status, _) = copy(&dst, false);
    assert_eq!(status, kvxfer::kvx_status::KVX_OK, "{}", last_error());
    let back_ms = started.elapsed().as_secs_f64() * 1e3;
    let _ = std::fs::remove_file(&path);
    assert!(
        dst.download(0, len).unwrap() == data,
        "FileToGpu through {used}: the device does not hold the file's bytes"
    );
    println!("loopback through NIXL's {used}: {len} bytes to a file in {out_ms:.1} ms, back in {back_ms:.1} ms");
}
