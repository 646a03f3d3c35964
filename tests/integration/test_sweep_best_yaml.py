"""best.yaml of a sweep run on one's own config files: the swept method's values only, and a
header command (those files, then best.yaml) that validates to that method's change alone."""

from __future__ import annotations

import shlex
import subprocess
import sys

import optuna
import pytest
import yaml
from helpers.data import ROOT

from cmcl.config import check, compose
from cmcl.sweep import write_best

SPACE = {"threshold_in": optuna.distributions.FloatDistribution(1e-6, 0.5, log=True),
         "train.lr": optuna.distributions.FloatDistribution(0.001, 0.1)}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A working directory with params.yaml, my.yaml (two methods, one seed) and mysweep.yaml
    (extends my.yaml: the sweep section)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "pipeline").symlink_to(ROOT / "pipeline")
    (tmp_path / "my.yaml").write_text("train:\n  methods: [finetune, dns]\n  seeds: [1]\n")
    (tmp_path / "mysweep.yaml").write_text(
        "extends: my.yaml\nsweep:\n  study: my_dns\n  method: dns\n  space:\n"
        "    threshold_in: {type: float, low: 1.0e-6, high: 0.5, log: true}\n"
        "    train.lr: {type: float, low: 0.001, high: 0.1}\n")
    return tmp_path


def header_files(text: str) -> list[str]:
    """The --configfile files of best.yaml's `# use:` command."""
    use = next(line for line in text.splitlines() if line.startswith("# use: "))
    argv = shlex.split(use[len("# use: "):])
    assert argv[:3] == ["snakemake", "--cores", "all"], use
    files = argv[argv.index("--configfile") + 1:]
    return files[:files.index("--config")] if "--config" in files else files


def test_best_yaml_of_a_train_lr_sweep_validates_with_the_sweep_files(project):
    _best_yaml_and_its_command(project)


def _best_yaml_and_its_command(project, lr: bool = True) -> None:
    """best.yaml holds the swept method's values only; its command validates to that change."""
    if not lr:  # the sweep file's space without train.lr: what check accepts with best.yaml
        text = (project / "mysweep.yaml").read_text()
        (project / "mysweep.yaml").write_text(text.split("    train.lr")[0])
    trial = optuna.trial.create_trial(params={"threshold_in": 0.0123, "train.lr": 0.0456},
                                      distributions=SPACE, value=0.9)
    out = project / "reports/sweep/my_dns/best.yaml"
    write_best(out, "my_dns-abc", trial, "dns", {"configfiles": ["mysweep.yaml"]})
    text = out.read_text()
    assert yaml.safe_load(text) == {"methods": {"dns": {"threshold_in": 0.0123}},
                                    "overrides": {"dns": {"train": {"lr": 0.0456}}}}
    files = header_files(text)
    assert files == ["mysweep.yaml", str(out)]
    p = subprocess.run([sys.executable, "-m", "cmcl", "validate", *files], capture_output=True,
                       text=True, cwd=project)
    assert p.returncode == 0, p.stderr
    assert "methods ['finetune', 'dns']; seeds [1]" in p.stdout  # my.yaml's matrix, not 16 x 3
    without, got = check(compose(["mysweep.yaml"])), check(compose(files))
    assert got["train"] == without["train"]  # the shared lr stays finetune's
    assert got["overrides"]["dns"]["train"]["lr"] == 0.0456
    assert got["methods"]["dns"]["threshold_in"] == 0.0123
    assert {k: v for k, v in got["overrides"].items() if k != "dns"} == \
        {k: v for k, v in without["overrides"].items() if k != "dns"}
    assert {k: v for k, v in got["methods"].items() if k != "dns"} == \
        {k: v for k, v in without["methods"].items() if k != "dns"}


def test_best_yaml_command_validates_when_the_sweep_files_do_not_sweep_train_keys(project):
    _best_yaml_and_its_command(project, lr=False)


def test_best_yaml_command_repeats_config_values_and_names_shared_keys(project):
    space = {**SPACE, "loss.temperature": optuna.distributions.FloatDistribution(0.05, 0.5)}
    trial = optuna.trial.create_trial(params={"threshold_in": 0.01, "train.lr": 0.02,
                                              "loss.temperature": 0.2},
                                      distributions=space, value=0.5)
    out = project / "best.yaml"
    write_best(out, "s", trial, "dns", {"configfiles": ["my.yaml", "dir with space/x.yaml"],
                                        "config_args": ["train={epochs: 2}"]})
    text = out.read_text()
    assert ("# use: snakemake --cores all --configfile my.yaml 'dir with space/x.yaml' "
            f"{out} --config 'train={{epochs: 2}}'\n") in text
    assert "# loss.temperature: shared, every method of train.methods runs with it" in text
    assert yaml.safe_load(text)["loss"] == {"temperature": 0.2}
    assert header_files(text) == ["my.yaml", "dir with space/x.yaml", str(out)]
    write_best(out, "s", trial, "dns", {"configfiles": []})  # plain `snakemake sweep`
    assert f"# use: snakemake --cores all --configfile {out}\n" in out.read_text()
