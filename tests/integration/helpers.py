"""Shared by the integration tests: run the CLI in a scratch directory and read its metrics.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

from vpg.cli import VPGCLI

REPO = Path(__file__).resolve().parents[2]


def run_cli(args: list[str], tmp_path: Path, monkeypatch) -> VPGCLI:
    """``VPGCLI(args)`` with tmp_path as the working directory (logs/ lands there); the repo's
    experiments/ and tests/ are linked in so relative config and fixture paths resolve."""
    monkeypatch.chdir(tmp_path)
    for name in ("experiments", "tests"):
        (tmp_path / name).exists() or (tmp_path / name).symlink_to(REPO / name)
    return VPGCLI(args=args)


def metrics_file(capsys) -> dict:
    """The metrics of the run whose stdout ends with ``metrics: <path to metrics.json>``."""
    last = capsys.readouterr().out.strip().splitlines()[-1]
    return json.loads(Path(re.fullmatch(r"metrics: (.+)", last).group(1)).read_text())["metrics"]
