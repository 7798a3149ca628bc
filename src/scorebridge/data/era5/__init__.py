"""ERA5 into the zarr data contract.

- `options`: the typed options of one `era5:` entry;
- `fetch`: the raw netCDF of a `cds` (`cds`: requests and retrieval) or `synthetic`
  (`synthetic`: a seeded 2-D turbulence simulation, its streamfunctions from `dynamics`) dataset;
- `inputs`: open every input lazily and normalise its layout (`layout`) to the contract;
- `ingest`: stream the normalised data into zarr (`stream`) with statistics and provenance;
- `cli`: `scorebridge era5-fetch` and `scorebridge era5-ingest`.
"""
