"""The benchmark harness's logic, on CPU with a fake timer: shape sets, rows for absent /
failing / skipped providers, rates and rotation, the order of work, the whole CPU run
(the CSV, markdown and plots: tests/test_bench_report.py).

No numbers here are performance numbers: the fake timer hands back preset times, so
the checks are about what the harness does with them.
"""
import argparse
import math

import pytest
import torch

from kernelswap import packing
from kernelswap.bench.cli import parser, run
from kernelswap.bench import shapes as S
from kernelswap.bench.providers import Absent, Case, Provider
from kernelswap.bench.providers.int4 import to_tinygemm
from kernelswap.bench.report import STATUSES, read_csv, short_table
from kernelswap.bench.runner import Budget, Runner
from kernelswap.bench.timing import MAX_COPIES, FakeTimer, Peak, Timing, copies_for, measure_peaks
from utils import needs_cuda

ENV = {"gpu": "fake", "torch": "t", "triton": "tr", "cuda": "c", "commit": "abc", "date": "d"}
CPU = torch.device("cpu")


# ---------------------------------------------------------------- shape sets
def test_target_linears_are_the_targets_md_shapes():
    labels = {s.label for s in S.TARGET_LINEARS}
    assert labels == {"4096x8192x8192", "16x8192x28672", "1x8192x28672", "4096x8192x28672"}


def test_llm_set_covers_every_dimension_at_every_m():
    shapes = S.llm_linears()
    assert {s.m for s in shapes} == {1, 16, 128, 4096}
    assert {d for s in shapes for d in (s.k, s.n)} == {4096, 8192, 14336, 28672}
    assert len(shapes) == len(set(shapes)) == len(S.LLM_KN) * 4


def test_resnet50_layers():
    layers = {s.layer: s for s in S.resnet50_convs(64)}
    stem = layers["conv1"]
    assert (stem.c_in, stem.hw, stem.c_out, stem.kernel, stem.stride, stem.out_hw) == (3, 224, 64, 7, 2, 112)
    # v1.5: the stride sits on the 3x3; the block's last 1x1 adds the residual
    assert layers["layer2.0.conv2"].stride == 2 and layers["layer2.0.conv2"].out_hw == 28
    assert layers["layer4.0.conv3"].residual and layers["layer4.0.conv3"].c_out == 2048
    assert layers["layer3.0.downsample"].activation == "identity"
    assert all(s.batch == 64 for s in layers.values())
    assert len({s.label for s in layers.values()}) == len(layers)  # distinct


def test_mobilenetv2_layers():
    convs = S.mobilenetv2_convs(1)
    dw = [s for s in convs if s.groups > 1]
    assert dw and all(s.groups == s.c_in == s.c_out and s.kernel == 3 for s in dw)
    assert all(s.activation == "relu6" for s in convs if not s.layer.endswith("project"))
    assert any(s.residual for s in convs) and not any(s.residual and s.stride != 1 for s in convs)
    assert convs[-1].c_out == 1280 and convs[-1].hw == 7


def test_conv_flops_match_a_direct_count():
    s = S.ConvShape(2, 6, 9, 4, 3, 2, groups=2)
    x = torch.randn(2, 6, 9, 9)
    w = torch.randn(4, 3, 3, 3)
    out = torch.nn.functional.conv2d(x, w, stride=2, padding=1, groups=2)
    assert out.shape[-1] == s.out_hw
    assert s.flops() == 2 * out.numel() * 3 * 3 * 3  # each output: C_in/groups * kh * kw MACs


def test_every_set_resolves_and_unknown_set_names_the_choices():
    for name in S.SHAPE_SETS:
        linear, conv = S.shape_set(name)
        assert linear or conv
    with pytest.raises(ValueError, match="targets"):
        S.shape_set("nope")


# ---------------------------------------------------------------- timing helpers
def test_copies_make_the_working_set_exceed_l2():
    l2 = 50 * 2**20
    for nbytes in (2 * 2**20, 7 * 2**20, 30 * 2**20):
        n = copies_for(nbytes, l2)
        assert n * nbytes >= 2 * l2 and (n - 1) * nbytes < 2 * l2
    assert copies_for(10**9, l2) == 1
    assert copies_for(1, l2) == MAX_COPIES
    assert copies_for(2**20, 0) == 1  # CPU: no rotation


def test_peaks_are_rates_from_the_timer():
    peaks = measure_peaks(FakeTimer(default_us=1000.0), CPU)
    n_copy, s = 2**20, 256
    assert math.isclose(peaks["copy"].value, 2 * n_copy * 4 / 1e-3 / 1e9)
    assert math.isclose(peaks["bf16_mm"].value, 2 * s**3 / 1e-3 / 1e12)
    assert peaks["int_mm"].unit == "TOP/s"


# ---------------------------------------------------------------- runner rows
def _runner(timer=None, budget=None, quick=False, peaks=None):
    peaks = peaks or {"copy": Peak("copy", 1000.0, "GB/s", "", None),
                      "bf16_mm": Peak("bf16_mm", 100.0, "TFLOP/s", "", None),
                      "int_mm": Peak("int_mm", 200.0, "TOP/s", "", None)}
    return Runner(timer or FakeTimer(), CPU, ENV, peaks, 0, budget or Budget(None), quick, "unit")


def _case(flops=2e9, wbytes=10**6, io=10**6, fn=lambda x: x + 1):
    return Case(fn, lambda: (torch.ones(4),), flops, wbytes, io, note="n")


def _absent(*a):
    raise Absent("peerlib not importable")


def _broken_setup(*a):
    raise RuntimeError("cannot build\nsecond line")


def _broken_call(*a):
    def fn(x):
        raise ValueError("bad shape")
    return _case(fn=fn)


def _unsupported(*a):
    def fn(x):
        raise RuntimeError("kernelswap.int8_linear: no backend can serve this call")
    return _case(fn=fn)


def test_every_provider_gets_a_row_with_its_fate():
    provs = [Provider("good", "ours", lambda *a: _case()),
             Provider("missing-module", "peer", lambda *a: _case(), requires="surely_not_a_module_kswap"),
             Provider("absent", "peer", _absent),
             Provider("setup-error", "baseline", _broken_setup),
             Provider("call-error", "baseline", _broken_call),
             Provider("unsupported", "ours", _unsupported, backend="cuda")]
    r = _runner()
    r.run_op("int8_linear", S.LinearShape(3, 8, 8), torch.bfloat16, provs)
    by = {row["provider"]: row for row in r.rows}
    assert list(by) == [p.name for p in provs]
    assert by["good"]["status"] == "ok" and by["good"]["p50_us"] == 100.0
    assert by["missing-module"]["status"] == "absent" and "surely_not_a_module_kswap" in by["missing-module"]["note"]
    assert by["absent"]["status"] == "absent" and "peerlib" in by["absent"]["note"]
    assert by["setup-error"]["status"] == "error" and by["setup-error"]["note"] == "setup: RuntimeError: cannot build"
    assert by["call-error"]["status"] == "error" and "ValueError: bad shape" in by["call-error"]["note"]
    assert by["unsupported"]["status"] == "unsupported"
    assert all(row["gpu"] == "fake" and row["dtype"] == "bf16" for row in r.rows)


def test_rates_pick_the_bound_that_applies():
    r = _runner(FakeTimer(default_us=1000.0))
    # 2 GFLOP over 2 MB: 1000 FLOP/byte, above the bf16 ridge (100e12 / 1000e9 = 100): compute-bound
    r.run_op("sparse24_linear", S.LinearShape(1, 8, 8), torch.float16, [Provider("a", "ours", lambda *a: _case())])
    # 2 MFLOP over 2 MB: memory-bound
    r.run_op("sparse24_linear", S.LinearShape(1, 8, 8), torch.float16,
             [Provider("b", "ours", lambda *a: _case(flops=2e6))])
    # int8 math is held to the int8 peak
    r.run_op("int8_linear", S.LinearShape(1, 8, 8), torch.float16, [Provider("c", "ours", lambda *a: _case())])
    a, b, c = r.rows
    assert math.isclose(a["tflops"], 2.0) and math.isclose(a["gbps"], 2.0)
    assert a["peak"] == "bf16_mm" and math.isclose(a["pct_peak"], 2.0)
    assert b["peak"] == "copy" and math.isclose(b["pct_peak"], 0.2)
    assert c["peak"] == "int_mm" and math.isclose(c["pct_peak"], 1.0)


def test_spent_budget_and_quick_mode_write_skipped_rows():
    compile_p = Provider("compile", "baseline", lambda *a: _case(), slow=True)
    plain = Provider("plain", "baseline", lambda *a: _case())
    r = _runner(quick=True)
    r.run_op("op", S.LinearShape(1, 8, 8), torch.bfloat16, [plain, compile_p])
    assert [row["status"] for row in r.rows] == ["ok", "skipped"] and "--quick" in r.rows[1]["note"]
    r = _runner(budget=Budget(0.0))
    r.run_op("op", S.LinearShape(1, 8, 8), torch.bfloat16, [plain])
    assert r.rows[0]["status"] == "skipped" and "budget" in r.rows[0]["note"]


def test_compiling_providers_wait_for_the_compile_pass():
    timer = FakeTimer()
    r = _runner(timer)
    provs = [Provider("compile", "baseline", lambda *a: _case(), slow=True), Provider("plain", "baseline",
                                                                                     lambda *a: _case())]
    r.run_op("op", S.LinearShape(1, 8, 8), torch.bfloat16, provs)
    assert [row["provider"] for row in r.rows] == ["plain"] and len(r.deferred) == 1
    r.run_deferred()
    assert [row["provider"] for row in r.rows] == ["plain", "compile"] and not r.deferred
    assert timer.calls == ["op|plain|1x8x8|bf16", "op|compile|1x8x8|bf16"]


def test_inputs_rotate_across_copies():
    seen = []

    def make(*a):
        counter = iter(range(100))
        return Case(lambda i: seen.append(i), lambda: (next(counter),), 1.0, 1000, 0)

    r = Runner(_CallingTimer(7), CPU, ENV, {}, 2500, Budget(None))  # L2 2500 B: 5 copies of 1000 B
    r.run_op("op", S.LinearShape(1, 8, 8), torch.bfloat16, [Provider("p", "ours", make)])
    assert seen == [0, 1, 2, 3, 4, 0, 1]
    assert "5 copies" in r.rows[0]["note"]


class _CallingTimer:
    def __init__(self, n):
        self.n = n

    def __call__(self, fn):
        for _ in range(self.n):
            fn()
        return Timing(1.0, 1.0, 1.0)


# ---------------------------------------------------------------- the whole run, on CPU
def test_cpu_run_writes_every_case(tmp_path):
    args = parser().parse_args(["--device", "cpu", "--quick", "--shapes", "tiny", "--models", "none",
                                "--ops", "int4_linear,conv_bn_act", "--out", str(tmp_path)])
    timer = FakeTimer(default_us=50.0)
    rows = run(args, timer=timer)
    back = read_csv(str(tmp_path / "bench.csv"))
    assert len(back) == len(rows)
    assert {r["status"] for r in back} <= set(STATUSES)
    from kernelswap.bench.providers import providers
    for op, shapes in (("int4_linear", S.TINY_LINEARS), ("conv_bn_act", S.TINY_CONVS)):
        names = [p.name for p in providers(op)]
        for s in shapes:
            got = [r["provider"] for r in back if r["op"] == op and r["shape"] == s.label]
            assert sorted(got) == sorted(names), f"{op} {s.label}: {got}"
    by = {(r["op"], r["provider"], r["shape"]): r for r in back}
    assert by[("int4_linear", "ours-auto", "33x256x160")]["status"] == "ok"
    assert "reference" in by[("int4_linear", "ours-auto", "33x256x160")]["note"]
    assert by[("int4_linear", "tinygemm", "33x256x160")]["status"] == "error"
    assert by[("int4_linear", "torchao", "33x256x160")]["status"] in ("absent", "skipped")
    assert by[("conv_bn_act", "compile", S.TINY_CONVS[0].label)]["status"] == "skipped"
    assert {r["op"] for r in back if r["kind"] == "peak"} == {"peak"}
    md = (tmp_path / "bench.md").read_text()
    assert "## int4_linear (bf16)" in md and "## Targets" in md and "## Not timed" in md
    assert "P1" in short_table(rows)


def test_cli_rejects_unknown_names_and_lists_sets(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["--ops", "int9_linear"])
    from kernelswap.bench.cli import main
    assert main(["--list"]) == 0
    assert "resnet50" in capsys.readouterr().out
    assert isinstance(parser(), argparse.ArgumentParser)


# ---------------------------------------------------------------- baselines' weight conversions
def test_tinygemm_mapping_dequantizes_like_ours():
    q = packing.quantize_int4(torch.randn(16, 256), 128)
    codes_hi_first, sz = to_tinygemm(q, torch.float32)
    hi, lo = (codes_hi_first >> 4).long(), (codes_hi_first & 0x0F).long()
    codes = torch.stack((hi, lo), dim=-1).reshape(16, 256).float()  # tinygemm: even k in the high nibble
    scale, zero = sz[..., 0].t(), sz[..., 1].t()  # (G, N, 2) -> (N, G)
    w_tg = ((codes.reshape(16, 2, 128) - 8) * scale[..., None] + zero[..., None]).reshape(16, 256)
    torch.testing.assert_close(w_tg, packing.dequantize_int4(q), rtol=0, atol=1e-6)


def test_plan_puts_targets_first_and_runs_shared_cases_once():
    from kernelswap.bench.plan import TARGET_CASES, plan
    items = plan(["targets", "llm"], ["int8_weight_linear", "int8_linear", "conv_bn_act"],
                 [torch.bfloat16, torch.float16], ["cnn", "llm"])
    kinds = [it.kind for it in items]
    first_non_target = next(i for i, it in enumerate(items) if it.priority > 0)
    assert first_non_target == 2  # P1 and P2 are int8_linear's
    assert {(it.op, it.shape.label) for it in items[:2]} <= TARGET_CASES
    assert kinds[2] == "cnn" and items[3].op == "conv_bn_act" and items[3].shape.batch == 64
    assert kinds.index("llm") < next(i for i, it in enumerate(items) if it.op == "int8_weight_linear")
    keys = [(it.op, it.shape.label, it.dtype) for it in items if it.kind == "kernel"]
    assert len(keys) == len(set(keys))  # 16x8192x28672 is in both sets: once
    assert items[-1].dtype == torch.float16


def test_conv_batches_keep_only_those_layers():
    from kernelswap.bench.plan import plan
    args = parser().parse_args(["--shapes", "resnet50", "--conv-batches", "1"])
    items = plan(args.shapes, ["conv_bn_act"], [torch.bfloat16], [], args.conv_batches)
    assert items and {it.shape.batch for it in items} == {1}
    assert len(plan(["resnet50"], ["conv_bn_act"], [torch.bfloat16], [])) == 2 * len(items)
    with pytest.raises(SystemExit):
        parser().parse_args(["--conv-batches", "one"])


def test_sigterm_still_writes_the_rows_measured(tmp_path):
    import os
    import signal

    class KillAfter(FakeTimer):
        def __call__(self, fn):
            t = super().__call__(fn)
            if len(self.calls) == 5:  # 3 peaks, ours-auto, then the next case that runs: killed mid-timing
                os.kill(os.getpid(), signal.SIGTERM)
            return t

    args = parser().parse_args(["--device", "cpu", "--shapes", "tiny", "--models", "none", "--ops", "int8_linear",
                                "--dtypes", "bf16", "--quick", "--out", str(tmp_path)])
    rows = run(args, timer=KillAfter())
    back = read_csv(str(tmp_path / "bench.csv"))
    assert len(back) == len(rows) and [r["provider"] for r in back if r["status"] == "ok"][3:] == ["ours-auto"]
    assert not any(r["status"] in ("error", "skipped") for r in back)  # the killed case is not an error row
    assert len(back) < 3 + 2 * 8  # stopped early: the tiny set has two shapes x 8 providers


@needs_cuda
def test_gpu_timing_peaks_and_l2():
    from kernelswap.bench.timing import DoBenchTimer, l2_bytes
    dev = torch.device("cuda")
    timer = DoBenchTimer(5, 20)
    peaks = measure_peaks(timer, dev)
    assert all(p.value > 0 and not p.error for p in peaks.values()), peaks
    assert l2_bytes(dev) > 2**20
    r = Runner(timer, dev, ENV, peaks, l2_bytes(dev), Budget(None))
    from kernelswap.bench.providers.linear import DENSE
    r.run_op("int8_linear", S.LinearShape(16, 1024, 1024), torch.bfloat16, [DENSE])
    row = r.rows[0]
    assert row["status"] == "ok" and row["p20_us"] <= row["p50_us"] <= row["p80_us"] and 0 < row["pct_peak"] < 150
    assert "copies rotated" in row["note"]  # 2 MB of weights: rotated past L2
