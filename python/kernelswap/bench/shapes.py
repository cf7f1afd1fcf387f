"""Named shape sets for the kernel microbenchmarks.

Linear shapes are (M tokens) x (K in) x (N out), weight stored N x K, as in TARGETS.md.
Conv shapes are the distinct conv layers of torchvision's ResNet-50 (v1.5: stride on
the 3x3) and MobileNetV2 at 224x224, each with the BatchNorm + activation that follows
it in the model (and the residual add where the model adds one before the activation).

Sets (`python -m kernelswap bench --list` prints them):
  targets      the TARGETS.md P1-P8 linear shapes and the P9 conv layers (N = 64)
  llm          Llama-3 8B / 70B linears (K, N from 4096, 8192, 14336, 28672) at M = 1, 16, 128, 4096
  resnet50     ResNet-50 conv layers at N = 1 and 64
  mobilenetv2  MobileNetV2 conv layers at N = 1 and 64
  quick        the target linear shapes and a few conv layers: a smoke run in about a minute
  tiny         a few small, awkward shapes: the CPU smoke run of the harness itself
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LinearShape:
    m: int  # tokens
    k: int  # in features
    n: int  # out features
    group_size: int = 128  # int4 only

    @property
    def label(self) -> str:
        return f"{self.m}x{self.k}x{self.n}"

    def flops(self) -> float:
        return 2.0 * self.m * self.k * self.n


@dataclass(frozen=True)
class ConvShape:
    batch: int
    c_in: int
    hw: int  # square input, H = W
    c_out: int
    kernel: int
    stride: int = 1
    groups: int = 1
    activation: str = "relu"
    residual: bool = False  # add the block's input before the activation
    layer: str = ""  # where the layer sits in the model (first occurrence)

    @property
    def padding(self) -> int:
        return self.kernel // 2

    @property
    def out_hw(self) -> int:
        return (self.hw + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def label(self) -> str:
        res = "+res" if self.residual else ""
        return (f"n{self.batch}-c{self.c_in}-h{self.hw}-o{self.c_out}-k{self.kernel}-s{self.stride}"
                f"-g{self.groups}-{self.activation}{res}")

    def flops(self) -> float:
        return 2.0 * self.batch * self.out_hw**2 * self.c_out * (self.c_in // self.groups) * self.kernel**2


# ---------------------------------------------------------------- linear sets
# TARGETS.md P1-P8 (which op each one targets lives in bench.targets).
TARGET_LINEARS = (
    LinearShape(4096, 8192, 8192),  # P1, P5, P8
    LinearShape(16, 8192, 28672),  # P2, P4, P7
    LinearShape(1, 8192, 28672),  # P3
    LinearShape(4096, 8192, 28672),  # P6
)

# (K, N) of the Llama-3 linears: 8B qkv/o (4096 -> 4096), gate/up (4096 -> 14336), down
# (14336 -> 4096); 70B o (8192 -> 8192), gate/up (8192 -> 28672), down (28672 -> 8192).
LLM_KN = ((4096, 4096), (4096, 14336), (14336, 4096), (8192, 8192), (8192, 28672), (28672, 8192))
LLM_M = (1, 16, 128, 4096)


def llm_linears() -> tuple[LinearShape, ...]:
    return tuple(LinearShape(m, k, n) for k, n in LLM_KN for m in LLM_M)


# ---------------------------------------------------------------- conv sets
def resnet50_convs(batch: int) -> tuple[ConvShape, ...]:
    """The distinct conv layers of ResNet-50 at 224x224 (bottleneck blocks, stride on the 3x3)."""
    out = [ConvShape(batch, 3, 224, 64, 7, 2, layer="conv1")]
    c_in, hw = 64, 56
    for stage, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), 1):
        for b in range(min(blocks, 2)):  # block 3+ repeats block 2's shapes
            s = stride if b == 0 else 1
            name = f"layer{stage}.{b}"
            out.append(ConvShape(batch, c_in, hw, width, 1, layer=f"{name}.conv1"))
            out.append(ConvShape(batch, width, hw, width, 3, s, layer=f"{name}.conv2"))
            out.append(ConvShape(batch, width, hw // s, width * 4, 1, residual=True, layer=f"{name}.conv3"))
            if b == 0:
                out.append(ConvShape(batch, c_in, hw, width * 4, 1, s, activation="identity",
                                     layer=f"{name}.downsample"))
            c_in, hw = width * 4, hw // s
    return _distinct(out)


# (expansion t, out channels c, repeats n, first stride s): torchvision's MobileNetV2 table.
_MBV2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def mobilenetv2_convs(batch: int) -> tuple[ConvShape, ...]:
    """The distinct conv layers of MobileNetV2 at 224x224 (ReLU6; linear bottleneck + residual)."""
    out = [ConvShape(batch, 3, 224, 32, 3, 2, activation="relu6", layer="features.0")]
    c_in, hw, idx = 32, 112, 1
    for t, c, n, s in _MBV2:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = c_in * t
            name = f"features.{idx}"
            if t != 1:
                out.append(ConvShape(batch, c_in, hw, hidden, 1, activation="relu6", layer=f"{name}.expand"))
            out.append(ConvShape(batch, hidden, hw, hidden, 3, stride, groups=hidden, activation="relu6",
                                 layer=f"{name}.dw"))
            out.append(ConvShape(batch, hidden, hw // stride, c, 1, activation="identity",
                                 residual=stride == 1 and c_in == c, layer=f"{name}.project"))
            c_in, hw, idx = c, hw // stride, idx + 1
    out.append(ConvShape(batch, c_in, hw, 1280, 1, activation="relu6", layer="features.18"))
    return _distinct(out)


def _distinct(shapes: list[ConvShape]) -> tuple[ConvShape, ...]:
    seen: dict[str, ConvShape] = {}
    for s in shapes:
        seen.setdefault(s.label, s)
    return tuple(seen.values())


CONV_BATCHES = (1, 64)

# A few conv layers that cover the kinds: stem, 1x1, 3x3, strided, depthwise, residual.
_QUICK_CONV_LAYERS = ("conv1", "layer1.0.conv2", "layer3.0.conv3", "features.2.dw", "features.3.project")


def quick_convs() -> tuple[ConvShape, ...]:
    pool = resnet50_convs(64) + mobilenetv2_convs(64)
    return tuple(s for s in pool if s.layer in _QUICK_CONV_LAYERS)


# ---------------------------------------------------------------- the named sets
def shape_set(name: str) -> tuple[tuple[LinearShape, ...], tuple[ConvShape, ...]]:
    """(linear shapes, conv shapes) of a named set."""
    if name == "targets":
        return TARGET_LINEARS, resnet50_convs(64) + mobilenetv2_convs(64)
    if name == "llm":
        return llm_linears(), ()
    if name == "resnet50":
        return (), tuple(s for b in CONV_BATCHES for s in resnet50_convs(b))
    if name == "mobilenetv2":
        return (), tuple(s for b in CONV_BATCHES for s in mobilenetv2_convs(b))
    if name == "quick":
        return TARGET_LINEARS, quick_convs()
    if name == "tiny":
        return TINY_LINEARS, TINY_CONVS
    raise ValueError(f"unknown shape set {name!r}; choose from {', '.join(SHAPE_SETS)}")


SHAPE_SETS = ("targets", "llm", "resnet50", "mobilenetv2", "quick", "tiny")

# Small and awkward (M odd, K and N not powers of two) so a CPU run of every provider takes seconds.
TINY_LINEARS = (LinearShape(1, 256, 96), LinearShape(33, 256, 160))
TINY_CONVS = (ConvShape(2, 16, 9, 24, 3, layer="tiny.3x3"),
              ConvShape(2, 24, 8, 24, 3, 2, groups=24, activation="relu6", layer="tiny.dw"),
              ConvShape(2, 24, 8, 24, 1, activation="identity", residual=True, layer="tiny.project"))


def describe() -> str:
    lines = []
    for name in SHAPE_SETS:
        lin, conv = shape_set(name)
        lines.append(f"{name}: {len(lin)} linear, {len(conv)} conv shapes")
        if lin:
            lines.append("  linear (MxKxN): " + ", ".join(s.label for s in lin))
        for s in conv:
            lines.append(f"  conv {s.label}  ({s.layer})")
    return "\n".join(lines)
