"""Compression: passes that make a model smaller or faster (quantize, prune, distill) with a measured report."""
