"""IGRA v2 radiosondes into the zarr data contract, and their collocation with ERA5.

- `options`: the typed options of one `igra:` entry;
- `format`: the fixed-width format, the parsed table (`IgraData`) and its writers;
  `fixed`: the vectorised record and field decoding both products share;
  `parse`: the parser of sounding-data station files and the station list;
  `derived`: the derived-parameter product (`*-drvd.txt`): format, writer, parser;
- `sources`: where station files come from (NCEI over HTTP, the user's files, or
  `synthetic`: soundings sampled from an ERA5 zarr);
- `filters`: station, date, area and pressure filters; `dedup`: soundings given twice;
  `ingest`: the IGRA zarr;
- `collocate`: the soundings inside an ERA5 grid, matched to its times;
- `cli`: `scorebridge igra-fetch`, `igra-ingest` and `igra-collocate`.
"""
