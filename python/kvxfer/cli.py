"""The ``kvxfer`` command: ``info``, ``demo``, ``trtllm install|uninstall|status``."""

import argparse
import ctypes
import glob
import os
import sys

VARIABLES = (
    "TRTLLM_USE_UCX_KVCACHE", "TRTLLM_USE_NIXL_KVCACHE", "KVX_UCX_LIB", "KVX_NIXL_LIB", "NIXL_PLUGIN_DIR",
    "TRTLLM_NIXL_KVCACHE_BACKEND", "KVX_TIMEOUT_MS", "KVX_LISTEN_IP", "KVX_LOG", "UCX_TLS", "VIRTUAL_ENV",
)


def _why_backend():
    ucx, nixl = os.environ.get("TRTLLM_USE_UCX_KVCACHE"), os.environ.get("TRTLLM_USE_NIXL_KVCACHE")
    if ucx == "1":
        return "TRTLLM_USE_UCX_KVCACHE=1" + (" (wins over TRTLLM_USE_NIXL_KVCACHE=1)" if nixl == "1" else "")
    if nixl == "1":
        return "TRTLLM_USE_NIXL_KVCACHE=1"
    return "neither TRTLLM_USE_UCX_KVCACHE nor TRTLLM_USE_NIXL_KVCACHE is 1 (UCX is the default)"


def _gpu():
    if not glob.glob("/dev/nvidia[0-9]*"):
        return "no (no /dev/nvidia* devices)"
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return "no (the CUDA driver did not initialise)"
        return f"yes ({count.value} device(s))"
    except OSError:
        return "no (libcuda.so.1 not found)"


def cmd_info(_args):
    import kvxfer
    from kvxfer import _wheels

    print(f"kvxfer {kvxfer.__version__}")
    print(f"  libkvxfer:  {kvxfer.library_path()}")
    print(f"  package:    {kvxfer.package_prefix()}  (CMake prefix; lib/, include/, lib/cmake/kvxfer, lib/pkgconfig)")
    chosen = kvxfer.resolve_backend()
    print(f"backend: {chosen}, because {_why_backend()}")
    print(f"  UCX wheel:  {_wheels.ucx_library() or 'not installed (pip install libucx-cu12 or libucx-cu13)'}")
    print(f"  NIXL wheel: {_wheels.nixl_library() or 'not installed (pip install --no-deps nixl-cu12 or nixl-cu13)'}")
    rc = 0
    try:
        info = kvxfer.backend_info()
        print(f"  loaded:     {info['name']} {info['library_version']} from {info['library_path']}")
    except kvxfer.Error as e:
        print(f"  loaded:     FAILED: {e}")
        rc = 1
    print("variables:")
    for var in VARIABLES:
        if var in os.environ:
            note = "  (set by kvxfer from this interpreter's wheel)" if var in _wheels.SET_HERE else ""
            print(f"  {var}={os.environ[var]}{note}")
    print(f"GPU visible: {_gpu()}")
    return rc


def cmd_demo(args):
    import kvxfer
    from kvxfer import demo

    try:
        if args.role == "target":
            return demo.target(args.size)
        return demo.initiator(args.size, args.iters)
    except kvxfer.Error as e:
        print(f"kvxfer demo ({args.role}): {e}", file=sys.stderr)
        return 1


def cmd_trtllm(args):
    from kvxfer import trtllm

    try:
        getattr(trtllm, args.action)(site=args.site)
    except trtllm.Refused as e:
        print(f"kvxfer trtllm {args.action}: refused: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="kvxfer", description="kvxfer: KV-cache transfer over UCX or NIXL")
    parser.add_argument("--cmake-prefix", action="store_true",
                        help="print the prefix for CMAKE_PREFIX_PATH (kvxferConfig.cmake, kvxfer.pc)")
    parser.add_argument("--version", action="store_true", help="print kvxfer's version")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="backend the environment selects, libraries found, variables, GPU")
    demo = sub.add_parser("demo", help="two-process host-memory WRITE/READ demo")
    demo.add_argument("--size", type=int, default=64 << 20, help="bytes per transfer (default 64 MiB)")
    demo.add_argument("--iters", type=int, default=4)
    demo.add_argument("--role", choices=("initiator", "target"), default="initiator", help=argparse.SUPPRESS)
    tr = sub.add_parser("trtllm", help="install kvxfer into a TensorRT-LLM package, or take it out")
    tr.add_argument("action", choices=("install", "uninstall", "status"))
    tr.add_argument("--site", help="folder holding the tensorrt_llm package (default: found from this Python)")
    args = parser.parse_args(argv)

    if args.cmake_prefix or args.version:
        import kvxfer

        print(kvxfer.package_prefix() if args.cmake_prefix else kvxfer.__version__)
        return 0
    if args.command == "info":
        return cmd_info(args)
    if args.command == "demo":
        return cmd_demo(args)
    if args.command == "trtllm":
        return cmd_trtllm(args)
    parser.print_help()
    return 2
