"""kvxfer's exceptions: one class per ``kvx_status`` family.

Every exception raised for a failed kvxfer call is an :class:`Error` (itself a
``RuntimeError``) carrying ``code`` (the negative ``kvx_status`` value),
``status`` (its name, e.g. ``"KVX_ERR_TIMEOUT"``) and ``detail`` (the
``kvx_last_error`` text of the failing call).
"""

class Error(RuntimeError):
    """A kvxfer call failed."""

    code = -15
    status = "KVX_ERR_INTERNAL"

    def __init__(self, code=None, status=None, detail=""):
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.detail = detail
        super().__init__(detail or self.status)


class InvalidArgumentError(Error, ValueError):
    """An argument is missing, out of range or inconsistent (KVX_ERR_INVALID_ARGUMENT)."""


class BackendUnavailableError(Error):
    """The chosen backend's native library (UCX or NIXL) could not be found or loaded."""


class NotFoundError(Error, LookupError):
    """A named peer, region or object does not exist (KVX_ERR_NOT_FOUND)."""


class AlreadyExistsError(Error):
    """The same thing was created twice (KVX_ERR_ALREADY_EXISTS)."""


class TimeoutExpiredError(Error):
    """The call did not finish within its timeout (KVX_ERR_TIMEOUT)."""


class PeerError(Error):
    """The peer failed, disconnected or was invalidated (KVX_ERR_PEER)."""


class TransportError(Error):
    """UCX or NIXL reported an error (KVX_ERR_TRANSPORT)."""


class MalformedError(Error):
    """Bytes from a peer failed validation (KVX_ERR_MALFORMED)."""


class NotRegisteredError(Error):
    """Memory named by a transfer is not inside a registered region (KVX_ERR_NOT_REGISTERED)."""


class SizeMismatchError(Error):
    """A received message did not have the expected size (KVX_ERR_SIZE_MISMATCH)."""


class CanceledError(Error):
    """The operation was cancelled: handle destroyed, released or shut down (KVX_ERR_CANCELED)."""


class UnsupportedError(Error):
    """Not supported by this backend or build (KVX_ERR_UNSUPPORTED)."""


class PanicError(Error):
    """kvxfer caught an internal panic; the handle may be unusable (KVX_ERR_PANIC)."""


class SystemCallError(Error):
    """An operating-system call failed: socket, thread, file (KVX_ERR_SYSTEM)."""


class AuthError(Error):
    """A peer's bytes are not authenticated by this deployment's secret: no MAC, another key, stale (KVX_ERR_AUTH)."""


class InternalError(Error):
    """Anything else: a bug in kvxfer (KVX_ERR_INTERNAL)."""


_BY_CODE = {
    -1: InvalidArgumentError,
    -2: BackendUnavailableError,
    -3: NotFoundError,
    -4: AlreadyExistsError,
    -5: TimeoutExpiredError,
    -6: PeerError,
    -7: TransportError,
    -8: MalformedError,
    -9: NotRegisteredError,
    -10: SizeMismatchError,
    -11: CanceledError,
    -12: UnsupportedError,
    -13: PanicError,
    -14: SystemCallError,
    -15: InternalError,
    -16: AuthError,
}


def _from_status(code, status, detail):
    """The exception for a failed call (used by the native module)."""
    return _BY_CODE.get(code, Error)(code, status, detail)


__all__ = ["Error"] + [c.__name__ for c in _BY_CODE.values()]
