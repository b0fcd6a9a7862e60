"""``ArcFaceHead``: cosine classifier with insightface's combined margin.

For an embedding ``x`` and class centres ``W`` the logits are ``cos_j = <x/|x|, W_j/|W_j|>``. The
target class ``y`` gets the combined margin of insightface
``cos(m1 * theta_y + m2) - m3`` (ArcFace: m1=1, m2=0.5, m3=0; CosFace: m1=1, m2=0, m3=0.35);
the other logits are left as they are, and all are multiplied by the scale ``s``.

Numerics: cosines are clamped to [-1, 1]; ``sin theta`` is ``sqrt(max(1 - cos^2, 1e-6))`` so its
gradient stays finite at cos = +-1 (the floor moves the value by at most 5e-4 there). As in
arcface_torch, when ``theta + m2 > pi`` (cos below ``cos(pi - m2)``) the target logit becomes
``cos - m2 * sin(m2)`` instead, which keeps it decreasing in theta.
"""
import math
from typing import Dict

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor, nn

from ..registry import MODELS


def combined_margin_logits(cosine: Tensor, labels: Tensor, s: float = 64.0, m1: float = 1.0,
                           m2: float = 0.5, m3: float = 0.0) -> Tensor:
    """Applies the combined margin to the target logit and scales.

    Args:
        cosine (Tensor[B, num_classes]): Cosine logits.
        labels (Tensor[B]): Target classes; entries ``-1`` get no margin.
        s, m1, m2, m3 (float): Scale and margins.

    Returns:
        Tensor[B, num_classes]: ``s * logits`` with the margin on each row's target.
    """
    cosine = cosine.clamp(-1.0, 1.0)
    labels = labels.view(-1).long()
    rows = torch.nonzero(labels != -1, as_tuple=True)[0]
    if rows.numel() == 0 or (m1 == 1.0 and m2 == 0.0 and m3 == 0.0):
        return cosine * s
    target = cosine[rows, labels[rows]]
    if m1 == 1.0:
        if m2 != 0.0:
            sin = torch.sqrt((1.0 - target * target).clamp(min=1e-6))
            with_margin = target * math.cos(m2) - sin * math.sin(m2)
            target = torch.where(target > math.cos(math.pi - m2), with_margin,
                                 target - math.sin(math.pi - m2) * m2)
    else:
        theta = torch.acos(target.clamp(-1.0 + 1e-6, 1.0 - 1e-6))
        target = torch.cos(m1 * theta + m2)
    target = target - m3
    logits = cosine.index_put((rows, labels[rows]), target)
    return logits * s


@MODELS.register_module()
class ArcFaceHead(BaseModule):
    """Normalised embeddings x normalised class centres, combined margin, cross entropy.

    Args:
        num_classes (int): Identities in the training set.
        in_channels (int): Embedding size. Default: 512.
        s (float): Scale. Default: 64.
        m1 (float): Multiplicative angular margin (SphereFace). Default: 1.0.
        m2 (float): Additive angular margin (ArcFace). Default: 0.5.
        m3 (float): Additive cosine margin (CosFace). Default: 0.0.
        loss_weight (float): Weight of the loss. Default: 1.0.
        init_std (float): Std of the normal init of the class centres (arcface_torch's
            PartialFC uses 0.01). Default: 0.01.
    """

    def __init__(self, num_classes: int, in_channels: int = 512, s: float = 64.0,
                 m1: float = 1.0, m2: float = 0.5, m3: float = 0.0, loss_weight: float = 1.0,
                 init_std: float = 0.01, init_cfg=None):
        super().__init__(init_cfg)
        if num_classes < 1:
            raise ValueError(f'num_classes must be >= 1, got {num_classes}')
        if not 0.0 <= m2 < math.pi / 2:
            raise ValueError(f'm2 must be in [0, pi/2), got {m2}')
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.loss_weight = loss_weight
        self.init_std = init_std
        self.weight = nn.Parameter(torch.empty(num_classes, in_channels))
        nn.init.normal_(self.weight, 0.0, init_std)

    def init_weights(self) -> None:
        if self.init_cfg is not None:
            super().init_weights()

    def cosine(self, embeddings: Tensor) -> Tensor:
        """(B, in_channels) -> cosine logits (B, num_classes)."""
        return F.linear(F.normalize(embeddings.float(), dim=1),
                        F.normalize(self.weight.float(), dim=1))

    def logits(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Scaled logits with the margin on the target class (what the loss sees)."""
        return combined_margin_logits(self.cosine(embeddings), labels, self.s, self.m1,
                                      self.m2, self.m3)

    def loss(self, embeddings: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        """ArcFace cross entropy and the (margin-free) top-1 accuracy of the batch."""
        labels = labels.view(-1).long()
        if labels.numel() and (labels.max() >= self.num_classes or labels.min() < 0):
            raise ValueError(f'label {int(labels.max())} (min {int(labels.min())}) is outside '
                             f'[0, num_classes={self.num_classes})')
        cosine = self.cosine(embeddings)
        logits = combined_margin_logits(cosine, labels, self.s, self.m1, self.m2, self.m3)
        loss = F.cross_entropy(logits, labels) * self.loss_weight
        with torch.no_grad():
            acc = (cosine.argmax(dim=1) == labels).float().mean()
        return dict(loss_arcface=loss, accuracy=acc)

    def extra_repr(self) -> str:
        return (f'num_classes={self.num_classes}, in_channels={self.in_channels}, s={self.s}, '
                f'm=({self.m1}, {self.m2}, {self.m3})')
