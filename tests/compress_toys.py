"""Shared by the kernelswap.compress tests: the reference backend on one thread, a toy pre-norm
model of two blocks (outlier norm channels, as in LLMs) and a tiny random Hugging Face Llama."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import kernelswap as ks


@pytest.fixture(autouse=True, scope="module")
def reference_one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine one thread is much faster than two
    with ks.use_backend("reference"):
        yield
    torch.set_num_threads(threads)


class Block(nn.Module):
    def __init__(self, d: int, post_norm: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.gate, self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.post_norm = post_norm
        with torch.no_grad():
            self.norm.weight[::7] = 8.0  # outlier channels, as in LLMs

    def forward(self, x):
        if self.post_norm:  # the norm's output also feeds the residual: AWQ must not fold into it
            h = self.norm(x)
            return h + self.down(torch.sigmoid(self.gate(h)) * self.up(h))
        h = self.norm(x)
        return x + self.down(torch.sigmoid(self.gate(h)) * self.up(h))


class Toy(nn.Module):
    def __init__(self, d: int = 64, post_norm: bool = False, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.layers = nn.ModuleList([Block(d, post_norm) for _ in range(2)])
        self.head = nn.Linear(d, 16)

    def forward(self, x, scale=1.0):
        for b in self.layers:
            x = b(x)
        return {"logits": self.head(x) * scale}


def toy_data(n: int, seed: int, d: int = 64):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=torch.Generator().manual_seed(9)) / d ** 0.5
    return [torch.randn(4, 8, d, generator=g) @ mix for _ in range(n)]


def tiny_llama(layers: int = 3):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2)
    data = [{"input_ids": torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(i))} for i in range(3)]
    return transformers.LlamaForCausalLM(cfg).eval(), data
