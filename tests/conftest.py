"""Shared fixtures (a tiny synthetic corpus, one torch thread) and the directory markers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.data import make_corpus

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

KINDS = ("unit", "integration", "workflow")  # tests/<kind>/: the marker every test there gets


def _kind(item) -> str | None:
    here = Path(__file__).parent
    rel = item.path.relative_to(here).parts if item.path.is_relative_to(here) else ()
    return rel[0] if rel and rel[0] in KINDS else None


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if _kind(item):
            item.add_marker(_kind(item))
    # fast feedback first: unit, integration, then workflow (stable: modules stay contiguous)
    items.sort(key=lambda item: KINDS.index(_kind(item)) if _kind(item) else len(KINDS))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return make_corpus(tmp_path / "corpus")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: extra intra-op threads only spin against other jobs on a shared CPU."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
