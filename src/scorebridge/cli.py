"""Command-line interface called by the workflow's rules: `scorebridge <command> ...`.

Each command lives beside the code it drives and takes its own arguments
(`scorebridge <command> --help`). Commands are looked up lazily so that
`scorebridge --help` stays fast and a data command never imports torch.
"""

from __future__ import annotations

import importlib
import logging
import sys

from .errors import ScorebridgeError

__all__ = ["COMMANDS", "main", "job_parser", "check_config_cli"]

# command name -> (module, function, one-line help); the function takes argv (list[str]).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "era5-fetch": ("scorebridge.data.era5.cli", "fetch_cli", "download (cds) or generate (synthetic) raw ERA5 netCDF"),
    "era5-ingest": (
        "scorebridge.data.era5.cli",
        "ingest_cli",
        "normalise ERA5 files/stores into the zarr data contract",
    ),
    "igra-fetch": (
        "scorebridge.data.igra.cli",
        "fetch_cli",
        "download (http) or generate (synthetic) IGRA v2 station files",
    ),
    "igra-ingest": (
        "scorebridge.data.igra.cli",
        "ingest_cli",
        "parse IGRA v2 station files into the zarr data contract",
    ),
    "igra-collocate": (
        "scorebridge.data.igra.cli",
        "collocate_cli",
        "soundings inside an ERA5 grid, matched to its times",
    ),
    "cells-simulate": (
        "scorebridge.data.cells.cli",
        "simulate_cli",
        "simulate a snapshot time course (LV, repressilator, OU)",
    ),
    "cells-ingest": (
        "scorebridge.data.cells.cli",
        "ingest_cli",
        "read h5ad/npy/npz/csv snapshots into the zarr data contract",
    ),
    "tracking-init": ("scorebridge.tracking.cli", "init_cli", "create the MLflow store and experiments once"),
    "tracking-sync": (
        "scorebridge.tracking.cli",
        "sync_cli",
        "replay what a job could not log to MLflow (pending files)",
    ),
    "metrics-table": (
        "scorebridge.plots",
        "metrics_table_cli",
        "render a metrics.json as an HTML table for the report",
    ),
    "check-config": (
        "scorebridge.cli",
        "check_config_cli",
        "check config files as the workflow does (schema, names, rules), naming file and line",
    ),
    "sr-train": ("scorebridge.sr.cli", "train_cli", "train the score-based prior"),
    "sr-sample": ("scorebridge.sr.cli", "sample_cli", "posterior-sample super-resolved ensembles"),
    "sr-evaluate": ("scorebridge.sr.cli", "evaluate_cli", "score samples and baselines; figures; MLflow"),
    "bridge-fit": (
        "scorebridge.bridge.cli",
        "fit_cli",
        "fit the multi-marginal Schrödinger bridge with reference refinement",
    ),
    "bridge-evaluate": (
        "scorebridge.bridge.cli",
        "evaluate_cli",
        "leave-one-out evaluation against baselines; figures; MLflow",
    ),
}


def job_parser(
    command: str, description: str | None = None, *, spec: bool = True, experiment_default: str | None = None
):
    """An argparse parser for `scorebridge <command>` with the arguments every job shares:
    `--spec` (the rule's validated config entry as JSON), `--experiment` (its name; optional
    when `experiment_default` is given) and `--experiments` (the MLflow experiments map from
    tracking-init; omitted: untracked)."""
    import argparse

    p = argparse.ArgumentParser(prog=f"scorebridge {command}", description=description)
    if spec:
        p.add_argument("--spec", required=True, help="the config entry as JSON (passed by the rule)")
        if experiment_default is None:
            p.add_argument("--experiment", required=True, help="the experiment (or dataset) name")
        else:
            p.add_argument(
                "--experiment",
                default=experiment_default,
                help=f"the experiment (or dataset) name (default {experiment_default})",
            )
        p.add_argument("--experiments", default=None, help="experiments.json from tracking-init (omit: no MLflow run)")
    return p


def check_config_cli(argv: list[str]) -> int:
    """`scorebridge check-config FILE...`: the files merged as `snakemake --configfile FILE...
    --replace-workflow-config` merges them, validated as the workflow validates its config
    (schema, names of other entries, rules across keys); errors name the file and line.
    Snakemake itself reads `--configfile` files before the workflow runs and does not say
    where a malformed one is wrong: `make run`, `make dry-run` and `make report` run this first."""
    import argparse

    from .config import load_configs

    p = argparse.ArgumentParser(prog="scorebridge check-config", description=check_config_cli.__doc__)
    p.add_argument("files", nargs="+", help="YAML config files, lowest precedence first")
    a = p.parse_args(argv)
    config = load_configs(a.files)
    counts = ", ".join(f"{len(config[s])} {s}" for s in ("era5", "igra", "cells", "sr", "bridge"))
    print(f"{' + '.join(a.files)}: valid ({counts})")
    return 0


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: scorebridge <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`scorebridge <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from . import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"scorebridge: unknown command '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    try:
        fn = getattr(importlib.import_module(module), func)
        rc = fn(rest)
    except ScorebridgeError as err:
        print(f"scorebridge {name}: error: {err}", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
