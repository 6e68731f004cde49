//! Memory to and from files (`kvx_file_copy`, TensorRT-LLM's loopback agent)
//! on the backend the environment selects (one per process): through NIXL's
//! real POSIX plugin into real files, refused by UCX (which has no storage
//! path) with nothing touched, bad input refused before any byte moves on
//! both, many threads at once. scripts/test.sh runs it once per backend.

mod common;
use common::*;
use kvxfer::core::config::kvx_file_copy_request;
use kvxfer::core::memory::{kvx_file_desc, kvx_memory_desc};
use kvxfer::ffi::files::kvx_file_copy;
use kvxfer::kvx_status::{self, *};
use std::ffi::{c_char, CStr};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

const AUTO: u32 = 0;
const DRAM: u32 = 0;

fn nixl_selected() -> bool {
    kvxfer::core::select::resolve(kvxfer::core::select::kvx_backend::KVX_BACKEND_AUTO).unwrap()
        == kvxfer::core::select::kvx_backend::KVX_BACKEND_NIXL
}

fn scratch(name: &str) -> (PathBuf, File) {
    let dir = std::env::temp_dir().join(format!("kvx-file-copy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    (path, file)
}

fn desc(buf: &[u8]) -> kvx_memory_desc {
    kvx_memory_desc { addr: buf.as_ptr() as u64, len: buf.len() as u64, device_id: 0 }
}

/// One `kvx_file_copy` of host memory; the status and, on success, the path's name.
fn copy(memory: &[kvx_memory_desc], files: &[kvx_file_desc], to_file: bool) -> (kvx_status, String) {
    assert_eq!(memory.len(), files.len());
    let mut path: *const c_char = std::ptr::null();
    let request = kvx_file_copy_request {
        mem_type: DRAM,
        memory: memory.as_ptr(),
        files: files.as_ptr(),
        count: memory.len(),
        to_file,
        multi_thread: false,
        timeout_ms: 20_000,
    };
    let status = unsafe { kvx_file_copy(AUTO, &request, &mut path) };
    let name = if path.is_null() { String::new() } else { unsafe { CStr::from_ptr(path) }.to_string_lossy().into() };
    (status, name)
}

#[test]
fn host_memory_goes_to_files_and_back_through_nixl_posix_and_ucx_refuses() {
    // Two pieces in one file (the second at an offset) and one in another, odd sizes.
    let (path_a, file_a) = scratch("a.bin");
    let (path_b, file_b) = scratch("b.bin");
    let first = pattern(1 << 20, 1);
    let second = pattern(4096 + 17, 2);
    let third = pattern(3 * 4096 + 5, 3);
    let offset = first.len() as u64 + 512;
    let memory = [desc(&first), desc(&second), desc(&third)];
    let files = [
        kvx_file_desc { fd: file_a.as_raw_fd(), offset: 0, len: first.len() as u64 },
        kvx_file_desc { fd: file_a.as_raw_fd(), offset, len: second.len() as u64 },
        kvx_file_desc { fd: file_b.as_raw_fd(), offset: 0, len: third.len() as u64 },
    ];
    let (status, used) = copy(&memory, &files, true);
    if !nixl_selected() {
        assert_eq!(status, KVX_ERR_UNSUPPORTED, "{}", last_error());
        assert!(used.is_empty());
        assert!(last_error().contains("no storage path"), "{}", last_error());
        assert_eq!(std::fs::metadata(&path_a).unwrap().len(), 0);
        assert_eq!(std::fs::metadata(&path_b).unwrap().len(), 0);
        return;
    }
    assert_eq!(status, KVX_OK, "{}", last_error());
    assert_eq!(used, "POSIX");

    let on_disk = std::fs::read(&path_a).unwrap();
    assert_eq!(&on_disk[..first.len()], &first[..]);
    assert_eq!(&on_disk[offset as usize..offset as usize + second.len()], &second[..]);
    assert_eq!(std::fs::read(&path_b).unwrap(), third);

    let back: Vec<Vec<u8>> = [first.len(), second.len(), third.len()].iter().map(|&n| vec![0u8; n]).collect();
    let memory_back: Vec<kvx_memory_desc> = back.iter().map(|b| desc(b)).collect();
    let (status, used) = copy(&memory_back, &files, false);
    assert_eq!(status, KVX_OK, "{}", last_error());
    assert_eq!(used, "POSIX");
    assert_eq!(back[0], first);
    assert_eq!(back[1], second);
    assert_eq!(back[2], third);
}

#[test]
fn bad_pairs_are_refused_before_any_byte_moves() {
    let (path, file) = scratch("bad.bin");
    let data = pattern(4096, 5);
    let fd = file.as_raw_fd();
    let cases: [(kvx_file_desc, kvx_status, &str); 4] = [
        (kvx_file_desc { fd: -1, offset: 0, len: 4096 }, KVX_ERR_INVALID_ARGUMENT, "not an open file"),
        (kvx_file_desc { fd, offset: 0, len: 4095 }, KVX_ERR_SIZE_MISMATCH, "4096 bytes"),
        (kvx_file_desc { fd, offset: u64::MAX - 10, len: 4096 }, KVX_ERR_INVALID_ARGUMENT, "largest file offset"),
        (kvx_file_desc { fd, offset: i64::MAX as u64, len: 4096 }, KVX_ERR_INVALID_ARGUMENT, "largest file offset"),
    ];
    {
        for (file_desc, want, says) in &cases {
            // A valid first pair: refusing the second must not write the first.
            let memory = [desc(&data), desc(&data)];
            let files = [kvx_file_desc { fd, offset: 0, len: 4096 }, *file_desc];
            let (status, _) = copy(&memory, &files, true);
            assert_eq!(status, *want, "{}", last_error());
            assert!(last_error().contains(says), "{}", last_error());
        }
        let wrapping = kvx_memory_desc { addr: u64::MAX - 8, len: 4096, device_id: 0 };
        let (status, _) = copy(&[wrapping], &[kvx_file_desc { fd, offset: 0, len: 4096 }], true);
        assert_eq!(status, KVX_ERR_INVALID_ARGUMENT, "{}", last_error());
        let empty = kvx_memory_desc { addr: data.as_ptr() as u64, len: 0, device_id: 0 };
        let (status, _) = copy(&[empty], &[kvx_file_desc { fd, offset: 0, len: 0 }], true);
        assert_eq!(status, KVX_ERR_INVALID_ARGUMENT, "{}", last_error());
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "a refused request wrote to the file");
    unsafe {
        let mut out: *const c_char = std::ptr::null();
        let d = desc(&data);
        let base = kvx_file_copy_request {
            mem_type: DRAM,
            memory: &d,
            files: std::ptr::null(),
            count: 1,
            to_file: true,
            multi_thread: false,
            timeout_ms: 0,
        };
        assert_eq!(kvx_file_copy(AUTO, &base, &mut out), KVX_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("descriptor list is NULL"), "{}", last_error());
        let none = kvx_file_copy_request { count: 0, ..base };
        assert_eq!(kvx_file_copy(AUTO, &none, std::ptr::null_mut()), KVX_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("out_path is NULL"));
        assert_eq!(kvx_file_copy(AUTO, std::ptr::null(), &mut out), KVX_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("request is NULL"));
        assert_eq!(
            kvx_file_copy(AUTO, &kvx_file_copy_request { mem_type: 7, ..none }, &mut out),
            KVX_ERR_INVALID_ARGUMENT
        );
        assert_eq!(kvx_file_copy(9, &none, &mut out), KVX_ERR_INVALID_ARGUMENT);
    }
}

#[test]
fn reading_past_the_end_of_a_file_is_refused() {
    let (path, file) = scratch("short.bin");
    std::fs::write(&path, pattern(100, 6)).unwrap();
    let into = vec![0xAAu8; 4096];
    {
        let piece = kvx_file_desc { fd: file.as_raw_fd(), offset: 0, len: 4096 };
        let (status, _) = copy(&[desc(&into)], &[piece], false);
        assert_eq!(status, KVX_ERR_INVALID_ARGUMENT, "{}", last_error());
        assert!(last_error().contains("holds 100 bytes"), "{}", last_error());
    }
    assert!(into.iter().all(|&b| b == 0xAA), "a refused read wrote memory");
    // A descriptor that is not open (far above any this process opens, so no
    // other test can be handed it meanwhile) is named as such.
    let (status, _) = copy(&[desc(&into)], &[kvx_file_desc { fd: i32::MAX - 1, offset: 0, len: 4096 }], true);
    assert_eq!(status, KVX_ERR_INVALID_ARGUMENT, "{}", last_error());
    assert!(last_error().contains("Bad file descriptor"), "{}", last_error());
}

#[test]
fn many_threads_copy_their_own_files_at_once() {
    if !nixl_selected() {
        return report_skip("UCX has no storage path (the round trip above checks its refusal)");
    }
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            std::thread::spawn(move || {
                let (path, file) = scratch(&format!("thread-{t}.bin"));
                for round in 0..4u64 {
                    let data = pattern(64 * 1024 + t as usize, t * 100 + round);
                    let piece = kvx_file_desc { fd: file.as_raw_fd(), offset: 0, len: data.len() as u64 };
                    let (status, _) = copy(&[desc(&data)], &[piece], true);
                    assert_eq!(status, KVX_OK, "{}", last_error());
                    let back = vec![0u8; data.len()];
                    let (status, _) = copy(&[desc(&back)], &[piece], false);
                    assert_eq!(status, KVX_OK, "{}", last_error());
                    assert_eq!(back, data, "thread {t} round {round}");
                    assert_eq!(&std::fs::read(&path).unwrap()[..data.len()], &data[..]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
