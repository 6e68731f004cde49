//! Finding and opening backend libraries, shared by every backend: Python
//! wheel folders searched without starting Python, private (`RTLD_LOCAL`)
//! loading, and the rule that only one backend's UCX copy enters a process.

use std::path::{Path, PathBuf};

/// Python site-packages folders worth searching for the UCX and NIXL wheels,
/// found without starting Python: virtualenv and conda prefixes, PYTHONPATH,
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

/// Open a library privately, so its symbols never interpose on another copy.
pub fn open_private(path: &Path) -> Result<libloading::Library, libloading::Error> {
    // SAFETY: loading runs the library's constructors, which is what using it requires.
    unsafe { libloading::os::unix::Library::open(Some(path), libc::RTLD_NOW | libc::RTLD_LOCAL) }.map(Into::into)
}

/// The file the dynamic loader actually mapped for the code at `symbol_address`,
/// for logs and `kvx_backend_info`. An address, not a pointer: nothing is read there.
pub fn mapped_file(symbol_address: usize, fallback: &Path) -> String {
    // SAFETY: dladdr only looks the address up in the loader's own tables.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(symbol_address as *const libc::c_void, &mut info) != 0 && !info.dli_fname.is_null() {
            let name = std::ffi::CStr::from_ptr(info.dli_fname).to_string_lossy().into_owned();
            if let Ok(canonical) = std::fs::canonicalize(&name) {
                return canonical.display().to_string();
            }
            return name;
        }
    }
    fallback.display().to_string()
}

static UCX_COPY_OWNER: parking_lot::Mutex<Option<&'static str>> = parking_lot::Mutex::new(None);

/// Load `backend` only if no other backend's UCX copy is in the process.
/// kvxfer's UCX backend maps the UCX wheel and NIXL maps its own bundled
/// UCX; two copies in one process have crashed (`ucs_debug_initialized`
/// assertion), so the second backend to ask gets a clear error instead.
/// `load` runs under the claim; if it fails, nothing was mapped and the claim is dropped.
pub fn with_ucx_copy<T>(backend: &'static str, load: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let mut guard = UCX_COPY_OWNER.lock();
    let owner = *guard.get_or_insert(backend);
    if owner == backend {
        let loaded = load();
        if loaded.is_err() {
            *guard = None;
        }
        loaded
    } else {
        Err(format!(
            "the {owner} backend already loaded its UCX into this process; {backend} brings another \
             UCX copy and two copies in one process crash. Use one backend per process \
             (TRTLLM_USE_UCX_KVCACHE / TRTLLM_USE_NIXL_KVCACHE or the explicit backend field)"
        ))
    }
}

/// Declare a table of C functions resolved from a library opened at run time;
/// a missing symbol is an error naming it, never an abort at first call.
#[macro_export]
macro_rules! native_api {
    ($(#[$doc:meta])* $api:ident; $($name:ident : fn($($arg:ty),*) $(-> $ret:ty)?;)*) => {
        $(#[$doc])*
        pub struct $api {
            $(pub $name: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
            /// Kept open for the life of the process: the library must outlive every handle.
            pub library: libloading::Library,
        }

        impl $api {
            /// # Safety
            /// `library` must export these symbols with these signatures.
            pub unsafe fn resolve(library: libloading::Library) -> Result<Self, String> {
                Ok($api {
                    $($name: *library
                        .get::<unsafe extern "C" fn($($arg),*) $(-> $ret)?>(concat!(stringify!($name), "\0").as_bytes())
                        .map_err(|e| format!("symbol {} missing: {e}", stringify!($name)))?,)*
                    library,
                })
            }
        }
    };
}

/// UCX transport option both backends' UCX contexts get unless the user's
/// `UCX_*` environment sets it. UCX's `auto` turns `cuda_ipc` GET zero-copy
/// off on a GPU with no active NVLink (slow concurrent reads over PCIe), and
/// a device-memory READ then falls back to software emulation: 0.8 GB/s
/// against 1,700 GB/s for the WRITE of the same bytes between two processes
/// on one H200. A same-device or PCIe GET through the copy engines is still
/// far faster than that fallback, so kvxfer turns it on.
pub const UCX_CUDA_IPC_GET: (&str, &str) = ("CUDA_IPC_ENABLE_GET_ZCOPY", "y");
