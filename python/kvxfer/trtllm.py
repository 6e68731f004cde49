"""Installing kvxfer into a TensorRT-LLM package tree, and taking it out again.

``install`` backs up and replaces ``libs/libtensorrt_llm_ucx_wrapper.so``,
``libs/libtensorrt_llm_nixl_wrapper.so`` (built for the release line of the
TensorRT-LLM found, from the wheel's ``lib/trtllm/<line>/``) and the
``tensorrt_llm_transfer_agent_binding`` extension module with kvxfer's, adds
``libs/libkvxfer.so.0`` (which they load), and records every change in
``tensorrt_llm/.kvxfer-install.json``. ``uninstall`` restores each file byte
for byte (contents, mode, times) and removes what was added. Every check runs
before the first change; a failure part-way rolls back.
"""

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time

RECORD = ".kvxfer-install.json"
BACKUP_DIR = ".kvxfer-backup"
WRAPPERS = ("libtensorrt_llm_ucx_wrapper.so", "libtensorrt_llm_nixl_wrapper.so")
KVXFER_SONAME = "libkvxfer.so.0"
BINDING = "tensorrt_llm_transfer_agent_binding"


class Refused(Exception):
    """The tree cannot be changed as asked; nothing was changed."""


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_package(site=None):
    """The ``tensorrt_llm`` package folder, found without importing it (it may need a GPU)."""
    if site is not None:
        path = os.path.join(os.path.abspath(site), "tensorrt_llm")
        if not os.path.isdir(path):
            raise Refused(f"{site} holds no tensorrt_llm package folder")
        return path
    spec = importlib.util.find_spec("tensorrt_llm")
    if spec is None or not spec.submodule_search_locations:
        raise Refused("TensorRT-LLM (the tensorrt_llm package) is not installed for "
                      f"{sys.executable}; pass --site DIR to name the folder holding it")
    return list(spec.submodule_search_locations)[0]


def trtllm_version(pkg):
    """TensorRT-LLM's version from its version.py or dist-info, read as text."""
    version_py = os.path.join(pkg, "version.py")
    if os.path.exists(version_py):
        with open(version_py, encoding="utf-8", errors="replace") as f:
            m = re.search(r"""__version__\s*=\s*['"]([^'"]+)['"]""", f.read())
        if m:
            return m.group(1)
    site = os.path.dirname(pkg)
    for name in sorted(os.listdir(site)):
        m = re.match(r"tensorrt_llm-([^-]+)\.dist-info$", name)
        if m:
            return m.group(1)
    return "unknown"


def _check_tree(pkg):
    libs = os.path.join(pkg, "libs")
    if not os.path.isfile(os.path.join(pkg, "__init__.py")) or not os.path.isdir(libs):
        raise Refused(f"{pkg} is not a TensorRT-LLM package (no __init__.py and libs/)")
    known = ("libtensorrt_llm.so",) + WRAPPERS
    if not any(os.path.exists(os.path.join(libs, f)) for f in known):
        raise Refused(f"{pkg} is not a TensorRT-LLM package (libs/ has none of {', '.join(known)})")
    return libs


def _binding_file(pkg):
    """The binding module TensorRT-LLM ships (any extension suffix), else the name to add."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(pkg, BINDING + suffix)
        if os.path.exists(path):
            return path, True
    return os.path.join(pkg, BINDING + importlib.machinery.EXTENSION_SUFFIXES[0]), False


def _probe_writable(folder):
    try:
        fd, probe = tempfile.mkstemp(prefix=".kvxfer-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise Refused(f"{folder} is not writable ({e.strerror}); nothing was changed") from None


def release_line(version):
    """The TensorRT-LLM release line ("1.2") of `version`, as the wrappers map
    it (they hold the one table); None when it cannot be read or comes before 1.0."""
    import ctypes

    here = os.path.dirname(os.path.abspath(__file__))
    wrapper = ctypes.CDLL(os.path.join(here, "lib", WRAPPERS[1]), mode=os.RTLD_LOCAL | os.RTLD_NOW)
    line_of = wrapper.kvxfer_trtllm_line_of_release
    line_of.argtypes, line_of.restype = [ctypes.c_char_p], ctypes.c_int
    line = line_of(version.encode())
    return f"{line // 100}.{line % 100}" if line > 0 else None


def _wrapper_dir(version):
    """The wheel's wrappers of `version`'s line (lib/trtllm/<line>/)."""
    here = os.path.dirname(os.path.abspath(__file__))
    line = release_line(version)
    if line is None:
        raise Refused(f"TensorRT-LLM {version}: its release line, which decides the wrappers that fit, cannot be "
                      "told (kvxfer serves releases from 1.0 on, whose version.py or dist-info says which)")
    folder = os.path.join(here, "lib", "trtllm", line)
    if not os.path.isdir(folder):
        raise Refused(f"TensorRT-LLM {version} is of the {line} line, and this kvxfer package has no wrappers "
                      f"built for it (lib/trtllm/{line}/)")
    return line, folder


def _kvxfer_files(version):
    here = os.path.dirname(os.path.abspath(__file__))
    lib = os.path.join(here, "lib")
    line, wrapper_dir = _wrapper_dir(version)
    binding = None
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        cand = os.path.join(here, BINDING + suffix)
        if os.path.exists(cand):
            binding = cand
            break
    files = {w: os.path.join(wrapper_dir, w) for w in WRAPPERS}
    files[KVXFER_SONAME] = os.path.join(lib, KVXFER_SONAME)
    missing = [p for p in list(files.values()) + [binding] if not p or not os.path.exists(p)]
    if missing:
        raise Refused(f"this kvxfer package is incomplete (missing {missing})")
    return line, files, binding


def read_record(pkg):
    path = os.path.join(pkg, RECORD)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _copy_over(src, dst):
    """Replace dst with src atomically (a temporary file in dst's folder, then rename)."""
    fd, tmp = tempfile.mkstemp(prefix=".kvxfer-", dir=os.path.dirname(dst))
    os.close(fd)
    try:
        shutil.copy2(src, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def install(site=None, log=print):
    from . import __version__

    pkg = find_package(site)
    libs = _check_tree(pkg)
    if read_record(pkg) is not None:
        raise Refused(f"kvxfer is already installed in {pkg}; run `kvxfer trtllm uninstall` first")
    version = trtllm_version(pkg)
    line, sources, binding_src = _kvxfer_files(version)
    binding_dst, binding_exists = _binding_file(pkg)
    plan = [(sources[w], os.path.join(libs, w)) for w in WRAPPERS]
    plan.append((sources[KVXFER_SONAME], os.path.join(libs, KVXFER_SONAME)))
    plan.append((binding_src, binding_dst))
    backup_root = os.path.join(pkg, BACKUP_DIR)
    for folder in {pkg, libs}:
        _probe_writable(folder)
    if os.path.exists(backup_root):
        raise Refused(f"{backup_root} exists without an install record; move it away first")

    entries, done = [], []
    try:
        os.mkdir(backup_root)
        for src, dst in plan:
            rel = os.path.relpath(dst, pkg)
            entry = {"path": rel, "installed_sha256": _sha256(src)}
            if os.path.exists(dst):
                backup = os.path.join(backup_root, rel)
                os.makedirs(os.path.dirname(backup), exist_ok=True)
                shutil.copy2(dst, backup)
                entry.update(action="replaced", backup=os.path.relpath(backup, pkg), original_sha256=_sha256(dst))
            else:
                entry["action"] = "added"
            _copy_over(src, dst)
            done.append(entry)
            entries.append(entry)
        record = {
            "kvxfer_version": __version__,
            "tensorrt_llm_version": version,
            "trtllm_line": line,
            "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": entries,
        }
        with open(os.path.join(pkg, RECORD), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
    except BaseException:
        _undo(pkg, done)
        shutil.rmtree(backup_root, ignore_errors=True)
        raise
    for e in entries:
        log(f"{e['action']:>8}  {e['path']}")
    log(f"kvxfer {__version__} installed into TensorRT-LLM {version} (the {line} line's wrappers) at {pkg}")
    return record


def _undo(pkg, entries):
    for e in reversed(entries):
        dst = os.path.join(pkg, e["path"])
        if e["action"] == "replaced":
            _copy_back(os.path.join(pkg, e["backup"]), dst)
        elif os.path.exists(dst):
            os.unlink(dst)


def _copy_back(backup, dst):
    fd, tmp = tempfile.mkstemp(prefix=".kvxfer-", dir=os.path.dirname(dst))
    os.close(fd)
    shutil.copy2(backup, tmp)
    os.replace(tmp, dst)


def uninstall(site=None, log=print):
    pkg = find_package(site)
    record = read_record(pkg)
    if record is None:
        raise Refused(f"kvxfer is not installed in {pkg} (no {RECORD})")
    for folder in {pkg, os.path.join(pkg, "libs")}:
        _probe_writable(folder)
    for e in record["files"]:
        if e["action"] == "replaced" and not os.path.exists(os.path.join(pkg, e["backup"])):
            raise Refused(f"backup of {e['path']} is missing ({e['backup']}); nothing was changed")
    for e in reversed(record["files"]):
        dst = os.path.join(pkg, e["path"])
        if e["action"] == "replaced":
            _copy_back(os.path.join(pkg, e["backup"]), dst)
            if _sha256(dst) != e["original_sha256"]:
                raise RuntimeError(f"restored {e['path']} does not match its recorded checksum")
            log(f"restored  {e['path']}")
        else:
            if os.path.exists(dst):
                os.unlink(dst)
            log(f" removed  {e['path']}")
    shutil.rmtree(os.path.join(pkg, BACKUP_DIR))
    os.unlink(os.path.join(pkg, RECORD))
    log(f"TensorRT-LLM at {pkg} restored")


def status(site=None, log=print):
    pkg = find_package(site)
    _check_tree(pkg)
    version = trtllm_version(pkg)
    record = read_record(pkg)
    if record is None:
        log(f"TensorRT-LLM {version} at {pkg}: kvxfer not installed")
        return None
    log(f"TensorRT-LLM {version} at {pkg}: kvxfer {record['kvxfer_version']} installed "
        f"{record['installed_at']} (over TensorRT-LLM {record['tensorrt_llm_version']}, "
        f"the {record.get('trtllm_line', '1.4')} line's wrappers)")
    for e in record["files"]:
        path = os.path.join(pkg, e["path"])
        state = "ok" if os.path.exists(path) and _sha256(path) == e["installed_sha256"] else "CHANGED since install"
        log(f"  {e['action']:>8}  {e['path']}  {state}")
    return record
