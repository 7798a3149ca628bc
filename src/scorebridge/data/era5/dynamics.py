"""The non-dimensional streamfunctions behind the synthetic ERA5 source
(:mod:`scorebridge.data.era5.synthetic`, which dresses them as pressure-level weather):
:func:`simulate_turbulence`, forced 2-D turbulence (dynamics "turbulence": the barotropic
vorticity equation of that module's docstring), and :func:`stochastic_streamfunction`,
Ornstein-Uhlenbeck Fourier coefficients with about its spectrum and lagged correlations
(dynamics "stochastic"); :func:`energy_spectrum` measures the k^-3 spectrum of both.
Everything is seeded and deterministic.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import scipy.fft as _fft

__all__ = ["simulate_turbulence", "stochastic_streamfunction", "energy_spectrum"]


def _wavenumbers(ny: int, nx: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer wavenumbers (ky, kx) for rfft2 on a 2*pi periodic domain."""
    ky = np.fft.fftfreq(ny, 1.0 / ny)[:, None]
    kx = np.fft.rfftfreq(nx, 1.0 / nx)[None, :]
    return ky, kx


def simulate_turbulence(
    ny: int,
    nx: int,
    nsteps: int,
    dt_out: float,
    *,
    seed: int,
    nmodes: int = 2,
    k_force: float | None = None,
    drag: float = 0.01,
    advect: float = 0.6,
    spinup: float = 5.0,
    cfl: float = 0.8,
    hyper: float = 1.0,
) -> np.ndarray:
    """Streamfunctions psi of `nmodes` independent forced 2-D turbulence runs.

    Returns float64 (nsteps, nmodes, ny, nx) sampled every `dt_out` (non-dimensional
    time; the domain is [0, 2*pi)^2 and the RMS velocity is about 1) after `spinup`.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 20240607]))
    ky, kx = _wavenumbers(ny, nx)
    k2 = kx**2 + ky**2
    k = np.sqrt(k2)
    kmax = min(ny, nx) / 2.0
    k2_inv = np.where(k2 > 0, 1.0 / np.where(k2 > 0, k2, 1.0), 0.0)
    dealias = (np.abs(kx) < 2.0 / 3.0 * (nx / 2.0)) & (np.abs(ky) < 2.0 / 3.0 * (ny / 2.0))
    kf = k_force if k_force is not None else max(2.5, kmax / 5.0)
    ring = (k >= kf - 1.0) & (k <= kf + 1.0)
    # hyperdiffusion nu k^8 damps the highest resolved wavenumber at rate `hyper` per unit time
    nu = hyper / (2.0 / 3.0 * kmax) ** 8
    linear = -(drag + nu * k2**4) - 1j * advect * kx  # integrating factor exponent

    # initial state: random phases, E(k) ~ k^-3 above kf (flat-ish below), RMS velocity 1
    spectrum = np.where(k > 0, (k / kf) ** 2 / (1.0 + (k / kf) ** 5), 0.0)  # E(k) shape
    amp = np.sqrt(spectrum * k)  # shell energy E(k) ~ pi k |zeta_k|^2 / k^2
    phase = rng.uniform(0.0, 2.0 * np.pi, size=(nmodes, *k.shape))
    zeta_h = amp * np.exp(1j * phase) * dealias
    zeta_h[:, 0, 0] = 0.0
    zeta_h /= np.sqrt(_kinetic_energy(zeta_h, k2_inv, ny, nx))[:, None, None]

    ik = np.stack([-1j * ky * np.ones_like(kx), 1j * kx * np.ones_like(ky)])  # d/dy, d/dx

    def tendency(zh: np.ndarray) -> np.ndarray:
        """-J(psi, zeta) = -(u zeta_x + v zeta_y), u = -psi_y, v = psi_x (one batched FFT)."""
        psi_h = -zh * k2_inv
        grads = _fft.irfft2(
            np.stack([ik[0] * psi_h, ik[1] * psi_h, ik[1] * zh, -ik[0] * zh]), s=(ny, nx)
        )  # u, v, zeta_x, zeta_y  (ik[0] = -i ky so -ik[0] = i ky)
        return -_fft.rfft2(grads[0] * grads[2] + grads[1] * grads[3]) * dealias

    dx = 2.0 * np.pi / max(ny, nx)
    # forcing: a random vorticity increment on the ring, scaled to inject energy eps*dt per
    # step (white in time, so the mean injection is independent of the state); with
    # drag-dominated energy loss the steady state has eps = 2 mu E, E = 0.5 (RMS velocity 1).
    eps = drag

    def forcing(dt: float) -> np.ndarray:
        noise = rng.standard_normal((2, nmodes, *k.shape))
        fh = (noise[0] + 1j * noise[1]) * ring
        e = _kinetic_energy(fh, k2_inv, ny, nx)
        return fh * np.sqrt(eps * dt / np.maximum(e, 1e-300))[:, None, None]

    def advance(zh: np.ndarray, interval: float) -> np.ndarray:
        """Integrate over `interval` with IFRK4 (Cox and Matthews 2002), steps sized by CFL."""
        psi_h = -zh * k2_inv
        u, v = _fft.irfft2(np.stack([ik[0] * psi_h, ik[1] * psi_h]), s=(ny, nx))
        umax = float(np.sqrt(np.max(u**2 + v**2))) + advect + 1e-6
        nsub = max(1, int(np.ceil(interval / (cfl * dx / umax))))
        dt = interval / nsub
        e_half = np.exp(linear * dt / 2.0)
        e_full = e_half**2
        for _ in range(nsub):
            a = tendency(zh)
            b = tendency(e_half * (zh + 0.5 * dt * a))
            c = tendency(e_half * zh + 0.5 * dt * b)
            d = tendency(e_full * zh + dt * e_half * c)
            zh = e_full * zh + dt / 6.0 * (e_full * a + 2.0 * e_half * (b + c) + d) + forcing(dt)
            zh[:, 0, 0] = 0.0
        return zh

    nspin = max(1, int(np.ceil(spinup / dt_out)))
    for _ in range(nspin):
        zeta_h = advance(zeta_h, spinup / nspin)
    out = np.empty((nsteps, nmodes, ny, nx))
    for i in range(nsteps):
        out[i] = _fft.irfft2(-zeta_h * k2_inv, s=(ny, nx))
        if i + 1 < nsteps:
            zeta_h = advance(zeta_h, dt_out)
    return out


def _kinetic_energy(zeta_h: np.ndarray, k2_inv: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """Domain-mean kinetic energy 0.5 <u^2 + v^2> per mode from rfft2 vorticity (Parseval:
    0.5/N^2 sum |zeta_k|^2 / k^2, the half-spectrum columns counted twice)."""
    weight = np.full(k2_inv.shape, 2.0)
    weight[:, 0] = 1.0
    if nx % 2 == 0:
        weight[:, -1] = 1.0
    return 0.5 * (weight * np.abs(zeta_h) ** 2 * k2_inv).sum(axis=(-2, -1)) / (ny * nx) ** 2


def energy_spectrum(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic kinetic-energy spectrum E(k), k = 1..min(ny, nx)/2, of fields (..., ny, nx),
    averaged over leading axes (shell sums of 0.5 |u_k|^2 + 0.5 |v_k|^2)."""
    ny, nx = u.shape[-2:]
    uh = np.fft.fft2(u - u.mean(axis=(-2, -1), keepdims=True)) / (ny * nx)
    vh = np.fft.fft2(v - v.mean(axis=(-2, -1), keepdims=True)) / (ny * nx)
    e = 0.5 * (np.abs(uh) ** 2 + np.abs(vh) ** 2)
    e = e.reshape(-1, ny, nx).mean(axis=0)
    ky = np.fft.fftfreq(ny, 1.0 / ny)[:, None]
    kx = np.fft.fftfreq(nx, 1.0 / nx)[None, :]
    shell = np.rint(np.sqrt(kx**2 + ky**2)).astype(int)
    kmax = min(ny, nx) // 2
    ks = np.arange(1, kmax + 1)
    return ks, np.array([e[shell == kk].sum() for kk in ks])


def stochastic_streamfunction(
    ny: int,
    nx: int,
    nsteps: int,
    dt_out: float,
    *,
    seed: int,
    block: int,
    nmodes: int = 2,
    k_peak: float = 1.5,
    advect: float = 0.6,
    rate: float = 0.25,
) -> Iterator[np.ndarray]:
    """Streamfunctions (n, nmodes, ny, nx) float64 in consecutive blocks of at most `block`
    steps: each vorticity Fourier coefficient an Ornstein-Uhlenbeck process about zero
    with a stationary kinetic-energy spectrum E(k) ~ (k/k0)^2 / (1 + (k/k0)^5) (k^-3 above
    the peak k0 = `k_peak`, near the domain scale where the turbulence's inverse cascade
    piles its energy), decorrelating at `rate` per unit time (at (k/k0)^(2/3) x `rate`
    below k0), advected by the mean flow `advect` (a phase rotation). The defaults give
    about the spectrum and the lagged correlations of :func:`simulate_turbulence` at
    32^2 and 64^2 (lag-one correlation of the winds 0.90 against 0.91-0.93 at 6-hourly
    steps). Gaussian and linear, so without the turbulence's coherent vortices, but a few
    FFTs per step at any size. Seeded and deterministic; the blocks do not change the result.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 20240607, 1]))
    ky, kx = _wavenumbers(ny, nx)
    k2 = kx**2 + ky**2
    k = np.sqrt(k2)
    k2_inv = np.where(k2 > 0, 1.0 / np.where(k2 > 0, k2, 1.0), 0.0)
    dealias = (np.abs(kx) < 2.0 / 3.0 * (nx / 2.0)) & (np.abs(ky) < 2.0 / 3.0 * (ny / 2.0))
    spectrum = np.where(k > 0, (k / k_peak) ** 2 / (1.0 + (k / k_peak) ** 5), 0.0)
    amp = np.sqrt(spectrum * k) * dealias
    amp = amp / np.sqrt(_kinetic_energy(amp[None], k2_inv, ny, nx)[0] / 0.5)  # mean kinetic energy 0.5
    decay = rate * np.where(k < k_peak, (np.maximum(k, 1.0) / k_peak) ** (2.0 / 3.0), 1.0)
    a = np.exp(-(decay + 1j * advect * kx) * dt_out)
    b = amp * np.sqrt(1.0 - np.exp(-2.0 * decay * dt_out))

    def normal() -> np.ndarray:
        z = rng.standard_normal((2, nmodes, *k.shape))
        return (z[0] + 1j * z[1]) * np.sqrt(0.5)

    zeta_h = amp * normal()  # the stationary distribution
    for s0 in range(0, nsteps, block):
        n = min(block, nsteps - s0)
        zh = np.empty((n, nmodes, *k.shape), np.complex128)
        for i in range(n):
            if s0 + i:
                zeta_h = a * zeta_h + b * normal()
            zh[i] = zeta_h
        yield _fft.irfft2(-zh * k2_inv, s=(ny, nx))
