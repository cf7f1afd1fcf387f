"""Triton implementations of the int4 ops, registered as the "triton" backend.

Each implementation imports its launcher from kernelswap.kernels inside the call, so
importing kernelswap never needs Triton.
"""
