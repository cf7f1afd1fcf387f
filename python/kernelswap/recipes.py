"""Recipes: what kernelswap.swap does to which layers, by name or as config objects.

  "int8"          Int8(): W8A8, dynamic per-token int8 activations, per-channel int8 weights
  "int8-weight"   Int8Weight(): W8A16
  "int4"          Int4(group_size=128, symmetric=False, method="rtn"): W4A16, group-wise;
                  method "awq" / "gptq" calibrate (kernelswap.compress)
  "sparse24"      Sparse24(method="magnitude"): 2:4 pruning, float values;
                  method "wanda" / "sparsegpt" calibrate
  "sparse24-int8" Sparse24Int8(method="magnitude"): 2:4 pruning + W8A8
  "fp8"           Fp8(method="rtn", fast_accum=False): W8A8 in float8_e4m3fn, dynamic per-token
                  e4m3 activations, per-channel e4m3 weights (Hopper GEMMs; the reference
                  elsewhere); method "gptq" calibrates the e4m3 rounding; fast_accum: FP8 fast
                  accumulation at large M
  "sparse24-fp8"  Sparse24Fp8(method="magnitude"): 2:4 pruning + FP8 W8A8
  "fuse"          Fuse(): Conv2d + BatchNorm2d (+ residual add) (+ activation) -> ConvBNAct2d

Linear recipes turn one nn.Linear into one module; at most one of them per swap call
(each takes every Linear the filter admits). "fuse" works on conv chains and combines
with any of them. A recipe's config() is plain JSON; kernelswap.save stores it and
recipe_from_config rebuilds it. A calibrated method (needs_calibration) computes the
weights in calibrate() from swap's calibration= data, and convert() packs them; convert
without them (kernelswap.load, which then loads the saved tensors) packs by RTN/magnitude.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Iterable

from torch import nn

from .compress.driver import FP8_METHODS, INT4_METHODS, PRUNE_METHODS, fp8_weights, int4_weights, pruned_weights
from .nn import Fp8Linear, Int4Linear, Int8Linear, Sparse24Linear
from .ops.int4 import GROUP_SIZES


@dataclass(frozen=True)
class Recipe:
    name: ClassVar[str] = ""
    kind: ClassVar[str] = "linear"  # "linear": one nn.Linear -> one module; "conv": fuse.py

    def config(self) -> dict:
        return {"recipe": self.name, **asdict(self)}

    @property
    def needs_calibration(self) -> bool:
        return False

    def calibrate(self, model: nn.Module, layers: list[tuple[str, nn.Linear]], data) -> dict[str, Any]:
        """{layer name: what convert(linear, name, state) packs}, from the calibration data."""
        return {}

    def convert(self, linear: nn.Linear, name: str) -> nn.Module:
        """The swapped module; ValueError/TypeError (with the reason) when the layer cannot be taken."""
        raise NotImplementedError

    def __str__(self) -> str:
        fields = asdict(self)
        return self.name if not fields else f"{self.name}({', '.join(f'{k}={v}' for k, v in fields.items())})"


@dataclass(frozen=True)
class Int8(Recipe):
    name: ClassVar[str] = "int8"

    def convert(self, linear, name):
        return Int8Linear.from_float(linear, "int8", name=name)


@dataclass(frozen=True)
class Int8Weight(Recipe):
    name: ClassVar[str] = "int8-weight"

    def convert(self, linear, name):
        return Int8Linear.from_float(linear, "int8-weight", name=name)


def _check_method(where: str, method, methods: tuple[str, ...]) -> None:
    if method not in methods:
        raise ValueError(f"{where}: method must be one of {', '.join(map(repr, methods))}, got {method!r}")


@dataclass(frozen=True)
class Int4(Recipe):
    group_size: int = 128
    symmetric: bool = False
    method: str = "rtn"
    name: ClassVar[str] = "int4"

    def __post_init__(self):
        if self.group_size not in GROUP_SIZES:
            raise ValueError(f"ks.Int4: group_size must be one of {GROUP_SIZES}, got {self.group_size!r}")
        if not isinstance(self.symmetric, bool):
            raise TypeError(f"ks.Int4: symmetric must be True or False, got {self.symmetric!r}")
        _check_method("ks.Int4", self.method, INT4_METHODS)

    @property
    def needs_calibration(self) -> bool:
        return self.method != "rtn"

    def calibrate(self, model, layers, data):
        return int4_weights(model, layers, data, self.method, self.group_size, self.symmetric)

    def convert(self, linear, name, state=None):
        m = Int4Linear.from_float(linear, self.group_size, self.symmetric, name=name)
        if state is not None:  # a calibrated Int4Weight, in packing.quantize_int4's format
            m.w_packed.copy_(state.packed)
            m.scales.copy_(state.scales)
            if state.zeros is not None:
                m.zeros.copy_(state.zeros)
        m.method = self.method
        return m


@dataclass(frozen=True)
class Sparse24(Recipe):
    method: str = "magnitude"
    name: ClassVar[str] = "sparse24"
    int8: ClassVar[bool] = False

    def __post_init__(self):
        _check_method(f"ks.{type(self).__name__}", self.method, PRUNE_METHODS)

    @property
    def needs_calibration(self) -> bool:
        return self.method != "magnitude"

    def calibrate(self, model, layers, data):
        return pruned_weights(model, layers, data, self.method)[0]

    def layer(self, linear, prune, name):
        """The swapped module for `linear` (pruned by magnitude when prune, else already 2:4)."""
        return Sparse24Linear.from_float(linear, int8=self.int8, prune=prune, name=name)

    def convert(self, linear, name, state=None):
        if state is None:
            m = self.layer(linear, True, name)
        else:  # the calibrated 2:4 weight, packed as it is
            weight = linear.weight.data
            linear.weight.data = state.to(weight.dtype)
            try:
                m = self.layer(linear, False, name)
            finally:
                linear.weight.data = weight
        m.method = self.method
        return m


@dataclass(frozen=True)
class Sparse24Int8(Sparse24):
    name: ClassVar[str] = "sparse24-int8"
    int8: ClassVar[bool] = True


@dataclass(frozen=True)
class Fp8(Recipe):
    """fast_accum=True: the Hopper GEMM accumulates in the tensor cores without promoting into fp32
    (FP8 fast accumulation) from M = 65 tokens, as torch._scaled_mm(use_fast_accum=True) does:
    about 0.75x of the promoted kernel's time at large M (H200), with errors that grow with K."""
    method: str = "rtn"
    fast_accum: bool = False
    name: ClassVar[str] = "fp8"

    def __post_init__(self):
        _check_method("ks.Fp8", self.method, FP8_METHODS)
        if not isinstance(self.fast_accum, bool):
            raise TypeError(f"ks.Fp8: fast_accum must be True or False, got {self.fast_accum!r}")

    @property
    def needs_calibration(self) -> bool:
        return self.method != "rtn"

    def calibrate(self, model, layers, data):
        return fp8_weights(model, layers, data, self.method)

    def convert(self, linear, name, state=None):
        m = Fp8Linear.from_float(linear, name=name, fast_accum=self.fast_accum)
        if state is not None:  # a calibrated (w_q, w_scale), in packing.quantize_fp8's format
            m.w_q.copy_(state[0])
            m.w_scale.copy_(state[1])
            m.prepare()
        m.method = self.method
        return m


@dataclass(frozen=True)
class Sparse24Fp8(Sparse24):
    name: ClassVar[str] = "sparse24-fp8"

    def layer(self, linear, prune, name):
        return Fp8Linear.from_float(linear, sparse24=True, prune=prune, name=name)


@dataclass(frozen=True)
class Fuse(Recipe):
    name: ClassVar[str] = "fuse"
    kind: ClassVar[str] = "conv"


RECIPES: dict[str, type[Recipe]] = {}


def register_recipe(cls: type[Recipe]) -> type[Recipe]:
    if not cls.name or cls.name in RECIPES:
        raise ValueError(f"register_recipe: {cls.__name__} needs a unique name, got {cls.name!r}")
    RECIPES[cls.name] = cls
    return cls


for _cls in (Int8, Int8Weight, Int4, Sparse24, Sparse24Int8, Fp8, Sparse24Fp8, Fuse):
    register_recipe(_cls)


def get_recipe(spec: str | Recipe) -> Recipe:
    if isinstance(spec, Recipe):
        return spec
    if isinstance(spec, str) and spec in RECIPES:
        return RECIPES[spec]()
    raise ValueError(f"unknown recipe {spec!r}; choose one of {', '.join(map(repr, RECIPES))} "
                     f"or a config object such as ks.Int4(group_size=64)")


def resolve(spec: str | Recipe | Iterable[str | Recipe]) -> list[Recipe]:
    """A recipe, a name or a list of them -> recipes in the order swap applies them (conv first)."""
    specs = [spec] if isinstance(spec, (str, Recipe)) else list(spec)
    if not specs:
        raise ValueError("kernelswap.swap: no recipe given")
    recipes = [get_recipe(s) for s in specs]
    linear = [r for r in recipes if r.kind == "linear"]
    if len(linear) > 1:
        raise ValueError(f"kernelswap.swap: at most one linear recipe per call, got {', '.join(map(str, linear))}; "
                         f"swap twice with filter= to give different layers different recipes")
    if sum(r.kind == "conv" for r in recipes) > 1:
        raise ValueError("kernelswap.swap: 'fuse' given twice")
    return sorted(recipes, key=lambda r: r.kind != "conv")


def recipe_from_config(config: dict) -> Recipe:
    """Inverse of Recipe.config(); ValueError on anything unknown."""
    if not isinstance(config, dict) or config.get("recipe") not in RECIPES:
        raise ValueError(f"not a kernelswap recipe config: {config!r}")
    fields = {k: v for k, v in config.items() if k != "recipe"}
    try:
        return RECIPES[config["recipe"]](**fields)
    except TypeError as e:
        raise ValueError(f"bad fields in recipe config {config!r}: {e}") from None


__all__ = ["Fp8", "Fuse", "Int4", "Int8", "Int8Weight", "RECIPES", "Recipe", "Sparse24", "Sparse24Fp8", "Sparse24Int8", "get_recipe",
           "recipe_from_config", "register_recipe", "resolve"]
