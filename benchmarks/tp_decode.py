"""Tensor-parallel decode: HF LlamaForCausalLM (Llama-3-8B layer shapes, random bf16 weights)
decoding one token a step against a StaticCache under a CUDA graph, on 1 GPU and sharded over
several with ks.parallel + torch's parallelize_module (NCCL, one process per GPU, torchrun).

    python benchmarks/tp_decode.py                    # world sizes 1 and 2, every recipe
    python benchmarks/tp_decode.py --world-size 1     # the 1-GPU half only
    python benchmarks/tp_decode.py --out benchmarks/results   # also write tp_decode.csv / .md

Per recipe (bf16, then each ks.swap recipe of the decoder layers; embeddings and lm_head stay
bf16) and world size: build the model from the same seed, swap, shard (q/k/v/gate/up column-wise,
o/down row-wise, lm_head column-wise with the logits all-gathered), prefill a prompt, capture one
decode step in a CUDA graph and replay it: ms per token (median, p20, p80 of per-replay CUDA-event
times; every rank replays the same number of times, as NCCL needs). The parent prints the
scaling 1 -> N GPUs (issue #22's target: <= 0.6x for bf16 and int4 at N = 2) and how far the
N-GPU logits are from the 1-GPU logits (relative L2).
The step writes the same cache slot every replay, so each replay does the same work; with one
query token and no padding mask HF's SDPA path attends to the whole static cache (--cache-len
positions), as a masked step over that cache would cost.

NVLink multicast stays off (NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1,
NVSHMEM_DISABLE_NVLS=1): set below for this process and every child it starts.
"""
from __future__ import annotations

import os

NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
os.environ.update(NO_MULTICAST)  # before torch (and NCCL) load; children inherit os.environ
# The decode step's all-reduces run inside a CUDA graph: c10d keeps their tensors alive itself
# instead of recordStream on the graph's private memory (what Megatron/NeMo advise for graphs).
os.environ.setdefault("TORCH_NCCL_AVOID_RECORD_STREAMS", "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import torch  # noqa: E402

from kernelswap.bench.env import commit  # noqa: E402
from kernelswap.bench.timing import capture_graph  # noqa: E402

RECIPES = ("bf16", "int8", "int8-weight", "int4", "sparse24", "sparse24-int8")
LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                 head_dim=128, vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0)
COLWISE = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
ROWWISE = ("o_proj", "down_proj")


def build(recipe: str, layers: int, cache_len: int, mesh):
    """The model for `recipe`, swapped and (mesh given) sharded; the same weights on every rank."""
    import kernelswap as ks
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(num_hidden_layers=layers, max_position_embeddings=max(cache_len, 8192), **LLAMA3_8B)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)
    if recipe != "bf16":
        report = ks.swap(model, recipe, filter=lambda name, _m: name.startswith("model.layers."), probe=False)
        if len(report.swapped) != 7 * layers:
            raise RuntimeError(f"{recipe}: swapped {len(report.swapped)} of {7 * layers} decoder linears:\n{report}")
    if mesh is not None:
        plan = {"lm_head": ColwiseParallel(output_layouts=Replicate())}  # torch's style: lm_head stays nn.Linear
        for i in range(layers):
            plan.update({f"model.layers.{i}.{a}.{p}": ks.parallel.ColwiseParallel() for a, p in _where(COLWISE)})
            plan.update({f"model.layers.{i}.{a}.{p}": ks.parallel.RowwiseParallel() for a, p in _where(ROWWISE)})
        parallelize_module(model, mesh, plan)
    return model, config


def _where(projections):
    return [("self_attn" if p in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp", p) for p in projections]


@torch.inference_mode()
def decode_ms(model, config, batch: int, prompt: int, cache_len: int, warmup: int, reps: int):
    """(per-replay ms list, the decode step's logits on CPU)."""
    from transformers import StaticCache

    cache = StaticCache(config=config, max_cache_len=cache_len)
    g = torch.Generator(device="cuda").manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (batch, prompt), device="cuda", generator=g)
    out = model(input_ids=ids, cache=cache, use_cache=True,
                cache_position=torch.arange(prompt, device="cuda"))
    step_ids = out.logits[:, -1:].argmax(-1)
    step_pos = torch.full((1,), prompt, device="cuda", dtype=torch.long)
    position_ids = step_pos.expand(batch, 1)

    def step():  # (B, vocab) fp32; the op on the logits also waits, inside the graph, for lm_head's all-gather
        return model(input_ids=step_ids, position_ids=position_ids, cache_position=step_pos,
                     cache=cache, use_cache=True).logits[:, -1].float()

    graph, logits = capture_graph(step)
    for _ in range(warmup):
        graph.replay()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in events], logits.cpu()


def worker(args) -> None:
    """One process per GPU (torchrun), or the single process of --world-size 1."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    mesh = None
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh
        dist.init_process_group("nccl")
        mesh = init_device_mesh("cuda", (world,))
    rows = []
    for recipe in args.recipes:
        row = dict(recipe=recipe, world_size=world, batch=args.batch, cache_len=args.cache_len, layers=args.layers)
        try:
            model, config = build(recipe, args.layers, args.cache_len, mesh)
            times, logits = decode_ms(model, config, args.batch, args.prompt, args.cache_len, args.warmup, args.reps)
            t = torch.tensor(times)
            if mesh is not None:  # the slowest rank sets the pace
                t = t.cuda()
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                t = t.cpu()
            q = torch.quantile(t, torch.tensor([0.5, 0.2, 0.8])).tolist()
            row.update(ms_p50=q[0], ms_p20=q[1], ms_p80=q[2], tokens_per_s=1000.0 * args.batch / q[0],
                       weight_gb_per_gpu=sum(b.numel() * b.element_size() for b in _local(model)) / 1e9)
            if rank == 0:
                torch.save(logits, os.path.join(args.json_dir, f"logits-{recipe}-w{world}.pt"))
            del model
        except Exception as e:  # noqa: BLE001 - a recipe that fails is recorded, not dropped
            if mesh is not None:  # the other ranks may sit in a collective: end the run (torchrun stops them)
                raise
            row["error"] = f"{type(e).__name__}: {e}"[:300]
        torch.cuda.empty_cache()
        rows.append(row)
        if rank == 0:
            print(json.dumps(row), flush=True)
    if rank == 0:
        with open(os.path.join(args.json_dir, f"w{world}.json"), "w") as f:
            json.dump(rows, f)
    if mesh is not None:
        dist.destroy_process_group()


def _local(model):
    from torch.distributed.tensor import DTensor
    for t in list(model.parameters()) + list(model.buffers()):
        yield t.to_local() if isinstance(t, DTensor) else t


def launch(world: int, args, json_dir: str) -> None:
    """Run the workers for `world` GPUs in a child (torchrun for more than one), multicast off there too."""
    forward = ["--worker", "--json-dir", json_dir, "--recipes", *args.recipes, "--layers", str(args.layers),
               "--batch", str(args.batch), "--prompt", str(args.prompt), "--cache-len", str(args.cache_len),
               "--warmup", str(args.warmup), "--reps", str(args.reps)]
    cmd = [sys.executable, os.path.abspath(__file__), *forward]
    if world > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
               os.path.abspath(__file__), *forward]
    subprocess.run(cmd, check=True, env={**os.environ, **NO_MULTICAST})


def report(args, json_dir: str) -> list[dict]:
    rows = []
    for w in args.world_size:
        path = os.path.join(json_dir, f"w{w}.json")
        rows += json.load(open(path)) if os.path.exists(path) else []
    base = {r["recipe"]: r for r in rows if r["world_size"] == 1 and "ms_p50" in r}
    for r in rows:
        b = base.get(r["recipe"])
        if r["world_size"] > 1 and b is not None and "ms_p50" in r:
            r["vs_1gpu"] = r["ms_p50"] / b["ms_p50"]
            one = torch.load(os.path.join(json_dir, f"logits-{r['recipe']}-w1.pt"))
            many = torch.load(os.path.join(json_dir, f"logits-{r['recipe']}-w{r['world_size']}.pt"))
            r["logits_rel_err_vs_1gpu"] = float((many - one).norm() / one.norm())
    meta = dict(gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
                torch=torch.__version__, cuda=torch.version.cuda, commit=commit(),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                command="python " + " ".join(sys.argv))
    for r in rows:
        r.update(meta)
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| recipe | GPUs | ms/token p50 (p20-p80) | tokens/s | weights GB/GPU | vs 1 GPU "
            "| logits rel. err vs 1 GPU |")
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        if "ms_p50" not in r:
            lines.append(f"| {r['recipe']} | {r['world_size']} | error: {r.get('error')} | | | | |")
            continue
        vs = f"{r['vs_1gpu']:.2f}x" if "vs_1gpu" in r else ""
        err = f"{r['logits_rel_err_vs_1gpu']:.2e}" if "logits_rel_err_vs_1gpu" in r else ""
        lines.append(f"| {r['recipe']} | {r['world_size']} | {r['ms_p50']:.3f} ({r['ms_p20']:.3f}-{r['ms_p80']:.3f}) "
                     f"| {r['tokens_per_s']:.1f} | {r['weight_gb_per_gpu']:.2f} | {vs} | {err} |")
    if rows:
        r = rows[0]
        lines += ["", f"{r['gpu']}, torch {r['torch']}, CUDA {r['cuda']}, commit {r['commit']}, {r['date']}; "
                      f"{r['layers']} layers, batch {r['batch']}, static cache {r['cache_len']}; `{r['command']}`"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world-size", type=int, nargs="+", default=[1, 2], help="GPU counts to run (1 = one GPU)")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--cache-len", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--reps", type=int, default=100)
    p.add_argument("--out", help="directory for tp_decode.csv / tp_decode.md (default: print only)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if not torch.cuda.is_available() or torch.cuda.device_count() < max(args.world_size):
        sys.exit(f"tp_decode: needs {max(args.world_size)} CUDA GPUs, this machine has "
                 f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}")
    with tempfile.TemporaryDirectory() as json_dir:
        for w in args.world_size:
            launch(w, args, json_dir)
        rows = report(args, json_dir)
    print(markdown(rows))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "tp_decode.csv"), "w", newline="") as f:
            keys = sorted({k for r in rows for k in r})
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        with open(os.path.join(args.out, "tp_decode.md"), "w") as f:
            f.write(markdown(rows) + "\n")


if __name__ == "__main__":
    main()
