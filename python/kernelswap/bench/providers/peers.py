"""Optional peers: torchao and gemlite, timed when importable, recorded "absent" otherwise.

Both are driven through their public module-level APIs on a plain nn.Linear, the way a
user would; their APIs move between releases, so any failure is recorded with its
message rather than guessed around.
"""
from __future__ import annotations

import importlib

import torch

from ..shapes import LinearShape
from . import Absent, Case, Provider, register
from .linear import activation, bias, compiled, io_bytes, weight


def _import(name: str):
    try:
        return importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - any import failure means the peer is absent
        raise Absent(f"{name} not importable ({type(e).__name__}: {e})") from None


def _linear(s: LinearShape, dtype, device) -> torch.nn.Linear:
    lin = torch.nn.Linear(s.k, s.n, bias=True, device=device, dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_(weight(s, device))
        lin.bias.copy_(bias(s, device))
    return lin.eval()


def _module_bytes(m: torch.nn.Module) -> int:
    total = 0
    for t in list(m.parameters()) + list(m.buffers()):
        inner = getattr(t, "__tensor_flatten__", None)
        if inner is not None:  # tensor subclasses (torchao): count their inner tensors
            names, _ = inner()
            total += sum(getattr(t, n).numel() * getattr(t, n).element_size() for n in names)
        else:
            total += t.numel() * t.element_size()
    return total


# ---------------------------------------------------------------- torchao
_TORCHAO_CONFIGS = {
    "int8_linear": "Int8DynamicActivationInt8WeightConfig",
    "int8_weight_linear": "Int8WeightOnlyConfig",
    "int4_linear": "Int4WeightOnlyConfig",
}


def _make_torchao(op: str):
    def make(s: LinearShape, dtype, device) -> Case:
        quant = _import("torchao.quantization")
        config_cls = getattr(quant, _TORCHAO_CONFIGS[op], None)
        if config_cls is None:
            raise Absent(f"torchao {getattr(_import('torchao'), '__version__', '?')} has no "
                         f"{_TORCHAO_CONFIGS[op]}")
        config = config_cls(group_size=s.group_size) if op == "int4_linear" else config_cls()

        lin = _linear(s, dtype, device)
        quant.quantize_(lin, config)

        def new_args():  # one module for every copy: the compiled call guards on the module it sees
            return activation(s, dtype, device), lin

        sample = new_args()
        # torchao's recipes are meant to run under torch.compile (that is how TARGETS.md quotes them).
        fn = compiled(lambda x, lin: lin(x))
        return Case(fn, new_args, s.flops(), _module_bytes(sample[1]), io_bytes(s, dtype),
                    note=f"torch.compile(torchao {config_cls.__name__})")

    return make


# ---------------------------------------------------------------- gemlite
_GEMLITE_HELPERS = {"int8_linear": "A8W8_int8_dynamic", "int8_weight_linear": "A16W8", "int4_linear": "A16W4"}


def _make_gemlite(op: str):
    def make(s: LinearShape, dtype, device) -> Case:
        if device.type != "cuda":
            raise RuntimeError("gemlite runs on CUDA only")
        helper = _import("gemlite.helper")
        cls = getattr(helper, _GEMLITE_HELPERS[op], None)
        if cls is None:
            raise Absent(f"gemlite.helper has no {_GEMLITE_HELPERS[op]}")

        layer = cls(device=device).from_linear(_linear(s, dtype, device))

        def new_args():
            return activation(s, dtype, device), layer

        sample = new_args()
        return Case(lambda x, layer: layer(x), new_args, s.flops(), _module_bytes(sample[1]), io_bytes(s, dtype),
                    note=f"gemlite.helper.{cls.__name__}.from_linear")

    return make


for _op in ("int8_linear", "int8_weight_linear", "int4_linear"):
    register(_op, "linear", Provider("torchao", "peer", _make_torchao(_op), slow=True, requires="torchao"))
    register(_op, "linear", Provider("gemlite", "peer", _make_gemlite(_op), requires="gemlite"))
