"""Stage ``program``: the check of a user's own Pyro model and guide (``--program``).

The object named ``module:object`` (a ``(model, guide)`` pair, or anything with ``.model`` and
``.guide``) is imported from the current folder and checked at the points of ``--data``
(:func:`pyrofail.program_check.check`: its reference posterior, the guide against it, how hard the
posteriors are for a mean-field Gaussian, and the verdict); the run has no fits of its own.

Reads: ``config.json``. Writes: ``program.json`` (:class:`~pyrofail.records.program.ProgramCheck`).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import replace

from pyrofail.data import load
from pyrofail.errors import UsageError
from pyrofail.program_check import check
from pyrofail.records import RunFolder
from pyrofail.records.program import ProgramCheck

__all__ = ["load_program", "run"]


def load_program(spec: str):
    """``(model, guide)`` of ``module:object``; one-line :class:`UsageError` s otherwise."""
    module_name, sep, name = str(spec).partition(":")
    if not sep or not module_name or not name:
        raise UsageError(f"--program {spec!r} is not MODULE:OBJECT (e.g. my_vae:vae)")
    if "" not in sys.path:
        sys.path.insert(0, "")  # the current folder, as python -m has it
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UsageError(f"--program {spec!r}: cannot import {module_name!r} ({e})") from None
    obj = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"--program {spec!r}: {module_name} has no {name!r}")
        obj = getattr(obj, part)
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return obj[0], obj[1]
    if hasattr(obj, "model") and hasattr(obj, "guide"):
        return obj.model, obj.guide
    raise UsageError(f"--program {spec!r} is a {type(obj).__name__}; expected a (model, guide) pair or an "
                     "object with .model and .guide")  # fmt: skip


def run(folder: RunFolder) -> None:
    spec = folder.options.program
    if spec is None:
        return
    key_path = folder.root / "program.json"
    if folder.read(ProgramCheck, key_path) is not None:
        return
    model, guide = load_program(spec)
    options = {
        k: v for k, v in folder.options.data_options.items() if k not in ("folds", "fold", "fractions")
    }
    options.pop("standardize", None)
    x = load(folder.options.data, **options).x
    o = folder.options  # with --no-reference the check still needs a reference of its own
    settings = folder.reference_settings or {"method": "auto", "points": o.reference_points, "seed": o.seed}
    folder.say(f"program: checking {spec} at {min(settings['points'], x.shape[0])} points")
    result = check(
        model, guide, x, reference=settings["method"], points=settings["points"], seed=settings["seed"]
    )
    folder.write(replace(result, program=spec), key_path)
