"""Cells ingest at scale: a backed h5ad of T time points x N cells x G genes (sparse counts)
through `scorebridge cells-ingest` (normalise, log1p, HVG, PCA, read in row blocks), its
peak resident memory against the dense matrix's size, and scanpy's in-memory pipeline on
the same file (time, peak RSS, and the largest difference of the principal components).

    .venv/bin/python benchmarks/cells_ingest_scale.py            # 5 x 20,000 x 2,000, 5 %
    .venv/bin/python benchmarks/cells_ingest_scale.py --skip-scanpy --cells-per-time 5000

Each run is its own process; peak memory is the resident set of the process tree polled
every 50 ms (psutil). Writes benchmarks/out/cells_ingest_scale.json.
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

OUT = Path(__file__).resolve().parent / "out"

SCANPY = """
import sys, time, numpy as np, anndata, scanpy as sc
path, out, n_top, n_pcs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ad = anndata.read_h5ad(path)
ad.X = ad.X.astype(np.float64)
sc.pp.normalize_total(ad, target_sum=1e4)
sc.pp.log1p(ad)
sc.pp.highly_variable_genes(ad, flavor="seurat", n_top_genes=n_top, n_bins=20)
sc.pp.pca(ad, n_comps=n_pcs, svd_solver="arpack", mask_var="highly_variable", dtype="float64")
np.save(out, ad.obsm["X_pca"])
np.save(out.replace(".npy", "_hvg.npy"), np.asarray(ad.var_names[ad.var["highly_variable"]], dtype=str))
"""


def write_counts(path: Path, times: int, per_time: int, genes: int, density: float, seed: int = 0) -> int:
    """An h5ad of sparse CSR counts (float32; genes with log-normal rates, ~`density` stored
    values), `time` in obs; written one time point at a time. Returns the stored values."""
    import anndata
    import h5py
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    weight = np.exp(rng.normal(0, 1.0, genes))
    weight /= weight.sum()
    parts = []
    for k in range(times):  # each time point a shifted gene profile, so the PCs carry time
        w = weight * np.exp(0.3 * k * rng.normal(size=genes) * (rng.random(genes) < 0.1))
        w /= w.sum()
        nnz_row = rng.binomial(genes, density, per_time)
        rows = np.repeat(np.arange(per_time), nnz_row)
        cols = np.concatenate([rng.choice(genes, m, replace=False, p=w) for m in nnz_row])
        vals = (1 + rng.geometric(0.4, rows.size)).astype(np.float32)
        parts.append(sp.csr_matrix((vals, (rows, cols)), shape=(per_time, genes)))
    X = sp.vstack(parts, format="csr")
    obs = pd.DataFrame(
        {"time": np.repeat(np.arange(times, dtype=float), per_time)}, index=[f"c{i}" for i in range(times * per_time)]
    )
    anndata.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(genes)])).write_h5ad(path)
    with h5py.File(path, "r") as f:
        assert f["X"].attrs["encoding-type"] == "csr_matrix"
    return int(X.nnz)


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
            peak = max(peak, sum(p.memory_info().rss for p in [root, *root.children(recursive=True)] if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(interval)
    out = proc.stdout.read()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-4000:]}")
    return {
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "peak_rss_mb": peak / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--times", type=int, default=5)
    ap.add_argument("--cells-per-time", type=int, default=20000)
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--density", type=float, default=0.05)
    ap.add_argument("--n-top-genes", type=int, default=1000, help="preprocess.n_top_genes")
    ap.add_argument("--n-pcs", type=int, default=30, help="preprocess.n_pcs")
    ap.add_argument("--block-mb", type=float, default=64.0, help="preprocess.block_mb")
    ap.add_argument("--skip-scanpy", action="store_true", help="only scorebridge's ingest")
    ap.add_argument("--tmpdir", default="/tmp", help="where the h5ad and the store are written (deleted after)")
    args = ap.parse_args(argv)

    OUT.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="cells-scale-", dir=args.tmpdir))
    n, g = args.times * args.cells_per_time, args.genes
    result: dict = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg(),
        "shape": [n, g],
        "dense_float64_mb": n * g * 8 / 1e6,
    }
    try:
        t0 = time.perf_counter()
        path = folder / "counts.h5ad"
        nnz = write_counts(path, args.times, args.cells_per_time, g, args.density)
        result.update(
            nnz=nnz, density=nnz / (n * g), h5ad_mb=path.stat().st_size / 1e6, generate_s=time.perf_counter() - t0
        )
        print(
            f"h5ad: {args.times} x {args.cells_per_time} cells x {g} genes, {nnz:,} stored values ({nnz / (n * g):.1%}), {result['h5ad_mb']:.0f} MB; dense float64 {result['dense_float64_mb']:.0f} MB",
            flush=True,
        )

        spec = {
            "source": "h5ad",
            "preprocess": {"n_top_genes": args.n_top_genes, "n_pcs": args.n_pcs, "block_mb": args.block_mb},
        }
        env = {"SCOREBRIDGE_NO_PROGRESS": "1"}
        idle = measure(
            [sys.executable, "-c", "import scorebridge.data.cells.store, anndata, xarray, zarr, scipy.sparse, sklearn"],
            env,
        )
        result["imports_only"] = idle
        m = measure(
            [
                str(Path(sys.executable).parent / "scorebridge"),
                "cells-ingest",
                "--spec",
                json.dumps(spec),
                "--out",
                str(folder / "cells.zarr"),
                str(path),
            ],
            env,
        )
        result["scorebridge"] = m
        print(
            f"scorebridge cells-ingest: {m['wall_s']:.1f} s (CPU {m['cpu_s']:.1f} s), peak RSS {m['peak_rss_mb']:.0f} MB (imports alone {idle['peak_rss_mb']:.0f} MB)",
            flush=True,
        )

        if not args.skip_scanpy:
            import xarray as xr

            m = measure(
                [
                    sys.executable,
                    "-c",
                    SCANPY,
                    str(path),
                    str(folder / "scanpy.npy"),
                    str(args.n_top_genes),
                    str(args.n_pcs),
                ],
                env,
            )
            ds = xr.open_zarr(folder / "cells.zarr", consolidated=False)
            order = np.argsort([int(c[1:]) for c in ds["cell"].values])
            ours = ds["X"].values.astype(np.float64)[order]
            ref = np.load(folder / "scanpy.npy")
            ref = ref * np.sign((ref * ours).sum(axis=0))
            rel = np.abs(ref - ours).max(axis=0) / np.abs(ref).max(axis=0)
            hvg = set(np.load(folder / "scanpy_hvg.npy").tolist())
            m.update(hvg_same=sorted(hvg) == sorted(str(v) for v in ds["gene"].values), pc_max_rel_diff=rel.tolist())
            result["scanpy_in_memory"] = m
            print(
                f"scanpy in memory: {m['wall_s']:.1f} s (CPU {m['cpu_s']:.1f} s), peak RSS {m['peak_rss_mb']:.0f} MB; HVG identical: {m['hvg_same']}; "
                f"PCs (float32 store vs scanpy float64) max |diff| / max |PC|: {max(rel[:10]):.1e} (PC1-10), {max(rel):.1e} (all {args.n_pcs})",
                flush=True,
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    (OUT / "cells_ingest_scale.json").write_text(json.dumps(result, indent=2))
    print(f"-> {OUT / 'cells_ingest_scale.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
