"""Checkpoints are read without pickle: a crafted file is refused and runs nothing.

Issue 12, item 2: a `checkpoint.pt` (the SR prior) or `checkpoints/<hash>/step_*.pt`
(training resume) placed in results/ ran arbitrary code when the next rule loaded it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from scorebridge.core.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from scorebridge.errors import InputError, UnsafeFileError


class _Payload:
    """Unpickling this object creates the marker file (stands for any shell command)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mknod, (self.marker,))


def _crafted(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "scorebridge-sr-prior/1", "ema": {}, "evil": _Payload(marker)}, path)
    return path


def test_round_trip_keeps_numpy_tuples_and_tensors(tmp_path):
    state = {
        "w": torch.arange(3.0),
        "rng": ("MT", np.arange(5, dtype=np.uint32), 3),
        "losses": [0.5],
        "n": np.float32(2),
    }
    save_checkpoint(tmp_path / "a.pt", state)
    back = load_checkpoint(tmp_path / "a.pt")
    assert torch.equal(back["w"], state["w"])
    assert back["rng"][1].dtype == np.uint32 and back["rng"][1].tolist() == [0, 1, 2, 3, 4]
    assert isinstance(back["rng"], tuple) and back["n"] == 2.0


def test_saving_an_object_that_needs_pickle_fails_naming_it(tmp_path):
    with pytest.raises(TypeError, match=r"state\.bad"):
        save_checkpoint(tmp_path / "a.pt", {"bad": object()})
    assert not (tmp_path / "a.pt").exists()


def test_crafted_sr_prior_checkpoint_is_refused(tmp_path):
    from scorebridge.sr.prior import load_prior

    marker = tmp_path / "PWNED"
    path = _crafted(tmp_path / "results" / "sr" / "x" / "checkpoint.pt", marker)
    with pytest.raises(UnsafeFileError) as err:
        load_prior(path, device="cpu")
    assert str(path) in str(err.value) and "refused" in str(err.value)
    assert not marker.exists()


def test_crafted_step_checkpoint_is_refused_not_skipped(tmp_path):
    marker = tmp_path / "PWNED"
    ckdir = tmp_path / "results" / "sr" / "x" / "checkpoints" / "abc123"
    save_checkpoint(ckdir / "step_000000010.pt", {"step": 10})
    _crafted(ckdir / "step_000000020.pt", marker)
    with pytest.raises(UnsafeFileError, match="step_000000020.pt"):
        latest_checkpoint(ckdir)
    assert not marker.exists()


def test_corrupt_step_checkpoint_falls_back_to_the_previous(tmp_path):
    ckdir = tmp_path / "ck"
    save_checkpoint(ckdir / "step_000000010.pt", {"step": 10})
    (ckdir / "step_000000020.pt").write_bytes(b"not a torch file")
    path, state = latest_checkpoint(ckdir)
    assert path.name == "step_000000010.pt" and state["step"] == 10
    with pytest.raises(InputError, match="not a readable checkpoint"):
        load_checkpoint(ckdir / "step_000000020.pt")
