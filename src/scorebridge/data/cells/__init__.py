"""Snapshot time courses into the cells zarr contract.

- `options`: the typed options of one `cells:` entry;
- `read`: h5ad, npy, npz and csv inputs as flat snapshots (`snapshots`: the flat
  snapshots and the checks the readers share; `h5ad`: AnnData files read
  lazily, the expression matrix in row blocks; `preprocess` for expression matrices, as
  scanpy's: normalise, log1p, highly variable genes, PCA (`pca`: out of core); `columns`:
  which CSV columns are features, refusing doubtful ones, and the file line of each row);
- `store`: the zarr contract: write it (`ingest`), read it back (`read_cells`);
- `simulate`: seeded simulators of systems with known dynamics;
- `cli`: `scorebridge cells-simulate` and `scorebridge cells-ingest`.
"""
