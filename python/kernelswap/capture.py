"""ks.capture: run any model's inference forward as a replayed CUDA graph; ks.prepare.

    runner = ks.capture(model, x)        # warms up and captures model(x) once
    y = runner(x_new)                    # copies x_new into the graph's input, replays, returns y

At small batch a model's GPU work takes less time than the Python and the launches that
issue it; a CUDA graph replays every kernel of a forward with one launch. `capture`
wraps the recipe of torch's CUDA-graph docs (warm-up on a side stream, capture, copy new
inputs into static buffers, replay) in a callable that keeps one graph per input
signature and refuses what cannot be captured with a message that names the cause.

A signature is the structure of the arguments (tuples, lists, dicts, kwargs: a pytree)
plus, per leaf, a tensor's shape, dtype and device, or a non-tensor's type and value:
a call whose non-tensor arguments differ from every captured one (another `bool` flag,
another Python number) is another graph, since capture freezes the Python the forward ran.
Tensors are matched by shape, dtype and device only; their values are copied into the
graph's input buffer, which keeps the memory layout (strides) of the first input of that
signature.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.utils import _pytree as pytree

from ._capture_signature import GraphCache, describe, leaf_path, signature, unflatten

DEFAULT_CACHE_SIZE = 8
DEFAULT_WARMUP = 3
# A host sync or a host-to-device copy inside forward is what most often breaks capture.
UNSAFE_HINT = ("the usual causes are a host sync inside forward (.item(), .tolist(), .cpu(), bool(tensor), "
               "printing a CUDA tensor, data-dependent shapes such as torch.nonzero or boolean-mask indexing), "
               "a CPU tensor copied to the GPU inside forward, or a weight layout made lazily in forward "
               "(ks.prepare(model) makes kernelswap's); move that out of forward, or run this model eagerly")


class CaptureError(RuntimeError):
    """A forward that cannot be (or was not allowed to be) captured in a CUDA graph."""


def prepare(model: nn.Module) -> int:
    """Make every kernelswap layer's GPU-side weight layouts now, outside any forward.

    Calls `prepare()` on each kernelswap module of `model`, so nothing a layer needs is made
    lazily inside a forward that may be under CUDA-graph capture. ks.capture calls it before
    warming up. Returns how many modules were prepared."""
    from .nn import KernelswapModule
    layers = [m for m in model.modules() if isinstance(m, KernelswapModule)]
    for m in layers:
        m.prepare()
    return len(layers)


# ---------------------------------------------------------------- refusals
def check_eval(model: Callable) -> None:
    """Refuse a model with any layer in training mode, naming the first."""
    from .swap import training_layer

    found = training_layer(model) if isinstance(model, nn.Module) else None
    if found is not None:
        name, module = found
        what = f"layer {name!r}" if name else "the model"
        raise CaptureError(f"ks.capture: {what} ({type(module).__name__}) is in training mode; a captured graph "
                           f"replays inference only (dropout and batch-norm statistics would be frozen): call "
                           f"model.eval() first")


def check_cuda(model: Callable) -> None:
    """Refuse without CUDA, and a model with a parameter off the GPU (named)."""
    if not torch.cuda.is_available():
        raise CaptureError("ks.capture needs a CUDA device (CUDA graphs are a CUDA feature) and none is available "
                           "here; call the model directly on this machine")
    if isinstance(model, nn.Module):
        for name, p in model.named_parameters():
            if p.device.type != "cuda":
                raise CaptureError(f"ks.capture: parameter {name!r} is on {p.device}; move the model to the GPU "
                                   f"first (model.to('cuda'))")


def device_of(args: tuple, kwargs: dict, leaves: list) -> torch.device | None:
    """The one CUDA device of a call's tensor inputs (None when it has none); a CPU tensor is refused."""
    device = None
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, torch.Tensor):
            continue
        if leaf.device.type != "cuda":
            raise CaptureError(f"ks.capture: input {leaf_path(args, kwargs, i)} is a {leaf.device} tensor; a CUDA "
                               f"graph reads its inputs from GPU memory: pass it on the GPU (.to('cuda')), or feed "
                               f"CPU batches through ks.pipeline")
        if device is not None and leaf.device != device:
            raise CaptureError(f"ks.capture: input {leaf_path(args, kwargs, i)} is on {leaf.device} but an earlier "
                               f"input is on {device}; one graph runs on one device")
        device = leaf.device
    return device


class _LayerStack:
    """Forward hooks on every submodule that keep the stack of layers running, so an error
    raised during capture can name the innermost layer it came from."""

    def __init__(self, model: Callable):
        self.names: list[str] = []
        self._handles = []
        if isinstance(model, nn.Module):
            for name, module in model.named_modules():
                label = f"{name or '<model>'} ({type(module).__name__})"
                try:
                    self._handles.append(module.register_forward_pre_hook(self._enter_hook(label)))
                except RuntimeError:  # a ScriptModule takes no Python hooks: an error inside names its caller
                    continue
                self._handles.append(module.register_forward_hook(self._exit_hook))

    def _enter_hook(self, label: str) -> Callable:
        def hook(module, args) -> None:  # returns None: the inputs are left alone
            self.names.append(label)
        return hook

    def _exit_hook(self, module, args, output) -> None:  # returns None: the output is left alone
        self.names.pop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()


def _root_cause(e: BaseException) -> BaseException:
    """The first exception of a chain (torch.cuda.graph's exit raises its own on top of the cause)."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        nxt = e.__cause__ or e.__context__
        if nxt is None:
            break
        e = nxt
    return e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _rng_snapshot():
    """(the current device's default CUDA generator, a copy of its state), taken before a capture."""
    gens = torch.cuda.default_generators  # empty where no GPU is initialised (the CPU replay tests)
    device = torch.cuda.current_device() if gens else 0
    if device >= len(gens) or not hasattr(gens[device], "clone_state"):
        return None
    return gens[device], gens[device].clone_state()


def _rng_restore(snapshot) -> None:
    """After a failed capture: give the generator back a state that is not in capture mode.

    torch.cuda.graph's exit raises at cudaStreamEndCapture before the generator's capture
    epilogue runs, so its state stays marked as capturing, and the next random op outside a
    capture fails ("Offset increment outside graph capture encountered unexpectedly"). The
    state copied before the capture replaces it (the failed capture drew nothing that ran)."""
    if snapshot is not None:
        gen, state = snapshot
        gen.graphsafe_set_state(state)


# ---------------------------------------------------------------- capture and replay
class _Graph:
    """One captured signature: the graph, its static inputs and outputs, the inputs it writes."""

    def __init__(self, graph, static_leaves: list, out_leaves: list, out_spec, mutated: list[int]):
        self.graph, self.static_leaves = graph, static_leaves
        self.out_leaves, self.out_spec, self.mutated = out_leaves, out_spec, mutated


def _static_copy(leaf: Any) -> Any:
    # A normal tensor even inside inference_mode: replays copy into it from any mode, and its
    # version counter tells which inputs the forward writes.
    if not isinstance(leaf, torch.Tensor):
        return leaf
    with torch.inference_mode(False):
        return leaf.detach().clone()


class CapturedModel:
    """A callable that replays CUDA graphs of `model`, one per input signature (see ks.capture)."""

    def __init__(self, model: Callable, cache_size: int = DEFAULT_CACHE_SIZE, reuse_outputs: bool = False,
                 capture_new: bool = True, warmup: int = DEFAULT_WARMUP):
        if not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"ks.capture: warmup must be a positive int (torch needs eager calls on a side stream "
                             f"before capture), got {warmup!r}")
        self.graphs = GraphCache(cache_size)
        check_cuda(model)
        self.model = model
        self.reuse_outputs = reuse_outputs
        self.capture_new = capture_new
        self.warmup = warmup
        self.pool = torch.cuda.graph_pool_handle()  # one memory pool for all this runner's graphs
        self.captures = 0  # graphs captured so far, evicted ones included

    @property
    def signatures(self) -> list[str]:
        """The captured signatures, least recently used first, in readable form."""
        return [describe(s) for s in self.graphs.keys()]

    def __call__(self, *args, **kwargs):
        sig, leaves, spec = signature(args, kwargs)
        entry = self.graphs.get(sig)
        if entry is None:
            device_of(args, kwargs, leaves)  # a CPU tensor is named before anything else is said
            if not self.capture_new:
                raise CaptureError(f"ks.capture: no graph for inputs {describe(sig)} and capture_new=False "
                                   f"(captured: {'; '.join(self.signatures) or 'none'}); call with a captured "
                                   f"signature, or set runner.capture_new = True")
            entry = self.add(sig, args, kwargs, leaves, spec)
        for static, leaf in zip(entry.static_leaves, leaves):
            if isinstance(leaf, torch.Tensor):
                static.copy_(leaf)
        entry.graph.replay()
        for i in entry.mutated:  # the forward writes this input: leave the caller's tensor as eager would
            with torch.inference_mode(leaves[i].is_inference()):
                leaves[i].copy_(entry.static_leaves[i])
        outs = entry.out_leaves
        if not self.reuse_outputs:
            outs = [o.clone() if isinstance(o, torch.Tensor) else o for o in outs]
        return pytree.tree_unflatten(outs, entry.out_spec)

    def add(self, sig: tuple, args: tuple, kwargs: dict, leaves: list, spec: Any) -> _Graph:
        """Warm up and capture one signature and keep it (evicting the least recently used graph)."""
        check_eval(self.model)
        device = device_of(args, kwargs, leaves) or torch.device("cuda", torch.cuda.current_device())
        with torch.cuda.device(device):
            entry = self._capture(leaves, spec)
        self.captures += 1
        self.graphs.put(sig, entry)  # an evicted graph is freed with its last reference
        return entry

    def _capture(self, leaves: list, spec: Any) -> _Graph:
        static = [_static_copy(leaf) for leaf in leaves]
        s_args, s_kwargs = unflatten(static, spec)
        if isinstance(self.model, nn.Module):
            prepare(self.model)
        with torch.no_grad():
            # Warm-up on a side stream, as torch's CUDA-graph docs prescribe: lazy initialization,
            # autotuning, cuBLAS workspaces and kernelswap's per-shape choices happen here. The
            # capture runs on that same stream, so it finds the per-stream state the warm-up made
            # (cuBLAS keeps a workspace per stream) instead of making it under capture.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.model(*s_args, **s_kwargs)
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            versions = [t._version if isinstance(t, torch.Tensor) else None for t in static]
            graph = torch.cuda.CUDAGraph()
            where, stream = None, torch.cuda.current_stream()
            rng = _rng_snapshot()
            try:
                with _LayerStack(self.model) as stack:
                    try:
                        with torch.cuda.graph(graph, pool=self.pool, stream=side):
                            out = self.model(*s_args, **s_kwargs)
                    finally:
                        where = stack.names[-1] if stack.names else None
            except Exception as e:  # noqa: BLE001 - re-raised with the cause and the layer
                torch.cuda.set_stream(stream)  # torch.cuda.graph leaves its capture stream current when its end fails
                _rng_restore(rng)
                inside = f" (raised inside layer {where})" if where else ""
                raise CaptureError(f"ks.capture: the forward could not be captured in a CUDA graph{inside}: "
                                   f"{_first_line(_root_cause(e))}; {UNSAFE_HINT}") from e
        mutated = [i for i, t in enumerate(static) if isinstance(t, torch.Tensor) and t._version != versions[i]]
        out_leaves, out_spec = pytree.tree_flatten(out)
        return _Graph(graph, static, out_leaves, out_spec, mutated)

    def clear(self) -> None:
        """Drop every captured graph (their memory returns to the pool)."""
        self.graphs.clear()

    def __repr__(self) -> str:
        return (f"CapturedModel({type(self.model).__name__}, graphs={len(self.graphs)}/{self.graphs.size}, "
                f"reuse_outputs={self.reuse_outputs}, capture_new={self.capture_new})")


def capture(model: Callable, *example_args, cache_size: int = DEFAULT_CACHE_SIZE, reuse_outputs: bool = False,
            capture_new: bool = True, warmup: int = DEFAULT_WARMUP, **example_kwargs) -> CapturedModel:
    """Capture `model(*example_args, **example_kwargs)` in a CUDA graph; returns a replaying callable.

    runner(*args, **kwargs) copies the tensor arguments into the graph's static input buffers,
    replays the graph on the current stream and returns what the forward returns (the same
    structure; non-tensor outputs are those of the capture):
      reuse_outputs=False (default)  fresh tensors (one clone per output tensor after the replay),
                                     safe to keep;
      reuse_outputs=True             the graph's own output buffers, no copy: valid until the next
                                     call of this runner (of any signature: the graphs share one
                                     memory pool), which overwrites them.
    One graph per input signature (kernelswap.capture.signature: argument structure, tensor
    shapes/dtypes/devices, non-tensor values) in an LRU cache of `cache_size` graphs. A signature
    not seen before is captured on first use: `warmup` eager calls on a side stream (they run the
    forward's side effects), then the capture; with capture_new=False (settable later as
    runner.capture_new) it is refused with a CaptureError instead. The example call is captured
    here, on copies of the example inputs (they are not modified). A tensor input the forward
    writes in place is copied back into the caller's tensor after each replay, as eager would have
    left it; keep large state that a forward updates (a KV cache) in the model's buffers, or in an
    object passed as an argument (matched by identity, unless it is a registered pytree node), so
    the graph updates it in place with no copy.

    The model runs under torch.no_grad() (inference only), after ks.prepare(model). Refused with
    a CaptureError: no CUDA, a layer in training mode, a parameter or a tensor input not on the GPU
    (named), inputs on two devices, and a forward that cannot be captured (the error gives what was
    raised and inside which layer). Python control flow is frozen at capture: a forward whose path
    depends on tensor values, the time or a counter replays the path it took then. Do not call one
    runner from two streams at once (its graphs share their intermediate memory).
    """
    check_eval(model)  # the refusals that need no GPU first, so they read the same on any machine
    sig, leaves, spec = signature(example_args, example_kwargs)
    device_of(example_args, example_kwargs, leaves)
    runner = CapturedModel(model, cache_size, reuse_outputs, capture_new, warmup)
    runner.add(sig, example_args, example_kwargs, leaves, spec)
    return runner
