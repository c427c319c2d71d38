"""Fixed coding tables: the scale table and the mean grid, and the index prior's integer frequencies."""

from __future__ import annotations

import math

import numpy as np
import torch


# How a network's scale output becomes a table entry (the ``scale_rule`` of the ``entropy`` section).
# It must be the rule the model was trained with: the rate term saw exactly that distribution.
SCALE_RULES = {
    # This project's models (trained with σ = max(|s|, 0.11)): the entry nearest in log space to |s|.
    # A config without ``scale_rule`` means this rule, so older model directories decode as before.
    "nearest_abs": "nearest table entry (in log space) to |s|, clamped to the table",
    # The authors' models (compressai's GaussianConditional): σ = max(s, 0.11), so a negative output is
    # the narrowest distribution, and the smallest table entry ≥ σ (the last one for larger σ).
    "lower_bound_ceil": "σ = max(s, smallest entry), then the smallest table entry ≥ σ",
}


class ScaleTable:
    """``num`` log-spaced Gaussian scales from ``smin`` to ``smax`` (the authors used 64 from 0.11 to 256).

    Args:
        cfg: the ``entropy`` section of a profile.
    """

    def __init__(self, cfg: dict):
        self.smin, self.smax, self.num = cfg["scale_min"], cfg["scale_max"], cfg["num_scales"]
        self.log_step = (math.log(self.smax) - math.log(self.smin)) / (self.num - 1)
        self.scales = np.exp(math.log(self.smin) + self.log_step * np.arange(self.num))
        self.mean_step = 2.0 ** cfg["mean_step_log2"]
        self.max_symbol = cfg["max_symbol"]
        self.scale_rule = cfg.get("scale_rule", "nearest_abs")
        if self.scale_rule not in SCALE_RULES:
            raise ValueError(f"unknown scale_rule {self.scale_rule!r} (known: {', '.join(SCALE_RULES)})")

    def scale_index(self, scales: torch.Tensor) -> np.ndarray:
        """The table entry of each scale output, by the model's ``scale_rule``, as int64."""
        s = scales.detach().double().cpu()
        if self.scale_rule == "lower_bound_ceil":
            # Bounded at the first entry itself (not at smin, which exp(log(smin)) may miss by an ulp),
            # so that σ at the bound maps to entry 0 as in compressai's build_indexes.
            sigma = np.maximum(s.numpy(), self.scales[0])
            return np.searchsorted(self.scales, sigma, side="left").astype(np.int64).clip(0, self.num - 1)
        s = s.abs().clamp(self.smin, self.smax).numpy()
        return np.rint((np.log(s) - math.log(self.smin)) / self.log_step).astype(np.int64).clip(0, self.num - 1)

    def snap_mean(self, means: torch.Tensor) -> np.ndarray:
        """Means rounded to multiples of 2^mean_step_log2, so ŷ = symbol + mean is exact in float64."""
        m = means.detach().double().cpu().numpy()
        return np.rint(m / self.mean_step) * self.mean_step


def index_frequencies(embed_prob: torch.Tensor) -> np.ndarray:
    """Integer frequencies of the VQ indices from the learned usage probabilities.

    Every code keeps a frequency of at least 1 so that any index can be coded.
    """
    p = embed_prob.detach().double().cpu().numpy().clip(0, None)
    p = p / p.sum() if p.sum() > 0 else np.full_like(p, 1.0 / p.size)
    return (np.floor(p * (1 << 20)) + 1).astype(np.int64)
