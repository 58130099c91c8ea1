"""Accuracy, bundled with hfkd so that it loads without the Hugging Face Hub."""

import datasets
import evaluate
from sklearn.metrics import accuracy_score

_DESCRIPTION = "Fraction of predictions equal to their reference label."

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted label ids.
    references (list of int): gold label ids.
    normalize (bool): return the fraction (True) or the count (False) of correct predictions.
    sample_weight (list of float, optional): per-example weights.
Returns:
    accuracy (float)
"""


class Accuracy(evaluate.Metric):
    """sklearn's accuracy_score behind the `evaluate` interface."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            format="numpy",
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None) -> dict:
        score = accuracy_score(references, predictions, normalize=normalize, sample_weight=sample_weight)
        return {"accuracy": float(score)}
