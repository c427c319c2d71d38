"""rdeic: extreme image compression with relay residual diffusion (RDEIC).

The Python API is :class:`rdeic_codec.Codec` (``rdeic_codec/api.py``); it is imported on first use, so
``import rdeic_codec`` (and ``rdeic --help``) stays free of torch.
"""

__version__ = "0.1.0"
__all__ = ["Codec", "__version__"]


def __getattr__(name):
    if name == "Codec":
        from .api import Codec

        return Codec
    raise AttributeError(f"module 'rdeic_codec' has no attribute {name!r}")
