#!/usr/bin/env python3
"""Regenerate envs/scorebridge.yaml from requirements.lock (or check that it is current).

The conda environment of the rules (`snakemake --sdm conda`) lists every pinned pip
requirement inline: Snakemake copies the env file to .snakemake/conda/<hash>.yaml before
it builds it, so a `-r ../requirements.lock` (or `-e ..`) relative to envs/ points nowhere
there. The package itself is not installed into the environment: under `--sdm conda` the
rules put this checkout's src/ on PYTHONPATH (workflow/rules/common.smk).

    python scripts/sync-conda-env.py          # rewrite envs/scorebridge.yaml
    python scripts/sync-conda-env.py --check  # exit 1, naming the difference, when stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
ENV = ROOT / "envs" / "scorebridge.yaml"
PYTHON = "3.11"

HEADER = """\
# Conda environment for every rule (`snakemake --sdm conda`).
# GENERATED from requirements.lock by scripts/sync-conda-env.py; do not edit by hand
# (tests/test_rule_safety.py checks that the pip list equals the lock file).
# Self-contained: Snakemake builds it from a copy under .snakemake/conda/, where paths
# relative to envs/ do not resolve. The rules run this checkout's src/ on PYTHONPATH.
"""


def lock_requirements(path: Path = LOCK) -> list[str]:
    """The lock file's requirement lines (comments and blank lines dropped)."""
    out = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-"):
            raise SystemExit(f"{path}:{number}: option line '{line}' cannot be carried into a conda env file")
        if "==" not in line:
            raise SystemExit(f"{path}:{number}: '{line}' is not pinned with '=='")
        out.append(line)
    return out


def render(requirements: list[str]) -> str:
    lines = [HEADER.rstrip("\n"), "channels:", "  - conda-forge", "dependencies:", f"  - python={PYTHON}", "  - pip", "  - pip:"]
    lines += [f"      - {req}" for req in requirements]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 when envs/scorebridge.yaml is stale")
    args = ap.parse_args(argv)
    text = render(lock_requirements())
    current = ENV.read_text() if ENV.exists() else ""
    if args.check:
        if current != text:
            print(f"{ENV} is out of date with {LOCK}; run: python scripts/sync-conda-env.py", file=sys.stderr)
            return 1
        return 0
    if current != text:
        ENV.write_text(text)
        print(f"wrote {ENV} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
