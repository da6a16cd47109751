"""Command line: ``python -m momkernels {info,check,bench}``."""

from __future__ import annotations

import argparse
import os
import platform
import sys


def _info() -> int:
    import torch

    from . import __version__, ops
    from .backends import auto_backend, unavailable_reason

    print(f"momkernels      {__version__}")
    print(f"python          {platform.python_version()} ({platform.machine()})")
    print(f"torch           {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    try:
        import triton

        print(f"triton          {triton.__version__}"
              f"{' (TRITON_INTERPRET=1)' if os.environ.get('TRITON_INTERPRET') == '1' else ''}")
    except ImportError:
        print("triton          not installed")
    print(f"cpu threads     {torch.get_num_threads()} (torch), {os.cpu_count()} (os)")
    print(f"cpu capability  {torch.backends.cpu.get_cpu_capability()} (torch)")
    err = ops.load_error()
    if err is None:
        flags = ops.build_info()
        print(f"extension       loaded: cpu kernels {flags.get('cpu_isa')}, "
              f"cuda kernels {'yes' if flags.get('cuda') == '1' else 'no (CPU-only build)'}")
    else:
        print("extension       NOT LOADED")
        print("                " + err.replace("\n", "\n                "))
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
        print(f"cuda device     {torch.cuda.get_device_name()}")
    else:
        print("cuda device     none")
    for d in devices:
        print(f"backends on {d.type:<4}")
        for b in ("cpp", "triton", "torch"):
            reason = unavailable_reason(b, d)
            state = "available" if reason is None else "unavailable: " + reason.splitlines()[0]
            print(f"  {b:<8} {state}")
        print(f"  auto  -> {auto_backend(d)}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m momkernels", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="versions, build flags, available backends, devices")
    p_check = sub.add_parser("check", help="every available backend against the reference")
    p_check.add_argument("--device", action="append", choices=["cpu", "cuda"],
                         help="device(s) to check (default: cpu, and cuda when present)")
    p_check.add_argument("--backend", action="append", choices=["cpp", "triton", "torch"],
                         help="backend(s) to check (default: all available)")
    p_bench = sub.add_parser("bench", help="time the loss against eager PyTorch and torch.compile",
                             add_help=False)
    p_bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    args, rest = parser.parse_known_args(argv)

    if args.cmd == "info":
        return _info()
    if args.cmd == "check":
        from .selfcheck import run

        return run(args.device, args.backend)
    from .benchmark import main as bench_main

    return bench_main(list(rest) + list(args.bench_args))


if __name__ == "__main__":
    sys.exit(main())
