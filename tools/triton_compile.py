"""Compile every config of every Triton kernel in kernels/ for GPU targets, on a machine without a GPU.

The tests run the kernels under Triton's interpreter on CPU, which accepts some kernels a GPU
compile rejects (layouts, dot shapes, register or shared-memory use) and says nothing about the
code a GPU would run. This tool calls each public launcher on small CPU tensors with the
launch replaced by a recorder (nothing runs), then compiles each recorded kernel through
Triton's own compiler for each target, once per autotune config, with the argument
specialization a GPU launch of those arguments gets (16-aligned pointers, ints divisible by
16, ints equal to 1 as constants). A compile error in any of them is a failure.

    python tools/triton_compile.py [--targets 90,80] [--first-config-only] [--list] [--resources]

--resources also prints each compiled kernel's registers a thread and stack frame (where spills go) from
its cubin (cuobjdump -res-usage, the one Triton ships), and its dynamic shared memory.

Run it without TRITON_INTERPRET (the interpreter replaces the JIT functions); it refuses otherwise.
Prints one line per (kernel, config, target) that fails and a summary; exit status 1 on any failure.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = ("num_warps", "num_stages", "num_ctas", "enable_fp_fusion", "maxnreg")
_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int8: "i8",
          torch.uint8: "u8", torch.int32: "i32", torch.int64: "i64", torch.bool: "i1",
          torch.float8_e4m3fn: "fp8e4nv"}


def _cases():
    """(name, fn() calling one launcher on CPU tensors): every kernel, each of its modes."""
    from kernelswap import packing as P
    from kernelswap.kernels import (conv_depthwise, conv_implicit_gemm, int8_gemm, int8_quant, sparse24_gemv,
                                    w4a16_dequant, w4a16_gemm, w4a16_gemv, w8a16_gemm)

    bf = torch.bfloat16
    k, n = 512, 256
    i8 = lambda *s: torch.randint(-127, 128, s, dtype=torch.int8)  # noqa: E731
    a_s, w_s, bias = torch.rand(64), torch.rand(n), torch.randn(n)
    q4 = P.quantize_int4(torch.randn(n, k), 128, False)
    q4s = P.quantize_int4(torch.randn(n, k), 32, True)
    v16, m16 = P.compress_24(P.prune_24(torch.randn(n, k)).to(bf))
    v8, m8 = P.compress_24(P.prune_24(i8(n, k).float()).to(torch.int8))
    x_img = torch.randn(2, 64, 14, 14, dtype=bf).contiguous(memory_format=torch.channels_last)
    w_conv = torch.randn(128, 64, 3, 3, dtype=bf)
    w_dw = torch.randn(64, 1, 3, 3, dtype=bf)
    res = torch.randn(2, 128, 14, 14, dtype=bf).contiguous(memory_format=torch.channels_last)
    geo = ((1, 1), (1, 1), (1, 1))
    return [
        ("int8_scaled_mm M=16 split 2", lambda: int8_gemm.int8_scaled_mm(i8(16, k), a_s[:16], i8(n, k), w_s, bias, bf,
                                                                         split_k=2)),
        ("int8_scaled_mm M=256", lambda: int8_gemm.int8_scaled_mm(i8(256, k), torch.rand(256), i8(n, k), w_s, None,
                                                                  bf, split_k=1)),
        ("int8_weight_linear M=16 split 2", lambda: w8a16_gemm.int8_weight_linear(
            torch.randn(16, k, dtype=bf), i8(n, k), w_s, bias, split_k=2)),
        ("int8_weight_linear M=256", lambda: w8a16_gemm.int8_weight_linear(
            torch.randn(256, k, dtype=bf), i8(n, k), w_s, None, split_k=1)),
        ("quantize_per_token", lambda: int8_quant.quantize_per_token(torch.randn(16, k, dtype=bf))),
        ("w4a16_gemv M=1", lambda: w4a16_gemv.w4a16_gemv(torch.randn(1, k, dtype=bf), q4.packed, q4.scales,
                                                         q4.zeros, 128, bias)),
        ("w4a16_gemm small M=16 g32 sym", lambda: w4a16_gemm.w4a16_gemm(
            torch.randn(16, k, dtype=bf), q4s.packed, q4s.scales, None, 32, bias, small_m=True)),
        ("w4a16_gemm large M=256", lambda: w4a16_gemm.w4a16_gemm(
            torch.randn(256, k, dtype=bf), q4.packed, q4.scales, q4.zeros, 128, None, small_m=False)),
        ("w4a16_dequant", lambda: w4a16_dequant.w4a16_dequant(q4.packed, q4.scales, q4.zeros, 128, k, bf)),
        ("sparse24_linear M=1 (CUDA cores)", lambda: sparse24_gemv.sparse24_linear(
            torch.randn(1, k, dtype=bf), v16, m16, bias, use_dot=False)),
        ("sparse24_linear M=16 (tensor cores)", lambda: sparse24_gemv.sparse24_linear(
            torch.randn(16, k, dtype=bf), v16, m16, bias, use_dot=True)),
        ("sparse24_int8_linear M=16", lambda: sparse24_gemv.sparse24_int8_linear(
            i8(16, k), a_s[:16], v8, m8, w_s, bias, bf, use_dot=True)),
        ("conv_implicit_gemm 3x3 + residual, ReLU", lambda: conv_implicit_gemm.conv_implicit_gemm(
            x_img, conv_implicit_gemm.prepare_weight(w_conv, 1, bf), (3, 3), torch.randn(128), res, *geo, 1)),
        ("conv_depthwise 3x3, ReLU6", lambda: conv_depthwise.conv_depthwise(
            x_img, conv_depthwise.prepare_weight(w_dw), (3, 3), torch.randn(64), None, *geo, 2)),
    ]


def _record(cases):
    """[(case name, kernel, args, consts)] of every launch the cases make, none run."""
    from kernelswap.kernels import _launch
    launches, current = [], [None]

    def record(fn, grid, args, consts):
        launches.append((current[0], fn, tuple(args), dict(consts)))
        return {}

    saved = [m for name, m in list(sys.modules.items())
             if name.startswith("kernelswap.kernels.") and getattr(m, "launch", None) is _launch.launch]
    for m in saved:
        m.launch = record
    try:
        for name, fn in cases:
            current[0] = name
            fn()
    finally:
        for m in saved:
            m.launch = _launch.launch
    return launches


def _chain(fn):
    """(the JIT function under fn's wrappers, its autotune configs ([None]: none), the Heuristics'
    value rules), from kernels/_launch's walk of the same wrappers."""
    import triton
    from kernelswap.kernels._launch import _chain as wrappers_of
    wrappers, jit = wrappers_of(fn)
    tuners = [w for w in wrappers if isinstance(w, triton.runtime.Autotuner)]
    configs = list(tuners[0].configs) if tuners else [None]
    return jit, configs, [w.values for w in wrappers if isinstance(w, triton.runtime.Heuristics)]


def compile_for(jit, spec: tuple, arch: int):
    """triton.compile of jit with _spec's (signature, constexprs, attrs, options) for sm_<arch>."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    sig, constexprs, attrs, options = spec
    return triton.compile(ASTSource(jit, sig, constexprs, attrs), target=GPUTarget("cuda", arch, 32), options=options)


def _spec(jit, args, consts, config, heuristics):
    """(signature, constexprs, attrs, options) of a GPU launch of jit(*args, **consts) with `config`."""
    bound = dict(consts)
    bound.update(zip([p.name for p in jit.params], args))
    if config is not None:
        bound.update(config.kwargs)
        bound.setdefault("num_warps", config.num_warps)
        bound.setdefault("num_stages", config.num_stages)
    for values in heuristics:
        for name, rule in values.items():
            bound[name] = rule(bound)
    options = {k: bound.pop(k) for k in OPTIONS if k in bound}
    signature, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(jit.params):
        v = bound[p.name] if p.name in bound else p.default
        if p.is_constexpr:
            signature[p.name] = "constexpr"
            constexprs[p.name] = v
        elif isinstance(v, torch.Tensor):
            signature[p.name] = "*" + _TYPES[v.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]  # a GPU tensor of these sizes starts 16-aligned
        elif v is None:
            signature[p.name] = "constexpr"
            constexprs[p.name] = None
        elif isinstance(v, bool):
            signature[p.name] = "i1"
        elif isinstance(v, int):
            if v == 1 and i not in jit.do_not_specialize:
                signature[p.name] = "constexpr"
                constexprs[p.name] = 1
            else:
                signature[p.name] = "i32" if -2 ** 31 <= v < 2 ** 31 else "i64"
                if v % 16 == 0 and i not in jit.do_not_specialize:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, float):
            signature[p.name] = "fp32"
        else:
            raise TypeError(f"{jit.__name__}: argument {p.name} is a {type(v).__name__}, not handled here")
    return signature, constexprs, attrs, options


def _resources(cubin: bytes) -> str:
    """'REG:.. SHARED:.. LOCAL:..' of a cubin's kernel, from the cuobjdump Triton ships."""
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", out)
    return f"registers {found[1]}, stack (spills) {found[2]} bytes" if found else "resources unreadable"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="90,80", help="compute capabilities to compile for (comma-separated)")
    ap.add_argument("--first-config-only", action="store_true", help="one config per kernel (quick)")
    ap.add_argument("--list", action="store_true", help="list the kernels and configs, compile nothing")
    ap.add_argument("--resources", action="store_true", help="print registers, shared and local memory a kernel")
    a = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("triton_compile: unset TRITON_INTERPRET (the interpreter replaces the kernels to compile)")
        return 2
    sys.path.insert(0, str(ROOT / "python"))

    launches = _record(_cases())
    targets = [int(t) for t in a.targets.split(",")]
    done, failed, seen, t0 = 0, [], set(), time.time()
    for case, fn, args, consts in launches:
        jit, configs, heuristics = _chain(fn)
        for config in configs[:1] if a.first_config_only else configs:
            spec = _spec(jit, args, consts, config, heuristics)
            sig, constexprs, _, options = spec
            key = (jit.__name__, str(sorted(sig.items())), str(sorted(constexprs.items(), key=str)), str(options))
            if key in seen:
                continue
            seen.add(key)
            what = f"{case}: {jit.__name__} {config.kwargs if config else ''} {options}"
            if a.list:
                print(what)
                continue
            for arch in targets:
                try:
                    compiled = compile_for(jit, spec, arch)
                    done += 1
                    if a.resources:
                        print(f"sm_{arch} {what}: {_resources(compiled.asm['cubin'])}, "
                              f"shared {compiled.metadata.shared} bytes", flush=True)
                except Exception as e:  # noqa: BLE001 - every failure is reported, then the next
                    failed.append(f"sm_{arch} {what}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
                    print("FAILED", failed[-1], flush=True)
    print(f"triton_compile: {done} compiles passed, {len(failed)} failed, {len(launches)} launches of "
          f"{len({c for c, *_ in launches})} cases, targets {a.targets}, {time.time() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
