"""Build of momkernels' compiled extension ``momkernels._C``.

* CPU kernels always (one build per x86 instruction set, picked at run time).
* CUDA kernels when a CUDA toolkit is found and either a GPU is visible or
  ``FORCE_CUDA=1`` (build on a GPU-less machine, as CI does); ``FORCE_CUDA=0``
  forces a CPU-only build.  ``TORCH_CUDA_ARCH_LIST`` picks the GPU targets
  (default: DEFAULT_CUDA_ARCHS below).

The extension must be compiled against the torch it will run with, so install
with ``pip install --no-build-isolation .`` (see README): an isolated build env
would compile against a different torch wheel and fail to load.
"""

import glob
import os
import platform
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------- the build's configuration
# The one list of sources, flags and CUDA targets.  CMakeLists.txt reads it
# (`python setup.py --print-cmake`, which needs no torch) and .ci/run reads
# CI_CUDA_ARCHS (`python setup.py --print CI_CUDA_ARCHS`): edit it here only.

# compiled for the baseline instruction set
CPU_SOURCES = [
    "csrc/registration.cpp",
    "csrc/autograd.cpp",
    "csrc/cpu/ops_cpu.cpp",
    "csrc/cpu/kernel_default.cpp",
]
# The CPU kernels are compiled once more per instruction set (x86 only), each
# file with its own flags (as ATen does), and the best one for the running CPU
# is picked at run time.
ISA_FLAGS = {
    "csrc/cpu/kernel_avx2.cpp": ["-mavx2", "-mfma", "-mf16c"],
    "csrc/cpu/kernel_avx512.cpp": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                                   "-mavx2", "-mfma", "-mf16c"],
}
# -fopenmp: at::parallel_for is an inline template over OpenMP; without the
# flag its pragmas are ignored and the kernels silently run on one thread.
# (CMake links OpenMP::OpenMP_CXX instead of passing it.)
OPENMP_FLAGS = ["-fopenmp"]
CXX_FLAGS = ["-O3", "-fvisibility=hidden", "-Wall", "-Wno-unused-function",
             "-Wno-unknown-pragmas"]
CUDA_SOURCES_GLOB = "csrc/cuda/*.cu"
NVCC_FLAGS = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "-DMOMK_WITH_CUDA"]
# GPU targets when TORCH_CUDA_ARCH_LIST is not set: Ampere, Ada, Hopper, Blackwell
DEFAULT_CUDA_ARCHS = "8.0;8.6;8.9;9.0;10.0;12.0+PTX"
# CI compiles the CUDA sources for two of them only, to bound its time (.ci/run)
CI_CUDA_ARCHS = "8.0;9.0"


def _cmake_config() -> str:
    """The configuration above as CMake `set()` commands (CMakeLists.txt includes them)."""
    def lst(v):
        return '"' + ";".join(v) + '"'

    lines = [f"set(MOMK_CPU_SOURCES {lst(CPU_SOURCES)})",
             f"set(MOMK_ISA_SOURCES {lst(ISA_FLAGS)})",
             f"set(MOMK_CXX_FLAGS {lst(CXX_FLAGS)})",
             f"set(MOMK_DEFAULT_CUDA_ARCHS \"{DEFAULT_CUDA_ARCHS}\")",
             f"set(MOMK_CI_CUDA_ARCHS \"{CI_CUDA_ARCHS}\")"]
    lines += [f"set(MOMK_ISA_FLAGS_{i} {lst(flags)})" for i, flags in enumerate(ISA_FLAGS.values())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__" and sys.argv[1:2] == ["--print-cmake"]:
    sys.stdout.write(_cmake_config())
    sys.exit(0)
if __name__ == "__main__" and sys.argv[1:2] == ["--print"] and len(sys.argv) == 3:
    print(globals()[sys.argv[2]])  # e.g. CI_CUDA_ARCHS
    sys.exit(0)

from setuptools import find_packages, setup  # noqa: E402

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as e:  # pragma: no cover - build-time message
    raise SystemExit(
        "momkernels compiles against your installed PyTorch: install torch first, then run\n"
        "    pip install --no-build-isolation .\n"
        f"({e})"
    )


def min_torch() -> tuple[int, int]:
    """momkernels.MIN_TORCH, read from the source (importing the package needs the build)."""
    with open(os.path.join(HERE, "momkernels", "__init__.py")) as f:
        m = re.search(r"^MIN_TORCH = \((\d+), (\d+)\)", f.read(), re.M)
    return int(m.group(1)), int(m.group(2))


_found = re.match(r"(\d+)\.(\d+)", str(torch.__version__))
if _found is None or (int(_found.group(1)), int(_found.group(2))) < min_torch():
    raise SystemExit(
        f"momkernels needs torch >= {'.'.join(map(str, min_torch()))} to build, found torch "
        f"{torch.__version__}: upgrade torch first, then run\n"
        "    pip install --no-build-isolation .")
IS_X86 = platform.machine().lower() in ("x86_64", "amd64")


def want_cuda() -> bool:
    force = os.environ.get("FORCE_CUDA")
    if force == "0":
        return False
    if CUDA_HOME is None or torch.version.cuda is None:
        if force == "1":
            raise SystemExit(
                "FORCE_CUDA=1 but no CUDA build of torch or CUDA toolkit was found "
                f"(torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME}); "
                "set CUDA_HOME=/usr/local/cuda and use a CUDA build of torch."
            )
        return False
    return force == "1" or torch.cuda.is_available()


def extension():
    cxx = CXX_FLAGS[:1] + OPENMP_FLAGS + CXX_FLAGS[1:]
    link = list(OPENMP_FLAGS)
    include_dirs = [os.path.join(HERE, "csrc")]
    if want_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        cuda_sources = sorted(glob.glob(CUDA_SOURCES_GLOB))
        return CUDAExtension(
            "momkernels._C",
            CPU_SOURCES + cuda_sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx + ["-DMOMK_WITH_CUDA"], "nvcc": list(NVCC_FLAGS)},
            extra_link_args=link,
        )
    return CppExtension(
        "momkernels._C", list(CPU_SOURCES), include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx}, extra_link_args=link,
    )


class BuildExt(BuildExtension):
    """torch's BuildExtension, plus the per-ISA kernel files compiled with their flags."""

    def build_extension(self, ext):
        if IS_X86:
            objects = []
            for src, flags in ISA_FLAGS.items():
                args = dict(ext.extra_compile_args)
                args["cxx"] = list(args["cxx"]) + flags
                objects += self.compiler.compile(
                    [src], output_dir=self.build_temp, include_dirs=ext.include_dirs,
                    extra_postargs=args, depends=ext.depends)
            ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extension(ext)


setup(
    packages=find_packages(include=["momkernels", "momkernels.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExt.with_options(use_ninja=True)},
)
