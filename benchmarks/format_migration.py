"""Format 1 against format 2: the same run by the last format-1 commit and by the current code,
every number of every job's ``metrics.json`` side by side (issue 28, "the same numbers as before").

The old side: a ``git worktree`` of :data:`OLD_REV` in /tmp, run from its root so that its own
``pyrofail`` is imported (checked first). :data:`OLD_REV` does not run as committed: 4f5063e
deleted ``pyrofail/stages/folder.py``, which its stages still import, so that file alone is
restored, untracked, from 4f5063e^ (:data:`REPAIRS`). The new side: this working tree, or a
worktree of ``--new-rev``. Both run ``python -m pyrofail.analyze [--preset P] --seed S --out DIR``.

Jobs are paired by (process, K, guide, objective, procedure, truth noise); each job's
``metrics.json`` and ``test_points.json`` are flattened to leaves (a list of numbers is one),
format 1's names mapped to format 2's (``X`` → ``X.mean``, ``X_stderr`` → ``X.stderr``,
:data:`RENAMES`), each pair judged bit-identical, within 1e-12 (relative) or different, and the
fitted weights compared, to tell a changed fit from a changed evaluation. A difference is matched
to a cause (:data:`CAUSES`: the migration note of docs/run-folder.md, and changes found in the
history since :data:`OLD_REV`), else it is **UNEXPLAINED**; where the files allow, the cause is
checked (✓/✗). ``--verify`` recomputes on the new fits, in the new tree, the test −ELBO and
I(x; z_i) with format 1's draws and format 1's aggregate KL: the largest difference from the old run.
Run: ``python -m benchmarks.format_migration [--default] [--no-reference] [--verify] [--out FILE.md]
[--runs DIR --reuse] [--new-rev REV]`` (the tiny preset always; ``--default`` adds the default run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OLD_REV = "5bab2e8"  # the last format-1 commit
REPAIRS = {"pyrofail/stages/folder.py": "4f5063e^"}  # lost by OLD_REV, still imported: path -> source
TOL = 1e-12
FLOAT32_EPS = 2.0**-23
# cause -> what changed, and whether the migration note (docs/run-folder.md) lists it
CAUSES = {
    "rename": "[note] a field renamed by format 2",
    "estimate": "[note] metrics.X/X_stderr → metrics.X as an Estimate: its stderr is the sampling error "
    "over the test points with the Monte Carlo error in quadrature (formerly that error alone, or none)",
    "format": "[note] the run folder's format number",
    "schema-new": "[schema] a field format 2 adds, no format-1 value (docs/run-folder.md: JobRecord, "
    "JobConfig)",
    "schema-dropped": "[schema] run-level options no longer copied into each job's config "
    "(docs/run-folder.md: JobConfig holds the job's own options)",
    "float64-mean": "[NOT in the note] 50fbdde: the mean of the float32 per-point values is taken in "
    "float64 (Estimate.of); format 1 stored the objective's float32 mean: a change below float32 resolution",
    "elbo-draws": "[NOT in the note] a2f64fb: the test −ELBO's 100 draws per point come from tiles seeded "
    "by bounds.block_seed(seed, ...), not from the global generator after torch.manual_seed(seed): same "
    "estimator, other draws (the PMO gap, log p(x) + ELBO, follows)",
    "mi-draws": "[NOT in the note] a2f64fb: I(x; z_i)'s draws per block of 64 points seeded by "
    "block_seed(seed, b, 0), not one draw after torch.manual_seed(seed): same estimator, other draws",
    "aggregate-kl": "[NOT in the note] 36e6376: aggregate_kl only in runs with LiBI "
    "(JobConfig.aggregate_kl), by the bias-corrected aggregate.aggregate_kl; formerly the quadrature's "
    "plug-in KL in every job at K <= 2 (run-folder.md: 'aggregate_kl (runs with LiBI)' under JobConfig)",
}
RENAMES = {"config.model": "config.process", "config.truth_options.noise_scale": "config.truth_noise"}
M2_KEYS = {"separation_ratio", "counterfactual_error_model", "counterfactual_error_guide", "mleo_class0"}
M2_KEYS |= {"mleo_class1", "accuracy", "bayes_accuracy"}  # format 1: flat in metrics
DROPPED = re.compile(r"config\.(bnn_\w+|downstream|preset|regression|procedure_options)\b")
SCHEMA_NEW = re.compile(
    r"\.(n|exact|flag)$|^(kind|version|seconds|build\..*|metrics\.(n_test|pareto_k_bad|semi_supervised)"
    r"|restarts\[\d+\]\.noise_scale|config\.(labelled_fraction|likelihood|noise_per_feature)"
    r"|test_points\.(kind|version|counterfactual_error(_guide)?|log_px_stderr|pareto_k))$"
)
MI = r"(mutual_information\[\d+\]|avg_mutual_information)"
RULES = [  # (field pattern, causes of its difference); a differing field matching none is UNEXPLAINED
    (r"^config\.format$", ["format"]),
    (r"^metrics\.(test_neg_elbo|pmo_gap)\.stderr$", ["estimate", "elbo-draws"]),
    (rf"^metrics\.{MI}\.stderr$", ["estimate", "mi-draws"]),
    (r"^metrics\.[\w.]+\.stderr$", ["estimate"]),
    (r"^metrics\.test_neg_(training_)?bound\.mean$", ["float64-mean"]),
    (r"^(metrics\.(test_neg_elbo|pmo_gap)\.mean|test_points\.neg_elbo)$", ["elbo-draws"]),
    (rf"^(metrics\.{MI}\.mean|test_points\.mutual_information)$", ["mi-draws"]),
    (r"^metrics\.aggregate_kl$", ["aggregate-kl"]),
]
PER_POINT = {  # a metric's per-point values in test_points.json: its mean is their mean
    "test_neg_bound": lambda p: p["neg_bound"],
    "test_neg_elbo": lambda p: p["neg_elbo"],
    "test_neg_log_px": lambda p: [-v for v in p["log_px"]],
    "pmo_gap": lambda p: [a + b for a, b in zip(p["log_px"], p["neg_elbo"])],
    "mleo": lambda p: [t - v for t, v in zip(p["truth_log_px"], p["log_px"])],
    "truth_neg_log_px": lambda p: [-v for v in p["truth_log_px"]],
    "avg_mutual_information": lambda p: torch.tensor(p["mutual_information"], dtype=torch.float64).mean(1),
}
MC_PARTS = {"pmo_gap": ("test_neg_log_px", "test_neg_elbo")}  # format 1's Monte Carlo errors in a stderr
NO_MC = {"truth_neg_log_px", "avg_mutual_information", "mutual_information"}  # stderr: points only


def per_point(key: str, points: dict):
    if m := re.fullmatch(r"mutual_information\[(\d+)\]", key):
        return [row[int(m.group(1))] for row in points["mutual_information"]]
    return PER_POINT[key](points)


def _git(*args, cwd=ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return env | {"OMP_NUM_THREADS": "1"}


def _python(tree: Path, *args) -> str:
    done = subprocess.run([sys.executable, *args], cwd=tree, env=_env(), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"in {tree}: {done.stderr[-1500:]}")
    return done.stdout


def add_worktree(rev: str) -> Path:
    tree = Path(tempfile.mkdtemp(prefix="format-" + re.sub(r"\W", "_", rev) + "-"))
    _git("worktree", "add", "--detach", str(tree), rev)
    for path, source in REPAIRS.items():
        module = path.removesuffix(".py").replace("/", ".")
        used = any(module in f.read_text() for f in (tree / "pyrofail").rglob("*.py"))
        if used and not (tree / path).exists():
            (tree / path).write_text(_git("show", f"{source}:{path}"))
            print(f"{rev}: restored {path} from {source} (deleted, still imported)", file=sys.stderr)
    return tree


def check_import(tree: Path) -> str:
    """The ``pyrofail/__init__.py`` a run from ``tree`` imports; refuses another tree's."""
    code = "import pyrofail, pyrofail.analysis as a, pyrofail.models; print(pyrofail.__file__, a.__file__)"
    files = _python(tree, "-c", code).split()
    if not all(Path(f).resolve().is_relative_to(tree.resolve()) for f in files):
        raise SystemExit(f"a run from {tree} imports {files}, not its own tree")
    return files[0]


def run(tree: Path, out: Path, args: list[str], reuse: bool) -> None:
    if reuse and (out / "metrics.json").exists():
        return
    cmd = [sys.executable, "-m", "pyrofail.analyze", *args, "--out", str(out), "--quiet"]
    print(f"[{tree}] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=tree, env=_env(), check=True, stdout=subprocess.DEVNULL)


def _is_num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _numbers(v) -> list | None:
    """A number or a non-empty (nested) list of numbers, flattened; None for anything else."""
    if _is_num(v) or not (isinstance(v, list) and v):
        return [v] if _is_num(v) else None
    parts = [_numbers(item) for item in v]
    return None if None in parts else [x for part in parts for x in part]


def leaves(obj, path: str = "") -> dict:
    """``{path: value}``: the scalars, and each list of numbers as one tuple."""
    if isinstance(obj, dict):
        named = ((val, f"{path}.{key}" if path else key) for key, val in obj.items())
        return {k: v for val, name in named for k, v in leaves(val, name).items()}
    if isinstance(obj, list):
        nums = _numbers(obj)
        if nums is not None:
            return {path: tuple(nums)}
        return {k: v for i, val in enumerate(obj) for k, v in leaves(val, f"{path}[{i}]").items()}
    return {path: obj}


def old_to_new(old: dict, new: dict) -> dict:
    """Format 1's leaves under format 2's names: ``{new path: (old path, value)}``."""
    out, m_new = {}, new.get("metrics", {})
    for path, value in leaves(old).items():
        name = RENAMES.get(path, path)
        m = re.fullmatch(r"metrics\.(\w+?)(_stderr)?", path)
        if m and path != "metrics.log_px_method":
            key, field = m.group(1), "stderr" if m.group(2) else "mean"
            if key in M2_KEYS or (key == "mleo" and isinstance(m_new.get("semi_supervised"), dict)):
                key = f"semi_supervised.{key}"
            if key == "mutual_information" and isinstance(value, tuple):
                out |= {f"metrics.{key}[{i}].mean": (f"{path}[{i}]", v) for i, v in enumerate(value)}
                continue
            target = (m_new.get("semi_supervised") or {}) if "." in key else m_new
            estimate = isinstance(target.get(key.split(".")[-1]), dict) or m.group(2)
            name = f"metrics.{key}.{field}" if estimate else f"metrics.{key}"
        out[name] = (path, value)
    return out


def job_key(c: dict) -> tuple:
    noise = c.get("truth_noise", c.get("truth_options", {}).get("noise_scale"))
    process = c.get("process", c.get("model", c.get("data")))  # format 1: "model"
    sweep = (c["latent_dim"], c["guide"], c["objective"], c.get("procedure") or "joint")
    return (process, *sweep, noise, c.get("fold"))


def jobs(run_dir: Path) -> dict:
    found = sorted((run_dir / "jobs").glob("*/metrics.json"))
    return {job_key(json.loads(f.read_text())["config"]): f.parent for f in found}


def equal(a, b) -> tuple[str, float | None]:
    """``(verdict, max |Δ|)`` of two leaves."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        each = [equal(x, y) for x, y in zip(a, b)] if len(a) == len(b) else [("different", None)]
        worst = max((d for _, d in each if d is not None), default=0.0)
        bad = sum(v == "different" for v, _ in each)
        if bad:
            return f"different ({bad}/{len(a)})" if len(a) == len(
                b
            ) else f"different (length {len(a)} → {len(b)})", worst
        return ("within 1e-12" if any(v == "within 1e-12" for v, _ in each) else "bit-identical"), worst
    if _is_num(a) and _is_num(b):
        if a == b or (math.isnan(a) and math.isnan(b)):
            return "bit-identical", 0.0
        d = abs(a - b)
        return ("within 1e-12" if d <= TOL * max(1.0, abs(a)) else "different"), d
    return ("bit-identical" if a == b else "different"), None


def causes_of(field: str, old_path: str | None, side: str) -> list[str]:
    if side == "new only" and re.match(r"metrics\..*\.stderr$", field):
        return ["estimate"]  # a mean format 1 stored without an error
    if side == "new only":
        return ["schema-new"] if SCHEMA_NEW.search(field) else []
    if side == "old only":
        return ["schema-dropped"] if DROPPED.match(field) else []
    if old_path in RENAMES:
        return ["rename"]
    return next((causes for pattern, causes in RULES if re.search(pattern, field)), [])


def check(field, old_value, value, causes, old_metrics, new_points, old_points) -> tuple[list, str]:
    """A metric's causes refined by its per-point values (unchanged: no new draws), and the check
    of them that the files allow (``✓ ...``/``✗ ...``; '' where they allow none)."""
    m = re.fullmatch(r"metrics\.([\w\[\]]+)\.(mean|stderr)", field)
    if not m or value is None:
        return causes, ""
    key, part = m.groups()
    if key == "test_neg_training_bound" and part == "mean":  # no per-point values stored
        bad = old_value is None or abs(old_value - value) > FLOAT32_EPS * abs(old_value)
        return causes, f"{'✓✗'[bad]} |Δ| within float32 resolution (2^-23 relative)"
    try:
        v, w = (torch.as_tensor(per_point(key, p), dtype=torch.float64) for p in (new_points, old_points))
    except (KeyError, TypeError, IndexError):
        return causes, ""
    same = torch.equal(v, w)
    if same:
        causes = [c for c in causes if not c.endswith("-draws")] or ["float64-mean"]
    if part == "mean":
        old_mean = {float(w.float().mean()): "float32", float(w.mean()): "float64"}.get(old_value)
        bad, which = old_mean is None or float(v.mean()) != value, "unchanged" if same else "new"
        return (
            causes,
            f"{'✓✗'[bad]} old = {old_mean} mean, new = float64 mean of the {which} per-point values",
        )
    sampling = float(v.std() / math.sqrt(v.numel()))
    if key.split("[")[0] in NO_MC:
        expect, how = sampling, "sd/√n of the per-point values"
    elif same:
        mc = math.hypot(*(float(old_metrics.get(f"{k}_stderr", 0.0)) for k in MC_PARTS.get(key, (key,))))
        expect = math.hypot(sampling, mc)
        how = f"hypot(sd/√n of the unchanged per-point values, old Monte Carlo error {mc:.3g})"
    else:
        return causes, ""
    return causes, f"{'✓✗'[abs(expect - value) > TOL * max(1.0, abs(value))]} = {how}"


ROW = ("field", "old_path", "old", "new", "verdict", "delta", "causes", "check")


def weights(old_dir: Path, new_dir: Path) -> list[dict]:
    rows = []
    for name in ("model.pt", "guide.pt"):
        a, b = (torch.load(d / name, weights_only=True) for d in (old_dir, new_dir))
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        n = [f"{sum(t.numel() for t in s.values())} weights" for s in (a, b)]
        verdict = "bit-identical" if same else "different"
        rows.append(dict(zip(ROW, (f"{name} (state dict)", None, *n, verdict, None, [], ""))))
    return rows


def compare_job(old_dir: Path, new_dir: Path) -> list[dict]:
    old, new, old_points, new_points = (
        json.loads((d / f).read_text())
        for f in ("metrics.json", "test_points.json")
        for d in (old_dir, new_dir)
    )
    rows = []
    for label, a, b in (("", old, new), ("test_points.", old_points, new_points)):
        mapped = {f"{label}{k}": (f"{label}{p}", v) for k, (p, v) in old_to_new(a, b).items()}
        new_leaves = {f"{label}{k}": v for k, v in leaves(b).items()}
        for field in sorted(set(mapped) | set(new_leaves), key=_order):
            old_path, ov = mapped.get(field, (None, None))
            nv = new_leaves.get(field)
            side = "old only" if field not in new_leaves else "new only" if field not in mapped else "both"
            verdict, delta = equal(ov, nv) if side == "both" else (side, None)
            numeric = any(_is_num(v) or isinstance(v, tuple) for v in (ov, nv))
            renamed = old_path is not None and old_path != field
            none_one_side = side != "both" and (ov if side == "old only" else nv) is None
            if not (numeric or renamed or none_one_side or verdict == "different"):
                continue  # a string, a flag or a name that both formats hold alike
            differs = not verdict.startswith(("bit-identical", "within"))
            causes, checked = causes_of(field, old_path, side) if differs or renamed else [], ""
            if differs:
                causes, checked = check(field, ov, nv, causes, old["metrics"], new_points, old_points)
            rows.append(dict(zip(ROW, (field, old_path, ov, nv, verdict, delta, causes, checked))))
    return rows + weights(old_dir, new_dir)


def _order(field: str) -> tuple:
    top = re.split(r"[.\[]", field)[0]
    rank = ["metrics", "restarts", "selected_restart", "history", "config", "test_points"]
    return (rank.index(top) if top in rank else len(rank), field)


def _show(v) -> str:
    if isinstance(v, tuple):
        return f"[{len(v)} numbers]"
    return "—" if v is None else repr(v) if isinstance(v, float) else str(v).replace("|", "\\|")


def render(title: str, pairs: list[tuple[str, list[dict]]]) -> str:
    lines = [f"### {title}", ""]
    for job, rows in pairs:
        lines += [f"#### {job}", "", "| field (old → new) | old | new | equal | max \\|Δ\\| | cause |"]
        lines.append("|---|---|---|---|---|---|")
        grouped = {"schema-new": [], "schema-dropped": []}  # one row each, every field with its value
        for r in rows:
            if r["causes"] in (["schema-new"], ["schema-dropped"]):
                grouped[r["causes"][0]].append(r)
                continue
            renamed = r["old_path"] not in (None, r["field"])
            differs = not r["verdict"].startswith(("bit-identical", "within"))
            cause = "; ".join(r["causes"]) or ("**UNEXPLAINED**" if differs else "")
            cause += f" ({r['check']})" if r["check"] else ""
            delta = "" if r["delta"] in (None, 0.0) else f"{r['delta']:.3g}"
            name = f"{r['old_path']} → {r['field']}" if renamed else r["field"]
            cells = [name, _show(r["old"]), _show(r["new"]), r["verdict"], delta, cause]
            lines.append("| " + " | ".join(cells) + " |")
        for cause, rs in grouped.items():
            side = "new" if cause == "schema-new" else "old"
            if rs:
                names = ", ".join(f"{r['field']} = {_show(r[side])}" for r in rs)
                cells = f"— | {len(rs)} fields" if side == "new" else f"{len(rs)} fields | —"
                lines.append(f"| {names} | {cells} | {side} only | | {cause} |")
        lines.append("")
    return "\n".join(lines)


def legend(used: set) -> str:
    lines = ["### Causes", "", "| cause | what changed |", "|---|---|"]
    return "\n".join(lines + [f"| {c} | {what} |" for c, what in CAUSES.items() if c in used])


VERIFY = r"""
import json, sys, torch
from pathlib import Path
from pyrofail import bounds
from pyrofail.analysis import information, metrics
from pyrofail.records import JobRecord, RunFolder
from pyrofail.records.folder import load_fit, load_test_data
torch.set_num_threads(1)
new, old = Path(sys.argv[1]), Path(sys.argv[2])
rec = RunFolder.read(JobRecord, new / "metrics.json")
model, guide = (m.eval() for m in load_fit(new, rec.build))
x, cfg = load_test_data(new)["x"], rec.config
seed = cfg["seed"] if isinstance(cfg, dict) else cfg.seed  # a dict before JobConfig
op, om = (json.loads((old / f).read_text()) for f in ("test_points.json", "metrics.json"))
with torch.random.fork_rng(devices=[]):
    torch.manual_seed(seed)  # format 1's draws: the global generator after manual_seed(seed)
    elbo = (-bounds.elbo(model, guide, x, 100).value).double()
out = {"elbo-draws": float((elbo - torch.tensor(op["neg_elbo"], dtype=torch.float64)).abs().max())}
information.POINT_BLOCK = x.shape[0]  # one block seeded by seed itself: format 1's draws
information.block_seed = lambda s, *index: s
mi = information.mutual_information(guide, x, seed=seed, per_point=True).double()
out["mi-draws"] = float((mi - torch.tensor(op["mutual_information"], dtype=torch.float64)).abs().max())
if "aggregate_kl" in om["metrics"]:
    out["aggregate-kl"] = abs(metrics.aggregate_posterior_kl(model, x) - om["metrics"]["aggregate_kl"])
print(json.dumps(out))
"""


def verify(tree: Path, old_dir: Path, new_dir: Path) -> str:
    got = json.loads(_python(tree, "-c", VERIFY, str(new_dir), str(old_dir)).strip().splitlines()[-1])
    got = ", ".join(f"{k} {v:.3g}" for k, v in got.items())
    return f"format 1's draws recomputed on the new fit, max |Δ| from the old run: {got}"


def compare_runs(old_run: Path, new_run: Path, new_tree: Path | None, used: set) -> list:
    """``[(title, rows)]`` per pair of jobs; the causes met are added to ``used``."""
    old_jobs, new_jobs, pairs = jobs(old_run), jobs(new_run), []
    for key in sorted(set(old_jobs) | set(new_jobs), key=str):
        if key not in old_jobs or key not in new_jobs:
            side = "new" if key in new_jobs else "old"
            pairs.append((f"{key}: only in the {side} run (**UNEXPLAINED**)", []))
            continue
        o, n = old_jobs[key], new_jobs[key]
        rows = compare_job(o, n)
        used |= {c for r in rows for c in r["causes"]}
        title = o.name if o.name == n.name else f"{o.name} → {n.name}"
        pairs.append((title + (f" — {verify(new_tree, o, n)}" if new_tree else ""), rows))
    return pairs


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--default", action="store_true", help="also compare the default run")
    p.add_argument("--no-reference", action="store_true", help="run both sides with --no-reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--new-rev", help="the new side: a worktree of this revision (default: this working tree)")
    p.add_argument("--runs", type=Path, help="where the run folders go (default: a new folder in /tmp)")
    p.add_argument("--reuse", action="store_true", help="keep the finished run folders found in --runs")
    p.add_argument("--verify", action="store_true", help="recompute format 1's draws on the new fits")
    p.add_argument("--out", type=Path, help="also write the tables (markdown) here")
    a = p.parse_args(argv)
    (runs := a.runs or Path(tempfile.mkdtemp(prefix="format-migration-"))).mkdir(parents=True, exist_ok=True)
    trees = {"old": add_worktree(OLD_REV)}
    try:
        trees["new"] = add_worktree(a.new_rev) if a.new_rev else ROOT
        label = _git("rev-parse", "--short", a.new_rev or "HEAD").strip()
        dirty = "" if a.new_rev else _git("status", "--porcelain", "pyrofail", "analysis", "models", "guides")
        label += f" + uncommitted changes to {len(dirty.splitlines())} files" if dirty.strip() else ""
        imported = {side: check_import(tree) for side, tree in trees.items()}
        options = ["--seed", str(a.seed)] + (["--no-reference"] if a.no_reference else [])
        doc = [f"## Format 1 ({OLD_REV}) against format 2 ({label})", ""]
        doc += [f"Imported: old `{imported['old']}`, new `{imported['new']}`; run folders in `{runs}`.", ""]
        used = set()
        for name, args in [("tiny", ["--preset", "tiny"])] + ([("default", [])] if a.default else []):
            dirs = {side: runs / f"{side}-{name}{'-noref' if a.no_reference else ''}" for side in trees}
            for side, tree in trees.items():
                run(tree, dirs[side], args + options, a.reuse)
            pairs = compare_runs(dirs["old"], dirs["new"], trees["new"] if a.verify else None, used)
            doc.append(render(f"`--preset {name} {' '.join(options)}`", pairs))
        text = "\n".join(doc) + "\n" + legend(used) + "\n"
        text += f"\n{text.count('**UNEXPLAINED**')} difference(s) UNEXPLAINED.\n"
        print(text)
        if a.out:
            a.out.write_text(text)
    finally:
        for tree in trees.values():
            if tree != ROOT:
                _git("worktree", "remove", "--force", str(tree))


if __name__ == "__main__":
    main()
