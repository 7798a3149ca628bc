"""`scorebridge tracking-init` and `scorebridge tracking-sync`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..cli import job_parser
from ..errors import ConfigError, InputError, ScorebridgeError
from ..options import build
from .options import ENV_TRACKING, TrackingOptions
from .replay import sync_pending
from .secrets import Scrubber
from .store import write_experiments

__all__ = ["init_cli", "sync_cli"]


def _names(text: str) -> list[str]:
    return [x for x in (p.strip() for p in text.split(",")) if x]


def init_cli(argv: list[str]) -> int:
    """`scorebridge tracking-init --tracking JSON --sr a,b --bridge c --out experiments.json`."""
    ap = job_parser("tracking-init", init_cli.__doc__, spec=False)
    ap.add_argument(
        "--tracking",
        default=os.environ.get(ENV_TRACKING) or "{}",
        help="the config's `tracking` section as JSON (default: env SCOREBRIDGE_TRACKING, set by the workflow)",
    )
    ap.add_argument(
        "--sr",
        default=os.environ.get("SCOREBRIDGE_SR_EXPERIMENTS", ""),
        help="comma-separated names of the sr experiments (default: env SCOREBRIDGE_SR_EXPERIMENTS)",
    )
    ap.add_argument(
        "--bridge",
        default=os.environ.get("SCOREBRIDGE_BRIDGE_EXPERIMENTS", ""),
        help="comma-separated names of the bridge experiments (default: env SCOREBRIDGE_BRIDGE_EXPERIMENTS)",
    )
    ap.add_argument("--results", default=None, help="results directory (default: the parent of --out's directory)")
    ap.add_argument("--out", required=True, help="experiments.json to write")
    args = ap.parse_args(argv)
    try:
        section = json.loads(args.tracking)
    except json.JSONDecodeError as err:
        raise ConfigError("tracking", f"--tracking is not valid JSON: {err}") from None
    if not isinstance(section, dict):
        raise ConfigError("tracking", "--tracking must be a JSON object")
    tracking = build(TrackingOptions, section)
    out = Path(args.out)
    results = Path(args.results) if args.results else out.resolve().parent.parent
    info = write_experiments(tracking, _names(args.sr), _names(args.bridge), out, results)
    n = sum(len(v) for v in info["experiments"].values())
    state = "unreachable, experiments unresolved" if info["offline"] else f"{n} experiments"
    print(f"tracking store {info['uri']} ({info['uri_source']}): {state} -> {out}")
    return 0


def sync_cli(argv: list[str]) -> int:
    """`scorebridge tracking-sync [--uri URI] PENDING.json|DIR ...`: replay what a job could not log."""
    ap = job_parser("tracking-sync", sync_cli.__doc__, spec=False)
    ap.add_argument(
        "--uri", default=None, help="store to log into (default: $MLFLOW_TRACKING_URI, else the one in each file)"
    )
    ap.add_argument("paths", nargs="+", help="pending files, or directories searched for them (results/mlflow/pending)")
    args = ap.parse_args(argv)
    files: list[Path] = []
    for raw in args.paths:
        q = Path(raw)
        if q.is_dir():
            files += sorted(q.rglob("*.json"))
        elif q.exists():
            files.append(q)
        else:
            raise InputError("no such pending file or directory", q)
    failed = 0
    for f in files:
        try:
            n = sync_pending(f, args.uri)
            print(
                f"{f}: logged to run {n['run_id']} ({n['params']} params, {n['tags']} tags, {n['metrics']} metrics, "
                f"{n['artifacts']} artifacts, {n['datasets']} datasets)"
            )
        except ScorebridgeError:
            raise
        except Exception as err:  # noqa: BLE001
            failed += 1
            print(f"{f}: not logged: {type(err).__name__}: {Scrubber()(str(err))[:300]}", file=sys.stderr)
    return 1 if failed else 0
