"""The README's commands work as written: from the clone's root, against a plain install.

``python -m pyrofail.analyze`` run from the root imports the checkout's ``pyrofail/``, not the
installed package; the checkout must then still find ``pyrofail.analysis`` and its siblings.
And every distribution that the package's requirements pull in is pinned in
``constraints.txt``, so that the README's install is the same on every machine.
"""

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]

# start a Python as `python -m` does from the root, without an editable-install finder
HIDE_EDITABLE = (
    "import sys\nsys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
)
RUN_LIST = (
    "import runpy\nsys.argv = ['pyrofail.analyze', '--list']\n"
    "runpy.run_module('pyrofail.analyze', run_name='__main__', alter_sys=True)\n"
)


def test_the_checkout_runs_from_its_root_without_an_editable_install(tmp_path):
    for folder in ("pyrofail", "models", "guides", "analysis"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    code = HIDE_EDITABLE + RUN_LIST
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "figure8" in done.stdout
    # and it was the copy that ran, not the repository's files
    probe = HIDE_EDITABLE + "import pyrofail.analysis.reference.grid as g\nprint(g.__file__)"
    where = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert Path(where.stdout.strip()).resolve().is_relative_to(tmp_path.resolve()), where.stderr


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_name(name)] = version.strip()
    return pins


def _closure(root: str, extras: tuple[str, ...]) -> set[str]:
    """The installed distributions that ``root[extras]`` requires, directly or through others."""
    seen, todo = set(), [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional requirement not installed here
        for text in dist.requires or []:
            req = Requirement(text)
            env = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(e) for e in env):
                continue
            key = (_name(req.name), tuple(sorted(req.extras)))
            if key[0] not in seen:
                seen.add(key[0])
                todo.append(key)
            elif req.extras:
                todo.append(key)
    return seen


def test_every_installed_requirement_is_pinned():
    pins = _pins()
    needed = _closure("pyrofail", ("test", "dask", "bench"))
    installed = {n for n in needed if _installed(n)}
    missing = sorted(installed - set(pins))
    assert not missing, f"installed but not pinned in constraints.txt: {missing}"
    for name in installed:
        version = metadata.version(name)
        assert version == pins[name] or version.startswith(pins[name] + "+"), (name, version, pins[name])


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True
