"""Triton GPU kernels and their launchers, shipped as kernelswap.kernels.

Kernels are plain functions: they register nothing and know nothing of dispatch;
kernelswap.ops decides which kernel serves which op and shape.
"""
