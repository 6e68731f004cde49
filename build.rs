//! Generates the C header with a pinned cbindgen into OUT_DIR (the committed
//! `include/kvxfer.h` must equal it; `tests/header_drift.rs` checks) and gives
//! the shared library its versioned SONAME.

use std::env;
use std::path::PathBuf;

fn main() {
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let major = env::var("CARGO_PKG_VERSION_MAJOR").unwrap();
    let minor = env::var("CARGO_PKG_VERSION_MINOR").unwrap();
    let patch = env::var("CARGO_PKG_VERSION_PATCH").unwrap();

    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libkvxfer.so.{major}");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");

    let mut config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    config.after_includes = Some(format!(
        "\n#define KVXFER_VERSION_MAJOR {major}\n#define KVXFER_VERSION_MINOR {minor}\n#define KVXFER_VERSION_PATCH {patch}\n\
         #define KVXFER_VERSION_STRING \"{major}.{minor}.{patch}\"\n\
         /* Timeout argument meaning \"use the handle's default timeout\". */\n#define KVX_TIMEOUT_DEFAULT (-1)\n"
    ));
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header")
        .write_to_file(out_dir.join("kvxfer.h"));
}
