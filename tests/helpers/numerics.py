"""Tolerances derived from float32 numerics, not from what one machine printed."""

from __future__ import annotations

import torch

EPS32 = torch.finfo(torch.float32).eps


def weight_atol(weight: torch.Tensor, steps: int, lr: float, batch: int) -> float:
    """Bound on |w_A - w_B| of a head (out x in) trained by two paths equal in exact arithmetic.

    Re-ordering the sums behind each gradient entry (another process split, BLAS kernel or an
    equivalent factorisation): about r = batch x (in + out + batch) products (the head's dot
    products, the batch's similarity row), so its relative value moves by at most r float32
    eps (recursive-summation bound); AdamW's m/sqrt(v) turns that into an update error of at
    most lr x r eps x (1 + sqrt(t)) at step t (Cauchy-Schwarz over the averaged gradients),
    and the steps add up.
    """
    d_out, d_in = weight.shape if weight.ndim == 2 else (1, weight.numel())
    return steps * lr * batch * (d_in + d_out + batch) * EPS32 * (1 + steps ** 0.5)


def covariance_rtol(weights: dict[str, torch.Tensor], atol: dict[str, float], n: int) -> float:
    """Relative bound on sums of z zᵀ (z = W x) of n samples after two training paths.

    The weights differ by |dW|_F <= atol sqrt(numel), moving z zᵀ by ~2 |dW|_F / |W|_F to first
    order; re-ordering the n samples' sum adds n float32 eps. Counts are integers: exact."""
    w_rel = max(atol[k] * w.numel() ** 0.5 / w.norm().item() for k, w in weights.items())
    return 2 * w_rel + n * EPS32


FLOAT64_PATHS_ATOL = 1e-7
"""Weights of two float64 paths equal in exact arithmetic (svd vs eigh projectors, factored vs
dense projection, fused vs plain AdamW): their rounding (eps 2.2e-16) is amplified by Adam's
m / sqrt(v) on near-zero gradient entries without a useful bound, while every wrong rule a test
must catch moves the weights by > 1e-3; 1e-7 separates the two with orders of margin each side."""
