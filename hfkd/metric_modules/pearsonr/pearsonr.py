"""Pearson correlation, bundled with hfkd so that it loads without the Hugging Face Hub."""

import datasets
import evaluate
from scipy.stats import pearsonr

_DESCRIPTION = "Pearson correlation between predicted and gold scores (regression tasks such as STS-B)."

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of float): predicted scores.
    references (list of float): gold scores.
    return_pvalue (bool): also return the two-sided p-value.
Returns:
    pearsonr (float): NaN when either input is constant.
    p-value (float): only with return_pvalue=True.
"""


class Pearsonr(evaluate.Metric):
    """scipy's pearsonr behind the `evaluate` interface."""

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
        statistic, pvalue = pearsonr(references, predictions)
        result = {"pearsonr": float(statistic)}
        if return_pvalue:
            result["p-value"] = float(pvalue)
        return result
