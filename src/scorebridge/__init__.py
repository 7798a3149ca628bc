"""scorebridge: score-based super-resolution of ERA5 with radiosondes, and multi-marginal
Schrödinger bridges for snapshot time courses, as one reproducible Snakemake workflow."""

# Load Python's own SQLite before anything else can: the eccodes wheel (cfgrib) bundles
# SQLite 3.26, and if it is loaded first, sqlite3 binds to it and MLflow's SQLite store
# fails ("malformed database schema (spans)": generated columns need SQLite >= 3.31).
import sqlite3 as _sqlite3  # noqa: F401,E402

__version__ = "0.1.0"
__all__ = ["__version__"]
