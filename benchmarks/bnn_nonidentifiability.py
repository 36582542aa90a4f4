"""BNN+LV inference methods side by side on the regression zoo (pyrofail.bnn.experiment).

For each process: test log-likelihood (latents from the prior) with its paired difference from
mean-field VI, 90% coverage, RMSE, the train-minus-test gap, and the dependence between the
inputs and the inferred latents (HSIC, R^2 of E[z_n] from x_n), each with its standard error;
a JSON of the rows and a figure of the predictive bands per process go to --out.

    OMP_NUM_THREADS=1 python benchmarks/bnn_nonidentifiability.py                 # all, 750 points
    OMP_NUM_THREADS=1 python benchmarks/bnn_nonidentifiability.py --processes bimodal \\
        --methods mean_field,noise_constrained --n-train 300 --steps 2000
    OMP_NUM_THREADS=1 python benchmarks/bnn_nonidentifiability.py --processes diabetes \\
        --methods mean_field,noise_constrained --folds 5   # 5-fold CV: every point tested once

With --folds F (data sets only: diabetes) each method is fitted on each of F cross-validation
folds (pyrofail.bnn.crossval) and the table pools the 442 test points; a second table gives
each fold's test log-likelihoods and paired differences.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", default="heteroscedastic,bimodal")
    p.add_argument("--methods", default="mean_field,noise_constrained,nuts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=None, help="default: 750 (synthetic), 354 (diabetes)")
    p.add_argument("--n-test", type=int, default=None, help="default: 1000 (synthetic), 88 (diabetes)")
    p.add_argument("--hidden", default="50", help="comma-separated widths")
    p.add_argument("--steps", type=int, default=3000, help="VI steps")
    p.add_argument("--lams", default="10,100,1000", help="noise_constrained's grid")
    p.add_argument("--lam", type=float, default=None, help="fix noise_constrained's lambda (no grid)")
    p.add_argument("--warmup", type=int, default=500, help="NUTS warm-up")
    p.add_argument("--draws", type=int, default=500, help="NUTS draws")
    p.add_argument(
        "--folds",
        type=int,
        default=None,
        help="K-fold cross-validation (diabetes only) instead of one split; default: one split",
    )
    p.add_argument("--out", default="runs/bnn", help="folder for rows.json and the figures")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    from pyrofail import bnn
    from pyrofail.analysis.figures.bnn import predictive_bands

    hidden = tuple(int(h) for h in args.hidden.split(","))
    vi = {"steps": args.steps}
    nc = dict(
        vi,
        **({"lam": args.lam} if args.lam is not None else {"lams": [float(v) for v in args.lams.split(",")]}),
    )
    options = {
        "mean_field": vi,
        "noise_constrained": nc,
        "nuts": {"warmup": args.warmup, "num_draws": args.draws},
    }
    out = Path(args.out)
    record = {"args": vars(args), "processes": {}}
    for process in args.processes.split(","):
        if args.folds is not None:
            record["processes"][process] = _cross_validate(bnn, process, args, hidden, options)
            continue
        start = time.perf_counter()
        ex = bnn.experiment(
            process,
            args.methods.split(","),
            args.seed,
            n_train=args.n_train,
            n_test=args.n_test,
            hidden=hidden,
            options=options,
        )
        seconds = time.perf_counter() - start
        print(
            f"\n## {process} (seed {args.seed}, {len(ex.data.x_train)} train / {len(ex.data.x_test)} test "
            f"points, hidden {hidden}; {seconds:.0f} s)\n"
        )
        print(ex.table())
        for method, post in ex.results.items():
            extra = {k: v for k, v in post.info.items() if k not in ("losses", "q")}
            print(f"- {method}: {json.dumps(extra, default=str)}")
        rows = [{k: _jsonable(v) for k, v in r.items()} for r in ex.rows]
        record["processes"][process] = {"seconds": seconds, "rows": rows}
        if ex.data.x_train.shape[1] == 1:
            fig = predictive_bands(
                ex.results,
                ex.data.x_train,
                ex.data.y_train,
                out / f"bands-{process}.png",
                title=process,
                seed=args.seed,
            )
            print(f"- figure: {fig}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.json").write_text(json.dumps(record, indent=1, default=str))
    return 0


def _jsonable(v):
    """Estimates (also inside lists and dicts) as ``{"value", "stderr"}``."""
    from pyrofail.bnn import Estimate

    if isinstance(v, Estimate):
        return {"value": v.mean, "stderr": v.stderr}
    if isinstance(v, list):
        return [_jsonable(u) for u in v]
    if isinstance(v, dict):
        return {k: _jsonable(u) for k, u in v.items()}
    return v


def _cross_validate(bnn, process, args, hidden, options) -> dict:
    """``--folds``: the pooled table and the per-fold paired differences, printed and returned."""
    if args.n_train is not None or args.n_test is not None:
        raise SystemExit("--folds uses every point; leave out --n-train and --n-test")
    start = time.perf_counter()
    cv = bnn.cross_validate(
        process, args.methods.split(","), args.seed, folds=args.folds, hidden=hidden, options=options
    )
    seconds = time.perf_counter() - start
    n_test = sum(n for _, n in cv.fold_sizes)
    print(
        f"\n## {process}, {cv.folds}-fold cross-validation (seed {args.seed}, {n_test} test points "
        f"pooled, hidden {hidden}; {seconds:.0f} s)\n"
    )
    print(cv.table())
    print(f"\n### {process}: per fold\n")
    print(cv.fold_table())
    for row in cv.rows[1:]:
        het = row["fold_heterogeneity"]
        if het is not None:
            print(
                f"- {row['method']} − {cv.rows[0]['method']}: pooled {row['paired_diff']}; folds' "
                f"Cochran Q = {het['q']:.2f} on {het['df']} df, p = {het['p']:.2f}"
            )
    return {
        "seconds": seconds,
        "folds": cv.folds,
        "fold_sizes": cv.fold_sizes,
        "rows": [{k: _jsonable(v) for k, v in r.items()} for r in cv.rows],
        "fold_rows": [[{k: _jsonable(v) for k, v in r.items()} for r in rows] for rows in cv.fold_rows],
        "test_index": cv.test_index.tolist(),
        "per_point_test_ll": {m: pp["test_ll"].tolist() for m, pp in cv.per_point.items()},
    }


if __name__ == "__main__":
    raise SystemExit(main())
