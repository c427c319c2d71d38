"""The relay sampler's schedule against the check values of the method file (section 4)."""

import numpy as np
import pytest
import torch

from rdeic_codec.profiles import DIFFUSION
from rdeic_codec.sampler import alphas_cumprod, relay_sample, relay_timesteps, step_coefficients

CHECK = {
    2: [(299, 0.998340, 0.001605, 0.029137)],
    5: [(299, 0.358602, 0.633526, 0.346982), (224, 0.432895, 0.563685, 0.286227),
        (150, 0.581672, 0.417243, 0.214315), (75, 0.989223, 0.010769, 0.029003)],
}


@pytest.mark.parametrize("steps", [2, 5])
def test_step_coefficients_match_the_method(steps):
    coeffs = step_coefficients(DIFFUSION, steps)
    for co, (t, c1, c2, sigma) in zip(coeffs, CHECK[steps]):
        assert co.t == t
        assert co.c1 == pytest.approx(c1, abs=1e-6)
        assert co.c2 == pytest.approx(c2, abs=1e-6)
        assert co.sigma == pytest.approx(sigma, abs=1e-6)
    last = coeffs[-1]
    assert (last.t, last.sigma) == (0, 0.0)


def test_relay_start_constants():
    ab = alphas_cumprod(DIFFUSION)
    assert np.sqrt(ab[299]) == pytest.approx(0.769534, abs=1e-6)
    assert np.sqrt(1 - ab[299]) == pytest.approx(0.638605, abs=1e-6)
    assert np.sqrt(1 / ab[299] - 1) == pytest.approx(0.829860, abs=1e-6)


def test_timesteps():
    assert relay_timesteps(2) == [299, 0]
    assert relay_timesteps(5) == [299, 224, 150, 75, 0]
    assert len(relay_timesteps(10)) == 10
    with pytest.raises(ValueError):
        relay_timesteps(11)


def test_perfect_denoiser_recovers_the_latent():
    # With ε̂ equal to the true noise of x_t relative to z, the sampler must land on z exactly.
    z = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    ab = alphas_cumprod(DIFFUSION)

    def eps_fn(x, t):
        return (x - np.sqrt(ab[t]) * z) / np.sqrt(1 - ab[t])

    for steps in (2, 5):
        out = relay_sample(DIFFUSION, z.clone(), eps_fn, steps, torch.Generator().manual_seed(0))
        assert torch.allclose(out, z, atol=1e-9)
