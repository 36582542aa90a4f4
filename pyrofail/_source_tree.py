"""``models/``, ``guides/`` and ``analysis/`` as subpackages of a ``pyrofail`` imported from a checkout.

The repository keeps the three folders beside ``pyrofail/`` and ``setup.cfg`` installs them as
``pyrofail.models``, ``pyrofail.guides`` and ``pyrofail.analysis`` (``package_dir``). Run from
the clone's root, ``python -m pyrofail.analyze`` puts the root first on ``sys.path``, so the
checkout's ``pyrofail/`` is imported instead of the installed package, and its three
subpackages are not inside it. :func:`install` then adds a finder that maps exactly those three
names onto the sibling folders, the way setuptools' editable install does; every module below
them is found by the ordinary machinery through the package's ``__path__``. In an installed
package the subpackages sit inside ``pyrofail/`` and nothing is added.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

__all__ = ["SUBPACKAGES", "install"]

SUBPACKAGES = ("models", "guides", "analysis")  # setup.cfg: pyrofail.<name> = <name>


class _SiblingFolders(importlib.abc.MetaPathFinder):
    """Finds ``pyrofail.<name>`` for the names of :data:`SUBPACKAGES` in ``top/<name>/``."""

    def __init__(self, top: Path):
        self.top = top

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.partition(".")
        if package != "pyrofail" or name not in SUBPACKAGES:
            return None
        init = self.top / name / "__init__.py"
        if not init.is_file():
            return None
        return importlib.util.spec_from_file_location(
            fullname, init, submodule_search_locations=[str(init.parent)]
        )


def install(package_dir: Path) -> bool:
    """Add the finder when ``package_dir`` (the imported ``pyrofail/``) lacks the subpackages
    and stands in a checkout that has them; returns whether it was added."""
    package_dir = Path(package_dir).resolve()
    top = package_dir.parent
    if (package_dir / "analysis").is_dir() or not (top / "analysis" / "__init__.py").is_file():
        return False
    if any(isinstance(f, _SiblingFolders) for f in sys.meta_path):
        return False
    # first: an editable install of another checkout must not map this one's names
    sys.meta_path.insert(0, _SiblingFolders(top))
    return True
