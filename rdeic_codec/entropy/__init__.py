"""Entropy coding of RDEIC's latents with constriction's range coder.

Determinism: the encoder and decoder must derive bit-identical probability models. The parameter
path (codebook → h_s → context networks → means and scales) always runs on the CPU in float64, and
its outputs are snapped to fixed grids (:mod:`.tables`), so thread counts, devices and float noise
far below the grid spacing cannot change a single coded symbol.
"""
