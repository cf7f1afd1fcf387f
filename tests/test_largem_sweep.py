"""benchmarks/never_slower.py on CPU: the whole sweep loop (ks.swap of each recipe, the
dispatcher's choice, the per-implementation providers, rows and tables) with a stand-in
timer that runs each provider once and reports fixed times; the argument parsing. The GPU
timing itself (do_bench, CUDA graphs) runs only on the GPU."""
from __future__ import annotations

import csv
import pathlib
import runpy

import pytest

SWEEP = runpy.run_path(str(pathlib.Path(__file__).parents[1] / "benchmarks" / "never_slower.py"))


def _timer(calls):
    def timer(fn, mode):
        out = fn()
        calls.append((tuple(out.shape), mode))
        return 10.0, 9.0, 11.0
    return timer


def test_sweep_rows_and_table(tmp_path, one_thread):
    calls = []
    rows, stopped = SWEEP["sweep"]([(64, 32)], [1, 5], list(SWEEP["RECIPES"]), _timer(calls), device="cpu",
                                   log=lambda s: None)
    assert stopped == ""
    assert all(shape[-1] == 32 for shape, _ in calls)  # every provider ran and gave (M, N)
    keys = {(r["recipe"], r["provider"], r["mode"], r["m"]) for r in rows}
    for recipe in SWEEP["RECIPES"]:
        for m in (1, 5):
            assert {(recipe, "auto", "eager", m), (recipe, "auto", "graph", m)} <= keys
    assert {("bf16", "bf16", mode, m) for mode in ("eager", "graph") for m in (1, 5)} <= keys
    auto = [r for r in rows if r["provider"] == "auto"]
    assert all(r["impl"].startswith("reference/") and r["x_bf16"] == 1.0 and r["note"] == "" for r in auto)
    SWEEP["write"](str(tmp_path), rows)
    with open(tmp_path / "never_slower.csv") as f:
        back = list(csv.DictReader(f))
    assert len(back) == len(rows) and set(back[0]) == set(SWEEP["FIELDS"])
    md = (tmp_path / "never_slower.md").read_text()
    assert "## K x N = 64x32" in md and "auto at or below bf16: 10 of 10 points." in md


def test_sweep_takes_the_fp8_recipes(one_thread):
    """fp8 and sparse24-fp8 are swept when asked for (--recipes), not by default."""
    assert not set(SWEEP["EXTRA_RECIPES"]) & set(SWEEP["RECIPES"])
    rows, stopped = SWEEP["sweep"]([(64, 32)], [3], list(SWEEP["EXTRA_RECIPES"]), _timer([]), device="cpu",
                                   log=lambda s: None)
    assert stopped == ""
    for recipe in SWEEP["EXTRA_RECIPES"]:
        assert {(r["provider"], r["mode"]) for r in rows if r["recipe"] == recipe} >= {("auto", "eager"), ("auto", "graph")}
    assert all(r["note"] == "" for r in rows)


def test_markdown_names_the_knobs_of_the_run(monkeypatch):
    rows, _ = SWEEP["sweep"]([(64, 32)], [3], ["int8"], _timer([]), device="cpu", log=lambda s: None)
    import os
    for name in [k for k in os.environ if k.startswith("KERNELSWAP_")]:
        monkeypatch.delenv(name)
    assert "Run with" not in SWEEP["markdown"](rows)
    monkeypatch.setenv("KERNELSWAP_SM90_SMALL_M", "128")
    assert "Run with `KERNELSWAP_SM90_SMALL_M=128`." in SWEEP["markdown"](rows)


def test_sweep_failure_is_a_row_and_budget_stops(one_thread):
    def timer(fn, mode):
        raise RuntimeError("capture failed\nsecond line")
    rows, _ = SWEEP["sweep"]([(64, 32)], [3], ["int8"], timer, device="cpu", log=lambda s: None)
    assert rows and all(r["note"] == "RuntimeError: capture failed" and r["us"] == "" for r in rows)
    assert "auto at or below bf16: 0 of 0 points." in SWEEP["markdown"](rows)
    assert "- 64x32 M=3 int8 auto graph: RuntimeError: capture failed" in SWEEP["markdown"](rows)
    rows, stopped = SWEEP["sweep"]([(64, 32), (32, 64)], [3], ["int8", "int4"], _timer([]), seconds=1e-9,
                                   device="cpu", log=lambda s: None)
    assert "not measured" in stopped and {r["recipe"] for r in rows} == {"bf16"}
    assert "Stopped early" in SWEEP["markdown"](rows, stopped)


def test_parsing():
    assert SWEEP["parse_shapes"]("4096x14336,8192X28672") == [(4096, 14336), (8192, 28672)]
    assert len(SWEEP["parse_shapes"](None)) == 6
    assert SWEEP["parse_ints"]("1,32", (7,), "--m") == [1, 32] and SWEEP["parse_ints"](None, (7,), "--m") == [7]
    with pytest.raises(SystemExit, match="KxN"):
        SWEEP["parse_shapes"]("4096")
    with pytest.raises(SystemExit, match=">= 1"):
        SWEEP["parse_ints"]("0,4", (7,), "--m")


def _row(shape, m, provider, us, recipe="int4", mode="graph"):
    return dict(shape=shape, m=m, recipe=recipe, provider=provider, mode=mode, us=us)


def test_crossover_needs_every_larger_m_on_every_shape():
    below, above = "impl:triton/_int4_linear_triton", "impl:torch/_int4_linear_torch"
    times = {  # (shape, M): (below, above)
        ("a", 128): (10, 12), ("a", 512): (20, 19), ("a", 2048): (50, 40), ("a", 8192): (200, 150),
        ("b", 128): (10, 9), ("b", 512): (20, 21), ("b", 2048): (50, 45), ("b", 8192): (200, 190),
    }
    rows = [_row(s, m, p, t) for (s, m), pair in times.items() for p, t in zip((below, above), pair)]
    rows.append(_row("a", 2048, above, 1.0, mode="eager"))  # eager rows do not count
    start, evidence = SWEEP["crossover"](rows, "int4", below, above)
    assert start == 2048  # M=128 wins on b only, M=512 on a only
    assert "M=512: a 20/19 us, b 20/21 us" in evidence
    rows = [r for r in rows if not (r["shape"] == "b" and r["m"] == 8192 and r["provider"] == above)]
    assert SWEEP["crossover"](rows, "int4", below, above)[0] is None  # a missing point is no win
    assert SWEEP["crossover"]([], "int4", below, above) == (None, "not measured")


def test_plot_from_the_csv(tmp_path, one_thread):
    rows, _ = SWEEP["sweep"]([(64, 32), (32, 48)], [1, 5], ["int8", "sparse24"], _timer([]), device="cpu",
                             log=lambda s: None)
    SWEEP["write"](str(tmp_path), rows)
    plot = runpy.run_path(str(pathlib.Path(__file__).parents[1] / "benchmarks" / "never_slower_plot.py"))
    with open(tmp_path / "never_slower.csv") as f:
        back = list(csv.DictReader(f))
    lines = plot["series"](back, "graph")
    assert set(lines) == {"64x32", "32x48"} and set(lines["64x32"]) == {"int8", "sparse24"}
    assert lines["64x32"]["int8"] == [(1, 1.0), (5, 1.0)]
    path = plot["plot"](back, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000 and path.endswith("p.png")
    with pytest.raises(SystemExit, match="nothing to plot"):
        plot["plot"]([], str(tmp_path / "q.png"))


def test_tuned_since_reports_new_tuning_choices(monkeypatch):
    import sys
    import types

    import triton
    import triton.language as tl

    @triton.jit
    def _kernel(x, BLOCK: tl.constexpr):
        pass

    tuner = triton.autotune(configs=[triton.Config({"BLOCK": 4})], key=[])(_kernel)
    module = types.ModuleType("kernelswap.kernels._sweep_test_only")
    module.TUNED = {"large": tuner}
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert any(t is tuner for t in SWEEP["autotuners"]())
    before = {id(t): set(t.cache) for t in SWEEP["autotuners"]()}
    assert SWEEP["tuned_since"](before) == ""
    tuner.cache[("k",)] = triton.Config({"BLOCK": 8}, num_warps=2, num_stages=3)
    assert SWEEP["tuned_since"](before) == "_kernel: {'BLOCK': 8} w2 s3"


def test_kernel_variants_from_their_m():
    w = (None, None, None)
    assert [n for n, _ in SWEEP["kernel_variants"]("int8-weight", 128, w, "cuda")] == ["kernel:triton/w8a16_tma"]
    assert SWEEP["kernel_variants"]("int8-weight", 64, w, "cuda") == []
    assert SWEEP["kernel_variants"]("int8-weight", 128, w, "cpu") == []
    assert SWEEP["kernel_variants"]("int4", 8192, w, "cuda") == []
