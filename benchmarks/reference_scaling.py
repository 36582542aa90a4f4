"""The NUTS reference at the posterior stage's size, and how it grows with the number of points.

``stage``: the reference of fitted K = 3 models as ``pyrofail/stages/references.py`` computes it
(the first ``--points`` test points of the job's data, 500 draws per point, the job's seed, eight
draws of the trained guide as extra optimisation starts, every mode-finding step on): per
model the seconds, the gradient evaluations, the seconds of each step, and with ``--profile``
a cProfile of it (the top functions by cumulative time).

``scaling``: the same reference of one job at ``--sizes`` points (100, 300, 1,000), each in a
fresh subprocess so that its peak resident memory (``resource.getrusage``) is its own; every row
with its ratio to the smallest size.

Fitted K = 3 decoders for it, cheaply (minutes; the 3 x 50 LeakyReLU MLP of ``table1``)::

    OMP_NUM_THREADS=1 python -m pyrofail.analyze --model figure8,clusters --latent-dim 3 \\
        --learn-noise all --restarts 2 --steps 3000 --n-test 2000 --no-reference --out runs/k3
    python benchmarks/reference_scaling.py prepare runs/k3    # each job's decoder, guide draws, points
    OMP_NUM_THREADS=1 python benchmarks/reference_scaling.py stage runs/k3 > after.log
    OMP_NUM_THREADS=1 python benchmarks/reference_scaling.py scaling runs/k3/jobs/figure8-K3-mean_field-elbo

Before and after: ``--src DIR`` runs another checkout's code (a worktree of an older commit,
``git worktree add --detach DIR COMMIT``), with that checkout's ``models``, ``guides`` and
``analysis``; ``prepare`` (with the current code) saves per job ``reference_inputs.pt``: the
decoder's weights and sigma as plain tensors (run by :class:`PlainGaussian`, checked
against the job's model), the test points and the guide's draws for the first ``--points``
points exactly as the stage draws them, so that every checkout measures the same decoder at the
same points from the same starts; every checkout's reference is judged by the stage's gate
(:data:`STAGE_GATE`)::

    OMP_NUM_THREADS=1 python benchmarks/reference_scaling.py stage runs/k3 --src ../before > before.log
    python benchmarks/reference_scaling.py compare before.log after.log
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import pstats
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

DRAWS = 500  # pyrofail.stages.references.DRAWS
GUIDE_CANDIDATES = 8  # pyrofail.stages.references.GUIDE_CANDIDATES
ROOT = Path(__file__).resolve().parents[1]


def _load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


INPUTS = "reference_inputs.pt"  # a job's decoder, guide draws and test points (``prepare``)
# the gate of the posterior stage (pyrofail/stages/bias.py GATE, analysis quality.RHAT_MAX):
# applied to every checkout's reference, so that "failing the gate" means the same before and after
STAGE_GATE = {"RHAT_MAX": 1.05, "ESS_MIN": 400.0 * DRAWS / 2000}
# pyrofail.nn.ACTIVATIONS
ACTIVATIONS = {
    "leaky_relu": nn.functional.leaky_relu,
    "relu": nn.functional.relu,
    "tanh": torch.tanh,
    "softplus": nn.functional.softplus,
    "elu": nn.functional.elu,
}
LOG_2PI = math.log(2 * math.pi)


class PlainGaussian(nn.Module):
    r""":math:`z \sim \mathcal N(0, I_K)`, :math:`x \mid z \sim \mathcal N(f(z), \operatorname{diag}
    \sigma^2)` with an MLP :math:`f`: what ``reference_posterior`` reads of a model (``latent_dim``,
    ``data_dim``, ``log_joint``; ``mean`` and ``noise_scale`` for the grid) in this file's own
    class, so that any checkout runs the decoder another one trained. ``mean`` and ``log_joint``
    repeat ``pyrofail.nn.MLP`` and ``LatentGaussian`` (one restart) operation for operation;
    ``prepare`` checks that they agree."""

    restarts = None

    def __init__(self, state: dict):
        super().__init__()
        self.latent_dim, self.data_dim = int(state["latent_dim"]), int(state["data_dim"])
        self.activation = state["activation"]
        self.noise_per_feature = bool(state["noise_per_feature"])
        self.weights = nn.ParameterList([nn.Parameter(w.clone()) for w in state["weights"]])
        self.biases = nn.ParameterList([nn.Parameter(b.clone()) for b in state["biases"]])
        self.log_noise = nn.Parameter(state["log_noise"].clone())

    @property
    def noise_scale(self) -> torch.Tensor:
        return self.log_noise.detach().exp()

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        act, last = ACTIVATIONS[self.activation], len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.addmm(b, h, w) if h.dim() == 2 else h @ w + b
            if i < last:
                h = act(h)
        return h

    def log_joint(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        log_sigma, k, d = self.log_noise, self.latent_dim, self.data_dim
        log_prior = -0.5 * (z * z).sum(-1) - 0.5 * k * LOG_2PI
        resid = (x - self.mean(z)) * torch.exp(-log_sigma)
        log_norm = log_sigma.sum(-1) if self.noise_per_feature else d * log_sigma
        return log_prior + (-0.5 * (resid * resid).sum(-1) - log_norm - 0.5 * d * LOG_2PI)


def plain_state(model) -> dict:
    """What :class:`PlainGaussian` rebuilds a fitted one-restart ``LatentGaussian`` with an MLP
    decoder from: plain tensors, which every checkout can load."""
    dec = model.decoder
    if getattr(model, "restarts", None) is not None or not hasattr(dec, "weights"):
        raise SystemExit(f"{type(model).__name__}: only a one-restart Gaussian model with an MLP decoder")
    return {
        "latent_dim": model.latent_dim,
        "data_dim": model.data_dim,
        "activation": dec.activation,
        "noise_per_feature": bool(getattr(model, "noise_per_feature", False)),
        "weights": [w.detach().double().clone() for w in dec.weights],
        "biases": [b.detach().double().clone() for b in dec.biases],
        "log_noise": model.log_noise.detach().double().clone(),
    }


def _seed_of(config) -> int:
    seed = getattr(config, "seed", None)  # a JobConfig record; a dict in older run folders
    return int(config["seed"] if seed is None else seed)


def _guide_draws(guide, x, seed: int):
    """The stage's extra optimisation starts: ``GUIDE_CANDIDATES`` draws of the trained guide
    at ``x`` under the reference's seed (pyrofail/stages/references.py ``_compute``)."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        return guide.double().distribution(x.double()).sample((GUIDE_CANDIDATES,))


def _fitted(job: Path):
    """``(model, guide, x_test, seed)`` of a finished job folder, through the records of the
    checkout in use (``metrics.json``: ``pyrofail.records.JobRecord``)."""
    from pyrofail.records import JobRecord, RunFolder
    from pyrofail.records.folder import load_fit, load_test_data

    record = RunFolder.read(JobRecord, job / "metrics.json")
    if record is None:
        raise SystemExit(f"{job / 'metrics.json'}: missing or written by another record version")
    model, guide = load_fit(job, record.build)
    return model, guide, load_test_data(job)["x"].double(), _seed_of(record.config)


def _load_job(job: Path, points: int):
    """``(model, x, extra, seed)`` for the first ``points`` test points of a job: the plain
    model and the saved guide draws of ``prepare`` (``reference_inputs.pt``) when it wrote one,
    else the job's own model and fresh guide draws (the checkout in use must read the folder)."""
    saved = job / INPUTS
    if not saved.exists():
        model, guide, x, seed = _fitted(job)
        x = x[:points]
        return model, x, _guide_draws(guide, x, seed), seed
    d = torch.load(saved, weights_only=True)  # plain tensors: any checkout loads them
    x = d["x"][:points]
    sizes = sorted(n for n in d["extra"] if n >= x.shape[0])  # the stage's own draws at n == points
    if not sizes:
        raise SystemExit(f"{saved} has guide draws for at most {max(d['extra'])} points; prepare --points")
    return PlainGaussian(d["model"]), x, d["extra"][sizes[0]][:, : x.shape[0]], int(d["seed"])


def prepare(args) -> None:
    """Save every job's inputs (``reference_inputs.pt``: the decoder and sigma as plain tensors,
    the test points, the guide's draws for the first ``--points`` points as the stage makes
    them, the seed), so that every checkout measures the same decoders at the same points
    from the same starts."""
    sizes = sorted({int(v) for v in args.points.split(",")})
    for job in _jobs(Path(args.folder)):
        model, guide, x, seed = _fitted(job)
        plain = plain_state(model)
        # the plain model must be the job's model: log p(x, z) at the first points, 8 draws each
        x50, z = x[:50], _guide_draws(guide, x[:50], seed)
        with torch.no_grad():
            err = (PlainGaussian(plain).log_joint(z, x50) - model.double().log_joint(z, x50)).abs().max()
        if not float(err) < 1e-9:
            raise SystemExit(f"{job}: the plain model's log p(x, z) differs by {float(err):.3g}")
        extra = {n: _guide_draws(guide, x[:n], seed) for n in sizes}
        torch.save({"model": plain, "x": x, "extra": extra, "seed": seed}, job / INPUTS)
        print(
            f"{job / INPUTS}: {tuple(x.shape)} test points, seed {seed}, guide draws at {sizes} "
            f"points, plain model's log p(x, z) within {float(err):.1e}"
        )


def _jobs(folder: Path) -> list[Path]:
    if not (folder / "jobs").exists():
        return [folder]
    return sorted(p for p in (folder / "jobs").iterdir() if (p / "model.pt").exists())


def _engine():
    """``(reference_posterior, nuts, quality)`` of the checkout in use: the reference as a
    package (``pyrofail.analysis.reference.{nuts,quality}``), or as one module beside
    ``pyrofail.analysis.{nuts,quality}`` (as at commit 9840e7f); ``quality`` is ``None``
    where the checkout has no gate."""
    import importlib
    import importlib.util

    ref = importlib.import_module("pyrofail.analysis.reference")
    base = "pyrofail.analysis.reference" if hasattr(ref, "__path__") else "pyrofail.analysis"
    nuts = importlib.import_module(f"{base}.nuts")
    has_gate = importlib.util.find_spec(f"{base}.quality") is not None
    return ref.reference_posterior, nuts, importlib.import_module(f"{base}.quality") if has_gate else None


def _gate(quality, ref):
    """The stage's gate (:data:`STAGE_GATE`) on ``ref``, with any checkout's ``quality``: its
    ``ess_min`` where ``gate`` takes one, else its module's limits set for the call."""
    import inspect

    if "ess_min" in inspect.signature(quality.gate).parameters and quality.RHAT_MAX == STAGE_GATE["RHAT_MAX"]:
        return quality.gate(ref, ess_min=STAGE_GATE["ESS_MIN"])
    before = {name: getattr(quality, name) for name in STAGE_GATE}
    try:  # the older gate reads RHAT_MAX and ESS_MIN from its module at each call
        for name, value in STAGE_GATE.items():
            setattr(quality, name, value)
        return quality.gate(ref)
    finally:
        for name, value in before.items():
            setattr(quality, name, value)


def _code(src: str | None) -> str:
    """The checkout's commit, ``+`` when its ``analysis/`` has changes not committed."""
    top = str(Path(src).resolve() if src else ROOT)

    def git(*a) -> str:
        return subprocess.run(["git", "-C", top, *a], capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "analysis")
    return git("rev-parse", "--short", "HEAD") + ("+" if dirty else "")


def stage_reference(job: Path, points: int, profile: Path | None = None, src=None, **options) -> dict:
    """One job's reference as the posterior stage makes it: its statistics and seconds."""
    import inspect

    torch.set_num_threads(1)
    reference_posterior, nuts, quality = _engine()
    model, x, extra, seed = _load_job(job, points)
    if "extra_candidates" in inspect.signature(nuts.nuts_reference).parameters:
        options["extra_candidates"] = extra
    call = lambda: reference_posterior(model.double(), x, "nuts", num_draws=DRAWS, seed=seed, **options)  # noqa: E731
    start, cpu, load = time.perf_counter(), time.process_time(), _load()
    if profile is None:
        ref = call()
    else:
        prof = cProfile.Profile()
        ref = prof.runcall(call)
        prof.dump_stats(profile)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    q = None if quality is None else _gate(quality, ref)
    return {
        "job": job.name,
        "code": _code(src),
        "points": int(x.shape[0]),
        "extra_candidates": int(extra.shape[0]) if "extra_candidates" in options else 0,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "load_at_start": load,
        "load_at_end": _load(),
        "sampler": json.loads(ref.posterior.attrs["sampler"]),
        "failing_gate": None if q is None else float((~q.ok).double().mean()),
        "gate": None if q is None else q.summary(),
        "gate_limits": None if q is None else {k: float(v) for k, v in q.limits.items()},
        "modes_max": int(ref.diagnostics.num_modes.max()),
        "multimodal": int((ref.diagnostics.num_modes > 1).sum()),
        "log_px_mean": float(ref.marginal.log_px.mean()),
    }


def _pct(share) -> str:
    return "—" if share is None else f"{100 * share:.1f}%"


def _top(profile: Path, n: int = 30) -> str:
    out = io.StringIO()
    pstats.Stats(str(profile), stream=out).sort_stats("cumulative").print_stats(n)
    return out.getvalue()


HEADER = (
    "| job | code | points | seconds (CPU) | NUTS gradient calls | chains | importance-only points "
    "| failing the gate | multimodal | load at start |\n|---|---|---|---|---|---|---|---|---|---|"
)


def stage(args) -> list[dict]:
    rows = []
    print(HEADER, flush=True)
    for job in _jobs(Path(args.folder)):
        if args.only and args.only not in job.name:
            continue
        prof = Path(args.out) / f"{job.name}.pstats" if args.profile else None
        r = stage_reference(job, args.points, prof, src=args.src, **json.loads(args.options))
        rows.append(r)
        s = r["sampler"]
        print(
            f"| {r['job']} | {r['code']} | {r['points']} | {r['seconds']:.0f} ({r['cpu_seconds']:.0f}) "
            f"| {s.get('num_grads', '—')} | {s.get('chains')} | {s.get('importance_points', '—')} "
            f"| {_pct(r['failing_gate'])} | {r['multimodal']} | {r['load_at_start']} |",
            flush=True,
        )
        print(json.dumps(r), flush=True)
        if prof is not None:
            print(_top(prof, args.top), flush=True)
    return rows


def _rows(log: str) -> dict[str, dict]:
    """The JSON lines ``stage`` printed (a saved log), by job."""
    lines = (ln.removeprefix("RESULT ") for ln in Path(log).read_text().splitlines())
    rows = [json.loads(ln) for ln in lines if ln.startswith("{")]
    return {r["job"]: r for r in rows}


def compare(args) -> None:
    """One markdown table of two ``stage`` logs: per job, before and after."""
    before, after = _rows(args.before), _rows(args.after)
    grads = lambda r: r["sampler"].get("num_grads", "—")  # noqa: E731
    print(
        "| job | points | seconds before | after | after / before | CPU s before | after "
        "| NUTS gradient calls before | after | failing the gate before | after |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for job in [j for j in before if j in after]:
        b, a = before[job], after[job]
        print(
            f"| {job} | {b['points']}/{a['points']} | {b['seconds']:.0f} | {a['seconds']:.0f} "
            f"| {a['seconds'] / b['seconds']:.2f} | {b['cpu_seconds']:.0f} | {a['cpu_seconds']:.0f} "
            f"| {grads(b)} | {grads(a)} | {_pct(b['failing_gate'])} | {_pct(a['failing_gate'])} |"
        )
    codes = {r["code"] for r in before.values()}, {r["code"] for r in after.values()}
    print(f"\nbefore: {', '.join(sorted(codes[0]))}; after: {', '.join(sorted(codes[1]))}")


def _child(args) -> None:
    """One size, in its own process: the result and its peak memory as one JSON line."""
    r = stage_reference(Path(args.job), args.points, src=args.src, **json.loads(args.options))
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r["peak_mib"] = kib / 1024
    print("RESULT " + json.dumps(r), flush=True)


def scaling(args) -> list[dict]:
    rows = []
    for n in [int(v) for v in args.sizes.split(",")]:
        cmd = [sys.executable, __file__, "_child", args.job, "--points", str(n), "--options", args.options]
        if args.src:
            cmd += ["--src", args.src]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        if not line:
            print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"the reference at {n} points failed")
        r = json.loads(line[-1][len("RESULT ") :])
        rows.append(r)
        base = rows[0]
        print(
            f"| {n} | {r['seconds']:.0f} ({r['seconds'] / base['seconds']:.2f}x) "
            f"| {r['peak_mib']:.0f} ({r['peak_mib'] / base['peak_mib']:.2f}x) "
            f"| {r['sampler'].get('num_grads', '—')} | {_pct(r['failing_gate'])} | {r['load_at_start']} |",
            flush=True,
        )
        print(json.dumps(r), flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("stage", help="the stage-sized reference of every job of a run folder")
    s.add_argument("folder")
    s.add_argument("--points", type=int, default=300)
    s.add_argument("--only", default=None, help="jobs whose name contains this text")
    s.add_argument("--profile", action="store_true", help="cProfile each reference")
    s.add_argument("--top", type=int, default=40)
    s.add_argument("--out", default=".", help="folder for the .pstats files")
    s.add_argument("--options", default="{}", help="JSON: further reference options")
    s.add_argument("--src", default=None, help="import pyrofail from this checkout instead")
    c = sub.add_parser("scaling", help="one job's reference at several sizes, each in a subprocess")
    c.add_argument("job")
    c.add_argument("--sizes", default="100,300,1000")
    c.add_argument("--options", default="{}")
    c.add_argument("--src", default=None)
    r = sub.add_parser("prepare", help="save each job's decoder, guide draws and test points")
    r.add_argument("folder")
    r.add_argument("--points", default="300", help="comma-separated: the sizes to draw guide starts for")
    r.add_argument("--src", default=None)
    m = sub.add_parser("compare", help="one markdown table of two stage logs (before, after)")
    m.add_argument("before")
    m.add_argument("after")
    h = sub.add_parser("_child")
    h.add_argument("job")
    h.add_argument("--points", type=int, required=True)
    h.add_argument("--options", default="{}")
    h.add_argument("--src", default=None)
    args = p.parse_args(argv)
    if args.command != "compare":
        _use_checkout(Path(args.src).resolve() if getattr(args, "src", None) else ROOT)
    {"stage": stage, "scaling": scaling, "prepare": prepare, "_child": _child, "compare": compare}[
        args.command
    ](args)


def _use_checkout(top: Path) -> None:
    """Import ``pyrofail`` from the checkout ``top``, with its own ``models``, ``guides`` and
    ``analysis``: without the finder of ``pyrofail/_source_tree.py`` (which older checkouts
    lack), the editable install's finder would map ``pyrofail.analysis`` to the installed
    checkout's folder and a ``--src`` run would time the current engine under the old name."""
    import importlib.util

    sys.path.insert(0, str(top))
    spec = importlib.util.spec_from_file_location("_source_tree", ROOT / "pyrofail" / "_source_tree.py")
    source_tree = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(source_tree)
    source_tree.install(top / "pyrofail")
    import pyrofail.analysis

    where = Path(pyrofail.analysis.__file__).resolve().parent
    if where != (top / "analysis").resolve() and where != (top / "pyrofail" / "analysis").resolve():
        raise SystemExit(f"pyrofail.analysis came from {where}, not from the checkout {top}")


if __name__ == "__main__":
    main()
