"""The real-client benchmark (kernelswap.bench.hf_llama) runs through its whole code on a tiny
Llama config on CPU: every variant builds, generates, prefills and compiles its decode step
with fullgraph=True, and the report files are written."""
import csv
import math
import os

import pytest

pytest.importorskip("transformers")

from kernelswap.bench import hf_llama  # noqa: E402


@pytest.mark.model
def test_tiny_llama_runs_every_variant(tmp_path, reference_backend):
    # Every variant through L1 and L3; the compiled decode step (dynamo, fullgraph) for bf16 and the
    # recipes that once broke under cudagraphs (W8A16, 2:4), to keep the CPU run short.
    rows = hf_llama.run(layers=1, shape=hf_llama.TINY, device="cpu", new_tokens=3, prefill=8, steps=2, reps=1,
                        log=lambda s: None, measures=("L1", "L3"), rounds=2)
    compiled = hf_llama.run(layers=1, shape=hf_llama.TINY, device="cpu", new_tokens=3, prefill=8, steps=2, reps=1,
                            log=lambda s: None, measures=("L2",), only=("int8-weight", "sparse24"))
    assert [r["variant"] for r in compiled] == ["bf16", "kernelswap int8-weight", "kernelswap sparse24",
                                                "kernelswap sparse24-int8"]
    for r in compiled:
        assert "error" not in r and r["L2_ms_per_step"] > 0, f"{r['variant']}: {r.get('error')}"
        assert r["L2_pipelined_ms_per_step"] > 0
    names = [r["variant"] for r in rows]
    assert names[:6] == ["bf16"] + [f"kernelswap {r}" for r in hf_llama.RECIPES]
    for r in rows:
        if r["variant"].startswith("torchao") and "error" in r:
            continue  # a peer that fails where it is installed (e.g. torchao's int4 without mslk) is recorded
        assert "error" not in r, f"{r['variant']}: {r.get('error')}"
        # L1 is a difference of two generate() timings: on a busy CPU it can come out negative.
        assert math.isfinite(r["L1_ms_per_token"]) and r["L3_prefill_ms"] > 0
        # Two interleaved rounds; L1 comes from the best N-token and best 1-token samples, so it
        # need not equal any one round's figure.
        assert len(r["L1_rounds_ms"]) == 2 and all(math.isfinite(v) for v in r["L1_rounds_ms"])
        assert r["weight_bytes"] > 0 and -1.0 <= r["cosine_vs_bf16"] <= 1.0001
    bf16 = rows[0]
    assert bf16["cosine_vs_bf16"] == pytest.approx(1.0, abs=1e-5)
    int4 = next(r for r in rows if r["variant"] == "kernelswap int4")
    assert int4["weight_bytes"] < bf16["weight_bytes"]  # the swapped layers hold fewer bytes
    hf_llama.write(rows, str(tmp_path), "tiny")
    with open(tmp_path / "hf_llama.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert "kernelswap int4" in (tmp_path / "hf_llama.md").read_text()
    assert "L1 of each round" in (tmp_path / "hf_llama.md").read_text()
    assert os.path.getsize(tmp_path / "hf_llama.png") > 0


@pytest.mark.model
def test_lm_head_option_swaps_the_head_in_its_variants(reference_backend):
    import kernelswap as ks

    base = hf_llama.build_model(1, hf_llama.TINY, "cpu", hf_llama.torch.bfloat16)
    built = dict(hf_llama.variants(base, "both"))
    ours = [n for n in built if n.startswith("kernelswap")]
    assert ours == [f"kernelswap {r}" for r in hf_llama.RECIPES] + [f"kernelswap {r} +lm_head" for r in hf_llama.RECIPES]
    kept, swapped = built["kernelswap int8"](), built["kernelswap int8 +lm_head"]()
    assert isinstance(kept.lm_head, hf_llama.nn.Linear)
    assert isinstance(swapped.lm_head, ks.nn.Int8Linear)
    assert [n for n, _ in hf_llama.variants(base, "keep")] == [n for n in built if not n.endswith("+lm_head")]
