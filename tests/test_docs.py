"""The README tells the truth: its commands are the ones CI runs, its example runs."""

import re
from pathlib import Path

from pyrofail.analysis.diagnose import conclude

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readme_test_command():
    commands = [line for block in _blocks("bash") for line in block.splitlines()]
    test_cmd = next(c for c in commands if "pytest" in c and c.startswith("pip install"))
    main_cmd = next(c for c in commands if "pyrofail.analyze" in c and c.startswith("pip install"))
    assert "-c constraints.txt" in test_cmd and "-c constraints.txt" in main_cmd
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci
    # the first command too, as written (a plain install, from the root), on the smoke preset
    assert f"{main_cmd} --preset tiny" in ci.replace("pip install --quiet", "pip install")


def test_readme_python_example_runs():
    (code,) = [b for b in _blocks("python") if "pf.fit(" in b]
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["fit"].model.latent_dim == 1
    assert namespace["only_guide"].model.decoder.__class__.__name__ == "Spiral"
    assert namespace["bias"]["n_points"] == 100
    # the verdict rests on the numbers it reports: Cx1 is the share of points whose KL* is above
    # the cut against the share the test -ELBO's error asks for, and the decision is conclude's
    verdict = namespace["verdict"]
    ev = verdict.evidence
    assert verdict.conditions["Cx1"] == (
        ev.truth_share_hard.mean >= ev.cx1_share if ev.cx1_reachable else None
    )
    assert verdict.failure == conclude(ev).failure
    assert verdict.sentences()[-1].startswith(("Guideline", "Verdict", "The MFG guide's"))


def test_readme_check_of_a_users_pyro_vae_runs(tmp_path, monkeypatch):
    """The example that checks Pyro's own VAE, as the README writes it, at a smaller budget
    (fewer SVI steps and points: the full one is a benchmark, benchmarks/program_digits.py)."""
    (code,) = [b for b in _blocks("python") if "pf.check(" in b]
    assert len(code.strip().splitlines()) < 15
    code = code.replace("steps=6000", "steps=150").replace('out="runs/digits-check"', "out=OUT, points=24")
    monkeypatch.syspath_prepend(str(ROOT))
    namespace = {"OUT": tmp_path / "check"}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    result = namespace["result"]
    assert result.n_points == 24 and result.verdict in (
        "ok",
        "family",
        "amortization",
        "family+amortization",
        "undetermined",
    )
    report = (tmp_path / "check" / "report.md").read_text()
    assert report.splitlines()[0].startswith("# pyrofail report:") and "## Your model and guide" in report
