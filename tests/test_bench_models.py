"""Model benchmarks of the harness (a tiny decoder and a tiny CNN) on CPU with the fake timer:
every recipe and variant gets its row, CUDA-only variants are recorded as errors, not dropped."""
import pytest
import torch

from kernelswap.bench.report import markdown
from test_bench import _runner


def test_decoder_rows_for_every_recipe_and_case():
    from kernelswap.bench import models
    r = _runner()
    tiny = dict(hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=96)
    models.run_decoder(r, recipes=("int8", "int4"), layers=1, shape=tiny, prefill=8, decode=(1, 3), cache_len=4)
    got = {(row["provider"], row["shape"]): row for row in r.rows}
    eager = {(p, c) for p in ("bf16", "int8", "int4") for c in ("prefill-m8", "decode-m1", "decode-m3")}
    graphed = {(p + "+graph", c) for p in ("bf16", "int8", "int4") for c in ("decode-m1", "decode-m3")}
    assert set(got) == eager | graphed
    assert all(got[k]["status"] == "ok" for k in eager), [row["note"] for row in r.rows]
    assert all(got[k]["status"] == "error" and "CUDA" in got[k]["note"] for k in graphed)  # CPU: recorded
    assert got[("int4", "decode-m1")]["weight_mb"] < got[("int8", "decode-m1")]["weight_mb"] \
        < got[("bf16", "decode-m1")]["weight_mb"]
    assert got[("bf16", "prefill-m8")]["throughput"] == pytest.approx(8 / 100e-6)  # 8 tokens in 100 us
    assert "## Models" in markdown(r.rows)


def _tiny_cnn(weights=None):
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1, bias=False), torch.nn.BatchNorm2d(8),
                               torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(8),
                               torch.nn.ReLU6(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(8, 4))


def test_cnn_variants_are_all_recorded(monkeypatch):
    torchvision = pytest.importorskip("torchvision")
    from kernelswap.bench import models
    monkeypatch.setattr(torchvision.models, "kswap_tiny_cnn", _tiny_cnn, raising=False)
    monkeypatch.setitem(models.CNNS, "tiny", "kswap_tiny_cnn")
    r = _runner()
    models.run_cnns(r, names=("tiny",), batches=(1, 2), resolution=16)
    status = {(row["shape"], row["provider"]): row["status"] for row in r.rows}
    for b in ("b1", "b2"):
        for v in ("eager", "bn-folded", "swap-fuse"):
            assert status[(b, v)] == "ok", (b, v, [row["note"] for row in r.rows])
    assert status[("b1", "swap-fuse+graph")] == "error"  # CUDA graphs on CPU: recorded, not dropped
    assert ("b2", "swap-fuse+graph") not in status  # graphs are a batch-1 variant
    assert len(r.deferred) == 2 and ("b1", "compile") not in status  # compiles wait for the last pass
    seen = []  # the compile pass must time each deferred variant on its own batch
    monkeypatch.setattr(torch, "compile", lambda m: (lambda inp: (seen.append(inp.shape[0]), m(inp))[1]))
    r.run_deferred()
    # each on its own batch: its first answer (first_s), then the timed call
    assert seen == [1, 1, 2, 2] and [row["status"] for row in r.rows[-2:]] == ["ok", "ok"]
    assert all(row["first_s"] > 0 for row in r.rows if row["status"] == "ok")
