"""The benchmark harness's results, on CPU: the CSV schema, the markdown verdicts (targets,
losses), merging runs, and the plots drawn from a CSV. Rows are made by hand; no number
here is a performance number."""
import csv

import pytest

from kernelswap.bench.cli import parser
from kernelswap.bench.report import COLUMNS, markdown, read_csv, write_csv
from kernelswap.bench.targets import evaluate

ENV = {"gpu": "fake", "torch": "t", "triton": "tr", "cuda": "c", "commit": "abc", "date": "d"}


# ---------------------------------------------------------------- CSV and markdown
def _row(op, provider, shape, us, status="ok", dtype="bf16", **kw):
    return {"op": op, "provider": provider, "kind": "x", "shape": shape, "dtype": dtype, "status": status,
            "p50_us": us, **ENV, **kw}


def test_targets_met_and_missed():
    rows = [_row("int8_linear", "ours-auto", "4096x8192x8192", 400.0),
            _row("int8_linear", "torch-dense", "4096x8192x8192", 800.0),
            _row("int8_linear", "ours-auto", "16x8192x28672", 168.0),
            _row("int8_linear", "torch-dense", "16x8192x28672", 200.0),
            _row("int4_linear", "ours-auto", "1x8192x28672", None, status="error", note="boom"),
            _row("int4_linear", "torch-dense", "1x8192x28672", 180.0)]
    v = {x.id: x for x in evaluate(rows)}
    assert v["P1"].met and v["P1"].verdict.startswith("met (0.50x")
    assert not v["P2"].met and v["P2"].verdict.startswith("missed by 1.40x")  # 0.84 / 0.60
    assert "error" in v["P3"].verdict and "boom" in v["P3"].verdict
    assert v["P6"].verdict == "not run"
    md = markdown(rows)
    assert "met (0.50x" in md and "missed by 1.40x" in md
    assert "| int8_linear | 16x8192x28672 | bf16 | 168 | 200 | 1.19x |" not in md  # we win there: not a loss


def test_p9_counts_layers_slower_than_the_better_baseline():
    rows = []
    for i, (ours, eager, folded) in enumerate(((50.0, 100.0, 80.0), (60.0, 90.0, 55.0), (40.0, 60.0, 70.0))):
        shape = f"n64-layer{i}"
        rows += [_row("conv_bn_act", "ours-auto", shape, ours), _row("conv_bn_act", "eager", shape, eager),
                 _row("conv_bn_act", "bn-folded", shape, folded)]
    rows.append(_row("conv_bn_act", "ours-auto", "n1-layer0", 1000.0))  # N=1 layers are not P9's
    p9 = next(v for v in evaluate(rows) if v.id == "P9")
    assert not p9.met and "3 layers" in p9.verdict and "1 slower" in p9.verdict and "median 1.50x" in p9.verdict


def test_losses_listed_plainly():
    rows = [_row("sparse24_linear", "ours-auto", "16x8192x28672", 300.0),
            _row("sparse24_linear", "torch-dense", "16x8192x28672", 180.0),
            _row("conv_bn_act", "ours-auto", "n1-x", 10.0), _row("conv_bn_act", "eager", "n1-x", 30.0),
            _row("conv_bn_act", "bn-folded", "n1-x", 8.0)]
    md = markdown(rows)
    loss = md.split("## Where we lose")[1].split("##")[0]
    assert "| sparse24_linear | 16x8192x28672 | bf16 | 300 | 180 | 0.60x |" in loss
    assert "| conv_bn_act | n1-x | bf16 | 10.0 | 8.0 | 0.80x |" in loss


def test_csv_schema_and_round_trip(tmp_path):
    rows = [_row("int8_linear", "ours-auto", "1x8x8", 12.5, tflops=float("nan")),
            _row("int8_linear", "torchao", "1x8x8", None, status="absent", note="torchao not importable, really")]
    path = str(tmp_path / "b.csv")
    write_csv(rows, path)
    with open(path) as f:
        assert tuple(next(csv.reader(f))) == COLUMNS
    back = read_csv(path)
    assert back[0]["p50_us"] == 12.5 and back[0]["tflops"] is None
    assert back[1]["status"] == "absent" and back[1]["note"] == "torchao not importable, really"
    with pytest.raises(ValueError):
        write_csv([{**rows[0], "not_a_column": 1}], path)


def test_merge_keeps_the_later_run_unless_it_skipped(tmp_path):
    old = {**ENV, "commit": "old"}
    new = {**ENV, "commit": "new"}
    run_a = [{**_row("peak", "copy", "1 MiB", 10.0), **old, "kind": "peak"},
             {**_row("int8_linear", "ours-auto", "1x8x8", 20.0), **old},
             {**_row("int8_linear", "ours-auto", "16x8x8", 30.0), **old}]
    run_b = [{**_row("peak", "copy", "1 MiB", 11.0), **new, "kind": "peak"},
             {**_row("int8_linear", "ours-auto", "1x8x8", 15.0), **new},
             {**_row("int8_linear", "ours-auto", "16x8x8", None, status="skipped"), **new},
             {**_row("int8_linear", "ours-auto", "128x8x8", 40.0), **new}]
    paths = []
    for name, rows in (("a.csv", run_a), ("b.csv", run_b)):
        paths.append(str(tmp_path / name))
        write_csv(rows, paths[-1])
    out = tmp_path / "merged"
    parser().parse_args(["--merge", *paths, "--out", str(out)])  # the CLI takes it
    from kernelswap.bench.cli import write_merged
    merged = write_merged(paths, str(out))
    back = read_csv(str(out / "bench.csv"))
    assert len(back) == len(merged) == 5
    got = {r["shape"]: (r["commit"], r["p50_us"]) for r in back if r["kind"] != "peak"}
    assert got["1x8x8"] == ("new", 15.0)  # replaced by the later run
    assert got["16x8x8"] == ("old", 30.0)  # the later run skipped it
    assert got["128x8x8"] == ("new", 40.0)
    assert [r["commit"] for r in back if r["kind"] == "peak"] == ["old", "new"]  # each run's peak stays
    md = (out / "bench.md").read_text()
    assert "Merged from 2 runs" in md and "| fake | t | tr | c | new | d | 3 |" in md


def test_plots_are_drawn_from_the_csv(tmp_path):
    import runpy
    rows = [_row("peak", "copy", "1 GiB", 100.0, kind="peak", gbps=3000.0),
            _row("peak", "bf16_mm", "8192^3", 1500.0, kind="peak", tflops=700.0)]
    for m in (1, 16, 4096):
        rows += [_row("int4_linear", "ours-auto", f"{m}x8192x28672", 50.0 * m ** 0.5, tflops=1.0, gbps=900.0),
                 _row("int4_linear", "torch-dense", f"{m}x8192x28672", 180.0 * m ** 0.5, tflops=1.0, gbps=2000.0)]
    rows += [_row("conv_bn_act", p, "n64-c64-h56-o64-k3-s1-g1-relu", us) for p, us in
             (("ours-auto", 80.0), ("eager", 120.0), ("bn-folded", 100.0))]
    rows += [_row("model:resnet50", "eager", "b64", 9000.0), _row("model:resnet50", "swap-fuse", "b64", 6000.0)]
    write_csv(rows, str(tmp_path / "bench.csv"))
    plot = runpy.run_path(str(__import__("pathlib").Path(__file__).parents[1] / "benchmarks" / "plot.py"))
    assert plot["main"]([str(tmp_path / "bench.csv")]) == 0
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["conv_speedup.png", "models.png", "roofline.png", "speedup_int4_linear.png"]


def test_default_out_is_a_new_folder_not_the_committed_results(tmp_path, monkeypatch, capsys):
    from kernelswap.bench.cli import main
    assert parser().parse_args([]).out is None  # benchmarks/results only when named with --out
    src = tmp_path / "run.csv"
    write_csv([_row("int8_linear", "ours-auto", "1x8x8", 20.0)], str(src))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    said = []
    for _ in range(2):  # a second run (within the same second, too) makes a second folder
        assert main(["--merge", str(src)]) == 0
        said.append(capsys.readouterr().out)
    made = sorted(p.name for p in work.iterdir())
    assert len(made) == 2 and all(m.startswith("kernelswap-bench-") for m in made), made
    for m in made:
        assert len(read_csv(str(work / m / "bench.csv"))) == 1 and (work / m / "bench.md").exists()
        assert sum(f"wrote 1 rows to {m}/bench.csv" in out for out in said) == 1
