"""Stage 2's adversarial term (issue 22): HiFiC's non-saturating loss with a conditional patch critic.

The critic (:class:`..networks.discriminator.PatchDiscriminator`) learns to tell the photo's patches
from the decoded ones, given z_c; the control module then also minimises −log D(decoded), which asks
the relay steps for detail a photo would have, where MSE and MS-SSIM ask for the average of all such
details (a blur). The critic trains inside stage 2's loss, one Adam step per batch, before the
generator's term is built. Its weights are checkpointed with the stage; its Adam moments are not (a
resumed run restarts them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..networks.discriminator import PatchDiscriminator


class AdversarialTerm:
    """The critic, its optimiser and the generator's loss.

    Args:
        latent_channels: channels of z_c (the critic's condition).
        weight: the term's weight in stage 2's loss (its distortion terms are of order 0.1–0.3).
        lr: the critic's learning rate (Adam, β = (0.5, 0.9), as is usual for GANs).
    """

    def __init__(self, latent_channels: int, weight: float, lr: float = 1e-4):
        self.weight = weight
        self.critic = PatchDiscriminator(latent_channels)  # stage 2's Trainer moves it with the stage's modules
        self.optimizer = torch.optim.Adam(self.critic.parameters(), lr=lr, betas=(0.5, 0.9))

    def update(self, real: torch.Tensor, fake: torch.Tensor, z_c: torch.Tensor) -> float:
        """One critic step on photo crops against decoded ones (detached); returns its loss."""
        real_logits = self.critic(real, z_c.detach())
        fake_logits = self.critic(fake.detach(), z_c.detach())
        loss = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def generator_loss(self, fake: torch.Tensor, z_c: torch.Tensor) -> torch.Tensor:
        """−log D(fake | z_c) per image: gradients reach ``fake``, not the critic's weights."""
        self.critic.requires_grad_(False)
        logits = self.critic(fake, z_c.detach())
        self.critic.requires_grad_(True)
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none").flatten(1).mean(1)
