"""ks.parallel on CPU processes (gloo): swapped layers and a transformer block sharded with torch's
parallelize_module give the unsharded swapped model's outputs; refusals raise on every rank.

The worker processes start once per world size (2 and 4) and run every check
(test_parallel_numerics.py, test_parallel_workflow.py); each check's outcome comes back per
rank, so a failure names the check and the rank. A worker that hangs is killed after
TIMEOUT_S and the test fails instead of stalling CI.
"""
from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import time
import traceback

import pytest
import torch
import torch.multiprocessing as mp

from test_parallel_numerics import RECIPES, check_block, check_dtensor_ops, check_layers
from test_parallel_workflow import check_checkpoint, check_hf_llama, check_refusals, check_shard_then_swap

TIMEOUT_S = 150


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    results = {}
    try:
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        # a collective that one rank never joins raises after this, instead of waiting out TIMEOUT_S
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=30))
        mesh = init_device_mesh("cpu", (world,))
        checks = [(f"block-{r}", lambda r=r: check_block(r, mesh, world)) for r in RECIPES]
        checks += [(f"layers-{r}", lambda r=r: check_layers(r, mesh, world)) for r in RECIPES]
        checks += [("refusals", lambda: check_refusals(mesh, world)),
                   ("shard-then-swap", lambda: check_shard_then_swap(mesh, world)),
                   ("dtensor-ops", lambda: check_dtensor_ops(mesh, world)),
                   ("checkpoint", lambda: check_checkpoint(mesh, world, out_dir)),
                   ("hf-llama", lambda: check_hf_llama(mesh, world))]
        for name, fn in checks:
            try:
                fn()
                results[name] = None
            except Exception:  # noqa: BLE001 - reported per check to the parent
                results[name] = traceback.format_exc()
            _write(out_dir, rank, results)  # what got done is there even if a later check hangs
            dist.barrier()  # a rank that failed early does not leave the others in a collective
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001
        results["setup"] = traceback.format_exc()
    _write(out_dir, rank, results)


def _write(out_dir, rank, results):
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)


def _read(out_dir, world):
    paths = {r: os.path.join(out_dir, f"rank{r}.json") for r in range(world)}
    return {r: json.load(open(p)) if os.path.exists(p) else {} for r, p in paths.items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_method() -> str:
    """fork where it is safe: the workers then inherit the parent's imports (torch.distributed.tensor
    alone takes seconds a process on a busy core; spawn tripled this file's time). They use CPU
    tensors and gloo only, so a parent without CUDA state is all fork needs."""
    return "fork" if sys.platform == "linux" and not torch.cuda.is_initialized() else "spawn"


def _spawn(world: int, out_dir: str) -> dict[int, dict]:
    import kernelswap.parallel.style  # noqa: F401 - imported once here, inherited by forked workers
    try:
        import transformers.models.llama  # noqa: F401
    except ImportError:  # test_parallel skips the hf-llama check then
        pass
    ctx = mp.start_processes(_worker, args=(world, _free_port(), out_dir), nprocs=world, join=False,
                             start_method=_start_method())
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            done = {r: {k: "failed" if v else "ok" for k, v in res.items()} for r, res in _read(out_dir, world).items()}
            pytest.fail(f"{world} gloo workers still running after {TIMEOUT_S} s: a hang; checks done: {done}")
    return _read(out_dir, world)


CHECKS = [f"block-{r}" for r in RECIPES] + [f"layers-{r}" for r in RECIPES] + \
    ["refusals", "shard-then-swap", "dtensor-ops", "checkpoint", "hf-llama"]
_RUNS: dict[int, dict] = {}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    def get(world):
        if world not in _RUNS:
            _RUNS[world] = _spawn(world, str(tmp_path_factory.mktemp(f"tp{world}")))
        return _RUNS[world]
    return get


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("world", [2, 4])
def test_parallel(runs, world, check):
    if check == "hf-llama":
        pytest.importorskip("transformers")
    results = runs(world)
    for rank, res in results.items():
        assert "setup" not in res, f"rank {rank}: {res['setup']}"
        assert res.get(check) is None, f"{check} on rank {rank} of {world}:\n{res[check]}"
