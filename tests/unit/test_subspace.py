import pytest
import torch

from cmcl.io import load_tensors, save_tensors
from cmcl.subspace import (
    FactoredGradients,
    Projector,
    RotatedHeads,
    RunningCovariance,
    SubspaceState,
    null_space_update,
    null_space_update_,
    select_rank,
    spectrum,
)

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_projector(d: int, rank: int, seed: int = 0) -> Projector:
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=F64, generator=gen(seed)))
    return Projector(q, rank)


def planted(vals: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A covariance with known eigenvalues `vals` along the columns of a random rotation."""
    q, _ = torch.linalg.qr(torch.randn(len(vals), len(vals), dtype=F64, generator=gen(seed)))
    return q @ torch.diag(torch.tensor(vals, dtype=F64)) @ q.T, q


# --- RunningCovariance -------------------------------------------------------------------------

def test_streaming_covariance_matches_concatenated_data():
    batches = [torch.randn(n, 7, generator=gen(n)) for n in (3, 10, 1, 25)]
    acc = RunningCovariance(7)
    for b in batches:
        acc.update(b)
    x = torch.cat(batches).to(F64)
    assert acc.count == 39
    assert acc.total.dtype == F64
    torch.testing.assert_close(acc.matrix(), x.T @ x / 39, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(acc.matrix(78), x.T @ x / 78, rtol=1e-12, atol=1e-12)


def test_merge_equals_single_accumulator():
    a_rows, b_rows = torch.randn(12, 5, generator=gen(1)), torch.randn(8, 5, generator=gen(2))
    a, b, both = RunningCovariance(5), RunningCovariance(5), RunningCovariance(5)
    a.update(a_rows)
    b.update(b_rows)
    both.update(torch.cat([a_rows, b_rows]))
    a.merge(b)
    assert a.count == both.count == 20
    torch.testing.assert_close(a.matrix(), both.matrix(), rtol=1e-12, atol=1e-12)


def test_covariance_edge_cases():
    acc = RunningCovariance(4)
    assert torch.equal(acc.matrix(), torch.zeros(4, 4, dtype=F64))  # nothing seen yet
    with pytest.raises(ValueError, match=r"4.*\(3, 6\)"):
        acc.update(torch.zeros(3, 6))
    with pytest.raises(ValueError, match="3.*4"):
        acc.merge(RunningCovariance(3))


# --- spectrum and rank selection ---------------------------------------------------------------

def test_spectrum_descending_and_clamped():
    cov, _ = planted([0.0, 10.0, 1.0, 5.0, -1e-14])
    vals, vecs = spectrum(cov.float())
    torch.testing.assert_close(vals, torch.tensor([10.0, 5.0, 1.0, 0.0, 0.0], dtype=F64),
                               atol=1e-5, rtol=0)
    assert vals.dtype == vecs.dtype == F64 and (vals >= 0).all()
    torch.testing.assert_close(vecs.T @ vecs, torch.eye(5, dtype=F64), atol=1e-10, rtol=0)
    torch.testing.assert_close(cov @ vecs, vecs * vals, atol=1e-5, rtol=0)  # columns match


def test_spectrum_symmetrises_input():
    cov, _ = planted([3.0, 2.0, 1.0])
    skew = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=F64)
    vals, _ = spectrum(cov + 0.1 * skew)  # eigh alone would read only one triangle
    torch.testing.assert_close(vals, torch.tensor([3.0, 2.0, 1.0], dtype=F64))


@pytest.mark.parametrize(("mode", "threshold", "rank"), [
    ("absolute", 0.5, 3), ("absolute", 0.005, 4), ("absolute", 0.0, 4), ("absolute", 20.0, 0),
    ("relative", 0.05, 3), ("relative", 0.0005, 4), ("relative", 0.6, 1),
    ("energy", 0.9, 2), ("energy", 0.5, 1), ("energy", 0.99, 3), ("energy", 1.0, 4),
])
def test_select_rank_planted_spectrum(mode, threshold, rank):
    vals = torch.tensor([10.0, 5.0, 1.0, 0.01, 0.0], dtype=F64)
    assert select_rank(vals, mode, threshold) == rank
    assert select_rank(torch.zeros(5, dtype=F64), mode, threshold) == 0


@pytest.mark.parametrize(("mode", "threshold", "needle"), [
    ("bogus", 0.5, "bogus"), ("absolute", -1.0, "-1.0"), ("relative", -0.1, "-0.1"),
    ("energy", 0.0, "energy"), ("energy", 1.5, "1.5"), ("absolute", float("nan"), "nan"),
])
def test_select_rank_rejects_invalid(mode, threshold, needle):
    with pytest.raises(ValueError, match=needle):
        select_rank(torch.tensor([1.0, 0.5], dtype=F64), mode, threshold)


def test_projector_from_covariance_spans_top_eigenvectors():
    cov, q = planted([10.0, 5.0, 1.0, 0.01, 0.0])
    for mode, thr, k in [("absolute", 0.5, 3), ("energy", 0.5, 1), ("relative", 0.0001, 4)]:
        p = Projector.from_covariance(cov, mode, thr)
        assert p.rank == k
        torch.testing.assert_close(p.matrix(), q[:, :k] @ q[:, :k].T, atol=1e-10, rtol=0)


# --- Projector ---------------------------------------------------------------------------------

@pytest.mark.parametrize("rank", [0, 1, 3, 5, 6, 9, 10])
def test_projector_is_orthogonal_projection(rank):
    d = 10
    p = random_projector(d, rank)
    assert p.complement == (rank > d / 2)  # both storage paths are exercised
    assert p.basis.shape[1] == min(rank, d - rank)
    m = p.matrix()
    torch.testing.assert_close(m, m.T, atol=1e-12, rtol=0)
    torch.testing.assert_close(m @ m, m, atol=1e-12, rtol=0)
    assert abs(torch.trace(m).item() - rank) < 1e-9
    g_left, g_right = torch.randn(d, 4, dtype=F64), torch.randn(3, d, dtype=F64)
    torch.testing.assert_close(p.left(g_left), m @ g_left, atol=1e-12, rtol=0)
    torch.testing.assert_close(p.right(g_right), g_right @ m, atol=1e-12, rtol=0)


def test_identity_zero_and_cast():
    g = torch.randn(6, 3)
    assert Projector.identity(6).rank == 6 and Projector.zero(6).rank == 0
    assert torch.equal(Projector.identity(6).left(g), g)
    assert torch.equal(Projector.zero(6).left(g), torch.zeros_like(g))
    assert torch.equal(Projector.identity(6).matrix(), torch.eye(6, dtype=F64))
    p = random_projector(6, 2)
    p32 = p.to(dtype=torch.float32)
    assert p32.basis.dtype == torch.float32 and p32.rank == 2
    assert p32.left(g).dtype == torch.float32
    torch.testing.assert_close(p32.left(g), (p.matrix() @ g.to(F64)).float(), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="6"):
        p.left(torch.randn(5, 3))


@pytest.mark.parametrize("rank", [0, 2, 5, 6, 10])
def test_eigenbasis_puts_the_range_first(rank):
    d = 10
    p = random_projector(d, rank, seed=3)
    for q in (p, p.to(dtype=torch.float32)):
        r = q.eigenbasis().to(F64)
        torch.testing.assert_close(r.T @ r, torch.eye(d, dtype=F64), atol=1e-6, rtol=0)
        mask = torch.diag(torch.tensor([1.0] * rank + [0.0] * (d - rank), dtype=F64))
        torch.testing.assert_close(r @ mask @ r.T, p.matrix(), atol=1e-6, rtol=0)
    assert torch.equal(Projector.identity(4).eigenbasis(), torch.eye(4, dtype=F64))
    if p.basis.shape[1]:  # built from its thin basis alone, it cannot know the rest
        with pytest.raises(ValueError, match="partial basis"):
            Projector._of(p.basis, p.complement).eigenbasis()


# --- null_space_update -------------------------------------------------------------------------

@pytest.mark.parametrize(("k_out", "k_in"), [(0, 0), (1, 2), (2, 7), (5, 3), (5, 8), (6, 9),
                                             (6, 0), (0, 9), (3, 4)])
def test_null_space_update_matches_dense(k_out, k_in):
    d_out, d_in = 6, 9
    p_out, p_in = random_projector(d_out, k_out, seed=1), random_projector(d_in, k_in, seed=2)
    g = torch.randn(d_out, d_in, dtype=F64, generator=gen(3))
    expected = g - p_out.matrix() @ g @ p_in.matrix()
    torch.testing.assert_close(null_space_update(g, p_out, p_in), expected, atol=1e-12, rtol=0)
    # in place, with the update itself as target and with another target (W -= P_out ΔW P_in)
    w = torch.randn(d_out, d_in, dtype=F64, generator=gen(4))
    expected_w = w - p_out.matrix() @ g @ p_in.matrix()
    assert null_space_update_(w, g, p_out, p_in) is w
    torch.testing.assert_close(w, expected_w, atol=1e-12, rtol=0)
    assert null_space_update_(g, g, p_out, p_in) is g
    torch.testing.assert_close(g, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize(("k_out", "k_in"), [(2, 3), (5, 8)])
def test_null_space_update_kills_old_responses(k_out, k_in):
    d_out, d_in = 6, 9
    p_out, p_in = random_projector(d_out, k_out, seed=4), random_projector(d_in, k_in, seed=5)
    g = torch.randn(d_out, d_in, dtype=F64, generator=gen(6))
    x = p_in.left(torch.randn(d_in, 5, dtype=F64, generator=gen(7)))  # columns in span(P_in)
    z = p_out.left(torch.randn(d_out, 5, dtype=F64, generator=gen(8)))  # in span(P_out)
    assert (z.T @ g @ x).abs().max() > 1e-2  # the raw update does disturb old responses
    assert (z.T @ null_space_update(g, p_out, p_in) @ x).abs().max() < 1e-10


def test_identity_gives_one_sided_projection():
    p_out, p_in = random_projector(6, 2, seed=9), random_projector(9, 4, seed=10)
    g = torch.randn(6, 9, dtype=F64)
    eye_in, eye_out = Projector.identity(9), Projector.identity(6)
    torch.testing.assert_close(null_space_update(g, eye_out, p_in), g - g @ p_in.matrix(),
                               atol=1e-12, rtol=0)
    torch.testing.assert_close(null_space_update(g, p_out, eye_in), g - p_out.matrix() @ g,
                               atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match=r"\(9, 6\).*6.*9"):
        null_space_update(g.T, p_out, p_in)


# --- SubspaceState -----------------------------------------------------------------------------

def make_state(faithful: bool = False) -> SubspaceState:
    """Task 1 aligns a-b (100 pairs), task 2 aligns b-c (50 pairs): c is first seen late."""
    s = SubspaceState({"a": 5, "b": 7, "c": 4}, out_dim=3, faithful_counts=faithful)
    for i, (m1, m2, n) in enumerate([("a", "b", 100), ("b", "c", 50)]):
        for m in (m1, m2):
            s.update_inputs(m, torch.randn(n, s.in_dims[m], generator=gen(10 * i + len(m))))
            s.update_outputs(m, torch.randn(n, 3, generator=gen(10 * i + 5)))
        s.end_task(step=i, task=f"{m1}-{m2}", modalities=[m1, m2], pairs=n)
    return s


def test_faithful_counts_follow_the_authors_rule():
    """a is in task 1 only, b in both, c in task 2 only (100 then 50 pairs)."""
    fixed, faithful = make_state(), make_state(faithful=True)
    assert fixed.global_count == faithful.global_count == 150
    assert fixed.in_cov["c"].count == 50
    total = {m: fixed.in_cov[m].total for m in "abc"}
    torch.testing.assert_close(fixed.covariance("c", "in"), total["c"] / 50)
    torch.testing.assert_close(fixed.covariance("a", "in"), total["a"] / 100)
    # authors: c first seen late is divided by all pairs so far; b is rescaled in task 2
    torch.testing.assert_close(faithful.covariance("c", "in"), total["c"] / 150)
    torch.testing.assert_close(faithful.covariance("b", "in"), total["b"] / 150)
    torch.testing.assert_close(faithful.covariance("b", "out"), fixed.out_cov["b"].total / 150)
    # ... and a, which skips task 2, keeps its task-1 scale (no rescaling by 100/150)
    torch.testing.assert_close(faithful.covariance("a", "in"), total["a"] / 100)
    torch.testing.assert_close(faithful.covariance("a", "out"), fixed.out_cov["a"].total / 100)
    # the same absolute threshold keeps fewer directions under the authors' bookkeeping
    assert fixed.projector("c", "in", "absolute", 0.5).rank == 4
    assert faithful.projector("c", "in", "absolute", 0.5).rank < 4


def test_faithful_counts_match_the_authors_recursion():
    """Three tasks where b skips task 2: the recursion C <- C N/(N+n) + S/(N+n), step by step."""
    s = SubspaceState({"a": 3, "b": 3, "c": 3}, out_dim=2, faithful_counts=True)
    ref = {m: torch.zeros(3, 3, dtype=torch.float64) for m in "abc"}
    seen = 0
    for i, (m1, m2, n) in enumerate([("a", "b", 40), ("a", "c", 25), ("b", "c", 10)]):
        for m in (m1, m2):
            x = torch.randn(n, 3, generator=gen(7 * i + len(m) + ord(m)), dtype=torch.float64)
            s.update_inputs(m, x)
            s.update_outputs(m, torch.randn(n, 2, generator=gen(i)))
            ref[m] = ref[m] * seen / (seen + n) + x.T @ x / (seen + n)
        seen += n
        s.end_task(step=i + 1, task=f"{m1}-{m2}", modalities=[m1, m2], pairs=n)
        for m in "abc":
            torch.testing.assert_close(s.covariance(m, "in"), ref[m], rtol=1e-12, atol=1e-12)


def test_state_errors_and_seen():
    s = make_state()
    s.in_dims["d"] = 2
    s.in_cov["d"], s.out_cov["d"] = RunningCovariance(2), RunningCovariance(3)
    assert s.seen("a", "in") and not s.seen("d", "out")
    with pytest.raises(KeyError, match="'zz'.*a, b, c"):
        s.covariance("zz", "in")
    with pytest.raises(ValueError, match="'middle'.*in, out"):
        s.covariance("a", "middle")


def test_save_load_round_trip(tmp_path):
    s = make_state(faithful=True)
    s.save(tmp_path / "state")
    loaded = SubspaceState.load(tmp_path / "state", in_dims={"a": 5, "b": 7, "c": 4}, out_dim=3)
    assert loaded.faithful_counts and loaded.global_count == 150
    assert loaded.history == s.history and loaded.history[1]["modalities"] == ["b", "c"]
    for m in "abc":
        for side in ("in", "out"):
            covs = (s.in_cov, loaded.in_cov) if side == "in" else (s.out_cov, loaded.out_cov)
            assert covs[0][m].count == covs[1][m].count > 0
            for mode, thr in [("absolute", 0.3), ("relative", 0.1), ("energy", 0.9)]:
                before = s.projector(m, side, mode, thr)
                after = loaded.projector(m, side, mode, thr)
                assert before.rank == after.rank
                assert torch.equal(before.matrix(), after.matrix())


def test_load_adds_new_modality_empty(tmp_path):
    make_state().save(tmp_path)
    loaded = SubspaceState.load(tmp_path, in_dims={"a": 5, "b": 7, "c": 4, "d": 11})
    assert loaded.in_cov["d"].dim == 11 and not loaded.seen("d", "in")
    assert loaded.projector("d", "in", "absolute", 0.1).rank == 0


def test_load_rejects_mismatches(tmp_path):
    make_state().save(tmp_path)
    json_path = str(tmp_path / "subspace.json")
    with pytest.raises(ValueError, match=rf"{json_path}.*'b'.*7 in the saved.*8 in the model"):
        SubspaceState.load(tmp_path, in_dims={"a": 5, "b": 8, "c": 4})
    with pytest.raises(ValueError, match=rf"{json_path}.*3 in the saved.*16 in the model"):
        SubspaceState.load(tmp_path, out_dim=16)
    with pytest.raises(ValueError, match=rf"{json_path}.*\['c'\]"):
        SubspaceState.load(tmp_path, in_dims={"a": 5, "b": 7})
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        SubspaceState.load(missing)


def test_load_rejects_inconsistent_tensor_file(tmp_path):
    make_state().save(tmp_path)
    tensor_path = tmp_path / "subspace.safetensors"
    good = load_tensors(tensor_path)
    save_tensors(tensor_path, {**good, "in/a": torch.zeros(4, 4, dtype=F64)})
    with pytest.raises(ValueError, match=rf"{tensor_path}.*'in/a'.*\(4, 4\)"):
        SubspaceState.load(tmp_path)
    # tensors from a later save next to an older json: counts disagree
    save_tensors(tensor_path, {**good, "count/out/b": torch.tensor(999)})
    with pytest.raises(ValueError, match="different saves"):
        SubspaceState.load(tmp_path)


# --- FactoredGradients and RotatedHeads --------------------------------------------------------

def head_and_batch(d_out: int = 6, d_in: int = 9, n: int = 5, bias: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    head = torch.nn.Linear(d_in, d_out, bias=bias)
    return head, torch.randn(n, d_in, generator=gen(seed + 1))


def loss_of(head: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A nonlinear loss of the outputs, so Δ is not trivial; two forward passes per step."""
    return torch.tanh(head(x)).pow(2).sum() + head(x[:2]).sin().sum()


@pytest.mark.parametrize(("k_out", "k_in", "bias_column", "clip"), [
    (2, 3, False, None), (5, 7, False, 1e-3), (2, 7, True, 1e-3), (0, 9, True, None),
    (6, 0, False, 1e-3), (6, 4, True, None)])
def test_factored_projection_equals_dense_on_the_clipped_gradient(k_out, k_in, bias_column,
                                                                  clip):
    head, x = head_and_batch(bias=True)
    d_in = x.shape[1] + bias_column
    p_out, p_in = random_projector(6, k_out, seed=1), random_projector(d_in, k_in, seed=2)
    p_out, p_in = p_out.to(dtype=torch.float32), p_in.to(dtype=torch.float32)
    fg = FactoredGradients({"a": head}, bias_column=bias_column)
    loss_of(head, x).backward()
    if clip:  # clipping scales the gradient after the hooks saw it
        assert torch.nn.utils.clip_grad_norm_(head.parameters(), clip) > 100 * clip
    clipped = torch.cat([head.weight.grad, head.bias.grad[:, None]], 1)
    g = clipped if bias_column else clipped[:, :-1]
    expected = null_space_update(g, p_out, p_in)
    assert fg.project_("a", p_out, p_in)
    got = torch.cat([head.weight.grad, head.bias.grad[:, None]], 1)
    torch.testing.assert_close(got[:, : g.shape[1]], expected, atol=1e-6, rtol=1e-5)
    if not bias_column:  # the bias is left alone
        assert torch.equal(got[:, -1], clipped[:, -1])
    fg.close()
    assert not head._forward_hooks


def test_factored_projection_refuses_a_gradient_that_is_not_its_factors():
    head, x = head_and_batch()
    p_out, p_in = random_projector(6, 2, seed=1), random_projector(9, 3, seed=2)
    fg = FactoredGradients({"a": head})
    loss_of(head, x).backward()
    head.weight.grad += 1e-2 * head.weight.detach()  # e.g. a penalty on the weights
    before = head.weight.grad.clone()
    assert not fg.project_("a", p_out.to(dtype=torch.float32), p_in.to(dtype=torch.float32))
    assert torch.equal(head.weight.grad, before)
    fg.clear()
    assert not fg.project_("a", p_out.to(dtype=torch.float32), p_in.to(dtype=torch.float32))


def test_factored_projection_refuses_an_extra_backward_term():
    """A second loss on the head's weights (not through its outputs) breaks G = Δᵀ X."""
    head, x = head_and_batch()
    fg = FactoredGradients({"a": head})
    (loss_of(head, x) + 1e-2 * head.weight.pow(2).sum()).backward()
    p = random_projector(9, 3, seed=2).to(dtype=torch.float32)
    assert not fg.project_("a", Projector.identity(6), p)


@pytest.mark.parametrize(("k_out", "k_in"), [(2, 3), (6, 4), (2, 9), (4, 6)])
def test_rotated_heads_keep_the_forward_and_freeze_exactly_the_protected_block(k_out, k_in):
    head, x = head_and_batch()
    w0 = head.weight.detach().clone()
    z0 = head(x).detach()
    p_out, p_in = random_projector(6, k_out, seed=1), random_projector(9, k_in, seed=2)
    rot = RotatedHeads({"a": head}, {"a": (p_out, p_in)})
    torch.testing.assert_close(head(x), z0, atol=1e-5, rtol=1e-5)  # same function
    with torch.no_grad():
        head.weight.add_(torch.randn(6, 9, generator=gen(5)))  # any update of W̃
    rot.restore_()
    rot.close()
    assert not head._forward_hooks and not head._forward_pre_hooks
    delta = (head.weight.detach() - w0).to(F64)
    po, pi = p_out.matrix(), p_in.matrix()
    assert delta.abs().max() > 0.1
    assert (po @ delta @ pi).abs().max() < 1e-5  # the update is in the null space
    # and nothing else was removed: the update equals its own null-space projection
    torch.testing.assert_close(delta, delta - po @ delta @ pi, atol=1e-5, rtol=0)


def test_rotated_heads_refuse_a_bias_and_skip_unprotected_heads():
    head, _ = head_and_batch(bias=True)
    with pytest.raises(ValueError, match="bias"):
        RotatedHeads({"a": head}, {"a": (Projector.identity(6), random_projector(9, 3))})
    free, _ = head_and_batch()
    w = free.weight.detach().clone()
    rot = RotatedHeads({"a": free}, {"a": (random_projector(6, 2), Projector.zero(9))})
    assert not rot.heads and torch.equal(free.weight, w)


@pytest.mark.parametrize(("k_a", "k_b"), [(2, 3), (6, 3), (2, 6), (6, 6)])
def test_rotated_pair_frame_keeps_inner_products_and_norms(k_a, k_b):
    """Without output rotations back, a's and b's embeddings land in one orthogonal frame."""
    (ha, xa), (hb, xb) = head_and_batch(seed=0), head_and_batch(seed=3)
    za, zb = ha(xa).detach(), hb(xb).detach()
    ref, norms = za @ zb.T, zb.norm(dim=1)
    proj = {"a": (random_projector(6, k_a, seed=1), random_projector(9, 4, seed=2)),
            "b": (random_projector(6, k_b, seed=4), random_projector(9, 5, seed=5))}
    rot = RotatedHeads({"a": ha, "b": hb}, proj, pair=("a", "b"))
    assert not ha._forward_hooks and not hb._forward_hooks  # outputs stay rotated
    ea, eb = rot.to_frame("a", ha(xa)), rot.to_frame("b", hb(xb))
    torch.testing.assert_close(ea @ eb.T, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eb.norm(dim=1), norms, atol=1e-5, rtol=1e-5)
    # a's frame is its rotated output basis (the original one when its output side is whole)
    assert torch.allclose(ea, za, atol=1e-5) == (k_a == 6)
    rot.close()


@pytest.mark.parametrize(("k_out", "k_in"), [(2, 3), (6, 4), (2, 9)])
def test_rotated_heads_without_input_hooks_take_inputs_rotated_once(k_out, k_in):
    """input_hooks=False: no input hook; rotate_inputs (in any block size) gives the inputs
    the hook would have produced, so the head computes the same function on them."""
    head, x = head_and_batch(n=7)
    z0 = head(x).detach()
    p_out, p_in = random_projector(6, k_out, seed=1), random_projector(9, k_in, seed=2)
    rot = RotatedHeads({"a": head}, {"a": (p_out, p_in)}, input_hooks=False)
    assert not head._forward_pre_hooks and len(head._forward_hooks) == (k_out < 6)
    xr = rot.rotate_inputs("a", x)
    if k_in == 9:  # all protected: that side is not rotated
        assert xr is x
    torch.testing.assert_close(rot.rotate_inputs("a", x, rows=3), xr, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(head(xr), z0, atol=1e-5, rtol=1e-5)
    assert rot.rotate_inputs("b", x) is x  # not a rotated head
    rot.close()
