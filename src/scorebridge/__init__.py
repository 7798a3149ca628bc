"""scorebridge: score-based super-resolution of ERA5 with radiosondes, and multi-marginal
Schrödinger bridges for snapshot time courses, as one reproducible Snakemake workflow."""

__version__ = "0.1.0"
__all__ = ["__version__"]
