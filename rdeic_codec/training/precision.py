"""Training precision: bfloat16 autocast where the hardware computes it natively, float32 elsewhere.

Under autocast the convolutions and matrix products of a training step run in bfloat16, while the
weights, gradients and Adam's state stay float32. On a CPU with AMX or AVX-512 BF16 that makes an
iteration of the compression stage about 2.5 times faster on one thread (docs/training.md, session 12),
and the CPU is this project's training budget. The numerically delicate parts run in float32 whatever
the setting: the rate terms and the rounding of y (the compression modules cast), the decoded pixels
that the losses compare, MS-SSIM (:mod:`.losses`), and validation (:class:`.loop.Trainer` runs it
outside autocast, so its figures compare with float32 runs). Encoding and decoding never use it.

``rdeic train --precision`` sets it for the process, as ``--threads`` sets the thread count.
"""

from __future__ import annotations

import contextlib

import torch

CHOICES = ("auto", "bf16", "fp32")
_PRECISION = "fp32"


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (not by emulation, which is slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        probes = [getattr(cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
        return any(probe() for probe in probes if probe is not None)
    return False


def set_precision(precision: str) -> None:
    """Set the precision of this process's training steps: "bf16", "fp32" or "auto" (bf16 where
    :func:`native_bf16` says the device has it, decided per stage on its device)."""
    global _PRECISION
    if precision not in CHOICES:
        raise ValueError(f"precision must be one of {', '.join(CHOICES)}, not {precision!r}")
    _PRECISION = precision


def resolved(device: torch.device) -> str:
    """The precision a training step on ``device`` runs at: "bf16" or "fp32"."""
    if _PRECISION == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return _PRECISION


def autocast(device: torch.device, precision: str):
    """The context a training step runs in at ``precision`` (as :func:`resolved` gives it): bfloat16
    autocast, or nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
