"""The shipped presets: run, sweep and fit configs with the data files they read.

In a checkout they are the folder ``configs/``; an installed synovia holds the same files as the package
``synovia_presets`` (the pyproject maps that folder onto it), so a preset is found by its name from any
folder. A preset's name is its path below that folder without ``.toml``: ``knee2d``, ``ra``,
``calibration/calibrate_ra``. Relative paths inside a preset (``scenario = "ra.toml"``,
``observations = "data/synthetic_knee.h5"``) resolve against its own folder, installed or copied.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import re
import shutil
import tomllib
from pathlib import Path

from fields import temporary_path

from ._checks import ConfigError, did_you_mean

#: the package the presets are installed as
PACKAGE = "synovia_presets"
#: how long a description :func:`presets` gives is at most, in characters
DESCRIPTION_WIDTH = 100


@dataclasses.dataclass(frozen=True)
class Preset:
    """A shipped config: its name, file, kind (``run``, ``sweep`` or ``fit``: the command that takes it)
    and the first sentence of its leading comment."""

    name: str
    path: Path
    kind: str
    description: str


def presets_folder() -> Path:
    """The folder of the presets: the installed package ``synovia_presets`` (in an editable install, the
    checkout's ``configs/``), or, in a source tree that was never installed, the ``configs/`` beside it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    checkout = Path(__file__).resolve().parents[2] / "configs"
    if checkout.is_dir():
        return checkout
    raise ConfigError(f"the presets are not installed (no package {PACKAGE}): reinstall synovia")


def _kind(raw: dict) -> str:
    if "observations" in raw:
        return "fit"
    if "vary" in raw:
        return "sweep"
    return "run"


def _description(text: str) -> str:
    """The first sentence of the leading comment, less a trailing command (``: `synovia ...```)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#") or not line[1:].strip() or line.startswith("#   "):
            break  # the end of the comment, a blank comment line, an indented command
        lines.append(line[1:].strip())
    sentence = re.split(r"(?<=[.?!])\s+(?=[A-Z`(])", " ".join(lines), maxsplit=1)[0]
    sentence = sentence.split(": `", 1)[0].rstrip(".:")
    if len(sentence) > DESCRIPTION_WIDTH:
        sentence = sentence[: DESCRIPTION_WIDTH - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."
    return sentence


@functools.lru_cache(maxsize=4)
def _presets(folder: Path) -> dict[str, Preset]:
    table = {}
    for path in sorted(folder.rglob("*.toml")):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(folder).with_suffix("").as_posix()
        table[name] = Preset(name, path, _kind(tomllib.loads(text)), _description(text))
    return table


def presets() -> dict[str, Preset]:
    """Every preset by name, sorted (the top folder's first, then those of its subfolders)."""
    table = _presets(presets_folder())
    return dict(sorted(table.items(), key=lambda item: ("/" in item[0], item[0])))


def _names(table: dict[str, Preset]) -> str:
    """The names, a subfolder's after it: ``knee2d, ra, ...; calibration/: calibrate_ra, ...``."""
    folders: dict[str, list[str]] = {}
    for name in table:
        folder, _, stem = name.rpartition("/")
        folders.setdefault(folder, []).append(stem)
    return "; ".join((f"{folder}/: " if folder else "") + ", ".join(stems) for folder, stems in folders.items())


def preset(name: str) -> Preset:
    """The preset called ``name`` (``.toml`` may be added); :class:`ConfigError` listing them all if none is."""
    table = presets()
    key = name.removesuffix(".toml")
    if key in table:
        return table[key]
    raise ConfigError(
        f"no preset '{name}'{_suggestion(key, table)}; presets: {_names(table)} (synovia configs list describes them)"
    )


def _suggestion(key: str, table: dict[str, Preset]) -> str:
    """`` (did you mean 'X'?)``: a preset in a subfolder by its file's name, or the closest name."""
    inside = [n for n in table if n.rsplit("/", 1)[-1] == key]
    return f" (did you mean '{inside[0]}'?)" if inside else did_you_mean(key, table, otherwise="")


def find_config(text: str) -> str:
    """What a command's CONFIG argument names: ``text`` itself if it is there (a file, or a folder the
    loader refuses), else ``text.toml`` if that file is there, else the preset of that name (its path).

    :class:`ConfigError` when it is none of these: the message says the file does not exist and lists the
    presets (naming the one a path like ``configs/knee2d.toml`` from another folder meant)."""
    path = Path(text)
    if path.exists():
        return text
    if not path.suffix and Path(text + ".toml").is_file():  # `synovia run knee2d` beside a copied knee2d.toml
        return text + ".toml"
    table = presets()
    if text.removesuffix(".toml") in table:
        return str(table[text.removesuffix(".toml")].path)
    meant = [n for n in table if path.suffix == ".toml" and path.as_posix().endswith(f"/{n}.toml")]
    if meant:
        name = max(meant, key=len)
        raise ConfigError(f"config file '{text}' does not exist here; the preset of that name works from any folder: '{name}'")
    listed = f"presets: {_names(table)} (synovia configs list describes them)"
    if path.suffix or len(path.parts) > 1:  # a file's path
        raise ConfigError(f"config file '{text}' does not exist, and no preset has that name; {listed}")
    raise ConfigError(f"'{text}' is neither a file here nor a preset{_suggestion(text, table)}; {listed}")


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def preset_files(name: str) -> list[Path]:
    """The preset's file, then every file of the presets it reads (a sweep's or fit's scenario, the
    observations, a label map), followed through the configs it names."""
    folder = presets_folder().resolve()
    files = [preset(name).path.resolve()]
    for path in files:  # grows as configs name further files
        if path.suffix != ".toml":
            continue
        for value in _strings(tomllib.loads(path.read_text(encoding="utf-8"))):
            target = (path.parent / value).resolve()
            if target.is_file() and target.is_relative_to(folder) and target not in files:
                files.append(target)
    return files


@dataclasses.dataclass(frozen=True)
class Copied:
    """A file :func:`copy_preset` wrote (``status`` "copied" or "replaced") or left as it was ("unchanged":
    it already held the same bytes)."""

    path: Path
    status: str


def copy_preset(name: str, dest: str | os.PathLike[str] = ".", overwrite: bool = False) -> list[Copied]:
    """Copy the preset ``name`` and the files it reads into the folder ``dest`` (made if missing), each at
    its path below the presets folder, so that its relative paths still resolve: ``fit_synthetic`` writes
    ``fit_synthetic.toml``, ``fit_truth.toml`` and ``data/synthetic_knee.h5``.

    A file that is there and differs is replaced only with ``overwrite``; otherwise :class:`ConfigError`
    names it before anything is written. One that holds the same bytes is left as it is."""
    files = preset_files(name)
    folder, dest = presets_folder().resolve(), Path(dest)
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"cannot copy into '{dest}': it is a file; give a folder (default: the current one)")
    pairs = [(src, dest / src.relative_to(folder)) for src in files]
    clashes = []
    for src, target in pairs:
        if target.is_dir():
            raise ConfigError(f"cannot copy '{src.name}' to '{target}': it is a folder")
        if target.exists() and target.read_bytes() != src.read_bytes():
            clashes.append(target)
    if clashes and not overwrite:
        shown = ", ".join(f"'{p}'" for p in clashes)
        raise ConfigError(
            f"{shown}: already there and not the preset's copy; pass --overwrite to replace "
            f"{'it' if len(clashes) == 1 else 'them'}, or copy into another folder: synovia configs copy {name} DIR"
        )
    out = []
    for src, target in pairs:
        if target.exists() and target not in clashes:
            out.append(Copied(target, "unchanged"))
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path(target)
        try:
            shutil.copyfile(src, tmp)
            os.chmod(tmp, (src.stat().st_mode & 0o777) | 0o200)  # the preset's mode (an installed one may be read-only), writable
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        out.append(Copied(target, "replaced" if target in clashes else "copied"))
    return out
