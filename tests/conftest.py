import zlib

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
