"""Perplexity from language-model losses, bundled with hfkd so that it loads without the Hub.

Unlike the Hub's `perplexity` measurement, this does not run a model: it turns losses that
training already computed (mean token negative log-likelihood, in nats) into a perplexity.
"""

import math

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Perplexity = exp(token-weighted mean negative log-likelihood)."

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of float): mean token negative log-likelihood (natural log) of each item:
        a batch, a sequence, or the single `eval_loss` that transformers.Trainer reports.
    references (list of int): number of tokens each loss was averaged over; used as weights.
        Pass [1] with a single eval_loss.
Returns:
    perplexity (float): exp(sum(loss_i * n_i) / sum(n_i)); inf when that overflows.
"""


class Perplexity(evaluate.Metric):
    """Token-weighted mean NLL, exponentiated."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("int64")}
            ),
            format="numpy",
        )

    def _compute(self, predictions, references) -> dict:
        losses = np.asarray(predictions, dtype=np.float64)
        counts = np.asarray(references, dtype=np.float64)
        if counts.sum() <= 0:
            raise ValueError("perplexity: references (token counts) must sum to a positive number")
        mean_nll = float((losses * counts).sum() / counts.sum())
        try:
            return {"perplexity": math.exp(mean_nll)}
        except OverflowError:
            return {"perplexity": math.inf}
