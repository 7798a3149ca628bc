"""Data stages: raw sources into the zarr data contracts the models read.

- `era5/`: ERA5 fields (CDS, ARCO, local files, a synthetic turbulence source) -> zarr;
- `igra/`: IGRA v2 radiosondes (NCEI over HTTP, local files, synthetic soundings) -> zarr,
  and their collocation with an ERA5 grid;
- `cells/`: snapshot time courses (h5ad, npy, npz, csv, built-in simulators) -> zarr.

Each sub-package has an `options` module (typed options of its config entry, built with
`scorebridge.options.build`, so the schema is the only place a default is written) and a
`cli` module (the `scorebridge <command>` entry points the workflow's rules call).
Entry points take those options; a plain dict is validated and filled by the schema
first (`scorebridge.data.entry.entry_options`), as the command line does.
"""
