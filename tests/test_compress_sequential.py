"""kernelswap.compress.sequential: block-by-block calibration gives the statistics of rerunning
the whole model for every set of Linears (true-sequential order, hand-over between blocks, the
float copy's inputs), and groups Linears by ModuleList entry."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compress_toys import Block, Toy, reference_one_thread as _reference, tiny_llama as _tiny_llama  # noqa: F401
from compress_toys import toy_data as _toy_data
from kernelswap.compress import calibration as C
from kernelswap.compress import sequential as seq


def test_blocks_groups_by_module_list_entry():
    model = Toy()
    groups = seq.blocks([(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)])
    assert [[n for n, _ in g] for g in groups] == [[f"layers.{i}.{p}" for p in ("gate", "up", "down")]
                                                   for i in (0, 1)] + [["head"]]


class Scaled(nn.Module):
    """Blocks with something between them (x * 0.5): the hand-over check must fail and recapture."""
    def __init__(self, d: int = 64):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([Block(d) for _ in range(3)])

    def forward(self, x):
        for b in self.layers:
            x = b(x) * 0.5
        return x


def _nudge(seen):
    """A process() that changes the layer by its statistics (so later statistics depend on it) and records them."""
    def process(name, linear, st):
        seen[name] = (st.hessian.clone(), st.shift)
        with torch.no_grad():
            linear.weight.add_(0.5 * linear.weight @ st.hessian / st.hessian.norm())
    return process


def _layer_inputs(model, names, data):
    """{name: its input rows (R, K) over all of data}, from plain runs of the model."""
    mods, rows = dict(model.named_modules()), {n: [] for n in names}
    handles = [mods[n].register_forward_pre_hook(lambda m, a, n=n: rows[n].append(a[0].reshape(-1, a[0].shape[-1])))
               for n in names]
    with torch.no_grad():
        for batch in data:
            C.call(model, batch)
    for h in handles:
        h.remove()
    return {n: torch.cat(r) for n, r in rows.items()}


@pytest.mark.parametrize("which", ["llama", "toy", "scaled"])
def test_sequential_matches_rerunning_the_model_set_by_set(which):
    """sequential() (captured block inputs, hand-over, true-sequential sets, the float copy's inputs) gives the
    statistics of the plain way: the whole model rerun for every set of Linears reading one input, everything
    before it processed; shift = X^T (X_float - X) with X_float from the untouched float model, where the
    hand-over ran (not for a block recaptured after a failed check or for the head after the list)."""
    if which == "llama":
        model, data = _tiny_llama()
        sets = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
        order = [[f"model.layers.{i}.{n}" for n in s] for i in range(3) for s in sets]
        with_shift = {n for s in order for n in s}
    else:
        model, data = (Toy() if which == "toy" else Scaled()).eval(), _toy_data(3, 0)
        blocks = 2 if which == "toy" else 3
        order = [s for i in range(blocks) for s in ([f"layers.{i}.gate", f"layers.{i}.up"], [f"layers.{i}.down"])]
        order += [["head"]] if which == "toy" else []
        with_shift = {n for s in order for n in s if n.startswith("layers.") and (which == "toy" or ".0." in n)}
    ref_model = copy.deepcopy(model)
    mods = dict(ref_model.named_modules())
    x_float = _layer_inputs(copy.deepcopy(model), [n for s in order for n in s], data)
    ref, got = {}, {}
    for names in order:  # the plain way
        stats = C.collect(ref_model, {n: mods[n] for n in names}, data, ("hessian",), show=False)
        x = _layer_inputs(ref_model, names, data)
        for n in names:
            stats[n].shift = x[n].T @ (x_float[n] - x[n]) if n in with_shift else None
            _nudge(ref)(n, mods[n], stats[n])
    layers = [(n, m) for names in order for n in names for m in [dict(model.named_modules())[n]]]
    seq.sequential(model, layers, data, ("hessian", "shift"), _nudge(got), "test", show=False, float_targets=True)
    assert list(got) == list(ref)  # true-sequential order
    for n, (h, shift) in ref.items():
        torch.testing.assert_close(got[n][0], h, rtol=1e-5, atol=1e-5 * float(h.abs().max()))
        assert (got[n][1] is None) == (shift is None), n
        if shift is not None:
            if n not in order[0]:  # the earlier nudges moved X
                assert float(shift.abs().max()) > 1e-3 * float(h.abs().max()), n
            torch.testing.assert_close(got[n][1], shift, rtol=1e-4, atol=1e-4 * float(shift.abs().max()))
