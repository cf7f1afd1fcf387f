"""torch.compile sees the ops without graph breaks; backend choice and `info` behave as documented."""
import subprocess
import sys

import pytest
import torch

import kernelswap as ks
from kernelswap import _ext
from kernelswap import packing as P
from kernelswap.ops import backend


class _TinyNet(torch.nn.Module):
    """Calls one op of each family, the way swapped modules will."""

    def __init__(self):
        super().__init__()
        w = torch.randn(24, 40)
        self.w_q, self.w_s = P.quantize_int8(w)
        self.q4 = P.quantize_int4(w, 32)
        self.values, self.meta = P.compress_24(P.prune_24(w))
        self.conv_w = torch.randn(4, 3, 3, 3)

    def forward(self, x, img):
        y = ks.ops.int8_linear(x, self.w_q, self.w_s, None)
        y = y + ks.ops.int8_weight_linear(x, self.w_q, self.w_s, None)
        y = y + ks.ops.int4_linear(x, self.q4.packed, self.q4.scales, self.q4.zeros, 32, None)
        y = y + ks.ops.sparse24_linear(x, self.values, self.meta, None)
        z = ks.ops.conv_bn_act(img, self.conv_w, None, [1, 1], [1, 1], [1, 1], 1, "relu6", None)
        return y, z


def test_compile_fullgraph_cpu():
    net = _TinyNet()
    x, img = torch.randn(2, 5, 40), torch.randn(2, 3, 8, 8)
    expected = net(x, img)
    torch._dynamo.reset()
    compiled = torch.compile(net, fullgraph=True)  # raises on any graph break
    got = compiled(x, img)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_env_var_forces_backend(monkeypatch):
    # The variable is read at import (and by read_environment), not per call.
    try:
        monkeypatch.setenv("KERNELSWAP_BACKEND", "reference")
        assert backend.forced_backend() is None
        backend.read_environment()
        assert backend.forced_backend() == "reference"
        with ks.use_backend(None):  # automatic inside, env var outside
            assert backend.forced_backend() == "reference"  # None in the context falls back to the env var
        monkeypatch.setenv("KERNELSWAP_BACKEND", "nonsense")
        backend.read_environment()  # a bad name does not break the read (or the import) ...
        with pytest.raises(ValueError, match="KERNELSWAP_BACKEND / use_backend: unknown backend 'nonsense'"):
            backend.forced_backend()  # ... it is raised by the first call that asks
    finally:
        monkeypatch.undo()
        backend.read_environment()


def test_use_backend_nests_and_restores():
    assert backend.forced_backend() is None
    with ks.use_backend("reference"):
        with ks.use_backend("triton"):
            assert backend.forced_backend() == "triton"
        assert backend.forced_backend() == "reference"
    assert backend.forced_backend() is None


def test_reference_serves_every_op_on_cpu():
    for op in ks.ops.PUBLIC_OPS:
        assert backend.serving_backends(op, torch.device("cpu"))[-1] == "reference", op
        assert backend.choose(op, torch.device("cpu")).backend == "reference"


def test_info_command_runs():
    out = subprocess.run([sys.executable, "-m", "kernelswap", "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for op in ks.ops.PUBLIC_OPS:
        assert op in out.stdout
    assert "backend reference: yes" in out.stdout and "_C:" in out.stdout


def test_unknown_cli_command():
    out = subprocess.run([sys.executable, "-m", "kernelswap", "frobnicate"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "unknown command 'frobnicate'" in out.stderr


def test_extension_reports_build_when_present():
    if _ext.load():
        info = _ext.build_info()
        assert info["archs"] and info["cuda"] and info["cutlass"] in ("0", "1")
        q, s = torch.ops.kernelswap._C_quantize_per_token_int8(torch.empty(3, 7, device="meta"))
        assert q.shape == (3, 7) and q.dtype == torch.int8 and s.shape == (3,)
    else:
        ok, why = _ext.status()
        assert not ok and why, "a missing extension must say why"


def test_built_archs_reads_every_spelling_of_the_arch_list():
    from kernelswap._ext import built_archs

    # "+PTX" on the last arch (the wheel's list) once hid sm_90a from the GEMMs' check.
    assert built_archs("8.0;8.9;9.0a+PTX") == {"8.0", "8.9", "9.0a"}
    assert built_archs("9.0a") == {"9.0a"}
    assert built_archs("8.0 9.0a+PTX") == {"8.0", "9.0a"}
    assert built_archs("") == set()


@pytest.mark.parametrize("built,safe", [("2.11", False), ("2.13", False), ("2.14", True), ("3.0", True),
                                        (None, False)])
def test_errors_raise_follows_the_headers_of_the_build(monkeypatch, built, safe):
    from kernelswap import _ext

    monkeypatch.setattr(_ext, "build_info", lambda: {} if built is None else {"torch": built})
    ok, why = _ext.errors_raise()
    assert ok is safe, why
    assert ("rebuild" in why) != safe
