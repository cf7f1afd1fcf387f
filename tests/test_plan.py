"""The per-op memo of checks and backend choice (ops.backend.Plan) and the dispatcher
bypass of ops._define.Op: both must be invisible except in host time."""
import pytest
import torch

import kernelswap as ks
from kernelswap import packing
from kernelswap.ops import backend
from kernelswap.ops.backend import Transient, register


@pytest.fixture
def counting_backend():
    """A 'torch' implementation of int8_weight_linear on CPU that counts supports() calls.

    CPU calls only reach 'torch' when it is forced; the memo is what is under test."""
    calls = {"supports": 0, "fn": 0, "answer": None}

    def supports(x, w_q, w_scale, bias):
        calls["supports"] += 1
        return calls["answer"]

    def fn(x, w_q, w_scale, bias):
        calls["fn"] += 1
        return torch.zeros(x.shape[0], w_q.shape[0], dtype=x.dtype)

    impls = backend._REGISTRY["int8_weight_linear"]
    saved = list(impls)
    register("int8_weight_linear", "reference", supports)(fn)  # sorted after the real reference
    impls.remove(next(i for i in impls if i.fn is fn))
    impls.insert(0, backend.Impl("reference", fn, supports))  # first, so it is chosen
    backend._candidates.cache_clear()
    backend.clear_plans()
    yield calls
    impls[:] = saved
    backend._candidates.cache_clear()
    backend.clear_plans()


def _args(m=3, k=40, n=24):
    w_q, w_s = packing.quantize_int8(torch.randn(n, k))
    return torch.randn(m, k), w_q, w_s, None


def test_second_call_with_same_layout_skips_checks_and_choice(counting_backend):
    x, w_q, w_s, b = _args()
    for _ in range(3):
        ks.ops.int8_weight_linear(torch.randn_like(x), w_q, w_s, b)
    assert counting_backend == {"supports": 1, "fn": 3, "answer": None}
    ks.ops.int8_weight_linear(torch.randn(5, x.shape[1]), w_q, w_s, b)  # a new M: a new layout
    assert counting_backend["supports"] == 2


def test_bad_input_still_raises_after_good_calls(counting_backend):
    x, w_q, w_s, b = _args()
    ks.ops.int8_weight_linear(x, w_q, w_s, b)
    with pytest.raises(ValueError, match="x has K=41 features"):
        ks.ops.int8_weight_linear(torch.randn(3, 41), w_q, w_s, b)
    with pytest.raises(TypeError, match="x must be float32, float16, bfloat16"):
        ks.ops.int8_weight_linear(x.to(torch.int32), w_q, w_s, b)


def test_transient_reason_is_not_memoized(counting_backend):
    x, w_q, w_s, b = _args()
    counting_backend["answer"] = Transient("not measured yet")
    ks.ops.int8_weight_linear(x, w_q, w_s, b)  # served by the real reference implementation
    ks.ops.int8_weight_linear(x, w_q, w_s, b)
    assert counting_backend["supports"] == 2 and counting_backend["fn"] == 0
    counting_backend["answer"] = None
    ks.ops.int8_weight_linear(x, w_q, w_s, b)
    ks.ops.int8_weight_linear(x, w_q, w_s, b)
    assert counting_backend["supports"] == 3 and counting_backend["fn"] == 2


def test_lasting_refusal_is_memoized(counting_backend):
    x, w_q, w_s, b = _args()
    counting_backend["answer"] = "never at this shape"
    out = ks.ops.int8_weight_linear(x, w_q, w_s, b)
    ks.ops.int8_weight_linear(x, w_q, w_s, b)
    assert counting_backend["supports"] == 1 and counting_backend["fn"] == 0
    assert out.abs().sum() > 0  # the real reference served it, not the zeros of the counting one


def test_forcing_a_backend_is_part_of_the_key(counting_backend):
    x, w_q, w_s, b = _args()
    ks.ops.int8_weight_linear(x, w_q, w_s, b)
    with ks.use_backend("reference"):
        ks.ops.int8_weight_linear(x, w_q, w_s, b)
    assert counting_backend["supports"] == 2
    with ks.use_backend("torch"), pytest.raises(RuntimeError, match="no backend can serve"):
        ks.ops.int8_weight_linear(x, w_q, w_s, b)


def test_strides_and_alignment_are_part_of_the_key(counting_backend):
    x, w_q, w_s, b = _args(m=4, k=48)
    ks.ops.int8_weight_linear(x, w_q, w_s, b)
    ks.ops.int8_weight_linear(torch.randn(48, 4).t(), w_q, w_s, b)  # transposed view
    ks.ops.int8_weight_linear(torch.randn(4 * 48 + 1)[1:].view(4, 48), w_q, w_s, b)  # 4-byte offset
    assert counting_backend["supports"] == 3


@pytest.mark.parametrize("grad", [False, True])
def test_direct_call_matches_the_dispatcher(grad):
    x, w_q, w_s, _ = _args()
    bias = torch.randn(w_q.shape[0])
    x.requires_grad_(grad)
    direct = ks.ops.int8_linear(x, w_q, w_s, bias)
    through = torch.ops.kernelswap.int8_linear(x, w_q, w_s, bias)
    assert torch.equal(direct, through)
    # with grad required, both calls take the dispatcher (its autograd fallback decides grad_fn)
    assert (direct.grad_fn is None) == (through.grad_fn is None)


def test_fake_tensors_go_through_the_dispatcher():
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, w_q, w_s, b = _args()
    with FakeTensorMode() as mode:
        fx, fw, fs = mode.from_tensor(x), mode.from_tensor(w_q), mode.from_tensor(w_s)
        out = ks.ops.int8_linear(fx, fw, fs, b)
    assert out.shape == (3, w_q.shape[0]) and type(out).__name__ == "FakeTensor"


def test_fx_symbolic_trace_records_the_op():
    x, w_q, w_s, b = _args()

    class M(torch.nn.Module):
        def forward(self, x):
            return ks.ops.int8_linear(x, w_q, w_s, b)

    gm = torch.fx.symbolic_trace(M())
    assert any(n.op == "call_function" and "int8_linear" in str(n.target) for n in gm.graph.nodes)
    assert torch.equal(gm(x), ks.ops.int8_linear(x, w_q, w_s, b))


def test_preference_declines_only_the_automatic_choice(counting_backend):
    from kernelswap.ops.backend import Preference

    x, w_q, w_s, b = _args()
    counting_backend["answer"] = Preference("another backend is faster here")
    ks.ops.int8_weight_linear(x, w_q, w_s, b)
    assert counting_backend["fn"] == 0  # automatic: the next implementation served
    with ks.use_backend("reference"):  # forced to this backend: it serves the call anyway
        ks.ops.int8_weight_linear(x, w_q, w_s, b)
    assert counting_backend["fn"] == 1
