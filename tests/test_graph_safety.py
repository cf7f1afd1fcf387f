"""Every recipe is graph-safe (issue #11, section 2): a model of swapped layers captured with raw
torch.cuda.graph replays what eager computes, also for new inputs copied into the static input, and
runs under torch.compile(mode="reduce-overhead", fullgraph=True) step after step with new inputs.

Nothing here calls ks.prepare: the layers must have made their GPU-side layouts at swap time or on
.to(device), so neither the raw capture nor torch.compile's cudagraph warm-up (which runs inside the
graph's memory pool) makes them.
"""
import pytest
import torch

import kernelswap

from test_capture_gpu import LINEAR_RECIPES, assert_matches, cnn, images, linear_stack
from utils import needs_cuda, rel_err

pytestmark = [needs_cuda, pytest.mark.gpu]

RECIPES = LINEAR_RECIPES + ("fuse",)
# torch.compile fuses the activations and the residual add between our ops into its own kernels,
# which round bf16 once instead of per op; a one-ulp change at a quantized layer's input can move
# a value to the next int8 step, so compiled-vs-eager gets more room than replay-vs-eager.
COMPILE_TOL = 3e-2


def model_and_inputs(recipe: str, m: int):
    """The swapped model and a maker of its inputs: three swapped Linears (K = N = 256, bf16, M rows),
    or for "fuse" a CNN of four fused conv layers at batch M."""
    if recipe == "fuse":
        return cnn(True), lambda: images(m)
    return linear_stack(recipe), lambda: torch.randn(m, 256, device="cuda", dtype=torch.bfloat16)


def raw_capture(model, static_x):
    """torch's documented recipe: warm up on a side stream, then capture one forward."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad():
        with torch.cuda.stream(side):
            for _ in range(3):
                model(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = model(static_x)
    return graph, static_y


@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("recipe", RECIPES)
def test_raw_cuda_graph(recipe, m):
    model, make = model_and_inputs(recipe, m)
    static_x = make()
    graph, static_y = raw_capture(model, static_x)
    graph.replay()
    with torch.no_grad():
        assert_matches(static_y, model(static_x), f"{recipe} M={m}: replay of the captured input")
    for step in range(3):
        x = make()
        static_x.copy_(x)
        graph.replay()
        with torch.no_grad():
            ref = model(x)
        assert_matches(static_y, ref, f"{recipe} M={m}: new input {step}")


@pytest.mark.parametrize("recipe", LINEAR_RECIPES)
def test_reference_path_captures(recipe):
    """The reference path serves on a GPU where no kernel can (a build without CUTLASS, an
    unaligned shape): it must be graph-safe too (no host copies or host reads under capture)."""
    model, make = model_and_inputs(recipe, 16)
    static_x = make()
    with kernelswap.use_backend("reference"):
        graph, static_y = raw_capture(model, static_x)
        x = make()
        static_x.copy_(x)
        graph.replay()
        with torch.no_grad():
            assert_matches(static_y, model(x), f"{recipe} (reference backend): new input")


@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("recipe", RECIPES)
def test_compile_reduce_overhead(recipe, m):
    model, make = model_and_inputs(recipe, m)
    torch._dynamo.reset()
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    with torch.no_grad():
        for step in range(4):  # the first calls warm up and record; the later ones replay the graph
            torch.compiler.cudagraph_mark_step_begin()
            x = make()
            out = compiled(x).clone()  # the graph's output buffer is overwritten by the next step
            ref = model(x)
            err = rel_err(out, ref)
            assert out.shape == ref.shape and err <= COMPILE_TOL, \
                f"{recipe} M={m} step {step}: compiled vs eager relative error {err:.3e} > {COMPILE_TOL}"
