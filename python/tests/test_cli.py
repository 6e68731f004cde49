"""The kvxfer command and the installed package layout (C/C++ users' view)."""

import os
import shutil
import subprocess
import sys

import pytest

import kvxfer

ROOT = os.environ.get("KVX_REPO_ROOT")


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "kvxfer", *args], capture_output=True, text=True, timeout=300, **kw)


def test_info(expected_backend):
    r = run("info")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"backend: {expected_backend}" in r.stdout and "GPU visible:" in r.stdout and "libkvxfer:" in r.stdout


def test_info_explains_a_missing_backend_library():
    env = dict(os.environ, KVX_UCX_LIB="/nonexistent/libucp.so.0", KVX_NIXL_LIB="/nonexistent/libnixl_capi.so")
    r = run("info", env=env)
    assert r.returncode == 1 and "FAILED" in r.stdout and ("pip install" in r.stdout), r.stdout


def test_demo_two_processes():
    r = run("demo", "--size", str(4 << 20), "--iters", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "target check: ok" in r.stdout and "data check: ok" in r.stdout


def test_cmake_prefix_holds_a_relocatable_package():
    r = run("--cmake-prefix")
    prefix = r.stdout.strip()
    assert r.returncode == 0 and prefix == kvxfer.package_prefix()
    for rel in ("lib/libkvxfer.so.0", "lib/libtensorrt_llm_ucx_wrapper.so", "lib/libtensorrt_llm_nixl_wrapper.so",
                "include/kvxfer.h", "lib/cmake/kvxfer/kvxferConfig.cmake", "lib/pkgconfig/kvxfer.pc"):
        assert os.path.exists(os.path.join(prefix, rel)), rel
    assert kvxfer.library_path() == os.path.join(prefix, "lib", "libkvxfer.so.0")


@pytest.mark.skipif(not (ROOT and shutil.which("cmake") and shutil.which("cc")), reason="needs the repository and cmake")
def test_c_consumer_builds_against_the_wheel(tmp_path):
    prefix = run("--cmake-prefix").stdout.strip()
    build = tmp_path / "consumer"
    subprocess.run(["cmake", "-S", os.path.join(ROOT, "examples", "consumer"), "-B", str(build),
                    f"-DCMAKE_PREFIX_PATH={prefix}"], check=True, capture_output=True, timeout=300)
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True, timeout=300)
    exe = build / "kvxfer_consumer"
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_python_and_the_wrappers_share_one_libkvxfer():
    import ctypes

    for w in ("ucx", "nixl"):
        ctypes.CDLL(os.path.join(kvxfer.library_dir(), f"libtensorrt_llm_{w}_wrapper.so"))
    maps = open("/proc/self/maps").read()
    paths = {line.split()[-1] for line in maps.splitlines() if "libkvxfer" in line}
    assert paths == {os.path.join(kvxfer.library_dir(), "libkvxfer.so.0")}, paths


@pytest.mark.skipif(not shutil.which("cc"), reason="needs a C compiler")
def test_preloading_the_nixl_wrapper_hides_the_shipped_one(tmp_path):
    """What docs/python.md says about LD_PRELOAD: a module linking TensorRT-LLM's NIXL
    wrapper by name (as its Python binding does) loses that wrapper's symbols when
    kvxfer's NIXL wrapper is preloaded; preloading only the UCX wrapper leaves it intact."""
    shipped = tmp_path / "libs"
    shipped.mkdir()
    (tmp_path / "w.c").write_text("int shipped_nixl_agent_symbol(void) { return 42; }\n")
    (tmp_path / "m.c").write_text("int shipped_nixl_agent_symbol(void);\nint call(void) { return shipped_nixl_agent_symbol(); }\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(shipped / "libtensorrt_llm_nixl_wrapper.so"),
                    "-Wl,-soname,libtensorrt_llm_nixl_wrapper.so", str(tmp_path / "w.c")], check=True)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(tmp_path / "binding.so"), str(tmp_path / "m.c"),
                    f"-L{shipped}", "-ltensorrt_llm_nixl_wrapper", "-Wl,-rpath,$ORIGIN/libs"], check=True)
    probe = f"import ctypes; print(ctypes.CDLL({str(tmp_path / 'binding.so')!r}).call())"

    def load(preload):
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        if preload:
            env["LD_PRELOAD"] = os.path.join(kvxfer.library_dir(), preload)
        return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env)

    assert load(None).stdout.strip() == "42"
    assert load("libtensorrt_llm_ucx_wrapper.so").stdout.strip() == "42"
    broken = load("libtensorrt_llm_nixl_wrapper.so")
    assert broken.returncode != 0 and "undefined symbol: shipped_nixl_agent_symbol" in broken.stderr
