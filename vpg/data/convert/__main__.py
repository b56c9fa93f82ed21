"""``python -m vpg.data.convert <format> --in ... --out ...`` (see ``--help`` of each format)."""

from vpg.data.convert.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
