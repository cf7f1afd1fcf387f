"""KERNELSWAP_SM90_SMALL_M (csrc/sm90_gemm_ops.cu): the sm_90a GEMMs' small and large tiles both
serve every M, so moving the crossover changes speed, never results.

GPU (sm_90, CUTLASS build): in a process where every M takes the small tiles (the knob at a huge
value) and in one where every M takes the large ones (0), the int8 GEMMs (dense and 2:4) equal
their references bit for bit at M on both sides of the default crossover, and the 2:4 bf16 GEMM is
within the float tolerance. The knob is read once a process, hence the subprocesses.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils import needs_sm90_cutlass

CHECK = r"""
import torch, torch.nn.functional as F
from kernelswap import packing
from kernelswap.ops import use_backend
from kernelswap.ops.int8 import int8_linear_ref
from kernelswap.ops.sparse24 import sparse24_int8_linear_ref
from utils import assert_close_to_ref, assert_exact
torch.manual_seed(0)
k, n = 1024, 528
C = torch.ops.kernelswap
for m in (1, 64, 65, 128, 300):
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    w_q, w_s = packing.quantize_int8(torch.randn(n, k, device="cuda"))
    w24 = packing.prune_24(torch.randn(n, k, device="cuda"))
    w24_q, w24_s = packing.quantize_int8(w24)
    v8, m8 = packing.compress_24(w24_q)
    v16, m16 = packing.compress_24(w24.to(torch.bfloat16))
    with use_backend("cuda"):
        assert_exact(C.int8_linear(x, w_q, w_s, bias), int8_linear_ref(x, w_q, w_s, bias), f"int8 m={m}")
        assert_exact(C.sparse24_int8_linear(x, v8, m8, w24_s, bias.float()),
                     sparse24_int8_linear_ref(x, v8, m8, w24_s, bias.float()), f"2:4 int8 m={m}")
        out = C.sparse24_linear(x, v16, m16, bias)
    w = packing.decompress_24(v16, m16, k)
    assert_close_to_ref(out, x.double() @ w.double().t() + bias.double(), F.linear(x, w, bias), what=f"2:4 m={m}")
print("checked")
"""


@needs_sm90_cutlass
@pytest.mark.gpu
@pytest.mark.parametrize("small_m", ["1000000", "0"], ids=["all-small-tiles", "all-large-tiles"])
def test_every_m_is_right_on_either_tile_set(small_m):
    tests = Path(__file__).resolve().parent
    env = dict(os.environ, KERNELSWAP_SM90_SMALL_M=small_m,
               PYTHONPATH=os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "checked" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
