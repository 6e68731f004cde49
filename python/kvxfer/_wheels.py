"""Where this interpreter's UCX and NIXL wheels keep their libraries.

libkvxfer searches Python site folders on its own (without Python), which can
find another interpreter's wheels before this one's; the package points
``KVX_UCX_LIB`` / ``KVX_NIXL_LIB`` at the wheels this interpreter imports from
(unless the user set them), so a virtual environment uses its own copies.
"""

import importlib.metadata
import importlib.util
import os

UCX_SONAME = "libucp.so.0"
NIXL_LIBRARY = "libnixl_capi.so"


def ucx_library():
    """Path of libucp.so.0 from the ``libucx`` wheel (libucx-cu12/-cu13), or None."""
    try:
        spec = importlib.util.find_spec("libucx")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "lib", UCX_SONAME)
        if os.path.exists(path):
            return path
    return None


def nixl_library():
    """Path of libnixl_capi.so from the nixl-cu13 or nixl-cu12 wheel, or None."""
    for cuda in ("cu13", "cu12"):
        try:
            dist = importlib.metadata.distribution(f"nixl-{cuda}")
        except importlib.metadata.PackageNotFoundError:
            continue
        path = str(dist.locate_file(f".nixl_{cuda}.mesonpy.libs/{NIXL_LIBRARY}"))
        if os.path.exists(path):
            return path
    return None


# The variables point_at_wheels set (rather than the user).
SET_HERE = set()


def point_at_wheels():
    """Set KVX_UCX_LIB / KVX_NIXL_LIB to this interpreter's wheels where unset."""
    for var, find in (("KVX_UCX_LIB", ucx_library), ("KVX_NIXL_LIB", nixl_library)):
        if var not in os.environ:
            path = find()
            if path:
                os.environ[var] = path
                SET_HERE.add(var)
