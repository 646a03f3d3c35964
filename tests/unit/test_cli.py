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
    assert "±" not in out  # one seed: no spread to show


def test_validate_composes_several_files_as_snakemake_does(tmp_path, monkeypatch, capsys):
    """`validate my.yaml best.yaml`: the composition `snakemake --configfile my.yaml best.yaml`
    runs (the Snakefile's compose), errors naming every file it came from."""
    from helpers.data import ROOT

    from cmcl.cli import main
    from cmcl.config import check, compose

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "pipeline").symlink_to(ROOT / "pipeline")
    (tmp_path / "my.yaml").write_text("train:\n  methods: [finetune, dns]\n  seeds: [1]\n")
    (tmp_path / "best.yaml").write_text("methods:\n  dns: {threshold_in: 0.01}\n"
                                        "overrides:\n  dns: {train: {lr: 0.02}}\n")
    assert main(["validate", "my.yaml", "best.yaml"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("my.yaml best.yaml: ok as `snakemake --configfile my.yaml best.yaml` "
                          "runs it") and "methods ['finetune', 'dns']; seeds [1]" in out
    got = check(compose(["my.yaml", "best.yaml"]))
    assert got["methods"]["dns"]["threshold_in"] == 0.01
    assert got["overrides"]["dns"]["train"]["lr"] == 0.02 and got["train"]["lr"] == 0.01
    (tmp_path / "bad.yaml").write_text("train:\n  epochs: 0\n")
    assert main(["validate", "my.yaml", "bad.yaml"]) == 1
    err = capsys.readouterr().err
    assert "params.yaml + my.yaml + bad.yaml: invalid parameters" in err
    assert "train.epochs: 0 is less than the minimum of 1" in err
    assert main(["validate", "my.yaml"]) == 0  # one file: as before
    assert capsys.readouterr().out.startswith("my.yaml: ok as `snakemake --configfile my.yaml`")
