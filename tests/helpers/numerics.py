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
