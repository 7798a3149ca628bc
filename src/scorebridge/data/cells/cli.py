"""`scorebridge cells-simulate` and `scorebridge cells-ingest`: the cells rules' commands.

`cells-simulate --spec JSON --out X.npz` runs the entry's `simulate` block;
`cells-ingest --spec JSON --out X.zarr input` reads an h5ad/npy/npz/csv input into the
cells zarr contract. `--spec` is the dataset's config entry as JSON; it becomes
`SimulateOptions` / `CellsOptions` here, once.
"""

from __future__ import annotations

import logging

import numpy as np

from ...cli import job_parser
from ...config import parse_spec
from .options import cells_options, simulate_options

__all__ = ["simulate_cli", "ingest_cli"]

log = logging.getLogger(__name__)


def simulate_cli(argv: list[str]) -> int:
    """`scorebridge cells-simulate --spec JSON --out X.npz`: the `simulate` block of a cells entry."""
    parser = job_parser("cells-simulate", "simulate a snapshot time course (seeded Euler-Maruyama)", spec=False)
    parser.add_argument(
        "--spec", required=True, help="the cells dataset's config entry as JSON (uses its `simulate` block)"
    )
    parser.add_argument("--out", required=True, help="output .npz")
    args = parser.parse_args(argv)
    spec = parse_spec(args.spec)
    # the rule passes the entry; a bare `simulate` block is read as one too
    opts = simulate_options(spec["simulate"] if "simulate" in spec else spec)
    from .simulate import simulate, write_snapshots_npz

    snaps, times, s = simulate(opts)
    truth = {k: s[k] for k in ("system", "drift", "sigma", "noise", "initial", "dt", "seed")}
    write_snapshots_npz(args.out, snaps, times, truth, s["features"])
    log.info(
        "simulated %s: %d snapshots at t=%s, %s cells, %d features -> %s",
        s["system"],
        len(snaps),
        s["times"],
        s["n_cells"],
        snaps[0].shape[1],
        args.out,
    )
    return 0


def ingest_cli(argv: list[str]) -> int:
    """`scorebridge cells-ingest --spec JSON --out X.zarr input`."""
    parser = job_parser("cells-ingest", "read h5ad/npy/npz/csv snapshots into the cells zarr contract", spec=False)
    parser.add_argument("--spec", required=True, help="the cells dataset's config entry as JSON")
    parser.add_argument("--out", required=True, help="output zarr store")
    parser.add_argument("input", help="input file (.h5ad, .npy, .npz, .csv)")
    args = parser.parse_args(argv)
    opts = cells_options(parse_spec(args.spec))
    from .store import ingest

    snaps = ingest(opts, args.input, args.out)
    uniq, counts = np.unique(snaps.time, return_counts=True)
    log.info(
        "%s: %d cells x %d features at %d times %s (cells per time %s) -> %s",
        args.input,
        snaps.X.shape[0],
        snaps.X.shape[1],
        uniq.size,
        uniq.tolist(),
        counts.tolist(),
        args.out,
    )
    return 0
