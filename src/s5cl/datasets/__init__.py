"""Datasets: the registry (download), decoding into a packed memmap (prepare), splits, streams."""
