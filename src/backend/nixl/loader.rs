//! Finding and loading NIXL's C API at run time, privately, and only when
//! NIXL is selected. Everything is checked before the first NIXL call: a
//! missing library or plugin is an error that says what was looked for.

use super::sys::NixlApi;
use crate::backend::locate;
use crate::core::error::{kvx_status, Error, Result};
use once_cell::sync::OnceCell;
use std::path::{Path, PathBuf};

pub struct LoadedNixl {
    pub api: NixlApi,
    pub path: String,
    pub version: String,
    /// Folder NIXL loads its plugins from.
    pub plugin_dir: PathBuf,
}

const LIBRARY: &str = "libnixl_capi.so";

pub const INSTALL_HINT: &str = "install the NIXL wheel (`pip install --no-deps nixl-cu12` or `nixl-cu13`; \
the Python package and torch are not needed), or point KVX_NIXL_LIB at libnixl_capi.so (or the folder holding it)";

static LOADED: OnceCell<std::result::Result<LoadedNixl, String>> = OnceCell::new();

pub fn load() -> Result<&'static LoadedNixl> {
    LOADED
        .get_or_init(|| {
            enable_cuda_ipc_get();
            skip_loopback_tcp();
            let loaded = locate::with_ucx_copy("NIXL", load_first_candidate)?;
            crate::log_at!(
                Info,
                "NIXL backend: {} (NIXL {}, plugins in {})",
                loaded.path,
                loaded.version,
                loaded.plugin_dir.display()
            );
            Ok(loaded)
        })
        .as_ref()
        .map_err(|msg| Error::new(kvx_status::KVX_ERR_BACKEND_UNAVAILABLE, msg.clone()))
}

/// NIXL's UCX plugin reads UCX's options only from the environment, so the
/// `cuda_ipc` GET option goes there, once, before NIXL is loaded, and only when
/// the user has not set it (`UCX_CUDA_IPC_ENABLE_GET_ZCOPY=auto` restores UCX's
/// default). It is process-wide: another UCX user in the process sees it too.
/// Without a CUDA driver UCX loads no `cuda_ipc` transport and would print an
/// "unused environment variable" warning on stdout, so it is left out there.
fn enable_cuda_ipc_get() {
    let (key, value) = locate::UCX_CUDA_IPC_GET;
    let name = format!("UCX_{key}");
    if std::env::var_os(&name).is_none() && crate::cuda::driver_available() {
        // Set before NIXL (and its UCX copy) exists; the C library's getenv is not
        // synchronised with this, which is why it happens once, at first load.
        std::env::set_var(&name, value);
    }
}

/// NIXL's UCX opens a TCP connection to a peer on every network device it
/// may use, loopback included, and NIXL 1.5.1 keeps them after invalidate:
/// two descriptors per peer on a host with one NIC. So, before NIXL loads and
/// only where the user has not set `UCX_NET_DEVICES` and the host has no RDMA
/// device (whose names would have to be listed too), NIXL's UCX gets the
/// host's addressed, up, non-loopback interfaces. Peers on the same host are
/// reached through those addresses as well. Process-wide, like the option above.
fn skip_loopback_tcp() {
    // Inherited from a kvxfer parent (marked so) counts as unset: this process
    // may see other interfaces (another network namespace, say).
    let inherited = std::env::var_os(SET_BY_KVXFER).is_some_and(|v| Some(v) == std::env::var_os("UCX_NET_DEVICES"));
    if std::env::var_os("UCX_NET_DEVICES").is_some() && !inherited {
        return;
    }
    let rdma = std::fs::read_dir("/sys/class/infiniband").is_ok_and(|mut d| d.next().is_some());
    let devices = if rdma { String::new() } else { crate::core::net::addressed_interfaces(false).join(",") };
    // As above: set once, before NIXL's UCX exists.
    if devices.is_empty() {
        if inherited {
            std::env::remove_var("UCX_NET_DEVICES");
            std::env::remove_var(SET_BY_KVXFER);
        }
        return;
    }
    std::env::set_var("UCX_NET_DEVICES", &devices);
    std::env::set_var(SET_BY_KVXFER, &devices);
    crate::log_at!(Debug, "NIXL's UCX: UCX_NET_DEVICES={devices} (no loopback TCP)");
}

/// Holds the `UCX_NET_DEVICES` value kvxfer chose, so a child process can tell it from the user's.
const SET_BY_KVXFER: &str = "KVX_UCX_NET_DEVICES_CHOSEN";

/// The wheel folders that hold `libnixl_capi.so`, newest CUDA first.
fn wheel_dirs() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for site in locate::python_site_dirs() {
        for cuda in ["cu13", "cu12"] {
            let dir = site.join(format!(".nixl_{cuda}.mesonpy.libs"));
            if dir.join(LIBRARY).exists() {
                out.push(dir);
            }
        }
    }
    out
}

/// Where to look, in order: `KVX_NIXL_LIB`, the library search path, the wheels.
fn candidates() -> Vec<PathBuf> {
    if let Ok(explicit) = std::env::var("KVX_NIXL_LIB") {
        let p = PathBuf::from(explicit);
        return vec![if p.is_dir() { p.join(LIBRARY) } else { p }];
    }
    let mut out = vec![PathBuf::from(LIBRARY)];
    out.extend(wheel_dirs().into_iter().map(|d| d.join(LIBRARY)));
    out
}

fn load_first_candidate() -> std::result::Result<LoadedNixl, String> {
    let mut tried = Vec::new();
    for path in candidates() {
        let lib = match locate::open_private(&path) {
            Ok(l) => l,
            Err(e) => {
                tried.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        // SAFETY: the symbols are NIXL's C API, with the signatures declared in sys.rs.
        let api = unsafe { NixlApi::resolve(lib) }
            .map_err(|e| format!("{}: {e} (NIXL 1.5 or newer is needed)", path.display()))?;
        let mapped = locate::mapped_file(api.nixl_capi_create_configured_agent as usize, &path);
        let dir = Path::new(&mapped).parent().map(Path::to_path_buf).unwrap_or_default();
        let plugin_dir = std::env::var("NIXL_PLUGIN_DIR").map(PathBuf::from).unwrap_or_else(|_| dir.join("plugins"));
        return Ok(LoadedNixl { version: wheel_version(&dir), path: mapped, plugin_dir, api });
    }
    Err(format!("NIXL C API {LIBRARY} not found (tried: {}); {INSTALL_HINT}", tried.join("; ")))
}

/// NIXL's C API has no version call; the wheel's metadata folder names it.
fn wheel_version(lib_dir: &Path) -> String {
    let site = lib_dir.parent().unwrap_or(lib_dir);
    std::fs::read_dir(site)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .find_map(|n| {
            n.strip_prefix("nixl_cu")
                .and_then(|r| r.strip_suffix(".dist-info"))
                .and_then(|r| r.split_once('-'))
                .map(|(_, v)| v.to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Check that NIXL can load `plugin` (e.g. `UCX`), before asking it to.
pub fn check_plugin(nixl: &LoadedNixl, plugin: &str) -> Result<()> {
    let file = nixl.plugin_dir.join(format!("libplugin_{plugin}.so"));
    if file.exists() {
        return Ok(());
    }
    Err(Error::new(
        kvx_status::KVX_ERR_BACKEND_UNAVAILABLE,
        format!(
            "NIXL plugin {plugin} not found: {} does not exist (NIXL_PLUGIN_DIR {}); {INSTALL_HINT}",
            file.display(),
            if std::env::var_os("NIXL_PLUGIN_DIR").is_some() {
                "is set and replaces the wheel's plugin folder"
            } else {
                "is unset"
            }
        ),
    ))
}
