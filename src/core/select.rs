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
/// TensorRT-LLM's third agent backend, which kvxfer does not implement.
pub const MOONCAKE_VAR: &str = "TRTLLM_USE_MOONCAKE_KVCACHE";

/// The backend chosen from the environment plus the warnings the choice deserves.
/// TensorRT-LLM counts a variable only when it is exactly `1`, and its C++
/// transceiver checks UCX, then NIXL, then Mooncake; none set means UCX.
/// Mooncake winning is an error: kvxfer serves UCX and NIXL only, and
/// quietly moving the caller to another transport would hide that.
pub fn choose_from_env(get: impl Fn(&str) -> Option<String>) -> (Result<kvx_backend>, Vec<String>) {
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
    let mooncake = is_set(MOONCAKE_VAR);
    if ucx && nixl {
        warnings.push(format!(
            "both {UCX_VAR}=1 and {NIXL_VAR}=1 are set: using UCX, as TensorRT-LLM's C++ transceiver does"
        ));
    }
    if mooncake && (ucx || nixl) {
        let winner = if ucx { UCX_VAR } else { NIXL_VAR };
        warnings.push(format!("{MOONCAKE_VAR}=1 is ignored: {winner}=1 comes first, as in TensorRT-LLM"));
    }
    let chosen = if ucx {
        Ok(kvx_backend::KVX_BACKEND_UCX)
    } else if nixl {
        Ok(kvx_backend::KVX_BACKEND_NIXL)
    } else if mooncake {
        Err(Error::new(
            super::error::kvx_status::KVX_ERR_UNSUPPORTED,
            format!(
                "{MOONCAKE_VAR}=1 selects Mooncake, which kvxfer does not serve (it serves UCX and NIXL); \
                 unset it and set {UCX_VAR}=1 or {NIXL_VAR}=1, or use TensorRT-LLM's own \
                 libtensorrt_llm_mooncake_wrapper.so"
            ),
        ))
    } else {
        Ok(kvx_backend::KVX_BACKEND_UCX)
    };
    (chosen, warnings)
}

/// Resolve `requested` (explicit choice wins) to a concrete backend.
pub fn resolve(requested: kvx_backend) -> Result<kvx_backend> {
    if requested != kvx_backend::KVX_BACKEND_AUTO {
        return Ok(requested);
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

    fn choose_all(ucx: Option<&str>, nixl: Option<&str>, mooncake: Option<&str>) -> (Result<kvx_backend>, usize) {
        let (b, w) = choose_from_env(|v| match v {
            UCX_VAR => ucx.map(String::from),
            NIXL_VAR => nixl.map(String::from),
            MOONCAKE_VAR => mooncake.map(String::from),
            _ => None,
        });
        (b, w.len())
    }

    fn choose(ucx: Option<&str>, nixl: Option<&str>) -> (kvx_backend, usize) {
        let (b, w) = choose_all(ucx, nixl, None);
        (b.unwrap(), w)
    }

    #[test]
    fn follows_trtllm_rules() {
        assert_eq!(choose(None, None), (KVX_BACKEND_UCX, 0));
        assert_eq!(choose(Some("1"), None), (KVX_BACKEND_UCX, 0));
        assert_eq!(choose(None, Some("1")), (KVX_BACKEND_NIXL, 0));
        assert_eq!(choose(Some("1"), Some("1")), (KVX_BACKEND_UCX, 1));
        assert_eq!(choose(Some("true"), Some("1")), (KVX_BACKEND_NIXL, 1));
        assert_eq!(choose(Some("0"), Some("yes")), (KVX_BACKEND_UCX, 1));
        assert_eq!(resolve(KVX_BACKEND_NIXL).unwrap(), KVX_BACKEND_NIXL);
    }

    #[test]
    fn mooncake_is_refused_never_replaced() {
        let (chosen, _) = choose_all(None, None, Some("1"));
        let e = chosen.unwrap_err();
        assert_eq!(e.status, crate::core::error::kvx_status::KVX_ERR_UNSUPPORTED);
        assert!(e.message.contains("does not serve") && e.message.contains(MOONCAKE_VAR), "{e}");
        // Earlier variables win, as in TensorRT-LLM, with a warning about the ignored one.
        let (chosen, warnings) = choose_all(None, Some("1"), Some("1"));
        assert_eq!((chosen.unwrap(), warnings), (KVX_BACKEND_NIXL, 1));
        let (chosen, warnings) = choose_all(Some("1"), None, Some("1"));
        assert_eq!((chosen.unwrap(), warnings), (KVX_BACKEND_UCX, 1));
        assert_eq!(choose_all(None, None, Some("0")).0.unwrap(), KVX_BACKEND_UCX);
    }
}
