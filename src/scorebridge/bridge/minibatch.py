"""Mini-batch couplings: the static SB of 10,000-100,000 cells per snapshot in bounded memory.

Mini-batch OT (Fatras et al. 2020; the same idea as OT-CFM's minibatches): the sources of
an interval are split by a seeded random permutation into G = ⌈max(n, m) / B⌉ batches of
about n / G cells, the targets likewise, and batch b's sources are coupled with batch b's
targets by the entropic OT of the bridge (cost −log p_ref, ε = 1, uniform marginals). The
coupling is the sum of the G batch plans, each weighted by its share of the sources, so
every cell keeps its mass (rows exactly 1/n, columns 1/m up to the ±1 rounding of batch
sizes). It is what `max_cells: B` does, repeated over a partition, so no cell is dropped.

Memory: a batch plan is B × B; batches are solved a group at a time (`GROUP_BYTES` per
group on the CPU), and only the duals (n + m numbers), the partition and the refit's row
statistics (`refit.RowStats`) are kept. Plan rows are recomputed from the duals when the
bridge samples (`sample`), and the small-noise limit (`predict.coupling: ot`) is the exact
OT plan of each batch (POT's network simplex on B × B), kept sparse.

The partition is fixed for a fit (seeded), so every outer iteration warm-starts each batch
from its previous duals. On a GPU (`select_device`) the batch costs and the Sinkhorn
iterations run there; the results come back to the CPU in float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .costs import IntervalCost
from .reference import DTYPE
from .refit import RowStats
from .sinkhorn import sinkhorn_batched

__all__ = ["MinibatchCoupling", "partition", "minibatch_bridge", "GROUP_BYTES"]

# bytes of batch kernels iterated together: on a CPU a group that stays in cache (its
# vector x matrix products run several times faster than from memory); on a GPU, large
GROUP_BYTES = {"cpu": 4 * 2**20, "cuda": 2 * 2**30}
KERNEL_DTYPE = torch.float32  # the Sinkhorn kernel and scalings (the duals stay float64)


def partition(n: int, groups: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of range(n) into `groups` batches of ⌊n/G⌋ or ⌈n/G⌉ indices:
    (index (G, ⌈n/G⌉) padded with 0, mask (G, ⌈n/G⌉) of the real entries)."""
    perm = torch.randperm(n, generator=gen)
    size = -(-n // groups)
    idx = torch.zeros(groups * size, dtype=torch.long)
    mask = torch.zeros(groups * size, dtype=torch.bool)
    # position p of the permutation goes to batch p % G, slot p // G
    slots = torch.arange(n)
    flat = (slots % groups) * size + slots // groups
    idx[flat] = perm
    mask[flat] = True
    return idx.view(groups, size), mask.view(groups, size)


@dataclass
class MinibatchCoupling:
    """The static SB of one interval as G batch plans (see the module docstring).

    rows/cols: (G, r) / (G, c) source / target indices per batch (padding masked by
    rmask/cmask); duals: (f (n,), g (m,)) with batch plan P^b_ij = exp(f_i + g_j − C_ij) on
    its own rows and columns; weights: (G,) batch masses (rows of batch b / n).
    """

    rows: torch.Tensor
    cols: torch.Tensor
    rmask: torch.Tensor
    cmask: torch.Tensor
    duals: tuple[torch.Tensor, torch.Tensor]
    objective: float
    iterations: int
    stats: RowStats | None = None
    cost: IntervalCost | None = field(default=None, repr=False)
    _ot: tuple | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.duals[0].shape[0], self.duals[1].shape[0]

    @property
    def weights(self) -> torch.Tensor:
        return self.rmask.sum(1).to(DTYPE) / self.shape[0]

    def statistics(self, y: torch.Tensor, per_row: bool = True) -> RowStats:
        if self.stats is None or (per_row and self.stats.S is None):
            raise ValueError(
                "this mini-batch coupling kept no row statistics" + (" per row" if self.stats is not None else "")
            )
        return self.stats

    # -- sampling ----------------------------------------------------------------------
    def _batch_of(self, forward: bool) -> tuple[torch.Tensor, torch.Tensor]:
        idx, mask = (self.rows, self.rmask) if forward else (self.cols, self.cmask)
        n = self.shape[0] if forward else self.shape[1]
        batch = torch.empty(n, dtype=torch.long)
        batch[idx[mask]] = torch.arange(idx.shape[0])[:, None].expand_as(idx)[mask]
        return batch

    def sample(
        self, idx: torch.Tensor, forward: bool, gen: torch.Generator | None, cost: IntervalCost, mode: str = "plan"
    ) -> torch.Tensor:
        """A partner for each of `idx` (sources when `forward`, else targets), drawn from the
        plan's conditional row (or column): the batch plan (`mode` 'plan') or its exact-OT
        small-noise limit ('ot')."""
        if mode == "ot":
            return self._sample_sparse(idx, forward, gen, cost)
        batch = self._batch_of(forward)[idx]
        out = torch.empty_like(idx)
        f, g = self.duals
        for b in torch.unique(batch).tolist():
            sel = torch.nonzero(batch == b)[:, 0]
            who = idx[sel]
            if forward:
                cols = self.cols[b][self.cmask[b]]
                logits = g[cols][None, :] - cost.block(who, cols)
                pick = cols
            else:
                rows = self.rows[b][self.rmask[b]]
                logits = (f[rows][:, None] - cost.block(rows, who)).T
                pick = rows
            p = torch.softmax(logits, dim=1)
            out[sel] = pick[torch.multinomial(p, 1, generator=gen)[:, 0]]
        return out

    def _sparse_ot(self, cost: IntervalCost) -> tuple:
        """Exact OT plan of every batch (network simplex), as COO (i, j, mass), cached."""
        if self._ot is None:
            import ot

            Is, Js, Vs = [], [], []
            for b in range(self.rows.shape[0]):
                rows, cols = self.rows[b][self.rmask[b]], self.cols[b][self.cmask[b]]
                C = cost.block(rows, cols).cpu().numpy()
                P = ot.emd(
                    np.full(len(rows), 1.0 / len(rows)), np.full(len(cols), 1.0 / len(cols)), C, numItermax=10_000_000
                )
                i, j = np.nonzero(P > 0)
                Is.append(rows[torch.as_tensor(i)])
                Js.append(cols[torch.as_tensor(j)])
                Vs.append(torch.as_tensor(P[i, j]) * float(self.weights[b]))
            self._ot = (torch.cat(Is), torch.cat(Js), torch.cat(Vs).to(DTYPE))
        return self._ot

    def _sample_sparse(self, idx, forward, gen, cost):
        rows, cols, V = self._sparse_ot(cost)
        key, other = (rows, cols) if forward else (cols, rows)
        n = self.shape[0] if forward else self.shape[1]
        order = torch.argsort(key, stable=True)  # entries grouped by row (column)
        key, other, V = key[order], other[order], V[order]
        cum = torch.cumsum(V, 0)
        start = torch.searchsorted(key, torch.arange(n))
        end = torch.searchsorted(key, torch.arange(n), right=True)
        lo = torch.where(start > 0, cum[(start - 1).clamp_min(0)], torch.zeros((), dtype=DTYPE))
        hi = cum[end - 1]
        u = torch.rand(idx.shape[0], generator=gen, dtype=DTYPE)
        target = lo[idx] + u * (hi[idx] - lo[idx])
        pos = torch.searchsorted(cum, target, right=True)
        pos = torch.minimum(torch.maximum(pos, start[idx]), end[idx] - 1)
        return other[pos]


def _group_size(r: int, c: int, device: torch.device) -> int:
    per_batch = r * c * KERNEL_DTYPE.itemsize * 2  # the kernel and its transpose
    return max(1, GROUP_BYTES.get(device.type, GROUP_BYTES["cuda"]) // per_batch)


def minibatch_bridge(
    cost: IntervalCost,
    batch_size: int,
    gen: torch.Generator,
    tol: float,
    warm: MinibatchCoupling | None = None,
    per_row: bool = False,
    device: torch.device | str = "cpu",
    max_iter: int = 20000,
) -> MinibatchCoupling:
    """The mini-batch static SB of one interval (ε = 1, uniform marginals) and its row
    statistics for the refit (per-row spreads only when `per_row`).

    `warm`: the previous outer iteration's coupling of this interval: its partition is kept
    and its duals start the iterations; otherwise `gen` draws a new partition.
    """
    device = torch.device(device)
    n, m = cost.n, cost.m
    if warm is not None and warm.shape == (n, m):
        rows, cols, rmask, cmask = warm.rows, warm.cols, warm.rmask, warm.cmask
        f0, g0 = warm.duals
    else:
        G = max(1, min(-(-max(n, m) // int(batch_size)), n, m))
        rows, rmask = partition(n, G, gen)
        cols, cmask = partition(m, G, gen)
        f0 = g0 = None
    G, d = rows.shape[0], cost.dim
    dev_cost = cost.to(device) if device.type != "cpu" else cost
    f = torch.zeros(n, dtype=DTYPE) if f0 is None else f0.clone()
    g = torch.zeros(m, dtype=DTYPE) if g0 is None else g0.clone()
    ybar = torch.zeros(n, d, dtype=DTYPE)
    w = torch.zeros(n, dtype=DTYPE)
    S = torch.zeros(n, d, d, dtype=DTYPE) if per_row else None
    Sbar = torch.zeros(d, d, dtype=DTYPE)
    objective, iterations = 0.0, 0
    y_all = dev_cost.y
    step = _group_size(rows.shape[1], cols.shape[1], device)
    for start in range(0, G, step):
        sl = slice(start, min(G, start + step))
        r, c, rm, cm = rows[sl], cols[sl], rmask[sl], cmask[sl]
        a = rm.to(DTYPE) / rm.sum(1, keepdim=True)
        b = cm.to(DTYPE) / cm.sum(1, keepdim=True)
        wb = rm.sum(1).to(DTYPE) / n  # batch masses
        r_d, c_d = r.to(device), c.to(device)
        C = dev_cost.blocks(r_d, c_d)
        init = None if f0 is None else (f0[r].to(device), g0[c].to(device))
        fb, gb, its = sinkhorn_batched(
            C, a.to(device), b.to(device), 1.0, tol, max_iter, init, kernel_dtype=KERNEL_DTYPE
        )
        iterations = max(iterations, its)
        P = (
            torch.exp(fb[:, :, None] + gb[:, None, :] - C)
            * (a > 0).to(device)[:, :, None]
            * (b > 0).to(device)[:, None, :]
        )
        logP = torch.where(P > 0, P.clamp_min(1e-300).log(), 0.0)
        wb_d = wb.to(device)
        objective += float((wb_d * (P * (C + logP)).sum((1, 2))).sum() + (wb_d * wb_d.log()).sum())
        f[r[rm]] = fb.cpu().to(DTYPE)[rm]
        g[c[cm]] = gb.cpu().to(DTYPE)[cm]
        # refit statistics of these batches (global plan = wb · P^b)
        y = y_all[c_d]  # (g, c, d)
        rs = P.sum(2)  # (g, r)
        yb = torch.bmm(P, y) / rs.clamp_min(1e-300)[:, :, None]
        cs = P.sum(1)  # (g, c)
        Sb = torch.einsum("gj,gjk,gjl->gkl", cs, y, y) - torch.einsum("gi,gik,gil->gkl", rs, yb, yb)
        Sbar += (wb_d[:, None, None] * Sb).sum(0).cpu().to(DTYPE)
        w[r[rm]] = (wb_d[:, None] * rs).cpu().to(DTYPE)[rm]
        ybar[r[rm]] = yb.cpu().to(DTYPE)[rm]
        if per_row:
            yy = (y[:, :, :, None] * y[:, :, None, :]).reshape(*y.shape[:2], d * d)
            second = torch.bmm(P, yy).view(*P.shape[:2], d, d) / rs.clamp_min(1e-300)[:, :, None, None]
            Si = second - yb[:, :, :, None] * yb[:, :, None, :]
            S[r[rm]] = (0.5 * (Si + Si.transpose(2, 3))).cpu().to(DTYPE)[rm]
    stats = RowStats(w, ybar, 0.5 * (Sbar + Sbar.T), S)
    return MinibatchCoupling(rows, cols, rmask, cmask, (f, g), objective, iterations, stats, cost)
