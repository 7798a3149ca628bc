"""Observation operators: linearity, adjointness, coarse-graining, bilinear / log-pressure points, masks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from scorebridge.errors import ConfigError, InputError
from scorebridge.sr.operators import CoarseGrain, Observation, PointObs, coarse_coords, coarse_grain
from scorebridge.sr.point_obs import build_point_obs

torch.manual_seed(0)
CHANNELS = [("t", 850.0), ("t", 500.0), ("u", 850.0), ("u", 500.0), ("t2m", None)]
LAT = np.linspace(30.0, 45.0, 8)
LON = np.linspace(-10.0, 11.0, 8)


def _points(**kw):
    base = dict(
        latitude=[33.1, 40.0, 36.0, 31.0],
        longitude=[-5.5, 2.0, 0.0, 7.0],
        pressure_pa=[70000.0, 85000.0, 60000.0, 50000.0],
        variable=["t", "u", "t", "t2m"],
        values=[1.0, 2.0, 3.0, 4.0],
        station=["A", "B", "C", "D"],
    )
    base.update(kw)
    return build_point_obs(CHANNELS, LAT, LON, **base)


def _operators():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ops = [
            CoarseGrain(2, (8, 8), pad="edge"),
            CoarseGrain(3, (8, 8), pad="edge"),
            CoarseGrain(4, (8, 8), pad="edge", channels=[0, 4]),
        ]
    op, _, _, _ = _points()
    return ops + [op, PointObs.stack([op, _points(latitude=[35.0, 40.0, 36.0, 31.0])[0]])]


@pytest.mark.parametrize("k", range(5))
def test_linear_and_adjoint(k):
    op = _operators()[k]
    B = 2
    x1, x2 = torch.randn(B, 5, 8, 8, dtype=torch.float64), torch.randn(B, 5, 8, 8, dtype=torch.float64)
    if isinstance(op, PointObs):
        op = PointObs(op.index, op.weight.double(), op.valid, op.field_shape)
    a, b = 0.7, -1.3
    assert torch.allclose(op(a * x1 + b * x2), a * op(x1) + b * op(x2), atol=1e-10)
    y = torch.randn_like(op(x1))
    lhs = (op(x1) * y).sum()
    rhs = (x1 * op.adjoint(y, x1.shape)).sum()  # <A x, y> = <x, A^T y>
    assert torch.allclose(lhs, rhs, atol=1e-10)
    # A^T is a different computation from A: check it against the explicit matrix
    eye = torch.eye(5 * 64, dtype=torch.float64).reshape(-1, 5, 8, 8)
    if not isinstance(op, PointObs) or op.index.shape[0] == 1:
        Amat = op(eye).reshape(5 * 64, -1).T
        assert torch.allclose(op.adjoint(y[:1], (1, 5, 8, 8)).flatten(), Amat.T @ y[0].flatten(), atol=1e-10)


def test_coarse_constant_is_constant_and_mean_preserved():
    x = torch.full((2, 3, 8, 12), 4.2)
    assert torch.allclose(coarse_grain(x, 4), torch.full((2, 3, 2, 3), 4.2))
    x = torch.randn(1, 1, 8, 12)
    assert torch.allclose(coarse_grain(x, 4).mean(), x.mean(), atol=1e-6)
    hand = x[0, 0, :4, 4:8].mean()
    assert torch.isclose(coarse_grain(x, 4)[0, 0, 0, 1], hand)


def test_non_dividing_factor_pads_with_warning_or_errors():
    with pytest.warns(UserWarning, match="does not divide"):
        op = CoarseGrain(3, (8, 8), pad="edge")
    x = torch.randn(1, 1, 8, 8)
    y = op(x)
    assert y.shape == (1, 1, 3, 3)
    # last coarse row: rows 6, 7, 7 (edge padding)
    hand = torch.cat([x[0, 0, 6:8, :3], x[0, 0, 7:8, :3]]).mean()
    assert torch.isclose(y[0, 0, 2, 0], hand)
    assert torch.allclose(op(torch.full((1, 1, 8, 8), 2.0)), torch.full((1, 1, 3, 3), 2.0))
    with pytest.raises(ConfigError, match="does not divide"):
        CoarseGrain(3, (8, 8), pad="error")
    assert np.allclose(coarse_coords(np.arange(8.0), 3), [1.0, 4.0, (6 + 7 + 7) / 3])


def test_point_exact_at_grid_points_and_levels():
    x = torch.randn(1, 5, 8, 8)
    op, y, kept, rep = build_point_obs(
        CHANNELS, LAT, LON, [LAT[3], LAT[5]], [LON[2], LON[7]], [85000.0, 50000.0], ["t", "u"], [0.0, 0.0]
    )
    out = op(x)[0]
    assert torch.isclose(out[0], x[0, 0, 3, 2]) and torch.isclose(out[1], x[0, 3, 5, 7])
    assert rep.n_used == 2


def test_point_bilinear_and_log_pressure():
    # a field linear in lat, lon and log(p) is reproduced exactly by bilinear + log-p interpolation
    lat_g, lon_g = np.meshgrid(LAT, LON, indexing="ij")
    x = torch.zeros(1, 5, 8, 8, dtype=torch.float64)
    for c, (v, lev) in enumerate(CHANNELS):
        lp = np.log(lev) if lev is not None else 0.0
        x[0, c] = torch.as_tensor(2.0 * lat_g - 0.5 * lon_g + 10.0 * lp)
    lat, lon, p = 36.3, 1.7, 70000.0
    op, _, _, _ = build_point_obs(CHANNELS, LAT, LON, [lat], [lon], [p], ["t"], [0.0])
    op = PointObs(op.index, op.weight.double(), op.valid, op.field_shape)
    assert op(x)[0, 0].item() == pytest.approx(2.0 * lat - 0.5 * lon + 10.0 * np.log(700.0), abs=1e-9)
    w = op.weight[0, 0]
    assert w.sum().item() == pytest.approx(1.0) and (w >= 0).all()
    # the vertical weight of 850 hPa is log(500/700)/log(500/850)
    f850 = np.log(500 / 700) / np.log(500 / 850)
    w850 = sum(float(wi) for wi, i in zip(op.weight[0, 0], op.index[0, 0]) if i // 64 == 0)
    assert w850 == pytest.approx(f850, rel=1e-6)


def test_missing_outside_and_unobservable():
    vals = [np.nan, 2.0, 3.0, 4.0]
    with pytest.warns(UserWarning, match="outside the grid"):
        op, y, kept, rep = _points(values=vals, latitude=[33.1, 80.0, 36.0, 31.0], station=["A", "FAR", "C", "D"])
    assert rep.n_missing == 1 and rep.n_outside_horizontal == 1 and rep.outside_stations == ["FAR"]
    assert list(kept) == [2, 3] and y.shape == (1, 2)
    with pytest.raises(InputError, match="FAR"):
        _points(latitude=[33.1, 80.0, 36.0, 31.0], station=["A", "FAR", "C", "D"], outside="error")
    # above the top model level: no extrapolation
    _, _, kept, rep = _points(pressure_pa=[30000.0, 85000.0, 60000.0, 50000.0])
    assert rep.n_outside_vertical == 1 and 0 not in kept
    # variables the prior does not model
    _, _, _, rep = _points(variable=["q", "u", "t", "t2m"])
    assert rep.n_unobservable == 1


def test_longitude_conventions_and_periodic_wrap():
    lon360 = np.arange(0.0, 360.0, 45.0)
    lat = np.array([-10.0, 0.0, 10.0])
    ch = [("t2m", None)]
    x = torch.randn(1, 1, 3, 8)
    op, _, kept, rep = build_point_obs(
        ch, lat, lon360, [0.0, 0.0], [-45.0, 337.5], [np.nan, np.nan], ["t2m", "t2m"], [1.0, 1.0]
    )
    assert rep.n_used == 2
    out = op(x)[0]
    assert torch.isclose(out[0], x[0, 0, 1, 7])  # -45 -> 315
    assert torch.isclose(out[1], 0.5 * (x[0, 0, 1, 7] + x[0, 0, 1, 0]))  # between 315 and 360=0


def test_stack_masks_padding_and_observation_mask():
    a = _points()[0]
    b = _points(values=[1.0, np.nan, np.nan, np.nan])[0]
    s = PointObs.stack([a, b])
    assert s.valid.shape == (2, 4) and s.valid[1].sum() == 1
    y = torch.tensor([[1.0, 2.0, 3.0, float("nan")], [1.0, 0.0, 0.0, 0.0]])
    ob = Observation("radiosondes", s, y, torch.ones(2, 4))
    assert ob.mask().tolist() == [[True, True, True, False], [True, False, False, False]]
    rep = ob.repeat_interleave(3)
    assert rep.y.shape == (6, 4) and rep.operator.index.shape[0] == 6
    x = torch.randn(6, 5, 8, 8)
    assert torch.allclose(rep.operator(x)[3], s(x[3:4].expand(2, -1, -1, -1))[1])


def test_forward_squared_is_the_variance_of_white_noise():
    torch.manual_seed(1)
    v = torch.rand(1, 5, 8, 8, dtype=torch.float64)
    eye = torch.eye(5 * 64, dtype=torch.float64).reshape(-1, 5, 8, 8)
    for op in _operators()[:4]:  # single-element operators (padding included: k = 3)
        if isinstance(op, PointObs):
            op = PointObs(op.index, op.weight.double(), op.valid, op.field_shape)
        A = op(eye).reshape(320, -1).T
        assert torch.allclose(op.forward_squared(v).reshape(-1), (A**2) @ v.flatten())
