"""Benchmark: our presets against COLMAP-SIFT (pycolmap) and a naive IMC-baseline configuration, in one run."""
