"""Aggregate several runs' metrics.json (written by `vpg test` / `vpg validate`) into one markdown
table: mean ± std per group, one column per metric.

Runs are grouped by the values of config keys read from the config.yaml that the CLI saves next
to each metrics.json (default: the experiment = the log directory's parent name, plus the model's
``variant`` when it has one), so the 3 seeds of one setting land in one row:

    vpg fit  --config experiments/cavpt_eurosat.yaml --seed_everything 1 --data.init_args.seed 1
    vpg test --config experiments/cavpt_eurosat.yaml --seed_everything 1 --data.init_args.seed 1 \
             --ckpt_path logs/cavpt_eurosat/version_0/checkpoints/last.ckpt        # -> its own version_N
    ... seeds 2 and 3 ...
    python scripts/aggregate_metrics.py logs/cavpt_eurosat/version_*/metrics.json
    python scripts/aggregate_metrics.py 'logs/*/version_*/metrics.json' --metric test/acc@1 \
        --group-by experiment,model.init_args.variant --show data.init_args.seed

std is the sample standard deviation over the runs of a group (n - 1); a group of one run shows its
value only. Metrics in [0, 1] whose name contains "acc" are shown in percent (``--raw`` keeps them).
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import sys
from pathlib import Path

import yaml

DEFAULT_GROUP_BY = "experiment,model.init_args.variant"


def config_value(config: dict, dotted: str):
    """'model.init_args.variant' -> config['model']['init_args']['variant'] (None when absent)."""
    value = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def load_run(path: Path) -> dict:
    """metrics.json + the config.yaml next to it (if any)."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"{path}: not a readable metrics.json ({err})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("metrics"), dict):
        raise SystemExit(f"{path}: no 'metrics' object (is it a vpg metrics.json?)")
    config_file = path.parent / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    return {"path": path, "metrics": payload["metrics"], "config": config or {}}


def group_key(run: dict, keys: list[str]) -> tuple[str, ...]:
    parts = []
    for key in keys:
        if key == "experiment":
            parts.append(run["path"].parent.parent.name)
        else:
            value = config_value(run["config"], key)
            parts.append("" if value is None else str(value))
    return tuple(parts)


def fmt(values: list[float], percent: bool) -> str:
    scale = 100.0 if percent else 1.0
    mean = scale * statistics.fmean(values)
    digits = 1 if percent else 4
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def aggregate(paths: list[Path], metrics: list[str] | None = None, group_by: str = DEFAULT_GROUP_BY,
              show: list[str] = (), raw: bool = False) -> str:
    """The markdown table (also the function the tests call)."""
    runs = [load_run(p) for p in paths]
    if not runs:
        raise SystemExit("no metrics.json files matched")
    keys = [k for k in group_by.split(",") if k]
    if metrics is None:
        metrics = sorted({m for r in runs for m in r["metrics"]})
    groups: dict[tuple[str, ...], list[dict]] = {}
    for run in runs:
        groups.setdefault(group_key(run, keys), []).append(run)
    used_keys = [k for j, k in enumerate(keys) if any(g[j] for g in groups)]  # drop columns empty everywhere
    head = [*used_keys, "runs", *show, *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(used_keys) + " ---: |" * (1 + len(show) + len(metrics))]
    for key, members in groups.items():
        cells = [key[keys.index(k)] for k in used_keys] + [str(len(members))]
        cells += [", ".join(str(config_value(m["config"], s)) for m in members) for s in show]
        for metric in metrics:
            values = [float(m["metrics"][metric]) for m in members if metric in m["metrics"]]
            if not values:
                cells.append("—")
                continue
            percent = not raw and "acc" in metric and all(0.0 <= v <= 1.0 for v in values)
            cell = fmt(values, percent)
            cells.append(cell if len(values) == len(members) else f"{cell} (n={len(values)})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="metrics.json files or glob patterns")
    parser.add_argument("--metric", action="append", help="metric(s) to show (default: every metric found)")
    parser.add_argument("--group-by", default=DEFAULT_GROUP_BY,
                        help="comma-separated: 'experiment' and/or dotted config keys (default: %(default)s)")
    parser.add_argument("--show", action="append", default=[], help="config keys listed per group (e.g. seeds)")
    parser.add_argument("--raw", action="store_true", help="no percent conversion")
    args = parser.parse_args(argv)
    paths: list[Path] = []
    for pattern in args.paths:
        matched = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        paths += [Path(p) for p in matched]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        sys.exit(f"not found: {', '.join(missing)}")
    print(aggregate(paths, args.metric, args.group_by, args.show, args.raw))


if __name__ == "__main__":
    main()
