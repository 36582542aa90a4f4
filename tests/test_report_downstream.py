"""The report's downstream section, from a downstream.json record of the shape the stage writes."""

from pyrofail.stages.report import Results, section_downstream


def _dci(d, d_se):
    return {
        "disentanglement": d,
        "disentanglement_stderr": d_se,
        "completeness": 1.0,
        "completeness_stderr": 0.0,
        "informativeness": "r2",  # the name of the score, not a number
        "informativeness_test": 0.264,
        "informativeness_test_stderr": 0.047,
    }


def _job(name):
    robustness = [
        {
            "eps": eps,
            "mean": 0.01 * eps,
            "stderr": 0.001,
            "truth_kl": [0.1, 0.3],
            "denoise_error": {"mean": 1.3, "stderr": 0.05, "clean_mean": 1.2, "clean_stderr": 0.05},
        }
        for eps in (0.05, 0.2)
    ]
    return {
        "job": name,
        "total_mutual_information": {"mean": 0.3, "stderr": 0.04},
        "robustness": robustness,
        "auroc": {"auroc": 0.905, "stderr": 0.013},
        "mig": {"mig": 0.486, "stderr": 0.029},
        "dci": _dci(0.0, 0.0),
    }


def test_every_row_has_the_header_columns_and_dci_carries_its_errors():
    block = {
        "jobs": {"p-K1-mean_field-elbo": _job("p-K1-mean_field-elbo")},
        "truth": {
            "auroc": {"auroc": 0.989, "stderr": 0.006},
            "mig": {"mig": 0.33, "stderr": 0.03},
            "dci": _dci(0.934, 0.032),
        },
        "mfg": "p-K1-mean_field-elbo",
        "against_mfg": None,
    }
    res = Results(options={}, jobs=[], failed={}, downstream={"p": block})
    lines = section_downstream(res)
    table = [line for line in lines if line.startswith("|")]
    widths = {line.count("|") for line in table}
    assert len(widths) == 1, table  # header, separator and rows alike
    assert "0.000 / 1.000 / 0.264 ± 0.047 |" in table[2]
    assert table[3].startswith("| the truth's exact posterior") and "0.934 ± 0.032 /" in table[3]
    assert "0.001 ± 0.001 (0.200)" in table[2]  # the attack's KL beside the truth's mean shift
