"""Spearman rank correlation, bundled with hfkd so that it loads without the Hugging Face Hub."""

import datasets
import evaluate
from scipy.stats import spearmanr

_DESCRIPTION = "Spearman rank correlation between predicted and gold scores (regression tasks such as STS-B)."

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of float): predicted scores.
    references (list of float): gold scores.
    return_pvalue (bool): also return the two-sided p-value.
Returns:
    spearmanr (float): NaN when either input is constant.
    spearmanr_pvalue (float): only with return_pvalue=True.
"""


class Spearmanr(evaluate.Metric):
    """scipy's spearmanr behind the `evaluate` interface."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
            format="numpy",
        )

    def _compute(self, predictions, references, return_pvalue=False) -> dict:
        statistic, pvalue = spearmanr(references, predictions)
        result = {"spearmanr": float(statistic)}
        if return_pvalue:
            result["spearmanr_pvalue"] = float(pvalue)
        return result
