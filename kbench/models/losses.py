"""Losses shared by several zoo entries."""

from __future__ import annotations

import torch

KERAS_EPSILON = 1e-7


def feature_kl(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(softmax(target) || softmax(predicted)) over the last dim, averaged over the other dims.

    Both distributions are clipped to [1e-7, 1] as Keras' ``KLD`` does in the released Kaleido-BERT and
    FashionBERT code (masked patch feature modelling, G2CM, B2CM).
    """
    p = torch.softmax(target.float(), dim=-1).clamp(KERAS_EPSILON, 1.0)
    q = torch.softmax(predicted.float(), dim=-1).clamp(KERAS_EPSILON, 1.0)
    return (p * (p.log() - q.log())).sum(-1).mean()


def adaptive_weights(losses: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """FashionBERT's adaptive loss weights for ``losses`` (one value per objective), summing to 1.

    The closed form of FashionBERT's weighting problem with the squared softmax of the losses standing in
    for the gradient norms, as in its public re-implementations: ``w_i ∝ prod_{j != i} (alpha*K - g_j)``.
    """
    g = torch.softmax(losses, dim=0) ** 2
    slack = alpha * len(losses) - g
    products = torch.stack([torch.cat([slack[:i], slack[i + 1 :]]).prod() for i in range(len(losses))])
    return products / products.sum()
