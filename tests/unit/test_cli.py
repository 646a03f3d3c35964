"""The CLI verbs that need no data: `cmcl methods` lists the registry."""

from __future__ import annotations


def test_cli_methods_lists_the_registry(capsys):
    from cmcl.cli import main

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "dns" in out and "finetune" in out and "arXiv:2503.14963" in out
