"""The CLI verbs that need no data: `cmcl methods` lists the registry."""

from __future__ import annotations


def test_cli_methods_lists_the_registry(capsys):
    from cmcl.cli import main

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "dns" in out and "finetune" in out and "arXiv:2503.14963" in out


def test_compare_names_a_score_the_metrics_lack(tmp_path, capsys):
    """With eval.ks [1, 5, 20] there is no R@10: asking for it is an error, not an empty table."""
    import json

    import pytest

    from cmcl.cli import main

    entry = {"map_final_avg": 50.0, "r1_final_avg": 40.0, "r20_final_avg": 90.0, "n_seeds": 1}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"q": {"a": entry, "b": entry}}))
    with pytest.raises(SystemExit, match=r"compare: no score \['r10'\] in the metrics \(they "
                                         r"hold \['map', 'r1', 'r20'\]"):
        main(["compare", "a", "b", "--metric", "r10", "--metrics", str(path)])
    assert main(["compare", "a", "b", "--metrics", str(path)]) == 0
    out = capsys.readouterr().out
    assert "r20_final_avg" in out and "map_final_avg" in out
