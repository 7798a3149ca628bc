"""`model.pt`: a fitted bridge as tensors and JSON, read back without unpickling code.

The file is a `torch.save` of a dict holding only tensors, lists of tensors and strings:
the snapshots, plans (or a minibatch coupling's partition), Sinkhorn duals and reference
state as tensors, everything else (the model options, the spec with the σ used, times,
history, extra metadata) in one JSON string. It is read with `torch.load(..., weights_only=True)`, which refuses any pickled
object other than those; a `model.pt` that needs more (an older format, or a crafted file
placed in results/) is refused with `UnsafeFileError` naming the file, and runs nothing
(`scorebridge.core.checkpoint.safe_load`, shared with the training checkpoints).
"""

from __future__ import annotations

import json

import torch

from .. import options as options_mod
from ..core.checkpoint import safe_load
from ..errors import ConfigError, InputError
from .fit import FitResult
from .minibatch import MinibatchCoupling
from .options import ModelOptions, as_section
from .reference import DTYPE, make_reference
from .sb import Coupling, PiecewiseBridge

__all__ = ["FORMAT", "save_model", "load_model"]

FORMAT = "scorebridge.bridge/2"


def save_model(result: FitResult, path, extra: dict | None = None) -> None:
    """Write the fitted bridge (snapshots, times, plans, reference state, options, history) to
    `path`; `extra`: JSON-serialisable metadata stored beside it (returned by `load_model`)."""
    from ..io import atomic_path

    b = result.bridge
    meta = {
        **(extra or {}),
        "options": as_section(result.options),
        "spec": result.spec,
        "dim": b.dim,
        "times": b.times,
        "objectives": [c.objective for c in b.couplings],
        "history": result.history,
        "converged": result.converged,
        "seconds": result.seconds,
    }
    obj = {
        "format": FORMAT,
        "metadata": json.dumps(meta),
        "snapshots": [x.detach().clone() for x in b.snapshots],
        # dense plans; a minibatch coupling keeps its partition instead (and an empty plan)
        "plans": [
            c.plan.detach().clone() if isinstance(c, Coupling) else torch.zeros(0, dtype=DTYPE) for c in b.couplings
        ],
        "minibatch": [[] if isinstance(c, Coupling) else [c.rows, c.cols, c.rmask, c.cmask] for c in b.couplings],
        "duals": [[c.duals[0].detach().clone(), c.duals[1].detach().clone()] for c in b.couplings],
        "reference_state": {k: v.detach().clone() for k, v in b.reference.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _read(path) -> dict:
    obj = safe_load(path, "cpu", what="bridge model")  # weights_only: refuses pickled objects
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or not isinstance(obj.get("metadata"), str):
        raise InputError(f"not a scorebridge bridge model (format '{FORMAT}' expected)", path)
    return obj


def load_model(path) -> tuple[FitResult, dict]:
    """Read what `save_model` wrote; returns (FitResult, the metadata, extra keys included)."""
    obj = _read(path)
    try:
        meta = json.loads(obj["metadata"])
        model = options_mod.build(ModelOptions, meta["options"], where="model")
        spec = meta["spec"]
        dim = int(meta["dim"])
        sigma = spec["reference"]["sigma"]["init"]
        reference = make_reference(model.reference, dim, key="model.reference", sigma=sigma)
        reference.load_state_dict(obj["reference_state"])
        X = [torch.as_tensor(x, dtype=DTYPE) for x in obj["snapshots"]]
        parts = obj.get("minibatch") or [[] for _ in obj["plans"]]
        couplings = [
            MinibatchCoupling(*mb, (torch.as_tensor(f), torch.as_tensor(g)), float(o), 0)
            if mb
            else Coupling(torch.as_tensor(p, dtype=DTYPE), (torch.as_tensor(f), torch.as_tensor(g)), float(o), 0)
            for p, (f, g), o, mb in zip(obj["plans"], obj["duals"], meta["objectives"], parts)
        ]
    except (KeyError, TypeError, ValueError, RuntimeError, ConfigError) as err:
        raise InputError(f"a damaged bridge model ({type(err).__name__}: {err})", path) from None
    bridge = PiecewiseBridge(X, meta["times"], couplings, reference, int(model.substeps))
    return FitResult(bridge, meta["history"], bool(meta["converged"]), float(meta["seconds"]), spec, model), meta
