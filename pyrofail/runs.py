"""Run folders: resolved config, metrics, checkpoints and figures, written atomically.

Every write goes to a temporary file in the same folder and is then renamed over the target,
so a killed process leaves either the old file or the new one, never half of one. Checkpoints
are ``torch.save`` files of tensors and plain containers, loaded with ``weights_only=True``.
A run folder records the layout version it was written with; a folder from an incompatible
version is refused rather than mis-read.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import tempfile
from pathlib import Path

import torch

from pyrofail.errors import UsageError

__all__ = [
    "RUN_FORMAT",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "dumps",
    "load_checkpoint",
    "read_json",
    "remove_stale_temporaries",
    "versions",
]

RUN_FORMAT = 2
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_stale_temporaries(folder) -> int:
    """Delete the temporary files that killed writes left behind in ``folder`` (recursively);
    returns how many. Safe only when no other process writes to ``folder``."""
    count = 0
    for tmp in Path(folder).rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        count += 1
    return count


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps(obj) -> str:
    """Deterministic JSON (sorted keys, non-finite floats as ``null``/``"inf"``)."""
    return json.dumps(_jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def atomic_write_json(path, obj) -> None:
    atomic_write_bytes(path, dumps(obj).encode())


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj, path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path) -> dict:
    """Read a JSON file, turning a missing or unreadable file into a :class:`UsageError`."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path} is not a readable JSON file ({type(e).__name__})") from None


def load_checkpoint(path, map_location="cpu") -> dict:
    """``torch.load(path, weights_only=True)``; a foreign or damaged file is a :class:`UsageError`."""
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not our checkpoint"
        raise UsageError(f"{path} is not a pyrofail checkpoint ({type(e).__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != RUN_FORMAT:
        raise UsageError(f"{path} is not a pyrofail checkpoint of format {RUN_FORMAT}; start a new run")
    return obj


def versions() -> dict:
    """Versions of Python and of the packages that determine the numbers."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "pyro-ppl", "numpy", "arviz", "pyrofail"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
