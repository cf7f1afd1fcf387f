"""ks.pipeline returns exactly what the plain loop returns, in order: on the CPU (where it is the
plain loop) and on the GPU (overlapped copies: pinned memory, a copy stream, events, record_stream)."""
import contextlib

import pytest
import torch
from torch import nn

import kernelswap as ks
from utils import needs_cuda


def small_cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 5)).eval()


def loop(model, batches, device):
    return [model(b.to(device)) for b in batches]


def assert_same_list(got, expected):
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g.device == e.device, f"output {i}: on {g.device}, the loop's on {e.device}"
        torch.testing.assert_close(g, e, rtol=0, atol=0, msg=lambda m, i=i: f"output {i}: {m}")


class Counting:
    """An iterable that records how many batches were taken from it."""

    def __init__(self, batches):
        self.batches, self.taken = batches, 0

    def __iter__(self):
        for b in self.batches:
            self.taken += 1
            yield b


# ---------------------------------------------------------------- CPU: the plain loop
def test_cpu_pipeline_is_the_plain_loop():
    model = small_cnn()
    batches = [torch.randn(n, 3, 9, 7) for n in (1, 4, 3, 2)]  # awkward sizes, one of them 1
    with torch.no_grad():
        expected = loop(model, batches, "cpu")
        assert_same_list(list(ks.pipeline(model, batches, device="cpu")), expected)
        if not torch.cuda.is_available():
            assert_same_list(list(ks.pipeline(model, batches)), expected)  # device=None: no CUDA, no copies


def test_cpu_pipeline_is_lazy_and_keeps_order():
    source = Counting([torch.full((2,), float(i)) for i in range(5)])
    outs = ks.pipeline(lambda b: b * 10, source, device="cpu")
    assert source.taken == 0
    assert next(outs).tolist() == [0.0, 0.0] and source.taken == 1
    assert [o[0].item() for o in outs] == [10.0, 20.0, 30.0, 40.0]


def test_cpu_pipeline_nested_batches_and_empty():
    batches = [(torch.randn(3), {"m": torch.randn(3), "k": 2}) for _ in range(3)]
    got = list(ks.pipeline(lambda b: b[0] * b[1]["m"] + b[1]["k"], batches, device="cpu"))
    assert_same_list(got, [x * d["m"] + d["k"] for x, d in batches])
    assert list(ks.pipeline(lambda b: b, [], device="cpu")) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cuda_requested_without_cuda_is_an_error_at_the_call():
    with pytest.raises(RuntimeError, match="device='cuda' but CUDA is not available here"):
        ks.pipeline(lambda b: b, [torch.zeros(1)], device="cuda")  # raised before the first next()


@pytest.mark.parametrize("prefetch", [0, -2, 1.0, True])
def test_prefetch_must_be_positive_int(prefetch):
    with pytest.raises(ValueError, match="prefetch must be a positive int"):
        ks.pipeline(lambda b: b, [], device="cpu", prefetch=prefetch)


# ---------------------------------------------------------------- the overlapped schedule, on the CPU
@pytest.fixture
def logged_streams(monkeypatch):
    """torch.cuda's streams and events as no-ops that log what waits for what."""
    log = []

    class Event:
        def record(self, stream):
            self.n = sum(1 for e in log if e.startswith("take"))  # the batch just staged
            log.append(f"copied {self.n - 1}")

    class Stream:
        def __init__(self, *a):
            pass

        def wait_stream(self, other):
            pass

        def wait_event(self, event):
            log.append(f"wait {event.n - 1}")

    stream = Stream()
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    return log


@pytest.mark.parametrize("prefetch", [1, 2])
def test_overlapped_schedule(logged_streams, prefetch):
    """Batch i+1's copy is issued after batch i's compute and before output i is handed out; the
    compute of batch i waits for its own copy's event; outputs in order; prefetch bounds the lookahead."""
    from kernelswap.pipeline import _overlapped
    log = logged_streams
    n = 5

    def batches():
        for i in range(n):
            log.append(f"take {i}")
            yield torch.full((2,), float(i))

    def model(b):
        log.append(f"compute {int(b[0])}")
        return b + 100

    outs = []
    for out in _overlapped(model, batches(), torch.device("cpu"), prefetch, pin=False):
        log.append(f"yield {int(out[0]) - 100}")
        outs.append(out)
    assert [int(o[0]) - 100 for o in outs] == list(range(n))
    expected, staged = ["take 0", "copied 0"], 1
    for i in range(n):
        expected += [f"wait {i}", f"compute {i}"]
        for j in range(staged, min(i + 1 + prefetch, n)):  # top up to `prefetch` batches ahead
            expected += [f"take {j}", f"copied {j}"]
        staged = max(staged, min(i + 1 + prefetch, n))
        expected.append(f"yield {i}")
    assert log == expected


# ---------------------------------------------------------------- GPU: overlapped copies
class LateReader(nn.Module):
    """Reads its input only after a long chain of matmuls that do not depend on it, so a batch
    whose memory were handed to the next copy too early would be overwritten before it is read."""

    def __init__(self, n=1024, depth=24):
        super().__init__()
        self.register_buffer("w", torch.randn(n, n) / n ** 0.5)
        self.depth = depth

    def forward(self, x):
        h = self.w
        for _ in range(self.depth):
            h = h @ self.w
        return x * 2 + h.mean()


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("prefetch", [1, 3])
@pytest.mark.parametrize("pin", [True, False], ids=["pinned", "pageable"])
def test_gpu_pipeline_equals_loop_in_order(prefetch, pin):
    model = LateReader().cuda().eval()
    batches = [torch.randn(64, 1024) + i for i in range(12)]  # distinct batches: a mix-up shows
    with torch.no_grad():
        expected = loop(model, batches, "cuda")
        got = list(ks.pipeline(model, batches, device="cuda", prefetch=prefetch, pin_memory=pin))
    assert_same_list(got, expected)


@needs_cuda
@pytest.mark.gpu
def test_gpu_pipeline_cnn_with_pinned_batches_and_caller_sync():
    model = small_cnn().cuda()
    batches = [torch.randn(n, 3, 33, 31).pin_memory() for n in (4, 1, 4, 7, 4)]
    with torch.no_grad():
        expected = loop(model, batches, "cuda")
        got = []
        for out in ks.pipeline(model, batches):  # device=None: the current CUDA device
            got.append(out.cpu().cuda())  # the caller synchronizes on every output
    assert_same_list(got, expected)


@needs_cuda
@pytest.mark.gpu
def test_gpu_pipeline_feeds_a_capture_runner():
    model = small_cnn().cuda()
    batches = [torch.randn(4, 3, 16, 16) for _ in range(6)]
    runner = ks.capture(model, batches[0].cuda())
    with torch.no_grad():
        expected = loop(model, batches, "cuda")
    got = list(ks.pipeline(runner, batches))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)  # a replay runs the same kernels
    assert len(got) == len(expected) and runner.captures == 1


@needs_cuda
@pytest.mark.gpu
def test_gpu_pipeline_nested_batches():
    batches = [{"x": torch.randn(5, 7), "y": (torch.randn(7), 3)} for _ in range(4)]

    def fn(b):
        assert b["x"].is_cuda and b["y"][0].is_cuda and b["y"][1] == 3
        return b["x"] @ b["y"][0] + b["y"][1]

    got = list(ks.pipeline(fn, batches, device="cuda"))
    expected = [b["x"].cuda() @ b["y"][0].cuda() + 3 for b in batches]
    assert_same_list(got, expected)
