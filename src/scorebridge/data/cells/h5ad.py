"""AnnData .h5ad files read lazily: the expression matrix stays on disk and is read in row blocks.

`open_h5ad` opens the file with h5py and reads each element with anndata's own readers
(`anndata.io.read_elem`) only when asked: `obs`, the var names, one `obsm` embedding, one
`uns` value. The expression matrix (`X` or a layer) becomes a `RowBlocks`: a dense HDF5
dataset or a CSR group (data, indices, indptr: the layout anndata's backed mode slices)
read a block of rows at a time, never whole. (`anndata.read_h5ad(path, backed="r")`
leaves only `X` on disk and reads every layer into memory, so it is not used.)

A CSC matrix cannot be read by rows without reading all of it for every block: it is read
once, whole but sparse (memory ~ 12 bytes per stored value), with a warning. Files written
by anndata < 0.7 (no `encoding-type` attributes) are read whole with `anndata.read_h5ad`,
with a warning, as before.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import numpy as np

from ...errors import InputError

__all__ = ["RowBlocks", "H5ad", "open_h5ad"]

log = logging.getLogger(__name__)


class RowBlocks:
    """A (cells, genes) matrix read a block of rows at a time, as float64 (dense ndarray or
    scipy CSR): an in-memory array (dense or sparse) or an h5ad element left on disk."""

    def __init__(self, source, columns=None, name: str = "matrix"):
        import scipy.sparse as sp

        if sp.issparse(source):
            source = sp.csr_matrix(source)
            self.sparse, self._indptr = True, np.asarray(source.indptr)
        elif isinstance(source, _CSRGroup):
            self.sparse, self._indptr = True, None
        elif hasattr(source, "shape") and hasattr(source, "dtype"):  # ndarray or h5py dataset
            self.sparse, self._indptr = False, None
        else:
            source = np.asarray(source)
            self.sparse, self._indptr = False, None
        if len(source.shape) != 2:
            raise ValueError(f"{name} has shape {tuple(source.shape)}; expected (cells, genes)")
        self.source, self.name = source, name
        self.columns = None if columns is None else np.asarray(columns, dtype=np.int64)
        n, g = source.shape
        self.shape = (int(n), int(g) if self.columns is None else int(self.columns.size))
        self._width = int(g)  # columns read from the source per row

    def select(self, columns) -> "RowBlocks":
        """The same rows, only `columns` (positions in this matrix), in their order."""
        cols = np.asarray(columns, dtype=np.int64)
        out = RowBlocks.__new__(RowBlocks)
        out.__dict__.update(self.__dict__)
        out.columns = cols if self.columns is None else self.columns[cols]
        out.shape = (self.shape[0], int(cols.size))
        return out

    def indptr(self) -> np.ndarray | None:
        """Row pointers of a sparse source (read once from the file: (cells + 1) integers)."""
        if self.sparse and self._indptr is None:
            self._indptr = self.source.indptr()
        return self._indptr

    def ranges(self, max_bytes: float, dense_cols: int = 0) -> list[tuple[int, int]]:
        """Row ranges whose block takes about `max_bytes` at most: 16 bytes per stored value
        of a sparse source (8 per value read for a dense one), plus 8 per value of the
        `dense_cols` columns the caller makes dense. At least one row per block."""
        n = self.shape[0]
        if n == 0:
            return []
        if self.sparse:
            ptr = self.indptr().astype(np.float64)
            cost = 16.0 * (ptr - ptr[0]) + 8.0 * dense_cols * np.arange(n + 1)
            starts = [0]
            while starts[-1] < n:
                a = starts[-1]
                b = int(np.searchsorted(cost, cost[a] + max_bytes, side="right")) - 1
                starts.append(min(n, max(a + 1, b)))
            return list(zip(starts[:-1], starts[1:]))
        per_row = 8.0 * (self._width + dense_cols)
        rows = max(1, int(max_bytes // per_row))
        return [(a, min(n, a + rows)) for a in range(0, n, rows)]

    def read(self, a: int, b: int):
        """Rows a:b as float64: scipy CSR for a sparse source, else an ndarray."""
        import scipy.sparse as sp

        block = self.source.rows(a, b, self.indptr()) if isinstance(self.source, _CSRGroup) else self.source[a:b]
        if self.sparse:
            block = sp.csr_matrix(block, dtype=np.float64)
        else:
            block = np.asarray(block, dtype=np.float64)
        if self.columns is not None:
            block = block[:, self.columns]
        return block

    def blocks(self, max_bytes: float, dense_cols: int = 0) -> Iterator[tuple[int, int, object]]:
        """(start, stop, rows start:stop) for row ranges of about `max_bytes` (`ranges`)."""
        for a, b in self.ranges(max_bytes, dense_cols):
            yield a, b, self.read(a, b)


class _CSRGroup:
    """A CSR matrix in an h5ad group (data, indices, indptr), rows read by slicing the
    datasets (anndata's sparse_dataset does the same, but checks its version per slice)."""

    def __init__(self, group, shape):
        self.group, self.shape = group, tuple(int(v) for v in shape)
        self.dtype = group["data"].dtype

    def indptr(self) -> np.ndarray:
        return np.asarray(self.group["indptr"][...], dtype=np.int64)

    def rows(self, a: int, b: int, indptr: np.ndarray):
        import scipy.sparse as sp

        lo, hi = int(indptr[a]), int(indptr[b])
        data, indices = self.group["data"][lo:hi], self.group["indices"][lo:hi]
        return sp.csr_matrix((data, indices, indptr[a : b + 1] - lo), shape=(b - a, self.shape[1]))


def _decode(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel()]


class H5ad:
    """The parts of an .h5ad file the cells reader needs, each read when asked."""

    def __init__(self, path, handle=None, adata=None):
        self.path, self._f, self._adata = Path(path), handle, adata
        self._obs = None

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> "H5ad":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read_elem(self, elem, what: str):
        from anndata.io import read_elem

        try:
            return read_elem(elem)
        except Exception as err:  # anndata raises many kinds on a malformed element
            raise InputError(f"cannot read {what} of the AnnData file: {err}", self.path) from None

    @property
    def obs(self):
        """The obs table (pandas DataFrame, index = cell names)."""
        if self._obs is None:
            if self._adata is not None:
                self._obs = self._adata.obs
            else:
                if "obs" not in self._f:
                    raise InputError("no obs table: not an AnnData file?", self.path)
                self._obs = self._read_elem(self._f["obs"], "obs")
        return self._obs

    @property
    def var_names(self) -> list[str]:
        if self._adata is not None:
            return [str(g) for g in self._adata.var_names]
        if "var" not in self._f:
            raise InputError("no var table: not an AnnData file?", self.path)
        var = self._f["var"]
        index = var.attrs.get("_index", "_index")
        if index in var:
            return _decode(self._read_elem(var[index], "the var names"))
        return [str(g) for g in self._read_elem(var, "var").index]

    def _keys(self, group: str) -> list[str]:
        if self._adata is not None:
            return list(getattr(self._adata, group).keys())
        return list(self._f[group].keys()) if group in self._f else []

    def obsm_keys(self) -> list[str]:
        return self._keys("obsm")

    def layer_keys(self) -> list[str]:
        return self._keys("layers")

    def obsm(self, key: str) -> np.ndarray:
        """The embedding obsm[key] as a float64 array (a small matrix, read whole)."""
        import scipy.sparse as sp

        val = (
            self._adata.obsm[key]
            if self._adata is not None
            else self._read_elem(self._f["obsm"][key], f"obsm['{key}']")
        )
        val = val.toarray() if sp.issparse(val) else val
        try:
            return np.asarray(val, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise InputError(f"obsm['{key}'] is not numeric: {err}", self.path) from None

    def uns_text(self, key: str) -> str | None:
        """uns[key] as text, None when absent."""
        if self._adata is not None:
            return str(self._adata.uns[key]) if key in self._adata.uns else None
        if "uns" not in self._f or key not in self._f["uns"]:
            return None
        val = self._read_elem(self._f["uns"][key], f"uns['{key}']")
        return val.decode() if isinstance(val, bytes) else str(val)

    def matrix(self, layer: str | None) -> RowBlocks:
        """X (layer None) or layers[layer] as `RowBlocks`, left on disk when it can be read by rows."""
        name = f"layers['{layer}']" if layer is not None else "X"
        if self._adata is not None:
            M = self._adata.layers[layer] if layer is not None else self._adata.X
            if M is None:
                raise InputError("no expression matrix X; set obsm_key or layer", self.path)
            return RowBlocks(M, name=name)
        import h5py

        if layer is None and "X" not in self._f:
            raise InputError("no expression matrix X; set obsm_key or layer", self.path)
        elem = self._f["layers"][layer] if layer is not None else self._f["X"]
        if isinstance(elem, h5py.Dataset):
            if elem.ndim != 2 or not np.issubdtype(elem.dtype, np.number):
                raise InputError(
                    f"{name} has shape {elem.shape} and dtype {elem.dtype}; expected a numeric (cells, genes) matrix",
                    self.path,
                )
            return RowBlocks(elem, name=name)
        kind = _decode([elem.attrs.get("encoding-type", "")])[0]
        if kind not in ("csr_matrix", "csc_matrix"):
            raise InputError(
                f"{name} is stored as '{kind}'; expected a dense array or a csr/csc sparse matrix", self.path
            )
        if kind == "csc_matrix":
            from anndata.io import sparse_dataset

            log.warning(
                "%s: %s is stored by columns (CSC): read whole (sparse, %d stored values) as rows cannot be read in blocks; save it as CSR to read it lazily",
                self.path,
                name,
                elem["data"].shape[0],
            )
            return RowBlocks(sparse_dataset(elem).to_memory(), name=name)
        return RowBlocks(_CSRGroup(elem, elem.attrs["shape"]), name=name)


def open_h5ad(path) -> H5ad:
    """Open an .h5ad file lazily (errors name the file)."""
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"cannot read as AnnData .h5ad: {err}", path) from None
    if "encoding-type" in f.attrs:
        return H5ad(path, handle=f)
    f.close()  # written by anndata < 0.7: read whole the old way
    import anndata

    try:
        adata = anndata.read_h5ad(path)
    except (OSError, KeyError, ValueError) as err:
        raise InputError(f"cannot read as AnnData .h5ad: {err}", path) from None
    log.warning(
        "%s: no encoding-type attributes (anndata < 0.7): read whole into memory; save it with a current anndata to read it lazily",
        path,
    )
    return H5ad(path, adata=adata)
