"""kvxfer: KV-cache transfer between LLM prefill and decode workers (UCX or NIXL).

The Python API over kvxfer's C ABI (``libkvxfer.so.0``, shipped in this
package's ``lib/`` folder and shared with kvxfer's TensorRT-LLM wrappers and C
callers in the same process):

- :class:`Agent`: one-sided transfer agent (register memory, exchange
  descriptors or connect by address, ``submit`` READ/WRITE returning a
  :class:`Transfer`, notifications, ``check_remote_descs``);
- :class:`ConnectionManager` / :class:`Connection`: two-sided tag-matched
  messaging;
- :func:`backend_info` / :func:`resolve_backend`: which backend the
  environment selects (``TRTLLM_USE_UCX_KVCACHE`` / ``TRTLLM_USE_NIXL_KVCACHE``)
  and which native library serves it.

Failures raise :mod:`kvxfer.errors` exceptions. Every method may be called
from any thread; blocking calls release the GIL; ``close`` (or leaving a
``with`` block) must not overlap other calls on the same object.
"""

import enum as _enum
import os as _os

from . import _wheels

_wheels.point_at_wheels()

from . import errors  # noqa: E402
from ._native import (  # noqa: E402
    Agent,
    Connection,
    ConnectionManager,
    Region,
    Transfer,
    TransferState,
    backend_info,
    library_path,
    library_version,
    resolve_backend,
)
from .errors import *  # noqa: E402,F401,F403

__version__ = library_version()


class MemoryType(_enum.IntEnum):
    """Kind of memory (values of ``kvx_memory_type``)."""

    DRAM = 0
    VRAM = 1


class TransferOp(_enum.IntEnum):
    """Transfer direction (values of ``kvx_transfer_op``)."""

    READ = 0
    WRITE = 1


def package_prefix():
    """The install prefix inside this package: ``lib/``, ``include/``,
    ``lib/cmake/kvxfer`` and ``lib/pkgconfig`` live under it (what
    ``python -m kvxfer --cmake-prefix`` prints)."""
    return _os.path.dirname(_os.path.abspath(__file__))


def library_dir():
    """The folder holding libkvxfer.so.0 and the TensorRT-LLM wrapper libraries."""
    return _os.path.join(package_prefix(), "lib")


__all__ = [
    "Agent",
    "Connection",
    "ConnectionManager",
    "MemoryType",
    "Region",
    "Transfer",
    "TransferOp",
    "TransferState",
    "backend_info",
    "errors",
    "library_dir",
    "library_path",
    "library_version",
    "package_prefix",
    "resolve_backend",
] + errors.__all__
