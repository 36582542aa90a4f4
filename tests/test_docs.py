"""The README tells the truth: its commands are the ones CI runs, its example runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readme_test_command():
    commands = [line for block in _blocks("bash") for line in block.splitlines()]
    test_cmd = next(c for c in commands if "pytest" in c and c.startswith("pip install"))
    main_cmd = next(c for c in commands if "pyrofail.analyze" in c and c.startswith("pip install"))
    assert "-c constraints.txt" in test_cmd and "-c constraints.txt" in main_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text()


def test_readme_python_example_runs():
    (code,) = _blocks("python")
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["fit"].model.latent_dim == 1
    assert namespace["only_guide"].model.decoder.__class__.__name__ == "Spiral"
    assert namespace["bias"]["n_points"] == 100
    assert namespace["verdict"]["failure"] in ("data distribution", "latent space", "none", "undetermined")
