"""Feature covariances and null-space projectors shared by DNS, GPM and Adam-NSCL.

A head W_m (d_out x d_in) keeps old tasks intact if its update G does not move outputs for
inputs in the old input subspace, as seen from the old partner embeddings: DNS uses
G - P_out G P_in. We persist covariances (not projectors) so thresholds can be swept later.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from cmcl.io import load_tensors, read_json, save_tensors, write_json

THRESHOLD_MODES = ("absolute", "relative", "energy")
SIDES = ("in", "out")
# what a threshold must be in each mode, as JSON schema (select_rank's own rule, and relative
# >= 1, which keeps nothing: eigenvalues > t * largest); "$comment" is the message's reason
THRESHOLD_RULES = {
    "energy": {"exclusiveMinimum": 0, "maximum": 1,
               "$comment": "threshold_mode energy keeps this fraction of the spectrum's energy, "
                           "a value in (0, 1]"},
    "relative": {"exclusiveMaximum": 1,
                 "$comment": "threshold_mode relative protects eigenvalues above threshold x "
                             "the largest: >= 1 protects nothing (the step equals fine-tuning)"},
}


def threshold_rules(key: str, when: Mapping | None = None, mode_key: str = "threshold_mode"
                    ) -> list[dict]:
    """JSON-schema if/then rules for option `key` by mode (and `when`, more option conditions),
    declared in a method's `options` so config.check runs them at start-up via the catalog."""
    return [{"if": {"properties": {mode_key: {"const": mode}, **(when or {})},
                    "required": [mode_key, *(when or {})]},
             "then": {"properties": {key: rule}}}
            for mode, rule in THRESHOLD_RULES.items()]


class RunningCovariance:
    """Uncentered second moment sum(x xᵀ) and count, accumulated in float64, batch by batch."""

    def __init__(self, dim: int):
        self.dim = dim
        self.total = torch.zeros(dim, dim, dtype=torch.float64)
        self.count = 0

    def update(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features of shape (n, {self.dim}), got {tuple(x.shape)}")
        x = x.detach().to("cpu", torch.float64)  # float32 sums over millions of rows drift
        self.total += x.T @ x
        self.count += x.shape[0]

    def merge(self, other: RunningCovariance) -> None:
        """Add another accumulator, e.g. from another process, as if its rows were seen here."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge covariance of dim {other.dim} into dim {self.dim}")
        self.total += other.total
        self.count += other.count

    def matrix(self, count: int | None = None) -> torch.Tensor:
        n = self.count if count is None else count
        return self.total / n if n > 0 else torch.zeros_like(self.total)


def spectrum(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """eigh with eigenvalues descending; rounding can make a PSD matrix look slightly indefinite."""
    cov = cov.to(torch.float64)
    vals, vecs = torch.linalg.eigh((cov + cov.T) / 2)
    return vals.flip(0).clamp_min(0), vecs.flip(1)


def select_rank(eigvals: torch.Tensor, mode: str, threshold: float) -> int:
    """Subspace dimension kept for a descending, non-negative spectrum."""
    if mode not in THRESHOLD_MODES:
        raise ValueError(f"unknown threshold mode {mode!r}; allowed: {', '.join(THRESHOLD_MODES)}")
    if math.isnan(threshold) or threshold < 0 or (mode == "energy" and not 0 < threshold <= 1):
        allowed = "a value in (0, 1]" if mode == "energy" else "a value >= 0"
        raise ValueError(f"invalid {mode} threshold {threshold}; allowed: {allowed}")
    if eigvals.numel() == 0 or float(eigvals[0]) <= 0:
        return 0
    if mode == "absolute":
        return int((eigvals > threshold).sum())
    if mode == "relative":
        return int((eigvals > threshold * eigvals[0]).sum())
    cum = eigvals.cumsum(0)
    # dividing by cum[-1] (not sum()) makes the ratio exactly 1 once only zeros remain
    return min(int((cum / cum[-1] < threshold).sum()) + 1, eigvals.numel())


class Projector:
    """Orthogonal projector P = U Uᵀ onto a k-dim subspace of R^d, stored as a basis.

    When k > d/2 we store the complement basis V and use P g = g - V (Vᵀ g), so applying P
    costs O(d·m·min(k, d-k)) and identity/zero projectors cost nothing.
    """

    def __init__(self, eigvecs: torch.Tensor, rank: int):
        d = eigvecs.shape[0]
        if eigvecs.shape != (d, d) or not 0 <= rank <= d:
            raise ValueError(f"need square eigvecs and 0 <= rank <= d, got "
                             f"{tuple(eigvecs.shape)} and rank {rank}")
        complement = rank > d / 2
        self._set(eigvecs[:, rank:] if complement else eigvecs[:, :rank], complement, eigvecs)

    def _set(self, basis: torch.Tensor, complement: bool,
             eigvecs: torch.Tensor | None = None) -> None:
        self.basis, self.complement = basis.contiguous(), complement
        self.dim = basis.shape[0]
        self.rank = self.dim - basis.shape[1] if complement else basis.shape[1]
        self.eigvecs = eigvecs  # the full basis it came from, for rotated coordinates

    @classmethod
    def _of(cls, basis: torch.Tensor, complement: bool,
            eigvecs: torch.Tensor | None = None) -> Projector:
        p = cls.__new__(cls)
        p._set(basis, complement, eigvecs)
        return p

    @classmethod
    def from_covariance(cls, cov: torch.Tensor, mode: str, threshold: float) -> Projector:
        vals, vecs = spectrum(cov)
        return cls(vecs, select_rank(vals, mode, threshold))

    @classmethod
    def identity(cls, d: int) -> Projector:
        return cls._of(torch.zeros(d, 0, dtype=torch.float64), complement=True)

    @classmethod
    def zero(cls, d: int) -> Projector:
        return cls._of(torch.zeros(d, 0, dtype=torch.float64), complement=False)

    def __repr__(self) -> str:
        return f"Projector(dim={self.dim}, rank={self.rank})"

    def matrix(self) -> torch.Tensor:
        """Dense (d, d) matrix, for tests and inspection only."""
        b = self.basis
        bbt = b @ b.T
        return torch.eye(self.dim, dtype=b.dtype, device=b.device) - bbt if self.complement else bbt

    def left(self, g: torch.Tensor) -> torch.Tensor:
        """P @ g for g of shape (d, m)."""
        if g.ndim != 2 or g.shape[0] != self.dim:
            raise ValueError(f"projector of dim {self.dim} cannot left-multiply {tuple(g.shape)}")
        if self.basis.shape[1] == 0:
            return g if self.complement else torch.zeros_like(g)
        b = self.basis.to(g)
        pg = b @ (b.T @ g)
        return g - pg if self.complement else pg

    def right(self, g: torch.Tensor) -> torch.Tensor:
        """g @ P for g of shape (m, d); P is symmetric so this is (P gᵀ)ᵀ."""
        if g.ndim != 2 or g.shape[1] != self.dim:
            raise ValueError(f"projector of dim {self.dim} cannot right-multiply {tuple(g.shape)}")
        return self.left(g.T).T

    def eigenbasis(self) -> torch.Tensor:
        """Orthonormal (d, d) basis whose first `rank` columns span the range of P.

        In these coordinates P is a 0/1 diagonal, so projecting becomes slicing (RotatedHeads).
        """
        if self.eigvecs is not None:
            return self.eigvecs
        if self.basis.shape[1] == 0:  # identity or zero: every basis diagonalises it
            return torch.eye(self.dim, dtype=self.basis.dtype, device=self.basis.device)
        raise ValueError(f"{self!r} was built from a partial basis: no full eigenbasis kept")

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> Projector:
        eig = None if self.eigvecs is None else self.eigvecs.to(device=device, dtype=dtype)
        return Projector._of(self.basis.to(device=device, dtype=dtype), self.complement, eig)


def null_space_update_(target: torch.Tensor, g: torch.Tensor, p_out: Projector,
                       p_in: Projector, alpha: float = 1.0) -> torch.Tensor:
    """target -= alpha · P_out g P_in, in place, without dense projectors; returns target.

    `target` may be `g` itself: the correction is complete before target is written. With a
    side stored as a basis U the correction is a product of two thin factors, added with one
    fused addmm_ (no d×d temporaries beyond the product itself).
    """
    if g.ndim != 2 or g.shape != (p_out.dim, p_in.dim) or target.shape != g.shape:
        raise ValueError(f"update of shape {tuple(g.shape)} (target {tuple(target.shape)}) "
                         f"does not match projectors (out {p_out.dim}, in {p_in.dim})")
    # multiply by a side stored as a basis first, so the other side acts on a thin d x k matrix
    # instead of the full d x d update (about 1.8x faster at d = 1024)
    k_in = None if p_in.complement else p_in.basis.shape[1]
    k_out = None if p_out.complement else p_out.basis.shape[1]
    if k_in is not None and (k_out is None or k_in <= k_out):
        u = p_in.basis.to(g)
        return target.addmm_(p_out.left(g @ u), u.T, alpha=-alpha)
    if k_out is not None:
        w = p_out.basis.to(g)
        return target.addmm_(w, p_in.right(w.T @ g), alpha=-alpha)
    return target.sub_(p_out.left(p_in.right(g)), alpha=alpha)


def null_space_update(g: torch.Tensor, p_out: Projector, p_in: Projector) -> torch.Tensor:
    """g - P_out g P_in without dense projectors: the part of g that changes no old response.

    Pass Projector.identity on one side for a one-sided (GPM / Adam-NSCL style) projection.
    """
    return null_space_update_(g.clone(), g, p_out, p_in)


class FactoredGradients:
    """Projects linear heads' batch gradients through their thin factors instead of d×d.

    On a batch, a linear head's weight gradient is G = Δᵀ X (X: the B×d_in inputs, Δ: the
    B×d_out gradients of the loss with respect to the head's outputs), of rank <= B. Hence
    P_out G P_in = (P_out Δᵀ)(X P_in): O(B·d·k + B·d²) instead of O(d²·k), about 5x fewer
    flops at d = 1024, batch 64, k = 300. Module hooks record X and Δ of every forward pass
    with autograd on, and the raw gradient's norm when autograd accumulates it, i.e. before
    clipping; `project_` then recovers the clipping factor c from the clipped gradient's norm
    and subtracts c·(P_out Δᵀ)(X P_in) in place: the same result as null_space_update on the
    clipped gradient, to float rounding.

    A random probe v guards that promise: the raw gradient must satisfy G v = Δᵀ (X v) and the
    clipped one G' v = c·G v, to 1e-3 relative; otherwise (extra loss terms on the head,
    gradients averaged over processes after backward, a forward pass missed) `project_`
    returns False, leaves the gradient alone, and the caller takes the dense path.
    """

    TOL = 1e-3

    @staticmethod
    def usable() -> bool:
        """One process only: with several, DDP replaces each gradient by the average over
        processes after backward, so the local factors no longer describe it."""
        dist = torch.distributed
        return not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)

    def __init__(self, heads: Mapping[str, torch.nn.Linear], bias_column: bool = False,
                 seed: int = 0) -> None:
        """`bias_column`: the bias is projected with the weights as an input fed a constant 1
        (GPM); otherwise a bias is left alone (DNS faithful)."""
        self.heads, self.bias_column = dict(heads), bias_column
        gen = torch.Generator().manual_seed(seed)
        self.probe = {m: torch.randn(h.weight.shape[1], generator=gen).to(h.weight)
                      for m, h in self.heads.items()}
        self._rows: dict[str, list[list[torch.Tensor | None]]] = {m: [] for m in self.heads}
        self._raw: dict[str, tuple[torch.Tensor, torch.Tensor, bool]] = {}
        self._handles = []
        for m, head in self.heads.items():
            self._handles.append(head.register_forward_hook(self._record(m)))
            self._handles.append(head.weight.register_post_accumulate_grad_hook(
                self._accumulated(m)))

    def _record(self, m: str) -> Callable:
        def hook(module: torch.nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            if not (torch.is_grad_enabled() and out.requires_grad):
                return
            row: list[torch.Tensor | None] = [inputs[0].detach(), None]
            self._rows[m].append(row)
            out.register_hook(lambda g: row.__setitem__(1, g.detach()))
        return hook

    def _factors(self, m: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        rows = self._rows[m]
        if not rows or any(dz is None for _, dz in rows):
            return None
        return torch.cat([dz for _, dz in rows]), torch.cat([x for x, _ in rows])

    def _accumulated(self, m: str) -> Callable:
        def hook(weight: torch.Tensor) -> None:
            f, g, v = self._factors(m), weight.grad, self.probe[m]
            if f is None or g is None:
                self._raw.pop(m, None)
                return
            dz, x = f
            gv = g @ v
            ok = _close(gv, dz.T @ (x @ v), self.TOL)
            self._raw[m] = (torch.linalg.vector_norm(g), gv, ok)
        return hook

    def clear(self) -> None:
        """Forget this step's factors (call once per optimizer step, after projecting)."""
        for rows in self._rows.values():
            rows.clear()
        self._raw.clear()

    def project_(self, m: str, p_out: Projector, p_in: Projector) -> bool:
        """grad ← grad − P_out grad P_in for head m through the factors; False: not applied."""
        head, f, raw = self.heads[m], self._factors(m), self._raw.get(m)
        g = head.weight.grad
        if g is None or f is None or raw is None or not raw[2]:
            return False
        dz, x = f
        norm, gv, _ = raw
        if float(norm) == 0.0:
            return bool(float(torch.linalg.vector_norm(g)) == 0.0)
        c = torch.linalg.vector_norm(g) / norm  # the clipping factor (1 when not clipped)
        if not _close(g @ self.probe[m], c * gv, self.TOL):
            return False
        bias = head.bias if self.bias_column else None
        if bias is not None:
            if bias.grad is None or not _close(bias.grad, c * dz.sum(0), self.TOL):
                return False
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1)
        a, b = p_out.left(dz.T), p_in.right(x)
        d = head.weight.shape[1]
        g.addmm_(a, b[:, :d], alpha=-c.item())
        if bias is not None:
            bias.grad.addmv_(a, b[:, d], alpha=-c.item())
        return True

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.clear()


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    return bool(torch.linalg.vector_norm(a - b) <= tol * torch.linalg.vector_norm(a))


class RotatedHeads:
    """Linear heads trained in the eigenbases of their projectors, where projecting is slicing.

    With full orthonormal eigenbases R_out, R_in (protected directions first) and
    W = R_out W̃ R_inᵀ, the exact null-space condition U_outᵀ ΔW U_in = 0 reads: the leading
    k_out × k_in block of W̃ never changes. So for the task's duration each head's parameter
    holds W̃ (its optimizer steps W̃), hooks rotate the head's inputs (x ↦ x R_in) and outputs
    (z̃ ↦ z̃ R_outᵀ), and after each optimizer step the protected block is written back: a
    slice copy instead of an O(d²k) projection of the d×d update. The price is B·d² per rotated
    side per batch (plus the backward through the output rotation). With `input_hooks=False`
    no input hook is installed: the caller feeds inputs already in the rotated frame
    (`rotate_inputs`, once per task when the inputs are fixed features), which removes the
    input side's per-batch cost. `close` restores W in the original coordinates. The
    rotation preserves the forward pass and the gradient norm (so clipping), but AdamW's
    per-coordinate scaling now acts in the rotated coordinates: a different optimizer from
    projecting the AdamW update of W, with the same invariant.
    Heads with a bias are refused (an augmented input column does not survive the rotation
    as a bias); sides whose projector is the identity (all protected) or whose other side is
    empty need no rotation.

    `pair=(a, b)`: the caller only uses inner products and norms of a's and b's embeddings
    (a contrastive loss), which any common orthogonal map preserves. Then no output is rotated
    back: `to_frame` leaves a's outputs in a's rotated output coordinates and maps b's there
    with one precomputed R_out,bᵀ R_out,a, which halves the output-side cost.
    """

    def __init__(self, heads: Mapping[str, torch.nn.Linear],
                 proj: Mapping[str, tuple[Projector, Projector]],
                 pair: tuple[str, str] | None = None, input_hooks: bool = True) -> None:
        self.heads: dict[str, torch.nn.Linear] = {}
        self.rot: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        self.block: dict[str, torch.Tensor] = {}
        self.frame: dict[str, torch.Tensor] = {}
        self._handles = []
        for m, (p_out, p_in) in proj.items():
            head = heads[m]
            if head.bias is not None:
                raise ValueError(f"head {m!r} has a bias: rotated training supports bias-free "
                                 "heads only (use the update placement)")
            if p_out.rank == 0 or p_in.rank == 0:
                continue  # nothing protected: the head trains freely
            w = head.weight
            rot = tuple(None if p.rank == p.dim else p.eigenbasis().to(w) for p in (p_out, p_in))
            with torch.no_grad():
                w.copy_(_rotate(w, *rot, inverse=False))
            self.heads[m], self.rot[m] = head, rot
            self.block[m] = w[: p_out.rank, : p_in.rank].detach().clone()
            r_out, r_in = rot
            if r_in is not None and input_hooks:
                self._handles.append(head.register_forward_pre_hook(
                    lambda _mod, inputs, r=r_in: (inputs[0] @ r, *inputs[1:])))
            if r_out is not None and (pair is None or m not in pair):
                self._handles.append(head.register_forward_hook(
                    lambda _mod, _inputs, out, r=r_out: out @ r.T))
        if pair is not None:
            r_a, r_b = (self.rot.get(m, (None, None))[0] for m in pair)
            ref = r_a if r_a is not None else r_b
            if ref is not None:  # b's embedding in a's frame: z_b R_a = z̃_b R_bᵀ R_a
                f = torch.eye(ref.shape[0], dtype=torch.float64, device=ref.device)
                if r_b is not None:
                    f = r_b.T.to(f)
                if r_a is not None:
                    f = f @ r_a.to(f)
                self.frame[pair[1]] = f.to(ref.dtype)

    def rotate_inputs(self, modality: str, x: torch.Tensor, rows: int = 65536) -> torch.Tensor:
        """x R_in: a head's inputs in its rotated input frame (x itself if that side is not
        rotated). Computed on R_in's device in blocks of `rows`, returned on x's device, so a
        large CPU feature matrix is rotated on the accelerator without moving it whole."""
        r = self.rot.get(modality, (None, None))[1]
        if r is None:
            return x
        out = torch.empty(x.shape[0], r.shape[1], dtype=r.dtype, device=x.device)
        for i in range(0, len(x), rows):
            out[i: i + rows] = (x[i: i + rows].to(r) @ r).to(x.device)
        return out

    def to_frame(self, modality: str, z: torch.Tensor) -> torch.Tensor:
        """An embedding in the pair's common frame (see `pair`); identity for other heads."""
        f = self.frame.get(modality)
        return z if f is None else z @ f

    @torch.no_grad()
    def restore_(self) -> None:
        """Undo any change to the protected blocks (call after each optimizer step)."""
        for m, block in self.block.items():
            self.heads[m].weight[: block.shape[0], : block.shape[1]].copy_(block)

    @torch.no_grad()
    def close(self) -> None:
        """Remove the hooks and put the weights back in the original coordinates."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for m, head in self.heads.items():
            head.weight.copy_(_rotate(head.weight, *self.rot[m], inverse=True))
        self.heads.clear()


def _rotate(w: torch.Tensor, r_out: torch.Tensor | None, r_in: torch.Tensor | None,
            inverse: bool) -> torch.Tensor:
    """R_outᵀ W R_in (or R_out W R_inᵀ when inverse), in float64: rounding once per task."""
    out = w.detach().to(torch.float64)
    if r_out is not None:
        out = (r_out if inverse else r_out.T).to(out) @ out
    if r_in is not None:
        out = out @ (r_in.T if inverse else r_in).to(out)
    return out.to(w.dtype)


class SubspaceState:
    """Per-modality input and partner-output covariances over all past tasks.

    This is what training step t saves and step t+1 loads. Projectors are re-derived from it
    with any thresholds, so threshold sweeps need no retraining.
    """

    def __init__(self, in_dims: dict[str, int], out_dim: int, faithful_counts: bool = False):
        self.in_dims, self.out_dim, self.faithful_counts = dict(in_dims), out_dim, faithful_counts
        self.in_cov = {m: RunningCovariance(d) for m, d in self.in_dims.items()}
        self.out_cov = {m: RunningCovariance(out_dim) for m in self.in_dims}
        self.global_count = 0
        self.history: list[dict] = []
        # faithful_counts: the authors' running means per (side, modality), and the sum each
        # was last folded from (between tasks equal to the accumulator's total)
        self.scaled: dict[tuple[str, str], torch.Tensor] = {}
        self.folded: dict[tuple[str, str], torch.Tensor] = {}

    def _acc(self, modality: str, side: str) -> RunningCovariance:
        if side not in SIDES:
            raise ValueError(f"unknown side {side!r}; allowed: {', '.join(SIDES)}")
        if modality not in self.in_dims:
            raise KeyError(f"unknown modality {modality!r}; known: {', '.join(self.in_dims)}")
        return (self.in_cov if side == "in" else self.out_cov)[modality]

    def update_inputs(self, modality: str, x: torch.Tensor) -> None:
        self._acc(modality, "in").update(x)

    def update_outputs(self, modality: str, z_partner: torch.Tensor) -> None:
        self._acc(modality, "out").update(z_partner)

    def end_task(self, step: int, task: str, modalities: list[str], pairs: int) -> None:
        self.history.append({"step": step, "task": task, "modalities": list(modalities),
                             "pairs": pairs})
        old, new = self.global_count, self.global_count + pairs
        if self.faithful_counts:  # the DNS authors' update_covariance, per modality of the pair
            for m in modalities:
                for side in SIDES:
                    acc, key = self._acc(m, side), (side, m)
                    zero = torch.zeros_like(acc.total)
                    delta = acc.total - self.folded.get(key, zero)
                    self.scaled[key] = self.scaled.get(key, zero) * (old / new) + delta / new
                    self.folded[key] = acc.total.clone()
        self.global_count = new

    def covariance(self, modality: str, side: str) -> torch.Tensor:
        """Mean of x xᵀ per modality over the tasks it was in (default).

        faithful_counts follows the DNS authors' code (cmcl/dns.py, update_covariance): at the
        end of a task of n pairs, with N pairs seen before, each modality of the pair updates
        C ← C·N/(N+n) + Σ x xᵀ/(N+n), while a modality that skips the task keeps its C as is.
        A modality first seen late is thus shrunk by the pairs of the tasks before it.
        """
        acc = self._acc(modality, side)
        if self.faithful_counts:
            return self.scaled.get((side, modality), torch.zeros_like(acc.total))
        return acc.matrix()

    def projector(self, modality: str, side: str, mode: str, threshold: float) -> Projector:
        return Projector.from_covariance(self.covariance(modality, side), mode, threshold)

    def seen(self, modality: str, side: str) -> bool:
        return self._acc(modality, side).count > 0

    def _counts(self) -> dict[str, dict[str, int]]:
        return {"in": {m: c.count for m, c in self.in_cov.items()},
                "out": {m: c.count for m, c in self.out_cov.items()}}

    def save(self, directory: str | Path) -> None:
        """Write subspace.safetensors then subspace.json. Each write is atomic; the count
        tensors let load() detect a pair of files left by two different saves."""
        directory = Path(directory)
        tensors: dict[str, torch.Tensor] = {}
        for side, counts in self._counts().items():
            for m, n in counts.items():
                tensors[f"{side}/{m}"] = self._acc(m, side).total
                tensors[f"count/{side}/{m}"] = torch.tensor(n, dtype=torch.int64)
                if (side, m) in self.scaled:
                    tensors[f"scaled/{side}/{m}"] = self.scaled[(side, m)]
        save_tensors(directory / "subspace.safetensors", tensors)
        write_json(directory / "subspace.json", {
            "in_dims": self.in_dims, "out_dim": self.out_dim, "counts": self._counts(),
            "global_count": self.global_count, "faithful_counts": self.faithful_counts,
            "history": self.history})

    @classmethod
    def load(cls, directory: str | Path, in_dims: dict[str, int] | None = None,
             out_dim: int | None = None) -> SubspaceState:
        """Restore a saved state, checking it against the model's dims when they are given.

        Modalities in in_dims but not in the file start empty (they appear later in the task
        sequence); modalities in the file but not in in_dims are an error.
        """
        json_path = Path(directory) / "subspace.json"
        tensor_path = Path(directory) / "subspace.safetensors"
        meta = read_json(json_path)
        missing = {"in_dims", "out_dim", "counts", "global_count", "faithful_counts",
                   "history"} - set(meta)
        if missing:
            raise ValueError(f"{json_path}: missing keys {sorted(missing)}")
        saved_in, saved_out = meta["in_dims"], meta["out_dim"]
        if out_dim is not None and out_dim != saved_out:
            raise ValueError(f"{json_path}: output dim is {saved_out} in the saved state "
                             f"but {out_dim} in the model")
        if in_dims is not None:
            extra = sorted(set(saved_in) - set(in_dims))
            if extra:
                raise ValueError(f"{json_path}: saved modalities {extra} are not in the model "
                                 f"(model modalities: {sorted(in_dims)})")
            for m, d in saved_in.items():
                if in_dims[m] != d:
                    raise ValueError(f"{json_path}: modality {m!r} input dim is {d} in the "
                                     f"saved state but {in_dims[m]} in the model")
        state = cls({**saved_in, **(in_dims or {})}, saved_out, meta["faithful_counts"])
        tensors = load_tensors(tensor_path)
        for side in SIDES:
            for m in saved_in:
                acc, key = state._acc(m, side), f"{side}/{m}"
                total, count = tensors.get(key), tensors.get(f"count/{key}")
                if total is None or total.shape != (acc.dim, acc.dim):
                    shape = None if total is None else tuple(total.shape)
                    raise ValueError(f"{tensor_path}: tensor {key!r} has shape {shape}, "
                                     f"expected {(acc.dim, acc.dim)} from {json_path.name}")
                n = meta["counts"].get(side, {}).get(m)
                if count is None or int(count) != n:
                    raise ValueError(f"{tensor_path}: count for {key!r} disagrees with "
                                     f"{json_path.name} ({n}); files are from different saves")
                acc.total, acc.count = total.to(torch.float64), n
                scaled = tensors.get(f"scaled/{key}")
                if state.faithful_counts and n > 0:
                    if scaled is None or scaled.shape != total.shape:
                        raise ValueError(f"{tensor_path}: no authors'-rule covariance "
                                         f"'scaled/{key}' for faithful_counts (a state saved "
                                         "before cmcl followed that rule): rerun the chain")
                    state.scaled[(side, m)] = scaled.to(torch.float64)
                    state.folded[(side, m)] = acc.total.clone()
        state.global_count, state.history = meta["global_count"], list(meta["history"])
        return state
