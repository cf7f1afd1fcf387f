"""Triton implementations of the conv ops, registered as the "triton" backend.

Each implementation imports its launcher from kernelswap.kernels inside the call, so
importing kernelswap never needs Triton.
"""
