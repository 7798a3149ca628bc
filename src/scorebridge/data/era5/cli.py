"""`scorebridge era5-fetch` and `scorebridge era5-ingest`: the ERA5 rules' commands.

`era5-fetch --spec JSON --out raw.nc` writes the raw netCDF of a `cds` or `synthetic`
dataset (the CDS layout either way); `era5-ingest --spec JSON --out data.zarr [files...]`
normalises the inputs into the zarr data contract. `--spec` is the dataset's config
entry as JSON; it becomes `Era5Options` here, once.
"""

from __future__ import annotations

import dataclasses

from ...cli import job_parser
from ...config import parse_spec
from .options import era5_options

__all__ = ["fetch_cli", "ingest_cli"]


def fetch_cli(argv: list[str]) -> int:
    parser = job_parser("era5-fetch", "download (cds) or generate (synthetic) raw ERA5 netCDF", spec=False)
    parser.add_argument("--spec", required=True, help="the dataset's config entry as JSON")
    parser.add_argument("--out", required=True, help="netCDF file to write")
    args = parser.parse_args(argv)
    from .fetch import fetch

    fetch(era5_options(parse_spec(args.spec)), args.out)
    return 0


def ingest_cli(argv: list[str]) -> int:
    parser = job_parser("era5-ingest", "normalise ERA5 files or stores into the zarr data contract", spec=False)
    parser.add_argument("--spec", required=True, help="the dataset's config entry as JSON")
    parser.add_argument("--out", required=True, help="zarr store to write")
    parser.add_argument("--threads", type=int, default=None, help="dask threads when the spec's stream.workers is null")
    parser.add_argument("files", nargs="*", help="input netCDF/GRIB files (local, cds, synthetic)")
    args = parser.parse_args(argv)
    opts = era5_options(parse_spec(args.spec))
    if args.threads and not opts.stream.workers:
        opts = dataclasses.replace(opts, stream=dataclasses.replace(opts.stream, workers=args.threads))
    from .ingest import ingest

    ingest(opts, args.out, args.files)
    return 0
