"""Streaming ERA5 ingestion: peak memory and throughput on a large generated archive.

Writes an archive of new-CDS-layout netCDF files of incompressible float32 noise
(default 5 GB, in a temporary folder that is deleted afterwards), then ingests it

  1. with `scorebridge era5-ingest` (dask blocks written by region, statistics in the
     same pass, input sha256 in a background thread), and
  2. with a plain `xarray.open_mfdataset(files).to_zarr(out)` of the same files,

each in its own process, polling the resident memory of the process tree (psutil,
every 50 ms). Figures go to benchmarks/out/era5_streaming.json.

    python benchmarks/era5_streaming.py                 # 5 GB, both methods
    python benchmarks/era5_streaming.py --size-gb 1 --files 8
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
NLAT, NLON, LEVELS, VARIABLES = 181, 360, [1000.0, 850.0, 500.0, 250.0], ("t", "u")


def write_archive(folder: Path, size_gb: float, nfiles: int, seed: int = 0) -> list[Path]:
    """`nfiles` netCDF files (valid_time, pressure_level, latitude 90..-90, longitude 0..359)
    holding `size_gb` GB of float32 noise in total, written time step block by block."""
    import netCDF4

    per_step = len(VARIABLES) * len(LEVELS) * NLAT * NLON * 4
    nsteps = max(nfiles, int(size_gb * 1e9 // per_step))
    per_file = int(np.ceil(nsteps / nfiles))
    rng = np.random.default_rng(seed)
    files, t0 = [], 0
    for i in range(nfiles):
        n = min(per_file, nsteps - t0)
        if n <= 0:
            break
        path = folder / f"era5_{i:04d}.nc"
        with netCDF4.Dataset(path, "w", format="NETCDF4") as nc:
            nc.createDimension("valid_time", n)
            nc.createDimension("pressure_level", len(LEVELS))
            nc.createDimension("latitude", NLAT)
            nc.createDimension("longitude", NLON)
            vt = nc.createVariable("valid_time", "i8", ("valid_time",))
            vt.units, vt.calendar = "seconds since 1970-01-01", "proleptic_gregorian"
            vt[:] = (np.datetime64("2000-01-01T00", "s").astype(np.int64) + 3600 * (t0 + np.arange(n))).astype(np.int64)
            pl = nc.createVariable("pressure_level", "f8", ("pressure_level",))
            pl.units = "hPa"
            pl[:] = LEVELS
            la = nc.createVariable("latitude", "f8", ("latitude",))
            la.units = "degrees_north"
            la[:] = np.linspace(90, -90, NLAT)
            lo = nc.createVariable("longitude", "f8", ("longitude",))
            lo.units = "degrees_east"
            lo[:] = np.arange(NLON, dtype=np.float64)
            for name in VARIABLES:
                var = nc.createVariable(
                    name,
                    "f4",
                    ("valid_time", "pressure_level", "latitude", "longitude"),
                    chunksizes=(1, len(LEVELS), NLAT, NLON),
                )
                var.units = "K" if name == "t" else "m s**-1"
                for s in range(0, n, 16):
                    e = min(n, s + 16)
                    var[s:e] = rng.random((e - s, len(LEVELS), NLAT, NLON), dtype=np.float32)
        files.append(path)
        t0 += n
    return files


def measure(cmd: list[str], env: dict | None = None, interval: float = 0.05) -> dict:
    """Run `cmd`; wall time, CPU time (user + sys) and peak RSS of the process and its children."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
            rss = sum(p.memory_info().rss for p in procs if p.is_running())
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(interval)
    out = proc.stdout.read()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-4000:]}")
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak / 1e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=5.0, help="archive size (GB of float32 data)")
    ap.add_argument("--files", type=int, default=20, help="number of netCDF files")
    ap.add_argument("--block-mb", type=float, default=256.0, help="stream.block_mb of the ingestion")
    ap.add_argument("--chunk-time", type=int, default=8, help="chunks.time of the store")
    ap.add_argument("--workers", type=int, default=None, help="dask threads (default: one per core)")
    ap.add_argument("--skip-baseline", action="store_true", help="only the streaming ingestion")
    ap.add_argument("--tmpdir", default="/tmp", help="where the archive and stores are written (deleted after)")
    args = ap.parse_args(argv)

    OUT.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="era5-streaming-", dir=args.tmpdir))
    result: dict = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg(),
    }
    try:
        t0 = time.perf_counter()
        files = write_archive(folder, args.size_gb, args.files)
        nbytes = sum(f.stat().st_size for f in files)
        result.update(
            archive_gb=nbytes / 1e9,
            files=len(files),
            generate_s=time.perf_counter() - t0,
            grid=f"{len(VARIABLES)} vars x {len(LEVELS)} levels x {NLAT}x{NLON}",
        )
        print(
            f"archive: {len(files)} files, {nbytes / 1e9:.2f} GB, written in {result['generate_s']:.0f} s", flush=True
        )

        spec = {
            "source": "local",
            "variables": list(VARIABLES),
            "levels": LEVELS,
            "hours": None,
            "chunks": {"time": args.chunk_time},
            "stream": {"block_mb": args.block_mb, "workers": args.workers},
        }
        scorebridge = str(Path(sys.executable).parent / "scorebridge")
        env = {"SCOREBRIDGE_NO_PROGRESS": "1"}
        m = measure(
            [
                scorebridge,
                "era5-ingest",
                "--spec",
                json.dumps(spec),
                "--out",
                str(folder / "stream.zarr"),
                *map(str, files),
            ],
            env,
        )
        m["throughput_mb_s"] = nbytes / 1e6 / m["wall_s"]
        result["scorebridge"] = m
        print(
            f"scorebridge era5-ingest: {m['wall_s']:.1f} s (CPU {m['cpu_s']:.1f} s), {m['throughput_mb_s']:.0f} MB/s, peak RSS {m['peak_rss_mb']:.0f} MB",
            flush=True,
        )
        shutil.rmtree(folder / "stream.zarr", ignore_errors=True)

        if not args.skip_baseline:
            code = "import sys, xarray as xr; xr.open_mfdataset(sys.argv[2:]).to_zarr(sys.argv[1])"
            m = measure([sys.executable, "-c", code, str(folder / "plain.zarr"), *map(str, files)])
            m["throughput_mb_s"] = nbytes / 1e6 / m["wall_s"]
            result["open_mfdataset_to_zarr"] = m
            print(
                f"xr.open_mfdataset(...).to_zarr(...): {m['wall_s']:.1f} s (CPU {m['cpu_s']:.1f} s), {m['throughput_mb_s']:.0f} MB/s, peak RSS {m['peak_rss_mb']:.0f} MB",
                flush=True,
            )
        result["load_avg_end"] = os.getloadavg()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    (OUT / "era5_streaming.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
