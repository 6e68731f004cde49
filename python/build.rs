//! Links the shared libkvxfer (never the kvxfer crate itself), sets the run-time
//! search path the wheel's layout needs, and checks this crate against the root one.

use std::path::{Path, PathBuf};

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

    // The folder holding libkvxfer.so: the staged wheel tree, else the root crate's release build.
    let lib_dir = std::env::var("KVXFER_LIB_DIR").map(PathBuf::from).unwrap_or_else(|_| {
        let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
        target.join("release")
    });
    if !Path::new(&lib_dir).join("libkvxfer.so").exists() {
        println!("cargo:warning=no libkvxfer.so in {} (set KVXFER_LIB_DIR)", lib_dir.display());
    }
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    // kvxfer/lib in the wheel; tensorrt_llm/libs once installed into TensorRT-LLM.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-rpath,$ORIGIN/lib:$ORIGIN/libs");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--enable-new-dtags");
    println!("cargo:rerun-if-env-changed=KVXFER_LIB_DIR");
    println!("cargo:rerun-if-changed=../include/kvxfer.h");
    println!("cargo:rerun-if-changed=../Cargo.toml");
    println!("cargo:rerun-if-changed=src/sys.rs");
}
