"""Drop-in nn.Module replacements that call torch.ops.kernelswap.* only."""
