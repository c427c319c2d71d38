"""Rate calibration: the λ range of a variable-rate model mapped onto target file sizes.

The distortion weight w(λ) sets where training puts each λ's rate, but the rates answer it slowly and
drift while a run goes on (docs/training.md), so the trained model's range can end up wider than the
profile asks for (λ = 2 at 0.2 bpp instead of about 0.12). The gains on y at the trained λ values
(:class:`~rdeic_codec.networks.compression.LambdaGains`) make every rate in between a valid operating
point, so the range can be narrowed after training without touching any network: the real file size is
measured over a sweep of λ on a set of photos, the λ whose mean file rate meets each end's target is
found, and the gain table is resampled so that the model's λ range maps onto that span (linearly in
log λ). Only the gain vectors change; a target outside what the model reaches leaves that end as it is.
A profile may let the sweep reach a little past the trained λ (``rate_reach``, the table's end segments
extrapolated), where a cheaper entropy model leaves the highest trained λ short of the high target.
The low end matters as much as the high one: a run whose lowest λ makes 0.012 bpp files (run A′,
docs/training.md) spends a fifth of the λ range below any rate worth using.

A model calibrated before (its config's ``old_lambda_range``: the trained λ at its table's ends) whose
rates have moved since, e.g. a checkerboard context added by the ``context`` stage (10–23% fewer bits
at every λ), is swept over the whole trained range again (its table's end segments extrapolated in log λ
past the earlier range), so that the new rates can be met with gains the module was trained on; the new
table is resampled once from the old one.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def measure_rates(model, images: list[np.ndarray], lambdas: np.ndarray) -> np.ndarray:
    """Mean bits per pixel of the real files (:func:`rdeic_codec.codec.encode`) of ``images`` at each λ.

    Args:
        model: a model with λ gains (``model_id`` set; a placeholder will do).
        images: (H, W, 3) uint8 photos.
        lambdas: the λ values.
    """
    from .. import codec
    from .file_rate import PLACEHOLDER_ID

    model.config.setdefault("model_id", PLACEHOLDER_ID)
    model._entropy_path = None  # the float64 copy must follow the current weights
    rates = np.zeros(len(lambdas))
    for image in images:
        analysis = codec.analyse_image(model, image)  # λ-independent: once per photo
        pixels = image.shape[0] * image.shape[1]
        for k, lam in enumerate(lambdas):
            rates[k] += 8 * len(codec.encode_analysis(model, analysis, float(lam)).data) / pixels
    return rates / len(images)


def lambda_at_rate(lambdas: np.ndarray, rates: np.ndarray, target: float) -> float | None:
    """The λ whose rate is ``target``, interpolating log rate linearly in log λ; None if the target is
    outside the measured rates. The rates are made non-decreasing first (noise between close λ)."""
    rates = np.maximum.accumulate(rates)
    if not rates[0] <= target <= rates[-1]:
        return None
    k = int(np.searchsorted(rates, target))
    if k == 0 or rates[k] == target:
        return float(lambdas[k])
    x0, x1 = math.log(lambdas[k - 1]), math.log(lambdas[k])
    y0, y1 = math.log(rates[k - 1]), math.log(rates[k])
    return float(math.exp(x0 + (x1 - x0) * (math.log(target) - y0) / (y1 - y0)))


def _resample(comp, log_lo: float, log_hi: float) -> None:
    """Make the gain table span the table's own λ from exp(``log_lo``) to exp(``log_hi``): each anchor takes
    the gains at its share of that span, linear in log λ; past the table's ends its end segments are
    extrapolated (a widening: :meth:`LambdaGains.gains` with ``extrapolate``)."""
    anchors = comp.log_lambdas.double()
    share = (anchors - anchors[0]) / (anchors[-1] - anchors[0])
    gain, inv = comp.gains(torch.exp(log_lo + share * (log_hi - log_lo)), dtype=torch.float64, extrapolate=True)
    comp.log_gain.copy_(gain[:, :, 0, 0].log())
    comp.log_inv_gain.copy_(inv[:, :, 0, 0].log())


@torch.no_grad()
def calibrate_rates(model, images: list[np.ndarray], low_bpp: float, high_bpp: float, points: int = 13,
                    previous: dict | None = None, reach: float = 1.0, log=print) -> dict:
    """Resample the model's λ gains so that its lowest λ gives ``low_bpp`` and its highest ``high_bpp``
    (mean file rate over ``images``). The sweep covers the trained λ range widened by ``reach`` at each
    end (the table's end segments extrapolated in log λ); an end whose target the sweep does not reach stays
    at the sweep's end on the target's side (with ``reach`` 1, the trained end).

    Args:
        model: a model whose compression module has λ gains.
        images: the photos to measure on (training photos: the validation set stays unseen).
        low_bpp: the target rate at the lowest λ.
        high_bpp: the target rate at the highest λ.
        points: λ values in the sweep, log-spaced over the model's range.
        previous: the model's earlier calibration (its ``old_lambda_range``), if its gains were resampled
            before: the sweep covers the whole trained range, the table's end segments extrapolated.
        reach: how far past the trained λ the gains may be extrapolated, as a factor on λ (the profile's
            ``rate_reach``). Why: a context that makes the same y cheaper moves λ = 2's rate below the
            high target, and the gains a little past the trained end still code well (docs/training.md,
            session 20: 25% past it, +0.20 dB over the shipped model at the same bytes).

    Returns:
        what was measured and done: the sweep, the λ chosen for each end (as trained λ), the rates after.
    """
    comp = model.compression
    lo, hi = comp.lambda_range
    # The trained λ at the table's ends: the λ range itself, unless an earlier calibration resampled it.
    p_lo, p_hi = math.log(lo), math.log(hi)
    widened = None
    if previous and "old_lambda_range" in previous and tuple(previous["old_lambda_range"]) != (lo, hi):
        widened = [float(v) for v in previous["old_lambda_range"]]
        p_lo, p_hi = (math.log(v) for v in widened)

    def position(v: float) -> float:
        """Where the trained λ ``v`` lies on the table's own log λ (the mapping is linear in log λ)."""
        return math.log(lo) + (math.log(v) - p_lo) / (p_hi - p_lo) * (math.log(hi) - math.log(lo))

    table = comp.log_gain.clone(), comp.log_inv_gain.clone()
    s_lo, s_hi = lo / reach, hi * reach  # the sweep's ends, as trained λ
    if widened or reach != 1.0:
        # For the sweep only, a view of the trained range (times the reach); the result is resampled from
        # the table as it was, once, so that its gains inside the earlier range stay what they were.
        _resample(comp, position(s_lo), position(s_hi))
        log(f"rate calibration: the table (trained λ {math.exp(p_lo):.4g} … {math.exp(p_hi):.4g}) viewed as "
            f"trained λ {s_lo:.4g} … {s_hi:.4g} for the sweep")
    trained = np.exp(np.linspace(math.log(s_lo), math.log(s_hi), points))  # what the sweep's points are
    rates = measure_rates(model, images, np.exp(np.linspace(math.log(lo), math.log(hi), points)))
    top = float(np.max(rates))
    new_lo = lambda_at_rate(trained, rates, low_bpp) or (s_lo if low_bpp < rates[0] else lo)
    new_hi = lambda_at_rate(trained, rates, high_bpp) or (s_hi if high_bpp > top else hi)
    log(f"rate calibration on {len(images)} photos: trained λ {s_lo:.4g} … {s_hi:.4g} gave {rates[0]:.4f} … "
        f"{rates[-1]:.4f} bpp; the range now spans the trained λ {new_lo:.4g} … {new_hi:.4g}")
    comp.log_gain.copy_(table[0])
    comp.log_inv_gain.copy_(table[1])
    if (math.log(new_lo), math.log(new_hi)) != (p_lo, p_hi):
        _resample(comp, position(new_lo), position(new_hi))
    model._entropy_path = None
    after = measure_rates(model, images, np.array([lo, hi]))
    log(f"rate calibration: λ {lo:g} → {after[0]:.4f} bpp, λ {hi:g} → {after[1]:.4f} bpp")
    return {"photos": len(images), "sweep_lambda": [float(v) for v in trained], "sweep_bpp": [float(v) for v in rates],
            "old_lambda_range": [float(new_lo), float(new_hi)], "bpp_after": [float(v) for v in after],
            "targets_bpp": [low_bpp, high_bpp], **({"widened_from": widened} if widened else {}),
            **({"reach": reach} if reach != 1.0 else {})}


def calibration_photos(folder: str, count: int = 24, max_side: int = 768) -> list[np.ndarray]:
    """``count`` photos spread evenly over a folder's sorted list (its sources are mixed, not
    interleaved), whole; a photo larger than ``max_side`` is skipped to keep the sweep quick."""
    from .data import list_images, load_rgb

    paths = list_images(folder)
    step = max(len(paths) // count, 1)
    photos = []
    for path in paths[::step]:
        image = load_rgb(path)
        if max(image.shape[:2]) <= max_side:
            photos.append(image)
        if len(photos) == count:
            break
    return photos
