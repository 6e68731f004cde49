//! Finding and loading `libucp` at run time, privately (`RTLD_LOCAL`), so a
//! process that never selects UCX never maps it and UCX's symbols never clash
//! with another copy (NIXL bundles its own).

use super::sys::UcpApi;
use crate::core::error::{kvx_status, Error, Result};
use once_cell::sync::OnceCell;
use std::path::{Path, PathBuf};

pub struct LoadedUcx {
    pub api: UcpApi,
    pub path: String,
    pub version: String,
    /// How the library was found, for the one-time log line.
    pub source: &'static str,
}

const SONAME: &str = "libucp.so.0";
/// Oldest UCP API whose `*_nbx` calls and parameter structs this binding uses.
const MIN_VERSION: (u32, u32) = (1, 14);

pub const INSTALL_HINT: &str = "install the UCX wheel (`pip install libucx-cu12` or `libucx-cu13`), \
or point KVX_UCX_LIB at libucp.so.0 (or at the folder holding it)";

static LOADED: OnceCell<std::result::Result<LoadedUcx, String>> = OnceCell::new();

pub fn load() -> Result<&'static LoadedUcx> {
    LOADED
        .get_or_init(|| {
            let loaded = try_load()?;
            crate::log_at!(
                Info,
                "UCX backend: {} (UCX {}, found via {})",
                loaded.path,
                loaded.version,
                loaded.source
            );
            Ok(loaded)
        })
        .as_ref()
        .map_err(|msg| Error::new(kvx_status::KVX_ERR_BACKEND_UNAVAILABLE, msg.clone()))
}

/// Where to look, in order: `KVX_UCX_LIB`, the normal library search path,
/// then a `libucx` wheel in any Python site folder we can find.
fn candidates() -> Vec<(PathBuf, &'static str)> {
    let mut out = Vec::new();
    if let Ok(explicit) = std::env::var("KVX_UCX_LIB") {
        let p = PathBuf::from(&explicit);
        let p = if p.is_dir() { p.join(SONAME) } else { p };
        out.push((p, "KVX_UCX_LIB"));
        return out;
    }
    out.push((PathBuf::from(SONAME), "library search path"));
    for site in python_site_dirs() {
        let lib = site.join("libucx").join("lib").join(SONAME);
        if lib.exists() {
            out.push((lib, "libucx wheel"));
        }
    }
    out
}

/// Python site-packages folders worth searching for the UCX wheel, found
/// without starting Python: virtualenv and conda prefixes, PYTHONPATH,
/// interpreters on PATH, and the usual system and user locations.
pub fn python_site_dirs() -> Vec<PathBuf> {
    let mut prefixes: Vec<PathBuf> = Vec::new();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Ok(v) = std::env::var(var) {
            prefixes.push(PathBuf::from(v));
        }
    }
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("python3").exists() {
                if let Some(prefix) = dir.parent() {
                    prefixes.push(prefix.to_path_buf());
                }
            }
        }
    }
    if let Ok(home) = std::env::var("HOME") {
        prefixes.push(Path::new(&home).join(".local"));
        // pyenv keeps one prefix per version.
        if let Ok(entries) = std::fs::read_dir(Path::new(&home).join(".pyenv/versions")) {
            prefixes.extend(entries.flatten().map(|e| e.path()));
        }
    }
    prefixes.extend(["/usr/local", "/usr", "/opt/conda"].map(PathBuf::from));

    let mut sites: Vec<PathBuf> = Vec::new();
    if let Ok(pp) = std::env::var("PYTHONPATH") {
        sites.extend(std::env::split_paths(&pp));
    }
    for prefix in prefixes {
        for libdir in ["lib", "lib64"] {
            let Ok(entries) = std::fs::read_dir(prefix.join(libdir)) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if name.to_string_lossy().starts_with("python3") {
                    sites.push(entry.path().join("site-packages"));
                    sites.push(entry.path().join("dist-packages"));
                }
            }
        }
    }
    sites.sort();
    sites.dedup();
    sites.into_iter().filter(|s| s.is_dir()).collect()
}

fn try_load() -> std::result::Result<LoadedUcx, String> {
    let mut tried = Vec::new();
    for (path, source) in candidates() {
        // SAFETY: loading UCX runs its constructors, which is what using it requires.
        let lib = unsafe {
            libloading::os::unix::Library::open(Some(&path), libc::RTLD_NOW | libc::RTLD_LOCAL)
        };
        let lib = match lib {
            Ok(l) => libloading::Library::from(l),
            Err(e) => {
                tried.push(format!("{} ({source}): {e}", path.display()));
                continue;
            }
        };
        // SAFETY: the symbols are UCP's, with the signatures declared in sys.rs.
        let api = unsafe { UcpApi::resolve(lib) }.map_err(|e| format!("{}: {e}", path.display()))?;
        let (mut major, mut minor, mut release) = (0, 0, 0);
        // SAFETY: plain out-parameters.
        unsafe { (api.ucp_get_version)(&mut major, &mut minor, &mut release) };
        if (major, minor) < MIN_VERSION {
            return Err(format!(
                "{} is UCX {major}.{minor}.{release}; kvxfer needs UCX {}.{} or newer: {INSTALL_HINT}",
                path.display(),
                MIN_VERSION.0,
                MIN_VERSION.1
            ));
        }
        let resolved = resolved_path(&api, &path);
        return Ok(LoadedUcx { api, path: resolved, version: format!("{major}.{minor}.{release}"), source });
    }
    Err(format!("UCX library {SONAME} not found (tried: {}); {INSTALL_HINT}", tried.join("; ")))
}

/// The file the dynamic loader actually mapped, for logs and `kvx_backend_info`.
fn resolved_path(api: &UcpApi, fallback: &Path) -> String {
    // SAFETY: dladdr only reads loader data for a symbol address we hold.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(api.ucp_get_version as *const libc::c_void, &mut info) != 0 && !info.dli_fname.is_null() {
            let name = std::ffi::CStr::from_ptr(info.dli_fname).to_string_lossy().into_owned();
            if let Ok(canonical) = std::fs::canonicalize(&name) {
                return canonical.display().to_string();
            }
            return name;
        }
    }
    fallback.display().to_string()
}
