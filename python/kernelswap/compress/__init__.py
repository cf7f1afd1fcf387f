"""Compression that keeps accuracy: calibrated int4 (AWQ, GPTQ), activation-aware 2:4 pruning
(Wanda, SparseGPT) and distillation. Pure torch on top of kernelswap.packing, no kernels.

    ks.swap(model, ks.Int4(method="gptq"), calibration=batches)
    ks.prune(model, "wanda", calibration=batches)      # float 2:4 weights, in place
    ks.distill(model, teacher, batches, steps=200)     # masks held fixed
    ks.swap(model, "sparse24")                         # keeps exactly that mask

One file per method (awq.py, gptq.py, wanda.py, sparsegpt.py, distill.py);
calibration.py collects the per-Linear statistics, sequential.py runs them block by block;
driver.py runs a method over a model.
"""
from .distill import DistillReport, distill
from .driver import INT4_METHODS, PRUNE_METHODS, int4_weights, pruned_weights
from .prune import PruneReport, prune

__all__ = ["DistillReport", "INT4_METHODS", "PRUNE_METHODS", "PruneReport", "distill", "int4_weights", "prune",
           "pruned_weights"]
