"""Hand-written numba stencil of exactly synovia's 2D scheme: the CPU expert's baseline.

Cell-centred finite volumes, harmonic face diffusivities computed on the fly from per-cell
diffusivities (zero against a cell a species cannot enter), first-order upwind chemotaxis
with face velocity chi * (f(T_R) - f(T_L)) / h on faces open to leukocytes, no-flux walls,
all reaction terms of synovia's model without the drug (solver/physics/_rhs.py: basal secretion in
synovium and fluid, recruitment into the synovium and entry into the fluid driven by the
cytokines and the fragment signal Phi, fluid mixing, cartilage exposed to w(x) x the fluid
means), and SSP-RK3 in Shu-Osher form.

Fluid entry, mixing, the cartilage exposure and Phi read means over the fluid (of T, I, L) and
over the exposed cartilage (of 1 - C): scalars of the stage's input that every cell needs, so
each stage is one parallel reduction pass (T, I, L bars and Phi) and then one fused parallel
sweep (``numba.prange`` over rows) that writes the stage value
``a y0 + (1 - a)(y_s + dt f(y_s))`` straight from the stencil: a step is three reductions and
three sweeps over memory. The exposure weights w_T, w_I depend only on the geometry and the
parameters, so they are computed once per problem. float64 (or float32) throughout, like the state.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from fields import Tissue
from solver.physics import layer_thickness

from ._harness import time_calls

# parameter tuple layout (floats), filled by params_vector(); _stage unpacks it in this order
_P = (
    "decay_tnf",
    "decay_il1",
    "tnf_per_leukocyte",
    "il1_amplification_of_tnf",
    "il1_half_saturation_amplification",
    "il1_per_leukocyte",
    "tnf_half_saturation_il1",
    "chemotaxis",
    "chemotaxis_half_saturation",
    "recruitment_rate",
    "il1_weight_recruitment",
    "recruitment_half_saturation",
    "leukocyte_capacity",
    "leukocyte_death",
    "basal_tnf",
    "basal_il1",
    "fluid_recruitment",
    "fluid_mixing",
    "recruitment_from_fragments",
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


def exposure_weights(params, cartilage_depth, cartilage, spacing) -> tuple[np.ndarray, np.ndarray]:
    """(w_T, w_I): synovia's ``exposure_weight`` for TNF and IL-1, in numpy (float64).

    The mean of exp(-z/delta) over each cartilage cell's layer (from its depth to one cell
    deeper, the cell's thickness the geometric-mean spacing), delta = sqrt(D_cartilage / k);
    zero outside cartilage.
    """
    thickness = layer_thickness(spacing)
    depth, cart = np.asarray(cartilage_depth, np.float64), np.asarray(cartilage, np.float64)
    out = []
    for d_name, k_name in (("diffusivity_tnf", "decay_tnf"), ("diffusivity_il1", "decay_il1")):
        d = float(np.asarray(getattr(params, d_name))[int(Tissue.CARTILAGE)])
        k = float(getattr(params, k_name))
        delta = max(math.sqrt(max(d, 1e-30) / max(k, 1e-30)), 1e-9)
        x = thickness / delta
        layer = -math.expm1(-min(x, 1e3)) / max(x, 1e-6) if x > 1e-6 else 1.0 - 0.5 * x
        out.append(np.exp(-depth / delta) * layer * cart)
    return out[0], out[1]


@numba.njit(inline="always")
def _harm(a, b):
    # synovia: 2ab/(a+b) where both are positive, else 0; with a, b >= 0 this is the same
    # number without a branch (0/tiny = 0), so the loop vectorises
    return 2.0 * a * b / max(a + b, 1e-300)


@numba.njit(inline="always")
def _upwind(v, low, high):
    return max(v, 0.0) * low + min(v, 0.0) * high


@numba.njit(parallel=True, fastmath=True, boundscheck=False, error_model="numpy")
def _means(ys, fluid, w_i, inv_fluid_cells, inv_w_sum, fragments):
    """(mean_F T, mean_F I, mean_F L, Phi) of the padded state ``ys``: the scalars of the stage.

    One parallel pass (row sums reduced across threads). Synovia's fluid_mean divides
    sum(u [F]) by max(#F, 1) and fragment_signal sum(w_I (1 - C)) by max(sum w_I, 1e-30): the
    reciprocals come in precomputed. Without cartilage (``fragments`` False) Phi is 0 and the
    pass reads no C.
    """
    ny, nx = ys.shape[1] - 2, ys.shape[2] - 2
    T_, I_, L_, C_ = ys[0], ys[1], ys[2], ys[3]
    s_t = 0.0
    s_i = 0.0
    s_l = 0.0
    s_c = 0.0
    for i in prange(1, ny + 1):
        for j in range(1, nx + 1):
            f = fluid[i, j]
            s_t += T_[i, j] * f
            s_i += I_[i, j] * f
            s_l += L_[i, j] * f
            if fragments:
                s_c += w_i[i, j] * (1.0 - C_[i, j])
    return s_t * inv_fluid_cells, s_i * inv_fluid_cells, s_l * inv_fluid_cells, s_c * inv_w_sum


@numba.njit(parallel=True, fastmath=True, boundscheck=False, error_model="numpy")
def _stage(y0, ys, out, a, dt, t, p, coef, inv_hy, inv_hx, t_bar, i_bar, l_bar, phi):
    """out = a*y0 + (1-a)*(ys + dt*f(ys, t)) on the interior of padded (4, ny+2, nx+2) arrays.

    ``coef`` (16, ny+2, nx+2): harmonic face diffusivities of T, I, L on the faces i+1/2 and
    j+1/2 of each cell (6), open leukocyte faces i+1/2 and j+1/2 (2), then the cytokine,
    leukocyte, cartilage, synovium, fluid and injury masks (6) and the exposure weights w_T,
    w_I (2) (see NumbaStencil). One ghost layer all round has zero face coefficients, so every
    wall flux vanishes without a branch (no-flux walls), exactly as synovia's zero wall fluxes.
    ``t_bar``, ``i_bar``, ``l_bar``, ``phi``: the fluid means and fragment signal of ``ys``
    (:func:`_means`).
    """
    ny, nx = ys.shape[1] - 2, ys.shape[2] - 2
    (k_t, k_i, a_tl, b_ti, K_i, a_il, K_t, chi, K_chi, r_syn, w_i, K_r, l_max, d_death,
     s_t, s_i, r_f, k_mix, w_f, r_c, K_rep, g_t, g_i, s_inj, onset, duration, decay) = p  # fmt: skip
    since = t - onset
    profile = math.exp(-max(since, 0.0) / decay) if (since >= 0 and since < duration) else 0.0
    src = s_inj * profile
    # per-stage scalars: the fragment drive, entry into the fluid, the cartilage exposure to
    # the fluid means (e = w(x) x bar, w per cell)
    activated = w_f * phi
    fluid_drive = t_bar + w_i * i_bar + activated
    entering = r_f * fluid_drive / (K_r + fluid_drive)
    one = 1.0 - a
    T_, I_, L_, C_ = ys[0], ys[1], ys[2], ys[3]
    DTy, DTx, DIy, DIx, DLy, DLx, Oy, Ox = coef[0], coef[1], coef[2], coef[3], coef[4], coef[5], coef[6], coef[7]
    cyt, leu, cart, syn, fl, inj, wT, wI = (
        coef[8], coef[9], coef[10], coef[11], coef[12], coef[13], coef[14], coef[15])  # fmt: skip
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
            f_m = fl[i, j]
            s_m = syn[i, j]
            secreting = s_m + f_m  # basal secretion by resident synovial cells
            leuk_tnf = a_tl * L * (1.0 + b_ti * I / (K_i + I))
            drive = T + w_i * I + activated
            recruited = r_syn * drive / (K_r + drive) * s_m + entering * f_m
            capacity = 1.0 - L / l_max
            e_t = wT[i, j] * t_bar
            e_i = wI[i, j] * i_bar
            inhibition = 1.0 + (e_t + e_i) / K_rep
            c_m = cyt[i, j]
            rT = (div_t + src * inj[i, j] + leuk_tnf + s_t * secreting + k_mix * (t_bar - T) * f_m - k_t * T) * c_m
            rI = (div_i + a_il * L * T / (K_t + T) + s_i * secreting + k_mix * (i_bar - I) * f_m - k_i * I) * c_m
            rL = (div_l + chemo + recruited * capacity + k_mix * (l_bar - L) * f_m - d_death * L) * leu[i, j]
            rC = cart[i, j] * (r_c * (1.0 - C) / inhibition - (g_t * e_t + g_i * e_i) * C)
            out[0, i, j] = a * y0[0, i, j] + one * (T + dt * rT)
            out[1, i, j] = a * y0[1, i, j] + one * (I + dt * rI)
            out[2, i, j] = a * y0[2, i, j] + one * (L + dt * rL)
            out[3, i, j] = a * y0[3, i, j] + one * (C + dt * rC)


_A = (0.0, 0.75, 1.0 / 3.0)
_C = (0.0, 1.0, 0.5)


@numba.njit
def _advance(y, n_steps, t0, dt, p, coef, inv_hy, inv_hx, inv_fluid_cells, inv_w_sum, fragments):
    b1 = np.zeros_like(y)  # ghost layers stay zero
    b2 = np.zeros_like(y)
    fl, w_i = coef[12], coef[15]
    for n in range(n_steps):
        t = t0 + n * dt
        tb, ib, lb, phi = _means(y, fl, w_i, inv_fluid_cells, inv_w_sum, fragments)
        _stage(y, y, b1, 0.0, dt, t, p, coef, inv_hy, inv_hx, tb, ib, lb, phi)
        tb, ib, lb, phi = _means(b1, fl, w_i, inv_fluid_cells, inv_w_sum, fragments)
        _stage(y, b1, b2, 0.75, dt, t + dt, p, coef, inv_hy, inv_hx, tb, ib, lb, phi)
        tb, ib, lb, phi = _means(b2, fl, w_i, inv_fluid_cells, inv_w_sum, fragments)
        _stage(y, b2, b1, 1.0 / 3.0, dt, t + 0.5 * dt, p, coef, inv_hy, inv_hx, tb, ib, lb, phi)
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
        masks = (domain.cytokine, domain.leukocyte, domain.cartilage, domain.synovium, domain.fluid, domain.injury)
        coef += [pad(m) for m in masks]
        w_t, w_i = exposure_weights(params, domain.cartilage_depth, domain.cartilage, problem.grid.spacing)
        coef += [pad(w_t), pad(w_i)]
        self.coef = np.ascontiguousarray(np.stack(coef).astype(dtype))
        self.p = tuple(dtype.type(v) for v in params_vector(params))
        self.inv_h = tuple(dtype.type(1.0 / h) for h in problem.grid.spacing)
        self.dt = dtype.type(problem.dt)
        fluid_cells = float(np.sum(np.asarray(domain.fluid, dtype=np.float64)))
        w_sum = float(np.sum(self.coef[15], dtype=np.float64))
        self.means = (dtype.type(1.0 / max(fluid_cells, 1.0)), dtype.type(1.0 / max(w_sum, 1e-30)), w_sum > 0)

    def initial(self, state) -> np.ndarray:
        """Padded (4, ny + 2, nx + 2) array of T, I, L, C (ghost layers zero)."""
        return np.ascontiguousarray(np.stack([np.pad(np.asarray(u, dtype=self.dtype), 1) for u in state[:4]]))

    @staticmethod
    def interior(y: np.ndarray) -> np.ndarray:
        return y[:, 1:-1, 1:-1]

    def advance(self, y: np.ndarray, n_steps: int, t0: float = 0.0) -> np.ndarray:
        return _advance(y.copy(), n_steps, self.dtype.type(t0), self.dt, self.p, self.coef, *self.inv_h, *self.means)


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
