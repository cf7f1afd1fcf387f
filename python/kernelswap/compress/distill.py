"""ks.distill(student, teacher, data, ...): recover a pruned model by matching its teacher.

Knowledge distillation (Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural
Network", 2015, arXiv:1503.02531), used after pruning as in sparse fine-tuning recipes
(e.g. Kurtic et al., "Sparse Fine-tuning for Inference Acceleration of Large Language
Models", 2023, arXiv:2310.06927): the student is trained to reproduce the teacher's
outputs on unlabeled data.
  logits (an output with .logits / ["logits"]): KL(softmax(t / T) || softmax(s / T)) * T^2
  otherwise the last hidden state (last_hidden_state, token_embeddings, or the tensor /
  first tensor output): mean squared error.
Positions where the batch's attention_mask is 0 do not count. Every Linear whose weight
is 2:4 sparse when distill starts keeps exactly its mask: its pruned entries are zeroed
again after every optimizer step (AdamW), so a later ks.swap(student, "sparse24") keeps
the mask. Both models run in eval mode (no dropout), batches are drawn in an order fixed
by `seed`; each model runs on its own device (the loss on the student's).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..packing import is_24_sparse
from .calibration import batches, call, model_device, progress, to_device


@dataclass
class DistillReport:
    steps: int
    seconds: float
    device: str
    target: str  # "logits" or the hidden-state key used
    masked_layers: int
    losses: list[float] = field(default_factory=list)

    def __str__(self) -> str:
        first, last = (self.losses[0], self.losses[-1]) if self.losses else (float("nan"),) * 2
        return (f"kernelswap.distill: {self.steps} steps in {self.seconds:.1f} s on {self.device}, target "
                f"{self.target}, {self.masked_layers} 2:4 masks held; loss {first:.4g} -> {last:.4g}")


def _field(out, key: str):
    if isinstance(out, dict) or hasattr(out, "keys"):
        return out[key] if key in out.keys() else None
    return getattr(out, key, None)


def _target(out) -> tuple[str, Tensor]:
    for key in ("logits", "last_hidden_state", "token_embeddings"):
        v = _field(out, key)
        if torch.is_tensor(v):
            return key, v
    if torch.is_tensor(out):
        return "output", out
    if isinstance(out, (tuple, list)) and out and torch.is_tensor(out[0]):
        return "output[0]", out[0]
    raise TypeError(f"kernelswap.distill: cannot find logits or a hidden state in the model output "
                    f"({type(out).__name__}); return a tensor, a tuple starting with one, or an output with "
                    f".logits / .last_hidden_state")


def _mask_of(batch) -> Tensor | None:
    if isinstance(batch, dict) or hasattr(batch, "keys"):
        m = batch.get("attention_mask") if hasattr(batch, "get") else None
        return m if torch.is_tensor(m) else None
    if isinstance(batch, (tuple, list)):
        for b in batch:
            m = _mask_of(b)
            if m is not None:
                return m
    return None


def distill_loss(s: Tensor, t: Tensor, kind: str, temperature: float, mask: Tensor | None) -> Tensor:
    if s.shape != t.shape:
        raise ValueError(f"kernelswap.distill: student output {tuple(s.shape)} and teacher output "
                         f"{tuple(t.shape)} differ; distill needs the same architecture's outputs")
    s, t = s.float(), t.float()
    if kind == "logits":
        per = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                       log_target=True, reduction="none").sum(-1) * temperature ** 2
    else:
        per = (s - t).square().mean(-1)
    if mask is not None and mask.shape == per.shape:
        m = mask.to(per.dtype)
        return (per * m).sum() / m.sum().clamp(min=1)
    return per.mean()


def distill(student: nn.Module, teacher: nn.Module, data, steps: int = 100, lr: float = 1e-4,
            temperature: float = 1.0, *, weight_decay: float = 0.0, seed: int = 0,
            progress_bar: bool = True) -> DistillReport:
    """Train `student` in place to match `teacher` on `data` (an iterable of model inputs); DistillReport."""
    if steps < 1:
        raise ValueError(f"kernelswap.distill: steps must be >= 1, got {steps}")
    if temperature <= 0:
        raise ValueError(f"kernelswap.distill: temperature must be > 0, got {temperature}")
    data = batches(data, "kernelswap.distill")
    device, teacher_device = model_device(student), model_device(teacher)
    masks = {m: m.weight.detach() != 0 for m in student.modules()
             if isinstance(m, nn.Linear) and is_24_sparse(m.weight.detach())}
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise ValueError("kernelswap.distill: the student has no parameters that require grad")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    modes = {m: m.training for m in list(student.modules()) + list(teacher.modules())}
    losses, kind = [], None
    t0 = time.perf_counter()
    try:
        student.eval()
        teacher.eval()
        for step in progress(range(steps), "distill", steps, progress_bar):
            raw = data[int(order[step % len(data)])]
            batch = to_device(raw, device)
            with torch.no_grad():
                kind, t = _target(call(teacher, to_device(raw, teacher_device)))
                t = t.to(device)
            with torch.enable_grad():
                _, s = _target(call(student, batch))
                loss = distill_loss(s, t, kind, temperature, _mask_of(batch))
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            with torch.no_grad():
                for m, keep in masks.items():
                    m.weight.mul_(keep)
            losses.append(float(loss.detach()))
    finally:
        for m, mode in modes.items():
            m.training = mode
    return DistillReport(steps, time.perf_counter() - t0, str(device), kind, len(masks), losses)


__all__ = ["DistillReport", "distill", "distill_loss"]
