//! Which backend a handle uses: the caller's explicit choice, else
//! TensorRT-LLM's own variables, read the way TensorRT-LLM's C++ reads them.

use super::error::{Error, Result};
use std::sync::Once;

/// Transport backend. `KVX_BACKEND_AUTO` resolves from the environment.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum kvx_backend {
    KVX_BACKEND_AUTO = 0,
    KVX_BACKEND_UCX = 1,
    KVX_BACKEND_NIXL = 2,
}

impl kvx_backend {
    pub fn from_raw(raw: u32) -> Result<Self> {
        match raw {
            0 => Ok(Self::KVX_BACKEND_AUTO),
            1 => Ok(Self::KVX_BACKEND_UCX),
            2 => Ok(Self::KVX_BACKEND_NIXL),
            other => Err(Error::invalid(format!("backend {other} is unknown (0 = auto, 1 = UCX, 2 = NIXL)"))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::KVX_BACKEND_AUTO => "auto",
            Self::KVX_BACKEND_UCX => "UCX",
            Self::KVX_BACKEND_NIXL => "NIXL",
        }
    }
}

pub const UCX_VAR: &str = "TRTLLM_USE_UCX_KVCACHE";
pub const NIXL_VAR: &str = "TRTLLM_USE_NIXL_KVCACHE";

/// The backend chosen from the environment plus the warnings the choice deserves.
/// TensorRT-LLM counts a variable only when it is exactly `1`, and its C++
/// transceiver checks UCX before NIXL; neither set means UCX.
pub fn choose_from_env(get: impl Fn(&str) -> Option<String>) -> (kvx_backend, Vec<String>) {
    let mut warnings = Vec::new();
    let mut is_set = |var: &str| match get(var) {
        None => false,
        Some(v) if v == "1" => true,
        Some(v) if v.is_empty() || v == "0" => false,
        Some(v) => {
            warnings.push(format!("{var}={v:?} is ignored: TensorRT-LLM counts only the exact value \"1\""));
            false
        }
    };
    let ucx = is_set(UCX_VAR);
    let nixl = is_set(NIXL_VAR);
    if ucx && nixl {
        warnings.push(format!(
            "both {UCX_VAR}=1 and {NIXL_VAR}=1 are set: using UCX, as TensorRT-LLM's C++ transceiver does"
        ));
    }
    let chosen = if ucx || !nixl { kvx_backend::KVX_BACKEND_UCX } else { kvx_backend::KVX_BACKEND_NIXL };
    (chosen, warnings)
}

/// Resolve `requested` (explicit choice wins) to a concrete backend.
pub fn resolve(requested: kvx_backend) -> kvx_backend {
    if requested != kvx_backend::KVX_BACKEND_AUTO {
        return requested;
    }
    let (chosen, warnings) = choose_from_env(|v| std::env::var(v).ok());
    static WARN_ONCE: Once = Once::new();
    WARN_ONCE.call_once(|| {
        for w in &warnings {
            crate::log_at!(Warn, "{w}");
        }
    });
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvx_backend::*;

    fn choose(ucx: Option<&str>, nixl: Option<&str>) -> (kvx_backend, usize) {
        let (b, w) = choose_from_env(|v| if v == UCX_VAR { ucx.map(String::from) } else { nixl.map(String::from) });
        (b, w.len())
    }

    #[test]
    fn follows_trtllm_rules() {
        assert_eq!(choose(None, None), (KVX_BACKEND_UCX, 0));
        assert_eq!(choose(Some("1"), None), (KVX_BACKEND_UCX, 0));
        assert_eq!(choose(None, Some("1")), (KVX_BACKEND_NIXL, 0));
        assert_eq!(choose(Some("1"), Some("1")), (KVX_BACKEND_UCX, 1));
        assert_eq!(choose(Some("true"), Some("1")), (KVX_BACKEND_NIXL, 1));
        assert_eq!(choose(Some("0"), Some("yes")), (KVX_BACKEND_UCX, 1));
        assert_eq!(resolve(KVX_BACKEND_NIXL), KVX_BACKEND_NIXL);
    }
}
