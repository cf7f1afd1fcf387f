"""kernels/_tuning.autotune's quick timing: the kernels tuned at every layer shape of a model (the
conv kernels) and the 2:4 GEMV time each config with quick_bench (20 ms after 5 of warm-up), the
GEMMs keep Triton's default; quick_bench is Triton's do_bench with those times. CPU."""
from __future__ import annotations

import pytest

triton = pytest.importorskip("triton")

from kernelswap.kernels import _tuning, conv_depthwise, conv_implicit_gemm, int8_gemm, sparse24_gemv  # noqa: E402


def _tuner(fn):
    while not isinstance(fn, triton.runtime.Autotuner):
        fn = fn.fn
    return fn


def test_quick_kernels_time_with_quick_bench():
    quick = [conv_depthwise._conv_dw_kernel, conv_implicit_gemm._conv_igemm_kernel, sparse24_gemv._FMA,
             sparse24_gemv._DOT]
    # Triton's Autotuner keeps the do_bench it was given as _do_bench (3.6 - 3.8); None: its default
    assert all(_tuner(k)._do_bench is _tuning.quick_bench for k in quick)
    assert all(_tuner(k)._do_bench is None for k in int8_gemm._tuned.values())


def test_quick_bench_is_do_bench_over_20_ms(monkeypatch):
    import triton.testing
    seen = []
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: seen.append((fn, kw)) or [1.0, 0.9, 1.1])
    assert _tuning.quick_bench("call", quantiles=(0.5, 0.2, 0.8)) == [1.0, 0.9, 1.1]
    assert seen == [("call", dict(warmup=5, rep=20, quantiles=(0.5, 0.2, 0.8)))]
