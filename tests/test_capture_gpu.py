"""ks.capture on the GPU: replay equals eager on new inputs (unswapped and fused CNNs, swapped linear
stacks for every linear recipe, a decoder's decode step with nested inputs), re-capture per signature,
the LRU bound, capture_new=False, reuse_outputs, mutated inputs, and the refusals.

The model builders here are shared with tests/test_graph_safety.py.
"""
import copy

import pytest
import torch
from torch import nn

import kernelswap as ks
from kernelswap.capture import CaptureError
from test_fuse import _randomize_bn
from utils import needs_cuda, rel_err

pytestmark = [needs_cuda, pytest.mark.gpu]

LINEAR_RECIPES = ("int8", "int8-weight", "int4", "sparse24", "sparse24-int8")
# A replay runs the kernels the eager call runs, so it agrees with eager to rounding (zero in practice);
# the bounds only leave room for kernels whose reduction order is not fixed (split-K with atomics).
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}


def assert_matches(out, ref, what=""):
    """out == ref to TOL: tensors, or (nested) tuples/lists/dicts of them."""
    if isinstance(ref, torch.Tensor):
        assert isinstance(out, torch.Tensor) and out.shape == ref.shape and out.dtype == ref.dtype, what
        err = rel_err(out, ref)
        assert err <= TOL[ref.dtype], f"{what}: relative error {err:.3e} > {TOL[ref.dtype]:.0e} against eager"
    elif isinstance(ref, dict):
        assert out.keys() == ref.keys(), what
        for k in ref:
            assert_matches(out[k], ref[k], f"{what}[{k!r}]")
    else:
        assert type(out) is type(ref) and len(out) == len(ref), what
        for i, (o, r) in enumerate(zip(out, ref)):
            assert_matches(o, r, f"{what}[{i}]")


# ---------------------------------------------------------------- models
def linear_stack(recipe: str | None, k: int = 256, n: int = 256, dtype=torch.bfloat16, device="cuda") -> nn.Module:
    """Three Linear layers (K = N = 256-ish, with biases and activations), swapped with `recipe`."""
    model = nn.Sequential(nn.Linear(k, n), nn.SiLU(), nn.Linear(n, n), nn.ReLU(), nn.Linear(n, 192))
    model = model.to(device, dtype).eval()
    if recipe is not None:
        report = ks.swap(model, recipe, probe=False)
        assert len(report.swapped) == 3, str(report)
    return model


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)) + x)


def cnn(fuse: bool, dtype=torch.bfloat16, device="cuda") -> nn.Module:
    """Stem conv-bn-relu (stride 2), a residual block, depthwise conv-bn-relu6, 1x1 conv-bn, pool, linear;
    BN with real statistics; channels_last. fuse=True: ks.swap(model, "fuse")."""
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        Residual(16),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
        nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    model = _randomize_bn(model).to(device, dtype).to(memory_format=torch.channels_last).eval()
    if fuse:
        report = ks.swap(model, "fuse", probe=False)
        assert len(report.swapped) == 4, str(report)
    return model


def images(n: int, dtype=torch.bfloat16, hw: int = 20) -> torch.Tensor:
    return torch.randn(n, 3, hw, hw, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)


class DecodeStep(nn.Module):
    """One decode step of a tiny attention layer: the KV cache lives in buffers and is written at
    `pos` (a 0-d tensor, so the step is the same graph at every position); nested inputs and outputs."""

    def __init__(self, batch=2, d=128, length=12, vocab=96):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.q, self.k, self.v, self.out = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, vocab)
        self.register_buffer("k_cache", torch.zeros(batch, length, d))
        self.register_buffer("v_cache", torch.zeros(batch, length, d))

    def forward(self, tokens, *, pos, opts):
        h = self.emb(tokens)  # (batch, d)
        self.k_cache.index_copy_(1, pos.view(1), self.k(h).unsqueeze(1))
        self.v_cache.index_copy_(1, pos.view(1), self.v(h).unsqueeze(1))
        scores = torch.einsum("bd,bld->bl", self.q(h), self.k_cache) / h.shape[-1] ** 0.5
        visible = torch.arange(self.k_cache.shape[1], device=tokens.device) <= pos
        scores = scores.masked_fill(~visible, float("-inf"))
        a = torch.einsum("bl,bld->bd", scores.softmax(-1).to(h.dtype), self.v_cache)
        return {"logits": self.out(a) / opts["temperature"] + opts["bias"], "state": (a, h)}


# ---------------------------------------------------------------- replay equals eager
def check_replays(model, make_input, steps=3, **capture_kwargs):
    runner = ks.capture(model, make_input(), **capture_kwargs)
    for step in range(steps):  # new inputs every time: the static buffer must be refilled
        x = make_input()
        with torch.no_grad():
            ref = model(x)
        assert_matches(runner(x), ref, f"step {step}")
    return runner


@pytest.mark.parametrize("fuse", [False, True], ids=["eager-cnn", "fused-cnn"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cnn_replay_equals_eager(fuse, dtype):
    model = cnn(fuse, dtype)
    runner = check_replays(model, lambda: images(3, dtype))
    assert runner.captures == 1 and len(runner.graphs) == 1


@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("recipe", LINEAR_RECIPES)
def test_swapped_linears_replay_equals_eager(recipe, m):
    model = linear_stack(recipe)
    check_replays(model, lambda: torch.randn(m, 256, device="cuda", dtype=torch.bfloat16))


def test_leading_batch_dims_and_unswapped_linears():
    check_replays(linear_stack(None), lambda: torch.randn(2, 5, 256, device="cuda", dtype=torch.bfloat16))


@pytest.mark.parametrize("recipe", [None, "int8-weight"], ids=["unswapped", "int8-weight"])
def test_decode_step_with_nested_inputs(recipe):
    dtype = torch.float32 if recipe is None else torch.bfloat16
    model = DecodeStep().to("cuda", dtype).eval()
    if recipe:
        assert len(ks.swap(model, recipe, probe=False).swapped) == 4
    ref_model = copy.deepcopy(model)  # stepped eagerly in lockstep, its own cache
    vocab, batch = model.emb.num_embeddings, model.k_cache.shape[0]
    opts = {"temperature": 0.7, "bias": torch.randn(vocab, device="cuda", dtype=dtype)}

    def tokens():
        return torch.randint(0, vocab, (batch,), device="cuda")

    runner = ks.capture(model, tokens(), pos=torch.tensor(0, device="cuda"), opts=opts)
    for step in range(5):
        t, pos = tokens(), torch.tensor(step, device="cuda")
        opts = {"temperature": 0.7, "bias": torch.randn(vocab, device="cuda", dtype=dtype)}  # new tensor values
        with torch.no_grad():
            ref = ref_model(t, pos=pos, opts=opts)
        assert_matches(runner(t, pos=pos, opts=opts), ref, f"step {step}")
    assert runner.captures == 1  # the position is a tensor: one graph serves every step
    assert_matches(model.k_cache, ref_model.k_cache, "k_cache")
    # another non-tensor value is another graph
    t, pos = tokens(), torch.tensor(5, device="cuda")
    opts = {"temperature": 1.5, "bias": opts["bias"]}
    with torch.no_grad():
        ref = ref_model(t, pos=pos, opts=opts)
    assert_matches(runner(t, pos=pos, opts=opts), ref, "temperature 1.5")
    assert runner.captures == 2


# ---------------------------------------------------------------- signatures, cache, options
def test_shape_change_recaptures_and_lru_bound():
    model = linear_stack("int8")
    x = {m: torch.randn(m, 256, device="cuda", dtype=torch.bfloat16) for m in (1, 16, 5)}
    runner = ks.capture(model, x[1], cache_size=2)
    for m in (16, 1, 5):  # 16 is captured, 1 replayed, 5 captured and evicts 16 (the least recent)
        with torch.no_grad():
            assert_matches(runner(x[m]), model(x[m]), f"M={m}")
    assert runner.captures == 3 and len(runner.graphs) == 2
    assert runner.signatures == ["(bfloat16[1, 256]@cuda:0)", "(bfloat16[5, 256]@cuda:0)"]
    with torch.no_grad():
        assert_matches(runner(x[16]), model(x[16]), "M=16 again")  # captured again
    assert runner.captures == 4 and len(runner.graphs) == 2


def test_capture_new_false_refuses_an_unseen_signature():
    model = linear_stack(None)
    x16, x4 = (torch.randn(m, 256, device="cuda", dtype=torch.bfloat16) for m in (16, 4))
    runner = ks.capture(model, x16, capture_new=False)
    with torch.no_grad():
        assert_matches(runner(x16 * 2), model(x16 * 2))
    with pytest.raises(CaptureError, match=r"no graph for inputs \(bfloat16\[4, 256\]@cuda:\d\) and "
                                           r"capture_new=False \(captured: \(bfloat16\[16, 256\]@cuda:\d\)\)"):
        runner(x4)
    runner.capture_new = True
    with torch.no_grad():
        assert_matches(runner(x4), model(x4))
    assert runner.captures == 2


def test_reuse_outputs_semantics():
    model = linear_stack("int8-weight")
    xs = [torch.randn(8, 256, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    with torch.no_grad():
        refs = [model(x) for x in xs]
    fresh = ks.capture(model, xs[0])
    a, b = fresh(xs[1]), fresh(xs[2])
    assert a.data_ptr() != b.data_ptr()
    assert_matches(a, refs[1], "fresh output kept")  # not overwritten by the later call
    reused = ks.capture(model, xs[0], reuse_outputs=True)
    a = reused(xs[1])
    assert_matches(a, refs[1], "reused output")
    b = reused(xs[2])
    assert b.data_ptr() == a.data_ptr()  # the graph's own buffer, overwritten by the next call
    assert_matches(a, refs[2], "reused output after the next call")


class Accumulate(nn.Module):
    def forward(self, state, x):
        state.add_(x)  # writes an input in place
        return state * 2


@pytest.mark.parametrize("inference", [False, True], ids=["no_grad", "inference_mode"])
def test_inputs_written_in_place_are_copied_back(inference):
    state, ref_state = torch.zeros(4, 8, device="cuda"), torch.zeros(4, 8, device="cuda")
    example = torch.zeros(4, 8, device="cuda")
    runner = ks.capture(Accumulate().eval(), example, torch.ones(4, 8, device="cuda"))
    assert bool((example == 0).all())  # the warm-up and capture ran on copies
    with torch.inference_mode(inference):
        for _ in range(3):
            x = torch.randn(4, 8, device="cuda")
            out = runner(state, x)
            ref_state.add_(x)
            assert_matches(state, ref_state, "state")
            assert_matches(out, ref_state * 2, "output")


def test_captured_inside_inference_mode_replays_outside():
    model = cnn(True)
    with torch.inference_mode():
        runner = ks.capture(model, images(2))
    x = images(2)
    with torch.no_grad():
        ref = model(x)
    assert_matches(runner(x), ref)


# ---------------------------------------------------------------- refusals
class Syncs(nn.Module):
    def forward(self, x):
        if x.abs().max().item() > 1e30:  # a host sync: cannot be captured
            x = x * 0
        return x * 2


def test_refuses_a_capture_unsafe_op_and_names_the_layer():
    model = nn.Sequential(nn.Linear(8, 8), Syncs()).cuda().eval()
    x = torch.randn(3, 8, device="cuda")
    with pytest.raises(CaptureError, match=r"could not be captured in a CUDA graph \(raised inside layer "
                                           r"1 \(Syncs\)\): .*host sync inside forward \(\.item\(\)") as info:
        ks.capture(model, x)
    assert info.value.__cause__ is not None
    # the failed capture leaves the device usable: random numbers draw outside a capture again
    # (the generator is not left in capture mode), and a good model captures and replays
    assert torch.randn(4, device="cuda").isfinite().all()
    good = nn.Sequential(nn.Linear(8, 8)).cuda().eval()
    runner = ks.capture(good, x)
    with torch.no_grad():
        assert_matches(runner(x + 1), good(x + 1))


def test_refuses_cpu_input_training_mode_and_cpu_parameters():
    model = linear_stack(None, dtype=torch.float32)
    x = torch.randn(2, 256, device="cuda")
    with pytest.raises(CaptureError, match=r"input args\[1\]\['mask'\] is a cpu tensor"):
        ks.capture(lambda a, b: model(a) * b["mask"], x, {"mask": torch.ones(2, 192)})
    runner = ks.capture(model, x)
    with pytest.raises(CaptureError, match=r"input args\[0\] is a cpu tensor"):
        runner(x.cpu())  # a CPU tensor is another signature, refused before any capture
    model.train()
    with pytest.raises(CaptureError, match="is in training mode"):
        ks.capture(model, x)
    with pytest.raises(CaptureError, match="is in training mode"):
        runner(torch.randn(5, 256, device="cuda"))  # a new signature is not captured in training mode either
    with pytest.raises(CaptureError, match=r"parameter '0.weight' is on cpu"):
        ks.capture(nn.Sequential(nn.Linear(256, 4)).eval(), x)
