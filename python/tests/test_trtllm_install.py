"""`kvxfer trtllm install|status|uninstall` against a TensorRT-LLM-shaped tree
made here, run as the command a user types (separate processes)."""

import importlib.machinery
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
BINDING = "tensorrt_llm_transfer_agent_binding" + SUFFIX


def kvxfer_cmd(*args, **kw):
    return subprocess.run([sys.executable, "-m", "kvxfer", *args], capture_output=True, text=True, timeout=120, **kw)


def make_tree(site, with_binding=True, version="1.4.0rc1"):
    pkg = site / "tensorrt_llm"
    (pkg / "libs").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "version.py").write_text(f'__version__ = "{version}"\n')
    for name, size in [("libs/libtensorrt_llm.so", 3000), ("libs/libtensorrt_llm_ucx_wrapper.so", 2000),
                       ("libs/libtensorrt_llm_nixl_wrapper.so", 2500)] + ([(BINDING, 1500)] if with_binding else []):
        path = pkg / name
        path.write_bytes(os.urandom(size))
        os.chmod(path, 0o755)
        os.utime(path, (1_600_000_000, 1_600_000_000))
    return pkg


def snapshot(root):
    """Every file and folder under root: bytes, mode and mtime."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            out[os.path.relpath(p, root)] = ("dir", stat.S_IMODE(os.stat(p).st_mode))
        for f in filenames:
            if f.endswith(".pyc"):
                continue
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = (fh.read(), stat.S_IMODE(st.st_mode), int(st.st_mtime))
    return out


def test_install_status_uninstall_round_trip(tmp_path):
    pkg = make_tree(tmp_path)
    before = snapshot(tmp_path)

    r = kvxfer_cmd("trtllm", "status", "--site", str(tmp_path))
    assert r.returncode == 0 and "1.4.0rc1" in r.stdout and "not installed" in r.stdout, r.stdout + r.stderr

    r = kvxfer_cmd("trtllm", "install", "--site", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    record = json.loads((pkg / ".kvxfer-install.json").read_text())
    actions = {e["path"]: e["action"] for e in record["files"]}
    assert actions == {"libs/libtensorrt_llm_ucx_wrapper.so": "replaced", "libs/libtensorrt_llm_nixl_wrapper.so": "replaced",
                       "libs/libkvxfer.so.0": "added", BINDING: "replaced"}
    assert record["trtllm_line"] == "1.4"
    import kvxfer
    lib = kvxfer.library_dir()
    for name in ("libtensorrt_llm_ucx_wrapper.so", "libtensorrt_llm_nixl_wrapper.so"):
        assert (pkg / "libs" / name).read_bytes() == open(os.path.join(lib, "trtllm", "1.4", name), "rb").read()
    assert (pkg / "libs" / "libkvxfer.so.0").read_bytes() == open(os.path.join(lib, "libkvxfer.so.0"), "rb").read()
    assert (pkg / "libs" / "libtensorrt_llm.so").read_bytes() == before[os.path.join("tensorrt_llm", "libs", "libtensorrt_llm.so")][0]

    r = kvxfer_cmd("trtllm", "status", "--site", str(tmp_path))
    assert r.returncode == 0 and "installed" in r.stdout and "CHANGED" not in r.stdout, r.stdout

    # The installed binding imports under TensorRT-LLM's name and finds libkvxfer in libs/;
    # the wrappers load from libs/ as TensorRT-LLM dlopens them.
    script = textwrap.dedent(f"""
        import ctypes, sys
        sys.path.insert(0, {str(tmp_path)!r})
        import tensorrt_llm.tensorrt_llm_transfer_agent_binding as b
        agent = b.NixlTransferAgent(b.BaseAgentConfig(name="installed"))
        # The binding pointed libkvxfer at this interpreter's UCX wheel (through the kvxfer package).
        import os
        assert os.environ.get("KVX_UCX_LIB", "").startswith(sys.prefix), os.environ.get("KVX_UCX_LIB")
        assert agent.get_local_agent_desc().serialize()
        agent.shutdown()
        for w in ("ucx", "nixl"):
            ctypes.CDLL({str(pkg / "libs")!r} + f"/libtensorrt_llm_{{w}}_wrapper.so")
        maps = open("/proc/self/maps").read()
        paths = {{l.split()[-1] for l in maps.splitlines() if "libkvxfer.so" in l}}
        assert len(paths) == 1 and paths.pop().startswith({str(pkg)!r}), paths
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "KVX_UCX_LIB", "KVX_NIXL_LIB")}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env, cwd="/")
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr

    r = kvxfer_cmd("trtllm", "install", "--site", str(tmp_path))
    assert r.returncode != 0 and "already installed" in r.stderr
    assert (pkg / ".kvxfer-install.json").exists()

    r = kvxfer_cmd("trtllm", "uninstall", "--site", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert snapshot(tmp_path) == before

    r = kvxfer_cmd("trtllm", "uninstall", "--site", str(tmp_path))
    assert r.returncode != 0 and "not installed" in r.stderr
    assert snapshot(tmp_path) == before


def test_tree_without_a_binding_gets_one_added_and_removed(tmp_path):
    make_tree(tmp_path, with_binding=False)
    before = snapshot(tmp_path)
    assert kvxfer_cmd("trtllm", "install", "--site", str(tmp_path)).returncode == 0
    assert (tmp_path / "tensorrt_llm" / BINDING).exists()
    assert kvxfer_cmd("trtllm", "uninstall", "--site", str(tmp_path)).returncode == 0
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("shape", ["no-package", "no-libs", "empty-libs", "not-a-folder"])
def test_refuses_a_tree_that_is_not_tensorrt_llm(tmp_path, shape):
    if shape == "no-package":
        (tmp_path / "something_else").mkdir()
    elif shape == "no-libs":
        (tmp_path / "tensorrt_llm").mkdir()
        (tmp_path / "tensorrt_llm" / "__init__.py").write_text("")
    elif shape == "empty-libs":
        (tmp_path / "tensorrt_llm" / "libs").mkdir(parents=True)
        (tmp_path / "tensorrt_llm" / "__init__.py").write_text("")
        (tmp_path / "tensorrt_llm" / "libs" / "unrelated.so").write_bytes(b"x")
    else:
        (tmp_path / "tensorrt_llm").write_text("a file")
    before = snapshot(tmp_path)
    r = kvxfer_cmd("trtllm", "install", "--site", str(tmp_path))
    assert r.returncode == 2 and "refused" in r.stderr, r.stdout + r.stderr
    assert snapshot(tmp_path) == before


def test_refuses_a_read_only_tree(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    pkg = make_tree(site)
    before = snapshot(site)
    args = [sys.executable, "-m", "kvxfer", "trtllm", "install", "--site", str(site)]
    if os.geteuid() == 0:
        # root writes through file modes, so the tree is made read-only the way a
        # read-only image is: a read-only bind mount, in a mount namespace of the
        # command's own (nothing outside it changes).
        if not shutil.which("unshare"):
            pytest.skip("running as root without unshare")
        script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
        args = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(pkg)] + args
    else:
        for p in [pkg, pkg / "libs"]:
            os.chmod(p, 0o555)
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd="/")
    finally:
        for p in [pkg, pkg / "libs"]:
            os.chmod(p, 0o755)
    assert r.returncode == 2 and "not writable" in r.stderr, r.stdout + r.stderr
    assert snapshot(site) == before


@pytest.mark.parametrize("version,line", [("1.1.0", "1.1"), ("1.2.0rc2", "1.2"), ("1.3.0rc24", "1.3")])
def test_install_picks_the_wrappers_of_the_release_line(tmp_path, version, line):
    pkg = make_tree(tmp_path, version=version)
    before = snapshot(tmp_path)
    r = kvxfer_cmd("trtllm", "install", "--site", str(tmp_path))
    assert r.returncode == 0 and f"the {line} line's wrappers" in r.stdout, r.stdout + r.stderr
    assert json.loads((pkg / ".kvxfer-install.json").read_text())["trtllm_line"] == line
    import kvxfer
    lines = os.path.join(kvxfer.library_dir(), "trtllm")
    for name in ("libtensorrt_llm_ucx_wrapper.so", "libtensorrt_llm_nixl_wrapper.so"):
        installed = (pkg / "libs" / name).read_bytes()
        assert installed == open(os.path.join(lines, line, name), "rb").read()
        assert installed != open(os.path.join(lines, "1.4", name), "rb").read(), "the lines' wrappers are one file"
    r = kvxfer_cmd("trtllm", "status", "--site", str(tmp_path))
    assert r.returncode == 0 and f"the {line} line's wrappers" in r.stdout, r.stdout
    r = kvxfer_cmd("trtllm", "uninstall", "--site", str(tmp_path))
    assert r.returncode == 0 and snapshot(tmp_path) == before, r.stdout + r.stderr


@pytest.mark.parametrize("version", ["0.21.0", "unknown-build"])
def test_install_refuses_a_release_no_line_serves_and_changes_nothing(tmp_path, version):
    make_tree(tmp_path, version=version)
    before = snapshot(tmp_path)
    r = kvxfer_cmd("trtllm", "install", "--site", str(tmp_path))
    assert r.returncode != 0 and "release line" in r.stderr, r.stdout + r.stderr
    assert snapshot(tmp_path) == before


def test_status_names_a_missing_package_clearly(tmp_path):
    r = kvxfer_cmd("trtllm", "status", "--site", str(tmp_path))
    assert r.returncode == 2 and "no tensorrt_llm package" in r.stderr


def test_status_flags_a_file_changed_after_install_and_uninstall_still_restores(tmp_path):
    pkg = make_tree(tmp_path)
    before = snapshot(tmp_path)
    assert kvxfer_cmd("trtllm", "install", "--site", str(tmp_path)).returncode == 0
    (pkg / "libs" / "libtensorrt_llm_ucx_wrapper.so").write_bytes(b"overwritten by something else")
    r = kvxfer_cmd("trtllm", "status", "--site", str(tmp_path))
    assert r.returncode == 0
    changed = [line for line in r.stdout.splitlines() if "CHANGED" in line]
    assert len(changed) == 1 and "libtensorrt_llm_ucx_wrapper.so" in changed[0], r.stdout
    assert kvxfer_cmd("trtllm", "uninstall", "--site", str(tmp_path)).returncode == 0
    assert snapshot(tmp_path) == before
