"""`scorebridge igra-fetch`, `igra-ingest` and `igra-collocate`: the IGRA rules' commands.

`igra-fetch --spec JSON --out DIR [inputs...]` fills a directory with station files
(http download, the user's files, or synthetic soundings sampled from an ERA5 zarr);
`igra-ingest --spec JSON --out X.zarr files-or-dirs...` parses and filters them into the
IGRA zarr contract; `igra-collocate --spec JSON --igra X.zarr --era5 Y.zarr --out Z.zarr`
keeps the soundings inside the ERA5 grid, matched to its times. `--spec` is the
dataset's config entry as JSON; it becomes `IgraOptions` (`CollocateOptions` for its
`collocate` block) here, once.
"""

from __future__ import annotations

from ...cli import job_parser
from ...config import parse_spec
from .options import collocate_options, igra_options

__all__ = ["fetch_cli", "ingest_cli", "collocate_cli"]


def _parser(command: str, description: str):
    p = job_parser(command, description, spec=False)
    p.add_argument("--spec", required=True, help="the dataset's config entry as JSON (see config/README.md, igra)")
    return p


def fetch_cli(argv: list[str]) -> int:
    """`scorebridge igra-fetch --spec JSON --out DIR [inputs...]`."""
    p = _parser("igra-fetch", "download (http), copy (local) or synthesise (synthetic) IGRA v2 station files")
    p.add_argument("--out", required=True, help="output path")
    p.add_argument("inputs", nargs="*", help="synthetic: the ERA5 zarr to sample; local: the user's files")
    args = p.parse_args(argv)
    opts = igra_options(parse_spec(args.spec))
    from .sources import fetch

    fetch(opts, list(args.inputs), args.out)
    return 0


def ingest_cli(argv: list[str]) -> int:
    """`scorebridge igra-ingest --spec JSON --out X.zarr files-or-dirs...`."""
    p = _parser("igra-ingest", "parse IGRA v2 station files into the zarr data contract")
    p.add_argument("--out", required=True, help="output path")
    p.add_argument("inputs", nargs="+", help="IGRA station files (.txt, .zip) or directories of them")
    args = p.parse_args(argv)
    opts = igra_options(parse_spec(args.spec))
    from .ingest import ingest

    ingest(opts, args.inputs, args.out)
    return 0


def collocate_cli(argv: list[str]) -> int:
    """`scorebridge igra-collocate --spec JSON --igra X.zarr --era5 Y.zarr --out Z.zarr`."""
    p = job_parser("igra-collocate", "soundings inside an ERA5 grid, matched to its times", spec=False)
    p.add_argument(
        "--spec", required=True, help="the IGRA dataset's config entry as JSON (uses collocate.tolerance_hours)"
    )
    p.add_argument("--igra", required=True, help="IGRA zarr (scorebridge igra-ingest)")
    p.add_argument("--era5", required=True, help="ERA5 zarr (data contract)")
    p.add_argument("--out", required=True, help="collocated obs zarr to write")
    args = p.parse_args(argv)
    spec = parse_spec(args.spec)
    # the rule passes only the `collocate` block; an entry without one collocates by the defaults
    opts = collocate_options(spec["collocate"] if "collocate" in spec else {})
    from .collocate import collocate_stores

    collocate_stores(opts, args.igra, args.era5, args.out)
    return 0
