"""The downstream tasks: what the fits cost in compression, robustness, outlier detection,
disentanglement and signal/noise, and on a user's data the encoder's self-consistency."""

from __future__ import annotations

from pyrofail.estimate import Estimate
from pyrofail.numbers import number, with_error
from pyrofail.report.read import RunRecords

__all__ = ["section"]


def verdict(d: dict) -> str:
    return Estimate(d["mean"], d["stderr"]).verdict()


def _against_mfg(diff: dict, lower_is_better: bool) -> str:
    """A paired difference (other − MFG-VAE) in words: better, worse, or a tie."""
    side = verdict(diff)
    if side == "tie":
        word = "tie"
    else:
        word = "better" if (side == "less") == lower_is_better else "worse"
    return f"{with_error(diff['mean'], diff['stderr'])} ({word})"


def _dci_cell(dci: dict | None) -> str:
    """DCI's disentanglement / completeness / informativeness (test R² or accuracy), each ± its
    bootstrap standard error."""
    if dci is None:
        return "—"
    keys = (("disentanglement", "disentanglement"), ("completeness", "completeness"))
    keys += (("informativeness_test", "informativeness_test"),)
    return " / ".join(with_error(dci[k], dci.get(f"{e}_stderr")) for k, e in keys)


def section(res: RunRecords) -> list[str]:
    if not res.downstream:
        return []
    lines = [
        "## Downstream tasks",
        "",
        "What the fits cost in the tasks VAEs are used for (Yacoby et al. 2020, Section 6), on "
        "the test points. Compression: the total I(x; z) of the encoder (± standard error over "
        "points). Disentanglement: MIG and DCI of the encoder means about the true factors "
        "(disentanglement_lib's definitions). Robustness: the worst ℓ∞ perturbation of radius ε "
        "for the encoder, KL(q(z|x) ‖ q(z|x+δ)), and the truth's exact posterior shift under the "
        "same δ (how sensitive an ideal encoder is); de-noising: the reconstruction error under "
        "the attack on the decoded encoder mean. Outliers: AUROC of log p(x) between held-out "
        "points and off-manifold points of the truth. Against the MFG-VAE: each fit minus the "
        "MFG-VAE, paired over points where the task allows it; a difference within two standard "
        "errors is a tie.",
        "",
    ]
    for process, block in res.downstream.items():
        if block.get("data"):
            lines += _data_downstream_lines(process, block)
            continue
        jobs, truth = block["jobs"], block["truth"]
        eps = [r["eps"] for r in next(iter(jobs.values()))["robustness"]]
        lines += [f"### {process}", ""]
        head = "| job | I(x; z) | " + " | ".join(f"KL at ε={e:g} (truth, same δ)" for e in eps)
        head += " | de-noising error at the largest ε | outlier AUROC | MIG "
        head += "| DCI: D / C / I (test R² or accuracy) |"
        lines += [head, "|---" * (6 + len(eps)) + "|"]
        for job, rec in sorted(jobs.items()):
            cells = [
                with_error(rec["total_mutual_information"]["mean"], rec["total_mutual_information"]["stderr"])
            ]
            for r in rec["robustness"]:
                ideal = f" ({number(sum(r['truth_kl']) / len(r['truth_kl']))})" if "truth_kl" in r else ""
                cells.append(f"{with_error(r['mean'], r['stderr'])}{ideal}")
            d = rec["robustness"][-1]["denoise_error"]
            cells.append(f"{with_error(d['mean'], d['stderr'])} (clean {number(d['clean_mean'])})")
            cells.append(with_error(rec["auroc"]["auroc"], rec["auroc"]["stderr"]) if "auroc" in rec else "—")
            cells.append(with_error(rec["mig"]["mig"], rec["mig"]["stderr"]) if "mig" in rec else "—")
            cells.append(_dci_cell(rec.get("dci")))
            lines.append(f"| {job} | " + " | ".join(cells) + " |")
        truth_cells = ["—"] + ["—"] * len(eps) + ["—"]
        truth_cells.append(
            with_error(truth["auroc"]["auroc"], truth["auroc"]["stderr"]) if "auroc" in truth else "—"
        )
        truth_cells.append(with_error(truth["mig"]["mig"], truth["mig"]["stderr"]) if "mig" in truth else "—")
        truth_cells.append(_dci_cell(truth.get("dci")))
        lines.append("| the truth's exact posterior | " + " | ".join(truth_cells) + " |")
        lines.append("")
        against = block.get("against_mfg")
        if against:
            lines.append(f"Against the MFG-VAE ({block['mfg']}), each fit minus it:")
            lines.append("")
            for job, row in sorted(against.items()):
                parts = []
                for key, diff in row.items():
                    if key.startswith("robustness_eps"):
                        parts.append(
                            f"KL under attack at ε={key[len('robustness_eps') :]}: {_against_mfg(diff, True)}"
                        )
                    elif key == "auroc":
                        parts.append(f"outlier AUROC: {_against_mfg(diff, False)}")
                    elif key == "mig":
                        parts.append(f"MIG: {_against_mfg(diff, False)}")
                who = "the truth's exact posterior" if job == "truth" else job
                lines.append(f"- {who}: " + "; ".join(parts) + ".")
            lines.append("")
        lines += [f"![robustness of {process}](figures/robustness-{process}.png)", ""]
        lines += _noise_lines(process, jobs)
    return lines


def _data_downstream_lines(name: str, block: dict) -> list[str]:
    """The downstream table of a user's data set: compression, self-consistency and the
    representation's robustness curve, each fit against the plain VAE."""
    jobs = block["jobs"]
    eps = next((rec["probe"]["eps"] for rec in jobs.values() if "probe" in rec), [])
    lines = [
        f"### {name}",
        "",
        "Self-consistency: ‖z − m(μθ(z))‖ over prior draws z, m the encoder mean and μθ the "
        "decoder's mean (Cemgil et al. 2020; 0: the encoder inverts its own decoder). "
        + ("Accuracy: a linear classifier on the encoder means, on clean test points and under "
           "the encoder attack of radius ε (ℓ∞, the perturbation that moves the mean furthest)."
           if eps else ""),
        "",
    ]  # fmt: skip
    head = "| job | I(x; z) | self-consistency |" + "".join(f" accuracy at ε={e:g} |" for e in eps)
    lines += [head, "|---" * (3 + len(eps)) + "|"]
    for job, rec in sorted(jobs.items()):
        mi, cons = rec["total_mutual_information"], rec["consistency"]
        cells = [with_error(mi["mean"], mi["stderr"]), with_error(cons["mean"], cons["stderr"])]
        if "probe" in rec:
            cells += [with_error(a, s) for a, s in zip(rec["probe"]["accuracy"], rec["probe"]["stderr"])]
        else:
            cells += ["—"] * len(eps)
        lines.append(f"| {job} | " + " | ".join(cells) + " |")
    lines.append("")
    against = block.get("against_baseline")
    if against:
        lines += [f"Against the plain VAE ({block['baseline']}), each fit minus it, paired:", ""]
        for job, row in sorted(against.items()):
            parts = [f"self-consistency {_against_mfg(row['consistency'], True)}"]
            parts += [
                f"accuracy at ε={key[len('accuracy_eps') :]} {_against_mfg(diff, False)}"
                for key, diff in row.items()
                if key.startswith("accuracy_eps")
            ]
            lines.append(f"- {job}: " + "; ".join(parts) + ".")
        lines.append("")
    if eps:
        lines += [f"![representation under attack, {name}](figures/representation-{name}.png)", ""]
    return lines


def _noise_lines(process: str, jobs: dict) -> list[str]:
    """Signal and noise: each job's learned σ against the truth's (``--learn-noise``)."""
    learned = {job: rec["noise"] for job, rec in sorted(jobs.items()) if "noise" in rec}
    if not learned:
        return []
    truth = next(iter(learned.values()))["truth"]
    words = {
        "less": "below: noise learned as signal",
        "greater": "above: signal learned as noise",
        "tie": "tie",
    }
    lines = [
        f"Signal and noise: the learned σ against the truth's ({number(truth)}); the selected "
        "fit's, and the mean ± standard error over the restarts (a mean within two standard "
        "errors of the truth's is a tie).",
        "",
        "| job | learned σ | over restarts | learned / truth | against the truth |",
        "|---|---|---|---|---|",
    ]
    for job, rec in learned.items():
        spread, side = "—", "—"
        if rec["mean"] is not None and rec["stderr"] is not None:
            spread = f"{with_error(rec['mean'], rec['stderr'])} ({len(rec['restart_values'])})"
            side = words[verdict({"mean": rec["mean"] - truth, "stderr": rec["stderr"]})]
        lines.append(f"| {job} | {number(rec['selected'])} | {spread} | {number(rec['ratio'])} | {side} |")
    lines += ["", f"![learned noise of {process}](figures/noise-{process}.png)", ""]
    return lines
