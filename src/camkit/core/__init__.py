"""Plumbing shared by every method: hooks, layers, targets, token grids, post-processing."""
