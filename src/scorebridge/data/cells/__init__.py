"""Snapshot time courses into the cells zarr contract.

- `options`: the typed options of one `cells:` entry;
- `read`: h5ad, npy, npz and csv inputs as flat snapshots (with `preprocess` for
  expression matrices: normalise, log1p, highly variable genes, PCA; `columns`: which
  CSV columns are features, refusing doubtful ones, and the file line of each row);
- `store`: the zarr contract: write it (`ingest`), read it back (`read_cells`);
- `simulate`: seeded simulators of systems with known dynamics;
- `cli`: `scorebridge cells-simulate` and `scorebridge cells-ingest`.
"""
