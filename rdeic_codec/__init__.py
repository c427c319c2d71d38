"""rdeic: extreme image compression with relay residual diffusion (RDEIC)."""

__version__ = "0.1.0"
