"""IGRA v2 parser speed: scorebridge's vectorised parser vs pandas.read_fwf on one file.

Builds a multi-decade station file (~100 MB of text by default: two soundings a day
from 1950 on, 10-70 levels each, realistic profiles with missing values and flags),
written with scorebridge's IGRA writer, then times

- `scorebridge.data.igra.parse.read_igra` on the text file and on its zip (full parse:
  headers, structure check, every field validated, SI conversion, u/v);
- `pandas.read_fwf` on the same text file: the 13 data-record columns by colspecs,
  header records skipped as comments (no conversion, no validation).

Run from the repository root:

    .venv/bin/python benchmarks/igra_parse.py [--mb 100] [--repeat 3]

Writes benchmarks/out/igra_parse.json (and the generated file under benchmarks/out/).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scorebridge.data.igra.format import DATA_COLUMNS, format_data_records, format_header  # noqa: E402
from scorebridge.data.igra.parse import read_igra  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
STANDARD = np.array([1000, 925, 850, 700, 500, 400, 300, 250, 200, 150, 100, 70, 50, 30, 20, 10], float) * 100


def build(path: Path, target_mb: float, seed: int = 0) -> dict:
    """Write a station file of about `target_mb` MB: soundings at 00 and 12 UTC from 1950-01-01.

    Each sounding: a surface level, the 16 standard levels 1000..10 hPa and 0-54 random
    significant levels; heights from the standard atmosphere, a lapse-rate temperature,
    humidity and wind with noise; ~8 % of values missing (-9999) or QC-removed (-8888).
    """
    rng = np.random.default_rng(seed)
    n_snd = int(target_mb * 1e6 / (72 + 53 * 44.5))  # mean 44.5 levels of 53 bytes, 72-byte headers
    nsig = rng.integers(0, 55, n_snd)
    nlev = 1 + len(STANDARD) + nsig
    snd = np.repeat(np.arange(n_snd), nlev)
    n = len(snd)
    first = np.concatenate([[0], np.cumsum(nlev)[:-1]])
    k = np.arange(n) - first[snd]  # level number within the sounding
    # pressures: surface, standard, then significant levels; sorted top-down per sounding
    p = np.where(k == 0, rng.uniform(100500, 102500, n), rng.uniform(1000, 100000, n))
    is_std = (k >= 1) & (k <= len(STANDARD))
    p[is_std] = STANDARD[k[is_std] - 1]
    p = np.round(p)
    order = np.lexsort((-p, snd))
    p, is_std = p[order], is_std[order]
    z = 44330.8 * (1 - (p / 101325.0) ** 0.190263) + rng.normal(0, 15, n)
    temp = np.where(z < 11000, 15 - 6.5e-3 * z, -56.5) + rng.normal(0, 2, n)
    rh = np.clip(90 * (p / 1e5) ** 2 + rng.normal(0, 8, n), 1, 100)
    spd = np.abs(rng.normal(5 + z / 800, 4))
    miss = rng.random((5, n)) < 0.08
    secs = (z - z[first[snd]]) / 5.0
    fields = {
        "LVLTYP1": np.where(is_std, 1, 2),
        "LVLTYP2": (k == 0).astype(int),
        "ETIME": np.where(miss[0], -9999, (secs // 60).astype(int) % 1000 * 100 + (secs % 60).astype(int)),
        "PRESS": p.astype(int),
        "PFLAG": np.where(is_std, " ", "B"),
        "GPH": np.where(miss[1], -9999, z.astype(int)),
        "ZFLAG": np.where(miss[1], " ", "B"),
        "TEMP": np.where(miss[2], -8888, np.round(temp * 10).astype(int)),
        "TFLAG": np.where(miss[2], " ", "B"),
        "RH": np.where(miss[3], -9999, np.round(rh * 10).astype(int)),
        "DPDP": np.where(miss[3], -9999, np.round(np.abs(rng.normal(50, 30, n))).astype(int)),
        "WDIR": np.where(miss[4], -9999, rng.integers(1, 361, n)),
        "WSPD": np.where(miss[4], -9999, np.round(spd * 10).astype(int)),
    }
    records = format_data_records(fields)
    times = np.datetime64("1950-01-01T00", "h") + np.arange(n_snd) * np.timedelta64(12, "h")
    with open(path, "wb") as f:
        for s, t in enumerate(times.astype(object)):
            f.write(
                format_header(
                    "ZZXUA999999",
                    t.year,
                    t.month,
                    t.day,
                    t.hour,
                    (t.hour * 100 + 2315) % 2400,
                    int(nlev[s]),
                    28.4667,
                    -80.55,
                    "ncdc-gts",
                    "ncdc-gts",
                ).encode()
                + b"\n"
            )
            f.write(records[first[s] : first[s] + nlev[s]].tobytes())
    return {
        "bytes": path.stat().st_size,
        "soundings": n_snd,
        "levels": n,
        "first": str(times[0]),
        "last": str(times[-1]),
    }


CPU: dict[str, list[float]] = {}


def best_of(fn, repeat: int, name: str) -> tuple[list[float], object]:
    """Wall-clock seconds of `repeat` calls (CPU seconds go to CPU[name]) and the last result."""
    times, out = [], None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t0)
        CPU.setdefault(name, []).append(time.process_time() - c0)
    return times, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=100.0, help="size of the generated file (MB)")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions of our parser (pandas: --repeat-pandas)")
    ap.add_argument("--repeat-pandas", type=int, default=1)
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    txt = OUT / f"ZZXUA999999-data-{args.mb:g}MB.txt"
    if not txt.exists():
        t0 = time.perf_counter()
        meta = build(txt, args.mb)
        print(
            f"built {txt} ({meta['bytes'] / 1e6:.1f} MB, {meta['soundings']} soundings, {meta['levels']} levels) in {time.perf_counter() - t0:.1f} s"
        )
        (txt.with_suffix(".json")).write_text(json.dumps(meta))
    meta = json.loads(txt.with_suffix(".json").read_text())
    zpath = txt.with_name(txt.name + ".zip")
    if not zpath.exists():
        with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.write(txt, txt.name)

    ours, data = best_of(lambda: read_igra(txt), args.repeat, "scorebridge")
    assert data.n_obs == meta["levels"] and data.n_soundings == meta["soundings"]
    ours_zip, _ = best_of(lambda: read_igra(zpath), args.repeat, "scorebridge_zip")
    print(f"scorebridge read_igra: {min(ours):.2f} s (text), {min(ours_zip):.2f} s (zip); {data.n_obs} levels")

    import pandas as pd

    colspecs = [(a - 1, b) for _, a, b in DATA_COLUMNS]
    names = [n for n, _, _ in DATA_COLUMNS]
    pandas_t, df = best_of(
        lambda: pd.read_fwf(txt, colspecs=colspecs, names=names, header=None, comment="#"), args.repeat_pandas, "pandas"
    )
    assert len(df) == meta["levels"], (len(df), meta["levels"])
    print(f"pandas.read_fwf:       {min(pandas_t):.2f} s; {len(df)} rows")
    ratio = min(pandas_t) / min(ours)
    ratio_cpu = min(CPU["pandas"]) / min(CPU["scorebridge"])
    print(f"speed-up: {ratio:.1f}x wall clock, {ratio_cpu:.1f}x CPU time")
    result = {
        "file_mb": meta["bytes"] / 1e6,
        "soundings": meta["soundings"],
        "levels": meta["levels"],
        "years": f"{meta['first']}..{meta['last']}",
        "scorebridge_s": ours,
        "scorebridge_zip_s": ours_zip,
        "pandas_read_fwf_s": pandas_t,
        "speedup": ratio,
        "cpu_s": CPU,
        "speedup_cpu": ratio_cpu,
        "throughput_mb_s": meta["bytes"] / 1e6 / min(ours),
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}",
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "median_scorebridge_s": statistics.median(ours),
    }
    (OUT / "igra_parse.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
