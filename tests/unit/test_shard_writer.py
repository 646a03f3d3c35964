"""The shard writer every adapter's samples go through refuses a key twice."""

from __future__ import annotations

import pytest

from cmcl.shards import write_shards


def test_write_shards_refuses_one_key_twice(tmp_path):
    """The writer every adapter's samples go through: a duplicate id (paper adapters too)."""
    def rec(key: str, sid: str) -> dict:
        return {"__key__": key, "json": {"id": sid}, "x.txt": sid}

    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match=r"where: sample id 'v1' appears twice"):
        write_shards(tmp_path / "a", [rec("v1", "v1"), rec("v1", "v1")], 10, where="where")
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match=r"sample ids 'x\.1' and 'x_1' collide as the tar key "
                                         r"'x_1'"):
        write_shards(tmp_path / "b", [rec("x_1", "x.1"), rec("x_1", "x_1")], 10)
