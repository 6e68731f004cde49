//! Links the shared libkvxfer (never the kvxfer crate itself), sets the run-time
//! search path the wheel's layout needs, and checks this crate against the root one.

use std::path::{Path, PathBuf};

// The declarations themselves, to compare their layout with the header's.
#[allow(dead_code)]
#[path = "src/sys.rs"]
mod sys;

/// C assertions that each listed struct has the size, alignment and field offsets Rust gives it.
macro_rules! layout_asserts {
    ($($ty:ident { $($field:ident),* })*) => {{
        let mut c = String::from("#include <stddef.h>\n#include \"kvxfer.h\"\n");
        $(
            c += &format!("_Static_assert(sizeof({}) == {}, \"size of {0}\");\n",
                stringify!($ty), std::mem::size_of::<sys::$ty>());
            c += &format!("_Static_assert(_Alignof({}) == {}, \"alignment of {0}\");\n",
                stringify!($ty), std::mem::align_of::<sys::$ty>());
            $(c += &format!("_Static_assert(offsetof({}, {}) == {}, \"{0}.{1}\");\n",
                stringify!($ty), stringify!($field), std::mem::offset_of!(sys::$ty, $field));)*
        )*
        c
    }};
}

fn main() {
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = here.parent().unwrap().to_path_buf();

    // One version: the root Cargo.toml's.
    let root_manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let root_version = root_manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \"").and_then(|r| r.strip_suffix('"')))
        .expect("no version line in the root Cargo.toml");
    let own_version = std::env::var("CARGO_PKG_VERSION").unwrap();
    if own_version != root_version {
        panic!("python/Cargo.toml has version {own_version}, the root Cargo.toml {root_version}: set them equal");
    }

    // Every C function declared in src/sys.rs must exist in the committed header.
    let header = std::fs::read_to_string(root.join("include/kvxfer.h")).unwrap();
    let sys = std::fs::read_to_string(here.join("src/sys.rs")).unwrap();
    for name in sys.split("pub fn ").skip(1).filter_map(|r| r.split('(').next()) {
        if !header.contains(&format!(" {name}(")) && !header.contains(&format!("*{name}(")) {
            panic!("src/sys.rs declares {name}, which include/kvxfer.h does not");
        }
    }

    // Every struct src/sys.rs shares with C has the header's layout (checked by the C compiler).
    let asserts = layout_asserts! {
        kvx_agent_config { struct_size, name, backend, use_listen_thread, listen_ip, listen_port, timeout_ms,
                           progress_thread, num_workers, backend_params, auth_key, auth_key_len, auth_key_file }
        kvx_memory_desc { addr, len, device_id }
        kvx_bytes { data, len }
        kvx_transfer_request { op, src_type, src_descs, dst_type, dst_descs, count, remote_name, sync_message,
                               sync_message_len, has_sync_message }
        kvx_cm_config { struct_size, backend, listen_ip, listen_port, timeout_ms, auth_key, auth_key_len,
                        auth_key_file }
        kvx_backend_info { struct_size, backend, name, library_path, library_version }
    };
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let check = out_dir.join("layout_check.c");
    std::fs::write(&check, asserts).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = std::process::Command::new(&cc)
        .args(["-std=c11", "-fsyntax-only", "-I"])
        .arg(root.join("include"))
        .arg(&check)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cc} to check struct layouts against include/kvxfer.h: {e}"));
    if !status.success() {
        panic!("src/sys.rs and include/kvxfer.h disagree on a struct layout (see {})", check.display());
    }

    // The folder holding libkvxfer.so: the staged wheel tree, else the root crate's release build.
    let lib_dir = std::env::var("KVXFER_LIB_DIR").map(PathBuf::from).unwrap_or_else(|_| {
        let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
        target.join("release")
    });
    if !Path::new(&lib_dir).join("libkvxfer.so").exists() {
        println!("cargo:warning=no libkvxfer.so in {} (set KVXFER_LIB_DIR)", lib_dir.display());
    }
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=kvxfer");
    // kvxfer/lib in the wheel; tensorrt_llm/libs once installed into TensorRT-LLM.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-rpath,$ORIGIN/lib:$ORIGIN/libs");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--enable-new-dtags");
    println!("cargo:rerun-if-env-changed=KVXFER_LIB_DIR");
    println!("cargo:rerun-if-changed=../include/kvxfer.h");
    println!("cargo:rerun-if-changed=../Cargo.toml");
    println!("cargo:rerun-if-changed=src/sys.rs");
}
