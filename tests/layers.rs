//! The layers of `src/` import only downward, as docs/design.md draws them:
//!
//! ```text
//! ffi (C ABI)  ->  backend choice (backend/mod.rs)  ->  backends (backend/ucx, backend/nixl)
//!              ->  backend support (backend/locate.rs)  ->  dispatch contract (dispatch.rs)
//!              ->  cuda  ->  core
//! ```
//!
//! Every `crate::` path in a file is checked against what its layer may use,
//! so a new upward or sideways import fails here instead of growing a circle.

use std::path::{Path, PathBuf};

/// A file's layer, from its path under `src/`.
fn layer_of(rel: &str) -> Option<&'static str> {
    Some(match rel {
        _ if rel.starts_with("core/") => "core",
        _ if rel.starts_with("cuda/") => "cuda",
        "dispatch.rs" => "dispatch",
        "backend/locate.rs" => "backend_support",
        "backend/mod.rs" => "backend_choice",
        _ if rel.starts_with("backend/ucx/") => "ucx",
        _ if rel.starts_with("backend/nixl/") => "nixl",
        _ if rel.starts_with("ffi/") => "ffi",
        // The crate root, the test harness and the programs sit on top and may use anything.
        _ => return None,
    })
}

/// The layer a `crate::a::b` path reaches.
fn target_of(first: &str, second: &str) -> &'static str {
    match (first, second) {
        ("core", _) | ("log_at", _) => "core",
        ("cuda", _) => "cuda",
        ("dispatch", _) | ("backend_table", _) => "dispatch",
        ("native_api", _) => "backend_support",
        ("backend", "locate") => "backend_support",
        ("backend", "ucx") => "ucx",
        ("backend", "nixl") => "nixl",
        ("backend", _) => "backend_choice",
        ("ffi", _) => "ffi",
        ("harness", _) => "harness",
        _ => "root",
    }
}

fn allowed(layer: &str) -> &'static [&'static str] {
    match layer {
        "core" => &["core"],
        "cuda" => &["core", "cuda"],
        "dispatch" => &["core", "dispatch"],
        "backend_support" => &["core", "backend_support"],
        "ucx" => &["core", "cuda", "dispatch", "backend_support", "ucx"],
        "nixl" => &["core", "cuda", "dispatch", "backend_support", "nixl"],
        "backend_choice" => &["core", "dispatch", "ucx", "nixl", "backend_choice"],
        "ffi" => &["core", "dispatch", "backend_choice", "ffi"],
        _ => unreachable!(),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::a::b` (and `$crate::a::b`) in `text`, as (line, a, b).
fn crate_paths(text: &str) -> Vec<(usize, String, String)> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().last();
            let after = &rest[at + "crate::".len()..];
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                assert!(!after.starts_with('{'), "line {}: grouped `crate::{{...}}` imports hide their layers", n + 1);
                let first = ident(after);
                let second = after[first.len()..].strip_prefix("::").map(ident).unwrap_or_default();
                found.push((n + 1, first, second));
            }
            rest = after;
        }
    }
    found
}

#[test]
fn src_imports_only_downward() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/");
        let Some(layer) = layer_of(&rel) else { continue };
        let text = std::fs::read_to_string(file).unwrap();
        // Unit tests may use the harness and anything else; they are not part of the layer.
        let text = text.split("#[cfg(test)]").next().unwrap();
        for (line, first, second) in crate_paths(text) {
            let target = target_of(&first, &second);
            if !allowed(layer).contains(&target) {
                wrong.push(format!("src/{rel}:{line}: {layer} uses crate::{first}::{second} ({target})"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports that go up or sideways:\n{}", wrong.join("\n"));
}

#[test]
fn the_checker_sees_paths() {
    let paths = crate_paths("use crate::core::error::Error; x = $crate::dispatch::slice(p); // crate::ffi::no");
    assert_eq!(paths, vec![(1, "core".into(), "error".into()), (1, "dispatch".into(), "slice".into())]);
    assert!(!allowed("core").contains(&target_of("dispatch", "slice")));
}
