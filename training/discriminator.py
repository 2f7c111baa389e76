"""The tokenizer's optional adversarial loss: a 3D-CNN patch discriminator with hinge loss and LeCAM regularization.

LeCAM (Tseng et al., 2021) keeps an exponential moving average of the discriminator's mean output on real and
on fake clips and penalizes outputs that stray past the other side's average; MAGVIT uses it to keep the GAN stable
on small data. The discriminator starts late (train.disc_start): the autoencoder first learns to reconstruct.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PatchDiscriminator3D(nn.Module):
    """(B, 3, T, H, W) in [-1, 1] -> one logit per space-time patch."""

    def __init__(self, channels: int = 32, levels: int = 3):
        super().__init__()
        layers, cin = [], 3
        for i in range(levels):
            cout = channels * 2 ** i
            # halve H and W every level; time only from the second level on (clips are short)
            stride = (2 if i > 0 else 1, 2, 2)
            layers += [nn.Conv3d(cin, cout, 3, stride=stride, padding=1),
                       nn.GroupNorm(min(8, cout), cout) if i > 0 else nn.Identity(), nn.LeakyReLU(0.2)]
            cin = cout
        layers.append(nn.Conv3d(cin, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LeCAM(nn.Module):
    """EMA of the discriminator's mean logits on real and fake clips (buffers: saved with the checkpoint)."""

    def __init__(self, decay: float = 0.99):
        super().__init__()
        self.decay = decay
        self.register_buffer("real_ema", torch.zeros(()))
        self.register_buffer("fake_ema", torch.zeros(()))

    def forward(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.real_ema.lerp_(real_logits.mean().float(), 1 - self.decay)
            self.fake_ema.lerp_(fake_logits.mean().float(), 1 - self.decay)
        return (F.relu(real_logits - self.fake_ema).pow(2).mean()
                + F.relu(self.real_ema - fake_logits).pow(2).mean())


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()
