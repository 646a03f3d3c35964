"""The projection heads: identity or orthogonal init, checkpoints of another shape refused."""

from __future__ import annotations

import pytest
import torch

from cmcl.models import MultiHead


def test_init_is_identity_when_square_and_orthogonal_otherwise():
    m = MultiHead({"a": 8, "b": 20}, 8)
    m.reset("identity", 0)
    assert torch.equal(m.heads["a"].weight, torch.eye(8))
    w = m.heads["b"].weight
    assert torch.allclose(w @ w.T, torch.eye(8), atol=1e-5)


def test_checkpoint_of_another_shape_is_refused():
    m = MultiHead({"a": 8}, 4)
    with pytest.raises(ValueError, match=r"ckpt: 'heads.a.weight' has shape \(4, 9\) in the "
                                         r"checkpoint but \(4, 8\) in the model"):
        m.check_state({"heads.a.weight": torch.zeros(4, 9)}, "ckpt")
    with pytest.raises(ValueError, match="unexpected .*heads.b.weight"):
        m.check_state({"heads.a.weight": torch.zeros(4, 8), "heads.b.weight": torch.zeros(4, 2)},
                      "ckpt")
