"""``python -m benchmarks``: run the benchmarks and print one table of ratios and targets."""

from __future__ import annotations

import argparse
import importlib
import sys

from benchmarks.common import cores, devices, load, table

BENCHMARKS = {
    "training": "benchmarks.training",
    "e2e": "benchmarks.end_to_end",
    "nuts": "benchmarks.nuts_vs_numpyro",
    "reference": "benchmarks.reference_validation",
    "no_truth": "benchmarks.no_truth",
}
# hours of fits on two cores (its run folders under runs/no_truth are re-used): only by name
OPT_IN = ("no_truth",)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument(
        "--only",
        default=",".join(n for n in BENCHMARKS if n not in OPT_IN),
        help=f"comma-separated subset of: {', '.join(BENCHMARKS)} (default: all but {', '.join(OPT_IN)})",
    )
    p.add_argument("--quick", action="store_true", help="small sizes: checks the harness runs")
    p.add_argument(
        "--table1", action="store_true", help="also time the table1 preset end to end (about 25 minutes)"
    )
    p.add_argument(
        "--keep", metavar="DIR", help="keep the end-to-end run folders under DIR (default: discard them)"
    )
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where the training benchmark runs: auto (the CPU, and a GPU beside it when present)",
    )
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no GPU here (torch.cuda.is_available() is false)")
    where = devices(args.device)
    rows = []
    start_load = load()
    for name in names:
        module = importlib.import_module(BENCHMARKS[name])
        if name == "training":  # CPU and GPU rows side by side
            for device in where:
                rows += module.run(quick=args.quick, device=device)
        else:
            kwargs = {"quick": args.quick}
            if name == "e2e":
                kwargs.update(table1=args.table1, keep=args.keep)
            rows += module.run(**kwargs)
        print(f"done: {name}", file=sys.stderr)
    print(f"{cores()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{start_load} at the start, {load()} at the end")
    if "training" in names and args.device == "auto" and "cuda" not in where:
        print("no GPU here: CPU rows only")
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
