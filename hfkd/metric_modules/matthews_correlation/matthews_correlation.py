"""Matthews correlation coefficient, bundled with hfkd so that it loads without the Hub."""

import datasets
import evaluate
from sklearn.metrics import matthews_corrcoef

_DESCRIPTION = "Matthews correlation coefficient (GLUE's CoLA score), from -1 to 1; 0 is chance level."

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted label ids.
    references (list of int): gold label ids.
    sample_weight (list of float, optional): per-example weights.
Returns:
    matthews_correlation (float)
"""


class MatthewsCorrelation(evaluate.Metric):
    """sklearn's matthews_corrcoef behind the `evaluate` interface."""

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

    def _compute(self, predictions, references, sample_weight=None) -> dict:
        score = matthews_corrcoef(references, predictions, sample_weight=sample_weight)
        return {"matthews_correlation": float(score)}
