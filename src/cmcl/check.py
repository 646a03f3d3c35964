"""Reproduction guard: compare a run's metrics with recorded expected results.

A silent change of behaviour (a dependency upgrade that disables a method's hook, a refactor
that changes a default) must turn a run red, not just shift a table. Expected results are keyed
by a fingerprint of every parameter that affects a method's numbers, so a deliberate params
change is reported as "not checked" instead of failing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import yaml

from cmcl import stages
from cmcl.io import atomic_path, write_json


def fingerprint(params: Mapping, sequence: str, method: str) -> str:
    """Hash of everything that determines `method`'s numbers on `sequence` (not the other
    methods' options, not the other sequences): cmcl.stages.run_key."""
    return stages.run_key(params, sequence, method)


def guard(cfg: Mapping) -> dict:
    """The check stage's values (fingerprints and compared metrics), from them or from params."""
    return dict(cfg) if "fingerprints" in cfg else stages.check(cfg).values


def expect(metrics: Mapping, params: Mapping, out: str | Path, min_tol: float = 1.0,
           n_std: float = 4.0) -> dict:
    """Record the current metrics as expected: tolerance = max(min_tol, n_std * seed std)."""
    entry: dict = {}
    g = guard(params)
    for seq, per_method in metrics.items():
        for method, m in per_method.items():
            vals = {k: {"value": m[k],
                        "tol": round(max(min_tol, n_std * (m.get(f"{k}_std") or 0)), 2)}
                    for k in g["metrics"] if m.get(k) is not None}
            entry.setdefault(seq, {})[method] = {
                "fingerprint": g["fingerprints"][seq][method], "n_seeds": m.get("n_seeds"),
                "metrics": vals}
    with atomic_path(out) as tmp:
        tmp.write_text("# Expected results (percent) per sequence and method; regenerate "
                       "deliberately with `python -m cmcl expect`.\n"
                       + yaml.safe_dump(entry, sort_keys=True))
    return entry


def check(metrics: Mapping, params: Mapping, expected: Mapping) -> tuple[bool, list[dict]]:
    """Rows (sequence, method, metric, value, expected, tol, status); ok is False if any
    deviates. Runs without an expected entry, or with other params, are listed, not failed."""
    rows, ok = [], True
    prints = guard(params)["fingerprints"]
    for seq, per_method in sorted(metrics.items()):
        for method, m in sorted(per_method.items()):
            exp = expected.get(seq, {}).get(method)
            where = {"sequence": seq, "method": method}
            if exp is None:
                rows.append({**where, "status": "not checked: no expected entry"})
                continue
            if exp["fingerprint"] != prints.get(seq, {}).get(method):
                rows.append({**where,
                             "status": "not checked: params differ from the expected run's"})
                continue
            for key, e in exp["metrics"].items():
                value = m.get(key)
                bad = value is None or abs(value - e["value"]) > e["tol"]
                ok &= not bad
                rows.append({**where, "metric": key, "value": value, "expected": e["value"],
                             "tol": e["tol"], "status": "DEVIATES" if bad else "ok"})
    return ok, rows


def run_check(metrics_path: str | Path, params: Mapping, expected_path: str | Path,
              out: str | Path) -> bool:
    metrics = json.loads(Path(metrics_path).read_text())
    expected = yaml.safe_load(Path(expected_path).read_text()) or {}
    ok, rows = check(metrics, params, expected)
    for r in rows:
        if "metric" in r:
            print(f"{r['status']:9s} {r['sequence']:10s} {r['method']:12s} {r['metric']:18s} "
                  f"{r['value']!s:>9} (expected {r['expected']} ± {r['tol']})")
        else:
            print(f"{'-':9s} {r['sequence']:10s} {r['method']:12s} {r['status']}")
    checked = sum("metric" in r for r in rows)
    if not checked:  # ok, as a deliberate change must not fail the run, but say so
        print(f"nothing checked: no run of these params has an entry in {expected_path} "
              "(record one with `python -m cmcl expect`, or set report.expected: null)")
    write_json(out, {"ok": ok, "checked": checked, "expected_file": str(expected_path),
                     "rows": rows})
    return ok
