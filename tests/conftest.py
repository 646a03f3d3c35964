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


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        rel = item.path.relative_to(here).parts if item.path.is_relative_to(here) else ()
        if rel and rel[0] in KINDS:
            item.add_marker(rel[0])


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
