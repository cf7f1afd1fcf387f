"""The one place the version is written: kernelswap.__version__ imports it, setup.py reads
this file as text (without importing the package, whose import needs torch)."""
__version__ = "0.1.0"
