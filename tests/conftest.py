import os
import sys
import zlib

# `python -m pytest` puts the working directory (the repo root) first on sys.path, where the source
# tree's kernels/ (installed as kernelswap.kernels) would shadow an installed top-level package of
# that name: Hugging Face's `kernels`, which transformers (from 5.25) imports. The root stays on the
# path for `benchmarks.*`, but after the installed packages.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT] + [_ROOT]

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed(request):
    """A fixed seed per test (from its id): reproducible, yet different across tests."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one CPU thread: small ops on a busy 2-core machine ran up to
    10x slower on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def reference_backend():
    """Force the reference backend (the oracle) for tests of wiring and numerics."""
    import kernelswap as ks

    with ks.use_backend("reference"):
        yield
