"""Where IGRA v2 station files come from: NCEI over HTTP, the user's files, or synthesis.

`fetch(spec, inputs, out)` fills one directory with station files (`{ID}-data.txt.zip`),
the station list (`igra2-station-list.txt`) and a `manifest.json` (what was fetched or
made, with sha256 digests); `scorebridge igra-ingest` then reads that directory with
the real parser.

- `http`: `{base_url}/data/data-por/{ID}-data.txt.zip` (product `derived`:
  `{base_url}/derived/derived-por/{ID}-drvd.txt.zip`) for stations chosen by id or by
  area and years through the station list; retries with back-off on connection errors
  and 5xx answers; an id that is not in the list or a file the server does not have is
  an error naming it.
- `local`: the user's `.txt` / `.zip` files, copied.
- `synthetic`: soundings sampled from an ERA5 zarr (the data contract) at seeded random
  station positions inside its grid and written in exact IGRA v2 text (`synthetic`).
"""

from __future__ import annotations

import datetime as _dt
import difflib
import logging
import os
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from ...errors import ConfigError, InputError
from ...io import atomic_path, write_json
from ...progress import progress
from ...provenance import package_versions, sha256_file
from .filters import in_area
from .format import STATION_LIST_NAME
from .options import HttpOptions, IgraOptions, igra_options
from .parse import parse_station_list
from .synthetic import fetch_synthetic

__all__ = [
    "fetch",
    "station_list_url",
    "fetch_station_list",
    "select_stations",
    "data_url",
    "http_download",
    "fetch_http",
    "fetch_local",
    "FETCHERS",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- http


def http_download(url: str, dest: Path, http: HttpOptions, *, session=None, desc: str | None = None) -> Path:
    """Download `url` to `dest` atomically, retrying connection errors and 5xx answers
    (`http.retries` times, waiting `http.backoff_s` doubled each time; `http.timeout_s`
    per request).

    A 4xx answer (404: no such file) is an InputError naming the URL, not retried.
    """
    import requests

    retries, timeout_s, backoff_s = http.retries, http.timeout_s, http.backoff_s
    session = session or requests.Session()
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            wait = backoff_s * 2 ** (attempt - 1)
            log.warning("retrying %s in %.1f s (%s)", url, wait, last)
            time.sleep(wait)
        try:
            with session.get(url, stream=True, timeout=timeout_s) as resp:
                if 400 <= resp.status_code < 500:
                    what = "not found" if resp.status_code in (404, 410) else resp.reason
                    raise InputError(f"HTTP {resp.status_code} {what}", url)
                if resp.status_code >= 500:
                    last = f"HTTP {resp.status_code} {resp.reason}"
                    continue
                total = int(resp.headers.get("content-length") or 0) or None
                with atomic_path(dest) as tmp, open(tmp, "wb") as f:
                    bar = progress(total=total, unit="B", unit_scale=True, desc=desc or dest.name, leave=False)
                    for block in resp.iter_content(1 << 16):
                        f.write(block)
                        bar.update(len(block))
                    bar.close()
                    got = f.tell()
                    if total is not None and got != total:
                        raise requests.exceptions.ChunkedEncodingError(f"got {got} of {total} bytes")
                return dest
        except (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ) as err:
            last = f"{type(err).__name__}: {err}"
    raise InputError(f"download failed after {retries + 1} attempts: {last}", url)


def station_list_url(opts: IgraOptions) -> str:
    """`station_list`, else the station list under `base_url`."""
    return opts.station_list or f"{opts.base_url.rstrip('/')}/doc/{STATION_LIST_NAME}"


def fetch_station_list(opts: IgraOptions, dest: Path, session=None) -> pd.DataFrame:
    """Copy or download the station list named by the entry to `dest`; parse it."""
    src = station_list_url(opts)
    if src.startswith(("http://", "https://")):
        http_download(src, dest, opts.http, session=session, desc=STATION_LIST_NAME)
    else:
        path = Path(os.path.expanduser(src))
        if not path.is_file():
            raise ConfigError("station_list", f"file '{src}' not found")
        with atomic_path(dest) as tmp:
            shutil.copyfile(path, tmp)
    return parse_station_list(dest.read_bytes(), src)


def select_stations(stations: pd.DataFrame, spec: IgraOptions | Mapping, source: str = "station list") -> list[str]:
    """Station ids of the entry `spec` (options, or a dict the schema fills): the listed
    `stations` (checked against the list), else those inside `area` whose record
    overlaps `years`."""
    opts = igra_options(spec)
    ids = list(opts.stations)
    known = set(stations["id"])
    if ids:
        unknown = [s for s in ids if s not in known]
        if unknown:
            hints = {s: difflib.get_close_matches(s, known, n=3, cutoff=0.7) for s in unknown}
            hint = "; ".join(f"{s}: did you mean {h}?" for s, h in hints.items() if h)
            raise InputError(
                f"unknown IGRA station id(s) {unknown}: not in the station list ({len(known)} stations)"
                + (f"; {hint}" if hint else ""),
                source,
            )
        return ids
    area, years = opts.area, opts.years
    if area is None and years is None:
        raise ConfigError("stations", "source 'http' needs `stations` (ids) or `area`/`years` to choose stations")
    keep = np.ones(len(stations), bool)
    if area is not None:
        keep &= in_area(stations["latitude"].to_numpy(), stations["longitude"].to_numpy(), area, key="area")
    if years is not None:
        first, last = years
        if first > last:
            raise ConfigError("years", f"first year {first} is after last year {last}")
        keep &= (stations["first_year"].to_numpy() <= last) & (stations["last_year"].to_numpy() >= first)
    chosen = stations["id"][keep].tolist()
    if not chosen:
        raise InputError(f"no station in the station list lies inside area {area} with data in years {years}", source)
    return chosen


def data_url(base_url: str, station: str, product: str | None = "data") -> str:
    """The station's full-period file: sounding data, or derived parameters when
    `product` is 'derived'."""
    if product == "derived":
        return f"{base_url.rstrip('/')}/derived/derived-por/{station}-drvd.txt.zip"
    return f"{base_url.rstrip('/')}/data/data-por/{station}-data.txt.zip"


def fetch_http(opts: IgraOptions, out: Path) -> dict:
    """Fill `out` with the chosen stations' zipped files and the station list."""
    import requests

    session = requests.Session()
    out.mkdir(parents=True, exist_ok=True)
    stations = fetch_station_list(opts, out / STATION_LIST_NAME, session)
    ids = select_stations(stations, opts, station_list_url(opts))
    log.info("downloading %d IGRA station file(s) from %s", len(ids), opts.base_url)
    files = {}
    for sid in progress(ids, desc="IGRA stations", unit="station"):
        url = data_url(opts.base_url, sid, opts.product)
        dest = out / url.rsplit("/", 1)[1]
        http_download(url, dest, opts.http, session=session, desc=sid)
        if not zipfile.is_zipfile(dest):
            raise InputError("the server's answer is not a zip archive (an error page?)", url)
        files[dest.name] = {"url": url, "sha256": sha256_file(dest), "bytes": dest.stat().st_size}
    return {
        "source": "http",
        "base_url": opts.base_url,
        "station_list": station_list_url(opts),
        "stations": ids,
        "files": files,
    }


# --------------------------------------------------------------------------- local


def fetch_local(opts: IgraOptions, inputs: list[str], out: Path) -> dict:
    """Copy the user's station files (and station list, if given) into `out`."""
    if not inputs:
        raise ConfigError("files", "source 'local' needs at least one IGRA file")
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in inputs:
        p = Path(name)
        if not p.is_file():
            raise InputError("file not found", p)
        dest = out / p.name
        if dest.exists():
            raise InputError(f"two inputs share the file name '{p.name}'", p)
        shutil.copyfile(p, dest)
        files[p.name] = {"path": str(p), "sha256": sha256_file(dest)}
    if opts.station_list:
        fetch_station_list(opts, out / STATION_LIST_NAME)
    return {"source": "local", "files": files}


FETCHERS: dict[str, Callable[..., dict[str, Any]]] = {
    "http": lambda opts, inputs, out: fetch_http(opts, out),
    "local": fetch_local,
    "synthetic": fetch_synthetic,
}


def fetch(spec: IgraOptions | Mapping, inputs: list[str], out: str | os.PathLike) -> dict:
    """Fill the directory `out` (atomically) with the station files of the entry `spec`
    (options, or a dict the schema fills) and their `manifest.json`; return the manifest.

    `inputs`: the ERA5 zarr to sample (synthetic), the user's files (local), none (http).
    """
    opts = igra_options(spec)
    if opts.source == "synthetic" and opts.product == "derived":
        raise ConfigError("product", "the synthetic source writes sounding data files; product must be data or null")
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        manifest = FETCHERS[opts.source](opts, list(inputs), tmp)
        manifest["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        manifest["package_versions"] = package_versions()
        write_json(tmp / "manifest.json", manifest)
    log.info("IGRA %s: %d file(s) -> %s", opts.source, len(manifest["files"]), out)
    return manifest
