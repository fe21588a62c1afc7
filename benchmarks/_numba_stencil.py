"""Hand-written numba stencil of exactly synovia's 2D scheme: the CPU expert's baseline.

Cell-centred finite volumes, harmonic face diffusivities computed on the fly from per-cell
diffusivities (zero against a cell a species cannot enter), first-order upwind chemotaxis
with face velocity chi * (f(T_R) - f(T_L)) / h on faces open to leukocytes, no-flux walls,
all reaction terms of synovia's model without the drug, and SSP-RK3 in Shu-Osher form with
each stage fused into one parallel sweep (``numba.prange`` over rows): the stage value
``a y0 + (1 - a)(y_s + dt f(y_s))`` is written straight from the stencil, so a step is
three sweeps over memory. float64 (or float32) throughout, like the state.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from ._harness import time_calls

# parameter vector layout (floats), filled by params_vector()
_P = (
    "decay_tnf",
    "decay_il1",
    "tnf_per_leukocyte",
    "il1_amplification_of_tnf",
    "il1_half_saturation_amplification",
    "tnf_from_damaged_matrix",
    "il1_per_leukocyte",
    "tnf_half_saturation_il1",
    "chemotaxis",
    "chemotaxis_half_saturation",
    "recruitment_rate",
    "il1_weight_recruitment",
    "recruitment_half_saturation",
    "leukocyte_capacity",
    "leukocyte_death",
    "cartilage_repair",
    "repair_inhibition_half_saturation",
    "cartilage_damage_tnf",
    "cartilage_damage_il1",
    "injury_rate",
    "injury_onset",
    "injury_duration",
    "injury_decay",
)


def params_vector(params) -> np.ndarray:
    return np.array([float(getattr(params, name)) for name in _P], dtype=np.float64)


@numba.njit(inline="always")
def _harm(a, b):
    # synovia: 2ab/(a+b) where both are positive, else 0; with a, b >= 0 this is the same
    # number without a branch (0/tiny = 0), so the loop vectorises
    return 2.0 * a * b / max(a + b, 1e-300)


@numba.njit(inline="always")
def _upwind(v, low, high):
    return max(v, 0.0) * low + min(v, 0.0) * high


@numba.njit(parallel=True, fastmath=True, boundscheck=False, error_model="numpy")
def _stage(y0, ys, out, a, dt, t, p, coef, inv_hy, inv_hx):
    """out = a*y0 + (1-a)*(ys + dt*f(ys, t)) on the interior of padded (4, ny+2, nx+2) arrays.

    ``coef`` (12, ny+2, nx+2): harmonic face diffusivities of T, I, L on the faces i+1/2 and
    j+1/2 of each cell (6), open leukocyte faces i+1/2 and j+1/2 (2), then the cytokine,
    leukocyte, cartilage, synovium and injury masks... (see NumbaStencil). One ghost layer
    all round has zero face coefficients, so every wall flux vanishes without a branch
    (no-flux walls), exactly as synovia's zero wall fluxes.
    """
    ny, nx = ys.shape[1] - 2, ys.shape[2] - 2
    k_t, k_i, a_tl, b_ti, K_i, a_tc, a_il, K_t = p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]
    chi, K_chi, r_syn, w_i, K_r, l_max, d_death = p[8], p[9], p[10], p[11], p[12], p[13], p[14]
    r_c, K_rep, g_t, g_i = p[15], p[16], p[17], p[18]
    since = t - p[20]
    profile = math.exp(-max(since, 0.0) / p[22]) if (since >= 0 and since < p[21]) else 0.0
    src = p[19] * profile
    one = 1.0 - a
    T_, I_, L_, C_ = ys[0], ys[1], ys[2], ys[3]
    DTy, DTx, DIy, DIx, DLy, DLx, Oy, Ox = coef[0], coef[1], coef[2], coef[3], coef[4], coef[5], coef[6], coef[7]
    cyt, leu, cart, syn, inj = coef[8], coef[9], coef[10], coef[11], coef[12]
    for i in prange(1, ny + 1):
        for j in range(1, nx + 1):
            T = T_[i, j]
            I = I_[i, j]
            L = L_[i, j]
            C = C_[i, j]
            Ts, Tn, Tw, Te = T_[i - 1, j], T_[i + 1, j], T_[i, j - 1], T_[i, j + 1]
            Ls, Ln, Lw, Le = L_[i - 1, j], L_[i + 1, j], L_[i, j - 1], L_[i, j + 1]
            fc = T / (K_chi + T)
            # face fluxes, positive towards increasing index (s: i-1/2, n: i+1/2, w: j-1/2, e: j+1/2)
            ft_s = -DTy[i - 1, j] * (T - Ts) * inv_hy
            ft_n = -DTy[i, j] * (Tn - T) * inv_hy
            ft_w = -DTx[i, j - 1] * (T - Tw) * inv_hx
            ft_e = -DTx[i, j] * (Te - T) * inv_hx
            fi_s = -DIy[i - 1, j] * (I - I_[i - 1, j]) * inv_hy
            fi_n = -DIy[i, j] * (I_[i + 1, j] - I) * inv_hy
            fi_w = -DIx[i, j - 1] * (I - I_[i, j - 1]) * inv_hx
            fi_e = -DIx[i, j] * (I_[i, j + 1] - I) * inv_hx
            fl_s = -DLy[i - 1, j] * (L - Ls) * inv_hy
            fl_n = -DLy[i, j] * (Ln - L) * inv_hy
            fl_w = -DLx[i, j - 1] * (L - Lw) * inv_hx
            fl_e = -DLx[i, j] * (Le - L) * inv_hx
            fc_s = _upwind(chi * ((fc - Ts / (K_chi + Ts)) * inv_hy) * Oy[i - 1, j], Ls, L)
            fc_n = _upwind(chi * ((Tn / (K_chi + Tn) - fc) * inv_hy) * Oy[i, j], L, Ln)
            fc_w = _upwind(chi * ((fc - Tw / (K_chi + Tw)) * inv_hx) * Ox[i, j - 1], Lw, L)
            fc_e = _upwind(chi * ((Te / (K_chi + Te) - fc) * inv_hx) * Ox[i, j], L, Le)
            div_t = -(ft_n - ft_s) * inv_hy + -(ft_e - ft_w) * inv_hx
            div_i = -(fi_n - fi_s) * inv_hy + -(fi_e - fi_w) * inv_hx
            div_l = -(fl_n - fl_s) * inv_hy + -(fl_e - fl_w) * inv_hx
            chemo = -(fc_n - fc_s) * inv_hy + -(fc_e - fc_w) * inv_hx
            ca = cart[i, j]
            lc = leu[i, j]
            leuk_tnf = a_tl * L * (1.0 + b_ti * I / (K_i + I))
            damaged = a_tc * (1.0 - C) * ca
            drive = T + w_i * I
            recruitment = r_syn * syn[i, j] * drive / (K_r + drive)
            capacity = 1.0 - L / l_max
            inhibition = 1.0 + (T + I) / K_rep
            c_m = cyt[i, j]
            rT = (div_t + src * inj[i, j] + leuk_tnf + damaged - k_t * T) * c_m
            rI = (div_i + a_il * L * T / (K_t + T) - k_i * I) * c_m
            rL = (div_l + chemo + recruitment * capacity - d_death * L) * lc
            rC = ca * (r_c * (1.0 - C) / inhibition - (g_t * T + g_i * I) * C)
            out[0, i, j] = a * y0[0, i, j] + one * (T + dt * rT)
            out[1, i, j] = a * y0[1, i, j] + one * (I + dt * rI)
            out[2, i, j] = a * y0[2, i, j] + one * (L + dt * rL)
            out[3, i, j] = a * y0[3, i, j] + one * (C + dt * rC)


_A = (0.0, 0.75, 1.0 / 3.0)
_C = (0.0, 1.0, 0.5)


@numba.njit
def _advance(y, n_steps, t0, dt, p, coef, inv_hy, inv_hx):
    b1 = np.zeros_like(y)  # ghost layers stay zero
    b2 = np.zeros_like(y)
    for n in range(n_steps):
        t = t0 + n * dt
        _stage(y, y, b1, 0.0, dt, t, p, coef, inv_hy, inv_hx)
        _stage(y, b1, b2, 0.75, dt, t + dt, p, coef, inv_hy, inv_hx)
        _stage(y, b2, b1, 1.0 / 3.0, dt, t + 0.5 * dt, p, coef, inv_hy, inv_hx)
        y, b1 = b1, y
    return y


class NumbaStencil:
    """Advance a :class:`benchmarks._problem.Problem` (2D) with the numba stencil."""

    def __init__(self, problem):
        if problem.grid.ndim != 2:
            raise ValueError("the numba stencil is 2D")
        dtype = np.dtype(problem.dtype)
        self.dtype = dtype
        params, domain = problem.params, problem.domain
        labels = np.asarray(domain.labels)

        def pad(u):
            return np.ascontiguousarray(np.pad(np.asarray(u, dtype=dtype), 1))

        def cell_d(name, region):
            table = np.asarray(getattr(params, f"diffusivity_{name}"), dtype=dtype)
            return pad(table[labels] * np.asarray(region, dtype=dtype))

        def faces(d, axis):
            # value on the face between cell k and k+1 along axis, stored at k (padded layout)
            lo = d[:-1, :] if axis == 0 else d[:, :-1]
            hi = d[1:, :] if axis == 0 else d[:, 1:]
            total = lo + hi
            f = np.where((lo > 0) & (hi > 0), 2.0 * lo * hi / np.where(total > 0, total, 1.0), 0.0)
            out = np.zeros_like(d)
            out[: f.shape[0], : f.shape[1]] = f
            return out

        leu = pad(domain.leukocyte)
        coef = []
        for name, region in (("tnf", domain.cytokine), ("il1", domain.cytokine), ("leukocytes", domain.leukocyte)):
            d = cell_d(name, region)
            coef += [faces(d, 0), faces(d, 1)]
        for axis in (0, 1):
            lo = leu[:-1, :] if axis == 0 else leu[:, :-1]
            hi = leu[1:, :] if axis == 0 else leu[:, 1:]
            o = np.zeros_like(leu)
            o[: lo.shape[0], : lo.shape[1]] = lo * hi
            coef.append(o)
        coef += [pad(m) for m in (domain.cytokine, domain.leukocyte, domain.cartilage, domain.synovium, domain.injury)]
        self.coef = np.ascontiguousarray(np.stack(coef).astype(dtype))
        self.p = params_vector(params).astype(dtype)
        self.inv_h = tuple(dtype.type(1.0 / h) for h in problem.grid.spacing)
        self.dt = dtype.type(problem.dt)

    def initial(self, state) -> np.ndarray:
        """Padded (4, ny + 2, nx + 2) array of T, I, L, C (ghost layers zero)."""
        return np.ascontiguousarray(np.stack([np.pad(np.asarray(u, dtype=self.dtype), 1) for u in state[:4]]))

    @staticmethod
    def interior(y: np.ndarray) -> np.ndarray:
        return y[:, 1:-1, 1:-1]

    def advance(self, y: np.ndarray, n_steps: int, t0: float = 0.0) -> np.ndarray:
        return _advance(y.copy(), n_steps, self.dtype.type(t0), self.dt, self.p, self.coef, *self.inv_h)


def threads() -> int:
    return numba.get_num_threads()


#: independent multiply-add chains per block of the FMA kernel: enough vectors in flight to hide
#: the FMA latency on every lane of both FMA units
FMA_CHAINS = 64
FMA_A, FMA_B = 0.9999, 1e-4


@numba.njit(parallel=True, fastmath=True, boundscheck=False)
def fma_chains(x, n_iter):
    """Each of the ``(blocks, FMA_CHAINS)`` values of ``x`` through ``n_iter`` steps of
    ``v = FMA_A v + FMA_B`` (one fused multiply-add, 2 flops), the blocks in parallel; returns
    the block sums, so nothing is left out as dead code."""
    out = np.empty(x.shape[0])
    for b in numba.prange(x.shape[0]):
        acc = np.empty(FMA_CHAINS)
        for j in range(FMA_CHAINS):
            acc[j] = x[b, j]
        for _ in range(n_iter):
            for j in range(FMA_CHAINS):
                acc[j] = acc[j] * FMA_A + FMA_B
        total = 0.0
        for j in range(FMA_CHAINS):
            total += acc[j]
        out[b] = total
    return out


def fma_chains_exact(x: np.ndarray, n_iter: int) -> np.ndarray:
    """What :func:`fma_chains` returns, in closed form."""
    a = FMA_A**n_iter
    return (x * a + FMA_B * (1.0 - a) / (1.0 - FMA_A)).sum(axis=1)


def fma_peak(repeats: int, flops: float = 4e9) -> dict:
    """The float64 multiply-add rate of this CPU's cores (the arithmetic limit, as the triad is
    the bandwidth one): independent chains on data that stays in registers, ``flops`` per call."""
    blocks = 32 * threads()
    x = np.random.default_rng(0).random((blocks, FMA_CHAINS))
    n_iter = max(1, int(flops / (2 * x.size)))
    timing = time_calls(lambda: fma_chains(x, n_iter), max(5, repeats))  # the warm-up call compiles
    done = 2.0 * x.size * n_iter
    return {
        "threads": threads(),
        "flops": done,
        **timing,
        "gflops": done / timing["median_s"] / 1e9,
        "best_gflops": done / timing["min_s"] / 1e9,
    }
