//! Finding and loading `libucp` at run time, privately (`RTLD_LOCAL`), so a
//! process that never selects UCX never maps it and UCX's symbols never clash
//! with another copy (NIXL bundles its own).

use super::sys::UcpApi;
use crate::backend::locate;
use crate::core::error::{kvx_status, Error, Result};
use once_cell::sync::OnceCell;
use std::path::PathBuf;

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
            crate::log_at!(Info, "UCX backend: {} (UCX {}, found via {})", loaded.path, loaded.version, loaded.source);
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
    for site in locate::python_site_dirs() {
        let lib = site.join("libucx").join("lib").join(SONAME);
        if lib.exists() {
            out.push((lib, "libucx wheel"));
        }
    }
    out
}

fn try_load() -> std::result::Result<LoadedUcx, String> {
    locate::with_ucx_copy("UCX", load_first_candidate)
}

fn load_first_candidate() -> std::result::Result<LoadedUcx, String> {
    let mut tried = Vec::new();
    for (path, source) in candidates() {
        let lib = match locate::open_private(&path) {
            Ok(l) => l,
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
        let resolved = locate::mapped_file(api.ucp_get_version as usize, &path);
        return Ok(LoadedUcx { api, path: resolved, version: format!("{major}.{minor}.{release}"), source });
    }
    Err(format!("UCX library {SONAME} not found (tried: {}); {INSTALL_HINT}", tried.join("; ")))
}
