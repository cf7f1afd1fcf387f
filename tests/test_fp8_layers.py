"""The "fp8" and "sparse24-fp8" recipes on CPU: swap (names and config objects), the layer against
its op's reference, .half() keeping the e4m3 codes, save + load round trips (e4m3 stored as
float8_e4m3fn), and the CUDA backend's decline reasons (kernelswap.ops.fp8_cuda) for the GPUs,
builds and layers it does not serve."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

import kernelswap as ks
from kernelswap import _ext, packing
from kernelswap.nn import Fp8Linear
from kernelswap.ops import _cuda, backend, fp8_cuda
from kernelswap.ops.fp8 import FP8
from kernelswap.recipes import recipe_from_config
from utils import assert_exact, sqnr_db

pytestmark = pytest.mark.usefixtures("one_thread", "reference_backend")


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(40, 48), nn.GELU(), nn.Linear(48, 24, bias=False), nn.LayerNorm(24),
                         nn.Linear(24, 8)).eval()


RECIPES = [("fp8", ks.Fp8(), False), ("sparse24-fp8", ks.Sparse24Fp8(), True)]


@pytest.mark.parametrize("name,config,sparse", RECIPES, ids=["fp8", "sparse24-fp8"])
def test_swap_makes_fp8_layers_that_compute_their_op(name, config, sparse):
    model = _mlp()
    ref_model = _mlp()
    report = ks.swap(model, config, probe=False)
    assert len(report.swapped) == 3
    layers = [m for m in model.modules() if isinstance(m, Fp8Linear)]
    assert len(layers) == 3 and all(m.sparse24 == sparse for m in layers)
    assert all(m.recipe_config() == {"recipe": name} for m in layers)
    assert recipe_from_config(layers[0].recipe_config()) == config
    first, lin = layers[0], ref_model[0]
    x = torch.randn(2, 7, 40)
    if sparse:
        assert first.values.dtype == FP8 and first.meta.dtype == torch.uint8
        w_q, w_s = packing.quantize_fp8(packing.prune_24(lin.weight.detach()))
    else:
        assert first.w_q.dtype == FP8
        w_q, w_s = packing.quantize_fp8(lin.weight.detach())
    # the layer is its op on the weights packing makes from the float layer
    assert_exact(first(x), ks.ops.fp8_linear(x, w_q, w_s, lin.bias.detach()), what=f"{name} layer")
    if not sparse:  # W8A8 e4m3 keeps ~30 dB on a whole MLP; 2:4 pruning of random weights does not
        assert sqnr_db(ref_model(x), model(x)) > 22


def test_sparse24_fp8_takes_a_calibrated_or_pruned_weight_and_refuses_a_dense_one():
    lin = nn.Linear(32, 16)
    with pytest.raises(ValueError, match="prune=False but the weight is not 2:4 sparse"):
        Fp8Linear.from_float(lin, sparse24=True, prune=False)
    with torch.no_grad():
        lin.weight.copy_(packing.prune_24(lin.weight))
    m = Fp8Linear.from_float(lin, sparse24=True, prune=False)
    x = torch.randn(5, 32)
    w_q, w_s = packing.quantize_fp8(lin.weight.detach())
    assert_exact(m(x), ks.ops.fp8_linear(x, w_q, w_s, lin.bias.detach()), what="prune=False")
    assert ks.Sparse24Fp8(method="wanda").config() == {"recipe": "sparse24-fp8", "method": "wanda"}
    with pytest.raises(ValueError, match="method must be one of"):
        ks.Sparse24Fp8(method="random")


def test_half_keeps_the_codes_and_scales():
    m = Fp8Linear.from_float(nn.Linear(32, 16))
    s = Fp8Linear.from_float(nn.Linear(32, 16), sparse24=True)
    for layer in (m.half(), s.bfloat16()):
        codes = layer.values if layer.sparse24 else layer.w_q
        assert codes.dtype == FP8 and layer.w_scale.dtype == torch.float32
        assert layer.bias.dtype in (torch.float16, torch.bfloat16)
    with pytest.raises(TypeError, match="dtype is the float dtype"):
        Fp8Linear(8, 8, dtype=FP8)


@pytest.mark.parametrize("name", ["fp8", "sparse24-fp8"])
def test_save_load_round_trip(name, tmp_path):
    pytest.importorskip("safetensors")
    from safetensors import safe_open

    model = _mlp(seed=0)
    ks.swap(model, name, probe=False)
    path = tmp_path / "m.safetensors"
    ks.save(model, path)
    with safe_open(str(path), framework="pt") as f:
        key = "0.values" if name == "sparse24-fp8" else "0.w_q"
        assert f.get_tensor(key).dtype == FP8  # stored as float8_e4m3fn, not widened
    fresh = _mlp(seed=1)  # other float weights: everything must come from the file
    ks.load(fresh, path)
    x = torch.randn(3, 40)
    assert_exact(fresh(x), model(x), what=f"{name} after load")


def test_fast_accum_is_a_layer_setting_that_is_saved_and_checked(tmp_path):
    # The reference sums exactly either way, so on CPU fast_accum changes nothing but the setting;
    # the recipe's config, the layer's and a saved model keep it, and bad values are refused by name.
    model = _mlp(seed=0)
    ks.swap(model, ks.Fp8(fast_accum=True), probe=False)
    layers = [m for m in model.modules() if isinstance(m, Fp8Linear)]
    assert layers and all(m.fast_accum for m in layers)
    assert layers[0].recipe_config() == {"recipe": "fp8", "fast_accum": True}
    assert layers[0].op_args()[-1] is True and "fast_accum" in repr(layers[0])
    x = torch.randn(3, 40)
    plain = _mlp(seed=0)
    ks.swap(plain, "fp8", probe=False)
    assert_exact(model(x), plain(x), what="fast_accum on the reference")
    w = layers[0]
    assert_exact(ks.ops.fp8_linear(x, w.w_q, w.w_scale, w.bias, True),
                 ks.ops.fp8_linear(x, w.w_q, w.w_scale, w.bias), what="the op's fast_accum on the reference")
    if importlib.util.find_spec("safetensors"):
        path = tmp_path / "m.safetensors"
        ks.save(model, path)
        fresh = _mlp(seed=1)
        ks.load(fresh, path)
        assert all(m.fast_accum for m in fresh.modules() if isinstance(m, Fp8Linear))
    with pytest.raises(TypeError, match="fast_accum"):
        ks.Fp8(fast_accum="yes")
    with pytest.raises(TypeError, match="fast_accum must be a bool"):
        ks.ops.fp8_linear(x, w.w_q, w.w_scale, w.bias, 1)  # after True: 1 == True, yet its own check
    with pytest.raises(ValueError, match="fast_accum is for the dense FP8 GEMM"):
        Fp8Linear(32, 16, sparse24=True, fast_accum=True)


def test_load_refuses_codes_of_another_dtype(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file, save_file

    model = _mlp()
    ks.swap(model, "fp8", probe=False)
    path = tmp_path / "m.safetensors"
    ks.save(model, path)
    tensors = load_file(str(path))
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors["0.w_q"] = tensors["0.w_q"].to(torch.bfloat16)
    from kernelswap.serialization import _digest
    save_file(tensors, str(path), metadata={**meta, "sha256": _digest(tensors)})
    with pytest.raises(ValueError, match="'0.w_q'.*float8_e4m3fn in the model"):
        ks.load(_mlp(), path)


# ---------------------------------------------------------------- the CUDA backend's decline reasons
@pytest.fixture
def fake_gpu(monkeypatch):
    """fake_gpu(capability, archs): the predicates see a CUDA device of that capability and a
    CUTLASS build for `archs` that holds the FP8 ops."""
    def make(capability=(9, 0), archs="9.0a", ops_missing=False):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(_ext, "build_info", lambda: {"archs": archs, "cutlass": "1"})
        monkeypatch.setattr(_cuda, "device_index", lambda x: 0)
        monkeypatch.setattr(fp8_cuda, "device_index", lambda x: 0)
        monkeypatch.setattr(fp8_cuda, "ops_reason", lambda: "predates the FP8 ops" if ops_missing else None)
        _cuda.sm90_reason.cache_clear()
        fp8_cuda.fp8_gpu_reason.cache_clear()
    yield make
    _cuda.sm90_reason.cache_clear()
    fp8_cuda.fp8_gpu_reason.cache_clear()


def _dense_args(m=5, k=64, n=32, dtype=torch.bfloat16):
    w_q, w_s = packing.quantize_fp8(torch.randn(n, k))
    return torch.randn(m, k).to(dtype), w_q, w_s, None


def _sparse_args(m=5, k=64, n=32, dtype=torch.bfloat16):
    w_q, w_s = packing.quantize_fp8(packing.prune_24(torch.randn(n, k)))
    values, meta = packing.compress_24(w_q.float())
    return torch.randn(m, k).to(dtype), values.to(FP8), meta, w_s, None


def test_serves_bf16_on_hopper(fake_gpu):
    fake_gpu()
    assert fp8_cuda._fp8_linear_supports(*_dense_args()) is None
    assert fp8_cuda._sparse_supports(*_sparse_args()) is None
    assert fp8_cuda._sparse_supports(*_sparse_args(m=1)) is None  # decode: the same GEMM, small tiles
    assert fp8_cuda._weights_reason(_sparse_args()[1]) is None


@pytest.mark.parametrize("capability,words", [((8, 9), "no wgmma"), ((8, 6), "no FP8 tensor cores"),
                                              ((8, 0), "no FP8 tensor cores"), ((10, 0), "sm_100")])
def test_declines_other_gpus_with_the_reason(fake_gpu, capability, words):
    fake_gpu(capability)
    for why in (fp8_cuda._fp8_linear_supports(*_dense_args()), fp8_cuda._sparse_supports(*_sparse_args()),
                fp8_cuda._weights_reason(_sparse_args()[1])):
        assert why is not None and words in why, why


def test_declines_builds_and_layers_it_cannot_serve(fake_gpu):
    fake_gpu(archs="8.0;8.9")
    assert "no sm_90a code" in fp8_cuda._fp8_linear_supports(*_dense_args())
    fake_gpu(ops_missing=True)
    assert "predates" in fp8_cuda._fp8_linear_supports(*_dense_args())
    fake_gpu()
    for dtype in (torch.float16, torch.float32):
        assert "bfloat16 only" in fp8_cuda._fp8_linear_supports(*_dense_args(dtype=dtype))
        assert "bfloat16 only" in fp8_cuda._sparse_supports(*_sparse_args(dtype=dtype))
    assert "multiples of 16" in fp8_cuda._fp8_linear_supports(*_dense_args(k=40))
    assert "multiples of 16" in fp8_cuda._fp8_linear_supports(*_dense_args(n=24))
    assert "multiple of 32" in fp8_cuda._sparse_supports(*_sparse_args(k=48))
    assert fp8_cuda._weights_reason(_sparse_args(k=48)[1]) == "shape"


def test_reference_serves_on_cpu():
    for op in ("quantize_per_token_fp8", "fp8_linear", "sparse24_fp8_linear"):
        assert backend.choose(op, torch.device("cpu")).backend == "reference"


def test_calibrated_sparse24_fp8_round_trips(tmp_path):
    pytest.importorskip("safetensors")
    model = _mlp(seed=0)
    torch.manual_seed(3)
    ks.swap(model, ks.Sparse24Fp8(method="wanda"), probe=False, calibration=[torch.randn(16, 40) for _ in range(2)])
    layers = [m for m in model.modules() if isinstance(m, Fp8Linear)]
    assert [m.recipe_config() for m in layers] == [{"recipe": "sparse24-fp8", "method": "wanda"}] * 3
    path = tmp_path / "m.safetensors"
    ks.save(model, path)
    fresh = ks.load(_mlp(seed=1), path)
    x = torch.randn(3, 40)
    assert_exact(fresh(x), model(x), what="wanda sparse24-fp8 after load")


def test_info_says_whether_the_fp8_gemms_run(fake_gpu, monkeypatch):
    from kernelswap import info

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_ext, "load", lambda: True)
    fake_gpu((8, 9))
    assert info._fp8_status().startswith("no: sm_89") and "no wgmma" in info._fp8_status()
    fake_gpu((9, 0))
    assert info._fp8_status().startswith("yes")
