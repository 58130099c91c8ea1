"""F1 score, bundled with hfkd so that it loads without the Hugging Face Hub."""

import datasets
import evaluate
from sklearn.metrics import f1_score

_DESCRIPTION = "Harmonic mean of precision and recall, for binary or multi-class labels."

_AVERAGES = ("binary", "macro", "micro", "weighted")

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted label ids.
    references (list of int): gold label ids.
    average (str): "binary" (score of `pos_label`), "macro" (unweighted mean over classes),
        "micro" (from global counts), or "weighted" (mean weighted by class support).
    labels (list of int, optional): classes to include in a macro/micro/weighted average.
    pos_label (int): the positive class for average="binary".
    sample_weight (list of float, optional): per-example weights.
    zero_division (float): value used where precision or recall divides by zero.
Returns:
    f1 (float)
"""


class F1(evaluate.Metric):
    """sklearn's f1_score behind the `evaluate` interface."""

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

    def _compute(
        self,
        predictions,
        references,
        average="binary",
        labels=None,
        pos_label=1,
        sample_weight=None,
        zero_division=0.0,
    ) -> dict:
        if average not in _AVERAGES:
            raise ValueError(f"f1: average={average!r} is not supported; use one of {', '.join(_AVERAGES)}")
        score = f1_score(
            references,
            predictions,
            labels=labels,
            pos_label=pos_label,
            average=average,
            sample_weight=sample_weight,
            zero_division=zero_division,
        )
        return {"f1": float(score)}
