"""Observations of a joint and the observation operator that predicts them from a trajectory.

Kinds of observation (column ``kind``; ``where`` says where, coordinates in mm, grid axis order):

- ``fluid``: synovial-fluid aspirate, the mean over the synovial fluid (``where`` empty);
- ``tissue``: the mean over one tissue, ``where`` = its name (e.g. ``synovium``);
- ``point``: the value in the cell that holds a point, ``where`` = ``"z y x"`` (2D: ``"y x"``);
- ``box``: the mean over the cells whose centres lie in a box, ``where`` = ``"z0:z1 y0:y1 x0:x1"``;
- ``plasma``: a patient's plasma (serum) drug level, species ``drug`` (``where`` empty): the closed
  form of the doses at that time (solver._drugs), so a fit can free the pharmacokinetic parameters;
- ``map`` (HDF5 only): a whole field at one time, e.g. a histology map of leukocyte density.

Means run over the cells where the species lives (leukocytes: fluid, synovium and capsule;
cytokines and drug: every tissue but bone; cartilage integrity: cartilage), so a box that
straddles bone averages only the tissue in it. Values between saved frames are interpolated
linearly in time (error O(interval^2) times the second time derivative).

File formats (units: h, and the species' own: pg/mL, cells/uL, ug/mL, fraction):

- CSV with a header ``time_h,species,kind,where,value,sigma`` (``#`` lines are comments), and an
  optional column ``censored``: ``below`` where ``value`` is a detection limit the measurement fell
  below (left-censored; inference._problem's loss gives it a Tobit term), empty elsewhere;
- HDF5 with datasets ``/observations/{time_h,species,kind,where,value,sigma}`` (one row each; optional
  ``censored``, 1 where censored)
  and, for maps, groups ``/maps/<name>`` with attributes ``time_h`` and ``species`` and
  datasets ``value`` and ``sigma`` of the grid's shape (NaN in ``value`` = not observed).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import jax
import jax.numpy as jnp
import numpy as np

from fields import SPECIES, SPECIES_TISSUES, TISSUE_NAMES, Geometry, Grid, State, Tissue, hdf5_problem, temporary_path

KINDS = ("fluid", "tissue", "point", "box", "plasma")
COLUMNS = ("time_h", "species", "kind", "where", "value", "sigma")


class ObservationError(ValueError):
    """Observations that cannot be used: the message says which row, what value and what is allowed."""


@dataclasses.dataclass(frozen=True)
class FieldMap:
    """A whole field observed at one time: ``value`` and ``sigma`` have the grid's shape; NaN = not observed."""

    name: str
    time_h: float
    species: str
    value: np.ndarray
    sigma: np.ndarray


@dataclasses.dataclass(frozen=True)
class Observations:
    """Scalar observations (one row each, numpy arrays of equal length) and field maps."""

    time_h: np.ndarray
    species: tuple[str, ...]
    kind: tuple[str, ...]
    where: tuple[str, ...]
    value: np.ndarray
    sigma: np.ndarray
    maps: tuple[FieldMap, ...] = ()
    attrs: dict = dataclasses.field(default_factory=dict)
    #: True where the value is a detection limit the measurement fell below (left-censored); empty: none is
    censored: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, bool))

    def __post_init__(self) -> None:
        n = len(self.time_h)
        censored = np.asarray(self.censored, bool) if len(self.censored) else np.zeros(n, bool)
        object.__setattr__(self, "censored", censored)
        if len(censored) != n:
            raise ObservationError(f"observations: column 'censored' has {len(censored)} rows, time_h has {n}")
        for name in ("species", "kind", "where", "value", "sigma"):
            if len(getattr(self, name)) != n:
                raise ObservationError(f"observations: column '{name}' has {len(getattr(self, name))} rows, time_h has {n}")
        for i in range(n):
            _check_row(i, float(self.time_h[i]), self.species[i], self.kind[i], float(self.value[i]), float(self.sigma[i]))
        for m in self.maps:
            if m.species not in SPECIES:
                raise ObservationError(f"map '{m.name}': species '{m.species}' is not one of {list(SPECIES)}")
            if not np.isfinite(m.time_h) or m.time_h < 0:
                raise ObservationError(f"map '{m.name}': time_h = {m.time_h} must be a finite time >= 0 (h)")
            if m.value.shape != m.sigma.shape:
                raise ObservationError(f"map '{m.name}': value {m.value.shape} and sigma {m.sigma.shape} differ in shape")
            seen = np.isfinite(m.value)
            if not np.all(m.sigma[seen] > 0):
                raise ObservationError(f"map '{m.name}': sigma must be > 0 wherever a value is given")

    def __len__(self) -> int:
        return len(self.time_h)

    @property
    def t_max(self) -> float:
        times = list(np.asarray(self.time_h, float)) + [m.time_h for m in self.maps]
        return max(times) if times else 0.0

    @property
    def count(self) -> int:
        """Number of measured values (scalar rows plus observed map cells)."""
        return len(self) + sum(int(np.isfinite(m.value).sum()) for m in self.maps)


def _check_row(i: int, t: float, species: str, kind: str, value: float, sigma: float) -> None:
    row = f"observation {i + 1}"
    if species not in SPECIES:
        raise ObservationError(f"{row}: species '{species}' is not one of {list(SPECIES)}")
    if kind not in KINDS:
        raise ObservationError(f"{row}: kind '{kind}' is not one of {list(KINDS)} (maps go in the HDF5 /maps group)")
    if not np.isfinite(t) or t < 0:
        raise ObservationError(f"{row}: time_h = {t} must be a finite time >= 0 (h)")
    if not np.isfinite(value):
        raise ObservationError(f"{row}: value = {value} is not a finite number")
    if not (np.isfinite(sigma) and sigma > 0):
        raise ObservationError(f"{row}: sigma = {sigma} must be a positive number (the value's standard deviation)")


def make_observations(rows: Sequence[dict], maps: Sequence[FieldMap] = (), attrs: dict | None = None) -> Observations:
    """Observations from dicts with the keys of :data:`COLUMNS` (``where`` may be left out)."""
    return Observations(
        time_h=np.array([float(r["time_h"]) for r in rows], dtype=float),
        species=tuple(str(r["species"]) for r in rows),
        kind=tuple(str(r["kind"]) for r in rows),
        where=tuple(str(r.get("where", "")) for r in rows),
        value=np.array([float(r["value"]) for r in rows], dtype=float),
        sigma=np.array([float(r["sigma"]) for r in rows], dtype=float),
        maps=tuple(maps),
        attrs=dict(attrs or {}),
        censored=np.array([_censored(r.get("censored", False), i) for i, r in enumerate(rows)], dtype=bool),
    )


#: the optional column ``censored``: empty (a measured value) or ``below`` (the value is the detection limit)
CENSORED = ("", "below")


def _censored(flag, i: int) -> bool:
    if isinstance(flag, (bool, np.bool_)):
        return bool(flag)
    text = str(flag).strip().lower()
    if text not in CENSORED:
        raise ObservationError(
            f"observation {i + 1}: censored = {flag!r} must be empty or 'below' (the value is a detection limit the "
            "measurement fell below)"
        )
    return text == "below"


def _read_csv(path: Path) -> Observations:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ObservationError(
            f"observation file '{path}' is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
            "save the CSV as UTF-8"
        ) from None
    except OSError as err:
        raise ObservationError(f"cannot read observation file '{path}': {err.strerror or err}") from None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    reader = csv.DictReader(lines)
    missing = [c for c in COLUMNS if c != "where" and c not in (reader.fieldnames or ())]
    if missing:
        raise ObservationError(f"'{path}': missing column(s) {missing}; the header must be {','.join(COLUMNS)}")
    rows = []
    for i, row in enumerate(reader):
        for key in ("time_h", "value", "sigma"):
            try:
                float(row[key])
            except (TypeError, ValueError):
                raise ObservationError(f"'{path}' row {i + 1}: {key} = {row[key]!r} is not a number") from None
        rows.append({k: (row.get(k) or "").strip() for k in (*COLUMNS, "censored")})
    if not rows:
        raise ObservationError(f"observation file '{path}' has a header but no rows: nothing to fit")
    return make_observations(rows)


def _strings(ds) -> tuple[str, ...]:
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in ds[()])


def _read_hdf5(path: Path) -> Observations:
    with h5py.File(path, "r") as f:
        rows: dict[str, Any] = {}
        if "observations" in f:
            g = f["observations"]
            missing = [c for c in COLUMNS if c not in g]
            if missing:
                raise ObservationError(f"'{path}': /observations lacks dataset(s) {missing}")
            rows = {c: (_strings(g[c]) if c in ("species", "kind", "where") else np.asarray(g[c], float)) for c in COLUMNS}
            if "censored" in g:
                rows["censored"] = np.asarray(g["censored"], bool)
        else:
            rows = {c: (() if c in ("species", "kind", "where") else np.zeros(0)) for c in COLUMNS}
        maps = []
        for name, g in f.get("maps", {}).items():
            try:
                maps.append(
                    FieldMap(
                        name,
                        float(g.attrs["time_h"]),
                        str(g.attrs["species"]),
                        np.asarray(g["value"], float),
                        np.asarray(g["sigma"], float),
                    )
                )
            except KeyError as err:
                raise ObservationError(
                    f"'{path}': map '{name}' lacks {err} (needs attributes time_h, species; datasets value, sigma)"
                ) from None
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    return Observations(**rows, maps=tuple(maps), attrs=attrs)


def load_observations(path: str | os.PathLike[str]) -> Observations:
    """Read observations from a ``.csv`` or an HDF5 (``.h5``/``.hdf5``) file (see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise ObservationError(f"observation file '{path}' does not exist")
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    if problem := hdf5_problem(path):
        raise ObservationError(f"observation file '{path}' {problem} (use .csv for a table, else HDF5)")
    try:
        obs = _read_hdf5(path)
    except OSError as err:
        raise ObservationError(f"cannot read '{path}' as HDF5 (use .csv for a table): {err}") from None
    if obs.count == 0:
        raise ObservationError(f"observation file '{path}' holds no observations and no maps: nothing to fit")
    return obs


def save_observations(obs: Observations, path: str | os.PathLike[str]) -> None:
    """Write observations as CSV (scalars only) or HDF5 (scalars, maps and attributes), through a
    temporary file: a failure leaves the old file, or none, never part of one."""
    path = Path(path)
    if path.suffix.lower() == ".csv" and obs.maps:
        raise ObservationError("CSV holds only scalar observations; write maps to an .h5 file")
    tmp = temporary_path(path, path.suffix + ".tmp")
    try:
        _save(obs, tmp, csv_table=path.suffix.lower() == ".csv")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save(obs: Observations, path: Path, csv_table: bool) -> None:
    if csv_table:
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            censored = bool(np.any(obs.censored))
            w.writerow([*COLUMNS, "censored"] if censored else COLUMNS)
            for i in range(len(obs)):
                w.writerow(
                    [
                        repr(float(obs.time_h[i])),
                        obs.species[i],
                        obs.kind[i],
                        obs.where[i],
                        repr(float(obs.value[i])),
                        repr(float(obs.sigma[i])),
                    ]
                    + (["below" if obs.censored[i] else ""] if censored else [])
                )
        return
    with h5py.File(path, "w", libver=("earliest", "v110")) as f:
        f.attrs["format"] = "synovia-observations"
        for k, v in obs.attrs.items():
            f.attrs[k] = v if isinstance(v, (int, float, str)) else json.dumps(v)
        g = f.create_group("observations")
        g["time_h"] = np.asarray(obs.time_h, float)
        g["value"] = np.asarray(obs.value, float)
        g["sigma"] = np.asarray(obs.sigma, float)
        if np.any(obs.censored):
            g["censored"] = np.asarray(obs.censored, np.uint8)
        for c in ("species", "kind", "where"):
            g.create_dataset(c, data=np.array(getattr(obs, c), dtype=object), dtype=h5py.string_dtype())
        g.attrs["units"] = (
            "time_h: h; value, sigma: the species' unit (tnf, il1, complex pg/mL; leukocytes cells/uL; drug ug/mL; cartilage 1)"
        )
        for m in obs.maps:
            mg = f.create_group(f"maps/{m.name}")
            mg.attrs["time_h"] = m.time_h
            mg.attrs["species"] = m.species
            mg.create_dataset("value", data=m.value, compression="gzip")
            mg.create_dataset("sigma", data=m.sigma, compression="gzip")


# ----------------------------------------------------------------------------------------------
# The observation operator
# ----------------------------------------------------------------------------------------------


def _numbers(text: str, n: int, what: str) -> list[str]:
    parts = text.replace(",", " ").split()
    if len(parts) != n:
        raise ObservationError(f"{what}: needs {n} entries (grid axis order, mm), got {text!r}")
    return parts


def _region_mask(kind: str, where: str, species: str, geometry: Geometry, what: str) -> np.ndarray:
    """Cells (bool, grid shape) an observation averages over, within the species' region."""
    labels = np.asarray(geometry.labels)
    grid = geometry.grid
    lives = np.isin(labels, [int(t) for t in SPECIES_TISSUES[species]])
    if kind == "fluid":
        cells = labels == Tissue.SYNOVIAL_FLUID
    elif kind == "tissue":
        if where not in TISSUE_NAMES:
            raise ObservationError(f"{what}: where = {where!r} is not a tissue; one of {list(TISSUE_NAMES[1:])}")
        cells = labels == TISSUE_NAMES.index(where)
    elif kind == "point":
        try:
            point = [float(p) for p in _numbers(where, grid.ndim, what)]
        except ValueError:
            raise ObservationError(f"{what}: where = {where!r} must be {grid.ndim} coordinates in mm") from None
        index = []
        for a, x in enumerate(point):
            i = int(np.floor((x - grid.origin[a]) / grid.spacing[a]))
            if not 0 <= i < grid.shape[a]:
                raise ObservationError(f"{what}: point {point} mm lies outside the grid along axis {a}")
            index.append(i)
        cells = np.zeros(grid.shape, bool)
        cells[tuple(index)] = True
    else:  # box
        ranges = []
        for part in _numbers(where, grid.ndim, what):
            try:
                lo, hi = (float(v) for v in part.split(":"))
            except ValueError:
                raise ObservationError(f"{what}: where = {where!r} must be ranges lo:hi in mm, one per axis") from None
            ranges.append((min(lo, hi), max(lo, hi)))
        cells = np.ones(grid.shape, bool)
        for a in range(grid.ndim):
            centres = grid.axis_centres(a)
            inside = (centres >= ranges[a][0]) & (centres <= ranges[a][1])
            shape = [1] * grid.ndim
            shape[a] = -1
            cells &= inside.reshape(shape)
    mask = cells & lives
    if not mask.any():
        raise ObservationError(f"{what}: no cell of this {kind} ({where or 'synovial fluid'}) holds {species}")
    return mask


@dataclasses.dataclass(frozen=True, eq=False)
class ObservationOperator:
    """Maps stacked frames (leading axis: frame 0 = t0, then one per interval) to predicted values.

    Built once per geometry and observation set; :meth:`predict` is pure JAX (jit/grad/vmap-able).
    """

    species: tuple[str, ...]  # species the scalar rows use, in ``species_index`` order
    weights: np.ndarray  # (n_regions, n_cells), each row sums to one
    species_index: np.ndarray  # (n_rows,)
    region_index: np.ndarray  # (n_rows,)
    frame: np.ndarray  # (n_rows,) frame before the time
    fraction: np.ndarray  # (n_rows,) weight of the frame after it
    maps: tuple[tuple[str, int, float, np.ndarray], ...]  # (species, frame, fraction, observed-cell mask)
    regions: tuple[tuple[str, str, str], ...]  # (species, kind, where) per weights row
    n_frames: int  # intervals the trajectory must cover
    in_tissue: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, int))  # rows of the means above
    plasma_rows: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, int))  # rows of kind "plasma"
    plasma_times: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))  # their times, h

    @classmethod
    def build(
        cls, obs: Observations, geometry: Geometry, interval_h: float, t0: float = 0.0, species_in_run=SPECIES
    ) -> ObservationOperator:
        grid: Grid = geometry.grid
        for i in range(len(obs)):
            if obs.species[i] not in species_in_run:
                raise ObservationError(
                    f"observation {i + 1}: species '{obs.species[i]}' is not simulated in this run "
                    f"(the run has {list(species_in_run)}; the drug needs drug.enabled = true)"
                )
        for m in obs.maps:
            if m.species not in species_in_run:
                raise ObservationError(
                    f"map '{m.name}': species '{m.species}' is not simulated in this run ({list(species_in_run)})"
                )
            if m.value.shape != grid.shape:
                raise ObservationError(f"map '{m.name}': shape {m.value.shape} differs from the run's grid {grid.shape}")
        n_frames = max(1, int(np.ceil((obs.t_max - t0) / interval_h - 1e-9)))

        def locate(t: float, what: str) -> tuple[int, float]:
            if t < t0 - 1e-9:
                raise ObservationError(f"{what}: time_h = {t:g} is before the run starts (t = {t0:g} h)")
            s = (t - t0) / interval_h
            k = min(int(np.floor(s + 1e-9)), n_frames - 1)
            return k, float(np.clip(s - k, 0.0, 1.0))

        species = tuple(dict.fromkeys(obs.species))
        keys: dict[tuple[str, str, str], int] = {}
        rows_w: list[np.ndarray] = []
        s_idx, r_idx, frame, frac = [], [], [], []
        in_tissue, plasma_rows, plasma_times = [], [], []
        for i in range(len(obs)):
            what = f"observation {i + 1} ({obs.species[i]}, {obs.kind[i]}, t = {obs.time_h[i]:g} h)"
            if obs.kind[i] == "plasma":  # the drug's plasma level: the closed form at that time, no frames
                if obs.species[i] != "drug":
                    raise ObservationError(f"{what}: kind 'plasma' observes the drug; species must be 'drug'")
                locate(float(obs.time_h[i]), what)
                plasma_rows.append(i)
                plasma_times.append(float(obs.time_h[i]))
                continue
            in_tissue.append(i)
            key = (obs.species[i], obs.kind[i], obs.where[i].strip())
            if key not in keys:
                mask = _region_mask(obs.kind[i], key[2], obs.species[i], geometry, what)
                keys[key] = len(rows_w)
                rows_w.append(mask.ravel() / mask.sum())
            k, a = locate(float(obs.time_h[i]), what)
            s_idx.append(species.index(obs.species[i]))
            r_idx.append(keys[key])
            frame.append(k)
            frac.append(a)
        maps = []
        labels = np.asarray(geometry.labels)
        for m in obs.maps:
            k, a = locate(m.time_h, f"map '{m.name}'")
            lives = np.isin(labels, [int(t) for t in SPECIES_TISSUES[m.species]])
            seen = np.isfinite(m.value)
            if np.any(seen & ~lives):
                raise ObservationError(f"map '{m.name}': values given in cells where {m.species} does not live; set them to NaN")
            maps.append((m.species, k, a, seen))
        n_cells = grid.size
        weights = np.stack(rows_w) if rows_w else np.zeros((0, n_cells))
        return cls(
            species=species,
            weights=weights,
            species_index=np.asarray(s_idx, int),
            region_index=np.asarray(r_idx, int),
            frame=np.asarray(frame, int),
            fraction=np.asarray(frac, float),
            maps=tuple(maps),
            regions=tuple(keys),
            n_frames=n_frames,
            in_tissue=np.asarray(in_tissue, int),
            plasma_rows=np.asarray(plasma_rows, int),
            plasma_times=np.asarray(plasma_times, float),
        )

    def region_means(self, frames: State) -> jnp.ndarray:
        """Means over each observed region at every frame: shape (n_species, n_frames + 1, n_regions)."""
        if not self.species:
            return jnp.zeros((0, 0, 0))
        stacked = jnp.stack([getattr(frames, s) for s in self.species])
        flat = stacked.reshape(stacked.shape[0], stacked.shape[1], -1)
        return jnp.einsum("sfc,rc->sfr", flat, jnp.asarray(self.weights, dtype=flat.dtype))

    def predict(self, frames: State, plasma: Callable | None = None) -> jnp.ndarray:
        """Predicted scalar rows then observed map cells, one flat vector (the order of :meth:`observed`).

        ``plasma(times)`` gives the plasma drug level (ug/mL) at an array of times (h), for rows of
        kind "plasma" (solver's plasma_drug of the run's parameters).
        """
        parts = []
        if len(self.frame) or len(self.plasma_rows):
            dtype = jax.tree.leaves(frames)[0].dtype
            rows = jnp.zeros(len(self.frame) + len(self.plasma_rows), dtype)
        if len(self.frame):
            means = self.region_means(frames)
            s, r, k = self.species_index, self.region_index, self.frame
            a = jnp.asarray(self.fraction, dtype=means.dtype)
            rows = rows.at[self.in_tissue].set((1 - a) * means[s, k, r] + a * means[s, k + 1, r])
        if len(self.plasma_rows):
            if plasma is None:
                raise ObservationError("observations of kind 'plasma' need the run's plasma drug level")
            rows = rows.at[self.plasma_rows].set(plasma(jnp.asarray(self.plasma_times, dtype)).astype(dtype))
        if len(self.frame) or len(self.plasma_rows):
            parts.append(rows)
        for species, k_map, a_map, seen in self.maps:
            u = getattr(frames, species)
            field = (1 - a_map) * u[k_map] + a_map * u[k_map + 1]
            parts.append(field[seen])
        return jnp.concatenate(parts) if parts else jnp.zeros(0)


def observed(obs: Observations) -> tuple[np.ndarray, np.ndarray]:
    """Observed values and sigmas in the order of :meth:`ObservationOperator.predict`."""
    values, sigmas = [np.asarray(obs.value, float)], [np.asarray(obs.sigma, float)]
    for m in obs.maps:
        seen = np.isfinite(m.value)
        values.append(m.value[seen])
        sigmas.append(m.sigma[seen])
    return np.concatenate(values), np.concatenate(sigmas)
