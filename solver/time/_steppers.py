"""The steppers by name, as configs give them (``run.stepper``)."""

from __future__ import annotations

from collections.abc import Callable

from ._base import LAYOUTS, Stepper
from ._rkl2 import StrangRKL2
from ._ssp import SSPRK2, SSPRK3, ForwardEuler
from ._strang import StrangSSPRK3

STEPPERS: dict[str, type[Stepper]] = {
    "forward_euler": ForwardEuler,
    "ssp_rk2": SSPRK2,
    "ssp_rk3": SSPRK3,
    "strang_ssp_rk3": StrangSSPRK3,
    "strang_rkl2": StrangRKL2,
}


def stepper_class(name: str) -> type[Stepper]:
    """The class of stepper ``name``: its ``order``, ``ssp_coefficient``, ``splits_losses`` and ``splits_diffusion``."""
    try:
        return STEPPERS[name]
    except KeyError:
        raise ValueError(f"stepper {name!r}: allowed {', '.join(STEPPERS)}") from None


def make_stepper(name: str, rkl2_stages: int = 0, layout: str = "platform") -> Stepper:
    """Stepper ``name``; ``rkl2_stages`` for one that splits diffusion (:class:`StepPlan` chooses it),
    ``layout`` how its stages are laid out (``"platform"`` or one of ``LAYOUTS``)."""
    cls = stepper_class(name)
    make: Callable[..., Stepper] = cls  # the stepper's own constructor (the Protocol's is object())
    if layout != "platform" and layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: allowed platform, {', '.join(LAYOUTS)}")
    if cls.splits_diffusion:
        return make(stages=int(rkl2_stages), layout=layout)
    return make(layout=layout)
