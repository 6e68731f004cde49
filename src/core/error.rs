//! Status codes and the crate's error type. The status enum is the one list of
//! outcomes shared by the C ABI, the dispatch table and the backends.

use std::fmt;

/// Outcome of every `kvx_*` call: 0 is success, positive values mean "not done
/// yet", negative values are errors. `kvx_status_str` names each one and
/// `kvx_last_error` explains the last failure on the calling thread.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum kvx_status {
    KVX_OK = 0,
    /// The operation is still running (for example `kvx_xfer_wait` timed out).
    KVX_IN_PROGRESS = 1,
    /// An argument is NULL, out of range or inconsistent.
    KVX_ERR_INVALID_ARGUMENT = -1,
    /// The chosen backend's native library could not be found or loaded.
    KVX_ERR_BACKEND_UNAVAILABLE = -2,
    /// A named peer, region or object does not exist.
    KVX_ERR_NOT_FOUND = -3,
    /// The same thing was created twice.
    KVX_ERR_ALREADY_EXISTS = -4,
    /// The call did not finish within its timeout.
    KVX_ERR_TIMEOUT = -5,
    /// The peer failed, disconnected or was invalidated.
    KVX_ERR_PEER = -6,
    /// The transport library reported an error.
    KVX_ERR_TRANSPORT = -7,
    /// Bytes from a peer (descriptor, message) failed validation.
    KVX_ERR_MALFORMED = -8,
    /// Memory named by a transfer is not inside a registered region.
    KVX_ERR_NOT_REGISTERED = -9,
    /// A received message did not have the expected size.
    KVX_ERR_SIZE_MISMATCH = -10,
    /// The operation was cancelled (handle destroyed or released).
    KVX_ERR_CANCELED = -11,
    /// The feature is not supported by this backend or build.
    KVX_ERR_UNSUPPORTED = -12,
    /// A Rust panic was caught at the C boundary; the handle may be unusable.
    KVX_ERR_PANIC = -13,
    /// An operating-system call failed (socket, thread, file).
    KVX_ERR_SYSTEM = -14,
    /// Anything else; a bug in kvxfer.
    KVX_ERR_INTERNAL = -15,
    /// A peer's bytes failed authentication: no MAC, another key, forged, or
    /// outside the freshness window (see docs/security.md).
    KVX_ERR_AUTH = -16,
}

impl kvx_status {
    pub const fn name(self) -> &'static str {
        use kvx_status::*;
        match self {
            KVX_OK => "KVX_OK",
            KVX_IN_PROGRESS => "KVX_IN_PROGRESS",
            KVX_ERR_INVALID_ARGUMENT => "KVX_ERR_INVALID_ARGUMENT",
            KVX_ERR_BACKEND_UNAVAILABLE => "KVX_ERR_BACKEND_UNAVAILABLE",
            KVX_ERR_NOT_FOUND => "KVX_ERR_NOT_FOUND",
            KVX_ERR_ALREADY_EXISTS => "KVX_ERR_ALREADY_EXISTS",
            KVX_ERR_TIMEOUT => "KVX_ERR_TIMEOUT",
            KVX_ERR_PEER => "KVX_ERR_PEER",
            KVX_ERR_TRANSPORT => "KVX_ERR_TRANSPORT",
            KVX_ERR_MALFORMED => "KVX_ERR_MALFORMED",
            KVX_ERR_NOT_REGISTERED => "KVX_ERR_NOT_REGISTERED",
            KVX_ERR_SIZE_MISMATCH => "KVX_ERR_SIZE_MISMATCH",
            KVX_ERR_CANCELED => "KVX_ERR_CANCELED",
            KVX_ERR_UNSUPPORTED => "KVX_ERR_UNSUPPORTED",
            KVX_ERR_PANIC => "KVX_ERR_PANIC",
            KVX_ERR_SYSTEM => "KVX_ERR_SYSTEM",
            KVX_ERR_INTERNAL => "KVX_ERR_INTERNAL",
            KVX_ERR_AUTH => "KVX_ERR_AUTH",
        }
    }

    /// Every status, for tests and for `kvx_status_str` coverage.
    pub const ALL: [kvx_status; 18] = {
        use kvx_status::*;
        [
            KVX_OK,
            KVX_IN_PROGRESS,
            KVX_ERR_INVALID_ARGUMENT,
            KVX_ERR_BACKEND_UNAVAILABLE,
            KVX_ERR_NOT_FOUND,
            KVX_ERR_ALREADY_EXISTS,
            KVX_ERR_TIMEOUT,
            KVX_ERR_PEER,
            KVX_ERR_TRANSPORT,
            KVX_ERR_MALFORMED,
            KVX_ERR_NOT_REGISTERED,
            KVX_ERR_SIZE_MISMATCH,
            KVX_ERR_CANCELED,
            KVX_ERR_UNSUPPORTED,
            KVX_ERR_PANIC,
            KVX_ERR_SYSTEM,
            KVX_ERR_INTERNAL,
            KVX_ERR_AUTH,
        ]
    };
}

/// An error with the status it maps to and a message for `kvx_last_error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub status: kvx_status,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(status: kvx_status, message: impl Into<String>) -> Self {
        Error { status, message: message.into() }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(kvx_status::KVX_ERR_INVALID_ARGUMENT, message)
    }
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(kvx_status::KVX_ERR_MALFORMED, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(kvx_status::KVX_ERR_NOT_FOUND, message)
    }
    pub fn peer(message: impl Into<String>) -> Self {
        Self::new(kvx_status::KVX_ERR_PEER, message)
    }
    pub fn auth(message: impl Into<String>) -> Self {
        Self::new(kvx_status::KVX_ERR_AUTH, message)
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(kvx_status::KVX_ERR_TIMEOUT, message)
    }
    pub fn system(context: &str, err: std::io::Error) -> Self {
        // An unreachable host or network is a peer the caller cannot reach, not a local fault.
        let unreachable = matches!(
            err.raw_os_error(),
            Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN | libc::ENETDOWN)
        );
        let status = match err.kind() {
            _ if unreachable => kvx_status::KVX_ERR_PEER,
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => kvx_status::KVX_ERR_TIMEOUT,
            std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::BrokenPipe => kvx_status::KVX_ERR_PEER,
            _ => kvx_status::KVX_ERR_SYSTEM,
        };
        Self::new(status, format!("{context}: {err}"))
    }
    /// Prefix the message with what the caller was doing.
    pub fn context(mut self, what: &str) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status.name(), self.message)
    }
}

impl std::error::Error for Error {}

thread_local! {
    static LAST_ERROR: std::cell::RefCell<std::ffi::CString> = std::cell::RefCell::new(std::ffi::CString::default());
}

/// Record `error` as this thread's last error (what `kvx_last_error` shows)
/// and return its status. Kept here, not in the C ABI layer, because the
/// dispatch table's entries record errors too.
pub fn set_last_error(error: Error) -> kvx_status {
    crate::log_at!(Debug, "{error}");
    let text = std::ffi::CString::new(error.to_string().replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|slot| *slot.borrow_mut() = text);
    error.status
}

/// The message recorded by the last failed call on this thread.
pub fn last_error_message() -> String {
    LAST_ERROR.with(|slot| slot.borrow().to_string_lossy().into_owned())
}

/// Pointer to this thread's last message, valid until the next failure here.
pub fn last_error_ptr() -> *const std::ffi::c_char {
    LAST_ERROR.with(|slot| slot.borrow().as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_peers_are_peer_errors() {
        for code in [libc::EHOSTUNREACH, libc::ENETUNREACH, libc::ECONNREFUSED, libc::ECONNRESET] {
            let e = Error::system("connect", std::io::Error::from_raw_os_error(code));
            assert_eq!(e.status, kvx_status::KVX_ERR_PEER, "errno {code}");
        }
        let e = Error::system("connect", std::io::Error::from_raw_os_error(libc::ETIMEDOUT));
        assert_eq!(e.status, kvx_status::KVX_ERR_TIMEOUT);
        let e = Error::system("open", std::io::Error::from_raw_os_error(libc::EMFILE));
        assert_eq!(e.status, kvx_status::KVX_ERR_SYSTEM);
    }
}
