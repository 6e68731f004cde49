//! Peer authentication with a deployment secret. Every agent descriptor,
//! connection-info reply and control-channel message a kvxfer process sends
//! carries an envelope: an issue time, a random nonce and an HMAC-SHA256 over
//! the bytes, the purpose and (for replies) the request's nonce. The receiver
//! checks the MAC in constant time and the issue time against a window before
//! anything is parsed or handed to UCX or NIXL.
//!
//! The envelope is a trailer, so NIXL (which ignores bytes after its
//! metadata) still loads an authenticated descriptor unchanged.
//!
//! Without a secret, nothing is sealed and kvxfer behaves as before; bytes
//! that carry an envelope are then refused, since they cannot be checked.

use super::error::{Error, Result};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::{Arc, Once};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type HmacSha256 = Hmac<Sha256>;

const ENVELOPE_MAGIC: [u8; 4] = *b"KVXA";
const ENVELOPE_VERSION: u8 = 1;
pub const NONCE_LEN: usize = 16;
const MAC_LEN: usize = 32;
/// Magic, version, issue time (ms since the epoch), nonce, MAC.
pub const ENVELOPE_LEN: usize = 4 + 1 + 8 + NONCE_LEN + MAC_LEN;
/// Shorter secrets are refused: they can be guessed offline from one captured descriptor.
pub const MIN_SECRET_LEN: usize = 16;
/// How far an issue time may lie from this host's clock, either way.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
/// Domain separation: these MACs are never valid for anything else keyed by the same secret.
const MAC_LABEL: &[u8] = b"kvxfer peer authentication v1";

/// What an envelope vouches for; a MAC for one purpose is refused for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `kvx_agent_get_local_desc` bytes (a kvxfer descriptor or sealed NIXL metadata).
    AgentDescriptor = 1,
    ControlRequest = 2,
    /// Bound to the request's nonce, so a recorded reply cannot answer another request.
    ControlReply = 3,
}

struct Secrets {
    /// The first signs; every one verifies (rotation: see docs/security.md).
    keys: Vec<Vec<u8>>,
}

/// A process's authentication policy: the deployment secret (None: peers are
/// not authenticated) and the freshness window. Cheap to clone.
#[derive(Clone)]
pub struct PeerAuth {
    secrets: Option<Arc<Secrets>>,
    max_age: Duration,
}

impl std::fmt::Debug for PeerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret itself.
        let keys = self.secrets.as_ref().map_or(0, |s| s.keys.len());
        f.debug_struct("PeerAuth").field("keys", &keys).field("max_age", &self.max_age).finish()
    }
}

/// What an envelope carried, once verified.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened<'a> {
    pub payload: &'a [u8],
    /// Zero without a secret.
    pub nonce: [u8; NONCE_LEN],
}

static UNAUTHENTICATED_WARNING: Once = Once::new();

impl PeerAuth {
    /// No authentication (today's trust model: peers in one trust domain).
    pub fn none() -> PeerAuth {
        PeerAuth { secrets: None, max_age: DEFAULT_MAX_AGE }
    }

    /// Authentication with `secret` (first key signs, all verify).
    pub fn with_keys(keys: Vec<Vec<u8>>, max_age: Duration) -> Result<PeerAuth> {
        if keys.is_empty() {
            return Err(Error::invalid("the authentication key list is empty"));
        }
        for (i, k) in keys.iter().enumerate() {
            if k.len() < MIN_SECRET_LEN {
                return Err(Error::invalid(format!(
                    "authentication key {} has {} bytes; at least {MIN_SECRET_LEN} are required (32 random bytes recommended)",
                    i + 1,
                    k.len()
                )));
            }
        }
        Ok(PeerAuth { secrets: Some(Arc::new(Secrets { keys })), max_age })
    }

    /// The policy for an agent or manager: the config's key (`config_key`) or
    /// key file (`config_file`), else `KVX_AUTH_KEY`, else `KVX_AUTH_KEY_FILE`;
    /// `KVX_AUTH_MAX_AGE_S` sets the window. Without any, warns once that peers
    /// are not authenticated.
    pub fn resolve(config_key: Option<&[u8]>, config_file: Option<&str>) -> Result<PeerAuth> {
        let max_age = max_age_from_env()?;
        let keys = match (config_key.filter(|k| !k.is_empty()), config_file) {
            (Some(_), Some(_)) => return Err(Error::invalid("the config sets both auth_key and auth_key_file")),
            (Some(key), None) => Some(vec![key.to_vec()]),
            (None, Some(path)) => Some(read_key_file(path, "auth_key_file")?),
            (None, None) => {
                let env_key = std::env::var_os("KVX_AUTH_KEY").filter(|v| !v.is_empty());
                let env_file = std::env::var("KVX_AUTH_KEY_FILE").ok().filter(|v| !v.is_empty());
                match (env_key, env_file) {
                    (Some(_), Some(_)) => {
                        return Err(Error::invalid("both KVX_AUTH_KEY and KVX_AUTH_KEY_FILE are set: set one"))
                    }
                    (Some(key), None) => Some(vec![std::os::unix::ffi::OsStrExt::as_bytes(key.as_os_str()).to_vec()]),
                    (None, Some(path)) => Some(read_key_file(&path, "KVX_AUTH_KEY_FILE")?),
                    (None, None) => None,
                }
            }
        };
        match keys {
            Some(keys) => PeerAuth::with_keys(keys, max_age),
            None => {
                UNAUTHENTICATED_WARNING.call_once(|| {
                    crate::log_at!(
                        Warn,
                        "peers are not authenticated: any process that reaches this one's listeners can load it and \
                         post transfers. Set KVX_AUTH_KEY or KVX_AUTH_KEY_FILE on every kvxfer process (docs/security.md)"
                    )
                });
                Ok(PeerAuth { secrets: None, max_age })
            }
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.secrets.is_some()
    }

    /// `payload` with an envelope for `purpose` (unchanged without a secret),
    /// and the envelope's nonce (a reply to this message is bound to it).
    pub fn seal(&self, purpose: Purpose, mut payload: Vec<u8>, binding: &[u8]) -> (Vec<u8>, [u8; NONCE_LEN]) {
        let Some(secrets) = &self.secrets else {
            return (payload, [0; NONCE_LEN]);
        };
        let nonce = random_nonce();
        payload.extend_from_slice(&ENVELOPE_MAGIC);
        payload.push(ENVELOPE_VERSION);
        payload.extend_from_slice(&now_ms().to_le_bytes());
        payload.extend_from_slice(&nonce);
        let tag = mac(&secrets.keys[0], purpose, binding, &payload).finalize().into_bytes();
        payload.extend_from_slice(&tag);
        (payload, nonce)
    }

    /// The payload inside `bytes` once its envelope is verified: the MAC (in
    /// constant time, against every key) and then the issue time. `what` names
    /// the bytes in errors. Without a secret, bytes without an envelope pass
    /// unchanged and bytes with one are refused.
    pub fn open<'a>(&self, purpose: Purpose, bytes: &'a [u8], binding: &[u8], what: &str) -> Result<Opened<'a>> {
        let enveloped = has_envelope(bytes);
        let Some(secrets) = &self.secrets else {
            if enveloped {
                return Err(Error::auth(format!(
                    "{what} is authenticated (its sender has a KVX_AUTH_KEY) but this process has no key: \
                     set the same KVX_AUTH_KEY or KVX_AUTH_KEY_FILE here"
                )));
            }
            return Ok(Opened { payload: bytes, nonce: [0; NONCE_LEN] });
        };
        if !enveloped {
            return Err(Error::auth(format!(
                "{what} carries no MAC: its sender has no KVX_AUTH_KEY (or is not kvxfer); refused"
            )));
        }
        let (signed, tag) = bytes.split_at(bytes.len() - MAC_LEN);
        let header = &signed[signed.len() - (ENVELOPE_LEN - MAC_LEN)..];
        if header[4] != ENVELOPE_VERSION {
            return Err(Error::auth(format!("{what}: authentication envelope version {} is not supported", header[4])));
        }
        let verified = secrets.keys.iter().any(|key| mac(key, purpose, binding, signed).verify_slice(tag).is_ok());
        if !verified {
            return Err(Error::auth(format!(
                "{what} failed authentication (MAC mismatch: the sender uses another key, or the bytes were forged or damaged)"
            )));
        }
        let issued = u64::from_le_bytes(header[5..13].try_into().expect("8 bytes"));
        let now = now_ms();
        let skew = Duration::from_millis(now.abs_diff(issued));
        if skew > self.max_age {
            let when = if issued <= now { "ago" } else { "in the future" };
            return Err(Error::auth(format!(
                "{what} was issued {} s {when}, outside the {} s window (KVX_AUTH_MAX_AGE_S): a replay, or clocks apart",
                skew.as_secs(),
                self.max_age.as_secs()
            )));
        }
        Ok(Opened {
            payload: &signed[..signed.len() - (ENVELOPE_LEN - MAC_LEN)],
            nonce: header[13..13 + NONCE_LEN].try_into().expect("16 bytes"),
        })
    }

    /// The payload of `bytes` without checking anything: only for showing an
    /// unverified peer's refusal to an operator, never for acting on it.
    pub fn unverified_payload(bytes: &[u8]) -> &[u8] {
        if has_envelope(bytes) {
            &bytes[..bytes.len() - ENVELOPE_LEN]
        } else {
            bytes
        }
    }

    /// The freshness window: how long a nonce must be remembered to refuse its replay.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }
}

fn mac(key: &[u8], purpose: Purpose, binding: &[u8], signed: &[u8]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(MAC_LABEL);
    m.update(&[purpose as u8]);
    m.update(&(binding.len() as u32).to_le_bytes());
    m.update(binding);
    m.update(signed);
    m
}

fn has_envelope(bytes: &[u8]) -> bool {
    bytes.len() >= ENVELOPE_LEN && bytes[bytes.len() - ENVELOPE_LEN..][..4] == ENVELOPE_MAGIC
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    let mut filled = 0;
    while filled < NONCE_LEN {
        // SAFETY: writes at most the remaining bytes of `nonce`.
        let n = unsafe { libc::getrandom(nonce[filled..].as_mut_ptr().cast(), NONCE_LEN - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // getrandom cannot fail on Linux >= 3.17 once the pool is ready; a
            // nonce only needs to be unique, so fall back to time and counter.
            static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let c = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            nonce[..8].copy_from_slice(&now_ms().to_le_bytes());
            nonce[8..].copy_from_slice(&(c ^ std::process::id() as u64).to_le_bytes());
            break;
        }
    }
    nonce
}

fn max_age_from_env() -> Result<Duration> {
    match std::env::var("KVX_AUTH_MAX_AGE_S") {
        Ok(v) if !v.is_empty() => match v.trim().parse::<u64>() {
            Ok(s) if s > 0 => Ok(Duration::from_secs(s)),
            _ => Err(Error::invalid(format!("KVX_AUTH_MAX_AGE_S={v:?} is not a positive number of seconds"))),
        },
        _ => Ok(DEFAULT_MAX_AGE),
    }
}

/// Keys from a file, one per line (the first signs, all verify), blank lines ignored.
fn read_key_file(path: &str, what: &str) -> Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).map_err(|e| Error::invalid(format!("{what}={path:?} cannot be read: {e}")))?;
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            crate::log_at!(Warn, "{what}={path:?} is readable by other users: chmod 600 it");
        }
    }
    let keys: Vec<Vec<u8>> = bytes
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line).to_vec())
        .filter(|line| !line.is_empty())
        .collect();
    if keys.is_empty() {
        return Err(Error::invalid(format!("{what}={path:?} holds no key")));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::error::kvx_status::KVX_ERR_AUTH;

    fn auth(key: &[u8]) -> PeerAuth {
        PeerAuth::with_keys(vec![key.to_vec()], DEFAULT_MAX_AGE).unwrap()
    }

    #[test]
    fn sealed_bytes_open_with_the_same_key_and_purpose_only() {
        let a = auth(b"0123456789abcdef0123");
        let (sealed, nonce) = a.seal(Purpose::ControlRequest, b"hello".to_vec(), b"");
        assert_eq!(sealed.len(), 5 + ENVELOPE_LEN);
        let opened = a.open(Purpose::ControlRequest, &sealed, b"", "request").unwrap();
        assert_eq!(opened, Opened { payload: b"hello", nonce });
        let e = a.open(Purpose::ControlReply, &sealed, b"", "reply").unwrap_err();
        assert_eq!(e.status, KVX_ERR_AUTH);
        let e = a.open(Purpose::ControlRequest, &sealed, b"other", "request").unwrap_err();
        assert_eq!(e.status, KVX_ERR_AUTH, "the binding is covered");
        let e = auth(b"another key of 16+").open(Purpose::ControlRequest, &sealed, b"", "request").unwrap_err();
        assert_eq!(e.status, KVX_ERR_AUTH);
        assert!(e.message.contains("MAC mismatch"), "{e}");
    }

    #[test]
    fn every_flipped_bit_and_every_cut_is_refused() {
        let a = auth(b"0123456789abcdef");
        let (sealed, _) = a.seal(Purpose::AgentDescriptor, vec![7; 40], b"");
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.clone();
                bad[i] ^= 1 << bit;
                assert!(a.open(Purpose::AgentDescriptor, &bad, b"", "d").is_err(), "byte {i} bit {bit}");
            }
        }
        for cut in 0..sealed.len() {
            assert_eq!(a.open(Purpose::AgentDescriptor, &sealed[..cut], b"", "d").unwrap_err().status, KVX_ERR_AUTH);
        }
    }

    #[test]
    fn without_a_key_plain_bytes_pass_and_sealed_ones_are_refused() {
        let none = PeerAuth::none();
        assert_eq!(none.seal(Purpose::AgentDescriptor, b"x".to_vec(), b"").0, b"x");
        assert_eq!(none.open(Purpose::AgentDescriptor, b"plain", b"", "d").unwrap().payload, b"plain");
        let (sealed, _) = auth(b"0123456789abcdef").seal(Purpose::AgentDescriptor, b"x".to_vec(), b"");
        let e = none.open(Purpose::AgentDescriptor, &sealed, b"", "descriptor").unwrap_err();
        assert_eq!(e.status, KVX_ERR_AUTH);
        assert!(e.message.contains("no key"), "{e}");
        let e = auth(b"0123456789abcdef").open(Purpose::AgentDescriptor, b"plain", b"", "descriptor").unwrap_err();
        assert!(e.message.contains("carries no MAC"), "{e}");
    }

    #[test]
    fn stale_and_future_envelopes_are_refused() {
        let key = b"0123456789abcdef".to_vec();
        let short = PeerAuth::with_keys(vec![key.clone()], Duration::from_millis(1)).unwrap();
        let (sealed, _) = short.seal(Purpose::AgentDescriptor, b"x".to_vec(), b"");
        std::thread::sleep(Duration::from_millis(1100));
        let e = short.open(Purpose::AgentDescriptor, &sealed, b"", "descriptor").unwrap_err();
        assert_eq!(e.status, KVX_ERR_AUTH);
        assert!(e.message.contains("ago"), "{e}");
        // A forged future time needs the key: seal one by hand.
        let mut future = b"x".to_vec();
        future.extend_from_slice(&ENVELOPE_MAGIC);
        future.push(ENVELOPE_VERSION);
        future.extend_from_slice(&(now_ms() + 3_600_000).to_le_bytes());
        future.extend_from_slice(&[1; NONCE_LEN]);
        let tag = mac(&key, Purpose::AgentDescriptor, b"", &future).finalize().into_bytes();
        future.extend_from_slice(&tag);
        let e = auth(&key).open(Purpose::AgentDescriptor, &future, b"", "descriptor").unwrap_err();
        assert!(e.message.contains("in the future"), "{e}");
    }

    #[test]
    fn rotation_signs_with_the_first_key_and_accepts_all() {
        let old = b"old key 0123456789".to_vec();
        let new = b"new key 0123456789".to_vec();
        let rolling = PeerAuth::with_keys(vec![new.clone(), old.clone()], DEFAULT_MAX_AGE).unwrap();
        let (from_old, _) = auth(&old).seal(Purpose::AgentDescriptor, b"a".to_vec(), b"");
        assert!(rolling.open(Purpose::AgentDescriptor, &from_old, b"", "d").is_ok());
        let (from_rolling, _) = rolling.seal(Purpose::AgentDescriptor, b"a".to_vec(), b"");
        assert!(auth(&new).open(Purpose::AgentDescriptor, &from_rolling, b"", "d").is_ok());
        assert!(auth(&old).open(Purpose::AgentDescriptor, &from_rolling, b"", "d").is_err());
    }

    #[test]
    fn short_keys_and_bad_sources_are_refused() {
        assert!(PeerAuth::with_keys(vec![b"short".to_vec()], DEFAULT_MAX_AGE).is_err());
        assert!(PeerAuth::with_keys(vec![], DEFAULT_MAX_AGE).is_err());
        assert!(PeerAuth::resolve(Some(b"0123456789abcdef"), Some("/x")).is_err());
        let e = PeerAuth::resolve(None, Some("/nonexistent/kvx-key")).unwrap_err();
        assert!(e.message.contains("cannot be read"), "{e}");
        let dir = std::env::temp_dir().join(format!("kvx-auth-{}", std::process::id()));
        std::fs::write(&dir, b"first key 0123456789\r\n\nsecond key 0123456789\n").unwrap();
        let a = PeerAuth::resolve(None, Some(dir.to_str().unwrap())).unwrap();
        assert_eq!(
            a.secrets.as_ref().unwrap().keys,
            vec![b"first key 0123456789".to_vec(), b"second key 0123456789".to_vec()]
        );
        std::fs::write(&dir, b"\n\n").unwrap();
        assert!(PeerAuth::resolve(None, Some(dir.to_str().unwrap())).is_err());
        std::fs::remove_file(&dir).unwrap();
        assert!(!format!("{a:?}").contains("first key"), "Debug never shows a key");
    }
}
