"""The sweep rule hands best.yaml the --configfile files it ran with; the command best.yaml's
header names plans the user's own matrix with the swept method's values, nothing else."""

from __future__ import annotations

import json
import re
import shlex
import shutil

import optuna
import yaml
from helpers.data import ROOT
from helpers.snake import snakemake

from cmcl.sweep import write_best


def test_best_yaml_command_plans_the_sweep_files_matrix_with_the_best_values(tmp_path):
    d = tmp_path / "proj"
    d.mkdir()
    shutil.copy(ROOT / "Snakefile", d / "Snakefile")
    shutil.copytree(ROOT / "pipeline", d / "pipeline")
    shutil.copy(ROOT / "params.yaml", d / "params.yaml")
    (d / "my.yaml").write_text("train:\n  methods: [finetune, dns]\n  seeds: [1]\n")
    (d / "mysweep.yaml").write_text(
        "extends: my.yaml\nsweep:\n  study: my_dns\n  method: dns\n  space:\n"
        "    threshold_in: {type: float, low: 1.0e-6, high: 0.5, log: true}\n")
    p = snakemake(d, "-n", "-p", "sweep", "--configfile", "mysweep.yaml")
    assert p.returncode == 0, p.out[-3000:]
    m = re.search(r"sweep-best .* --sources '([^']*)'", p.out)
    assert m, p.out[-3000:]
    sources = json.loads(m.group(1))
    assert sources == {"configfiles": ["mysweep.yaml"], "config_args": []}

    trial = optuna.trial.create_trial(
        params={"threshold_in": 0.0123},
        distributions={"threshold_in": optuna.distributions.FloatDistribution(1e-6, 0.5)},
        value=0.9)
    best = d / "reports/sweep/my_dns/best.yaml"
    write_best(best, "my_dns-x", trial, "dns", sources)  # what the rule's job writes
    use = next(line for line in best.read_text().splitlines() if line.startswith("# use: "))
    argv = shlex.split(use[len("# use: "):])
    assert argv[1:] == ["--cores", "all", "--configfile", "mysweep.yaml", str(best)], use
    p = snakemake(d, "-n", *argv[1:])
    assert p.returncode == 0, p.out[-3000:]
    runs = set(re.findall(r"results/runs/digits/(\w+)/seed(\d+)/", p.out))
    assert runs == {("finetune", "1"), ("dns", "1")}, runs  # my.yaml's matrix, not 16 x 3
    assert yaml.safe_load(best.read_text()) == {"methods": {"dns": {"threshold_in": 0.0123}}}
