"""Entity-level sequence-labelling scores (seqeval), bundled with hfkd so that it loads without the Hub.

The seqeval package is imported lazily: evaluate's import scanner only sees top-level imports, so
a missing seqeval gives hfkd's ImportError below (at load time) instead of a generic one.
"""

import datasets
import evaluate

_DESCRIPTION = (
    "Entity-level precision, recall and F1 (micro-averaged over entity types, as in CoNLL) plus "
    "token-level accuracy, computed by the seqeval package from IOB-style tag sequences."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of list of str): predicted tags per sequence, e.g. [["B-PER", "I-PER", "O"]].
    references (list of list of str): gold tags, aligned with predictions.
    suffix (bool): tags carry the chunk type before the position ("PER-B") instead of after.
    scheme (str, optional): "IOB1", "IOB2", "IOE1", "IOE2", "IOBES" or "BILOU"; needed by mode="strict".
    mode (str, optional): "strict" for exact-scheme chunk matching; default is CoNLL-style lenient.
    sample_weight (list of float, optional): per-sequence weights.
    zero_division (float): value used where precision or recall divides by zero.
Returns:
    precision, recall, f1 (float): entity-level, micro-averaged over entity types.
    accuracy (float): fraction of tags that are correct.
    per_type (dict): {entity type: {"precision", "recall", "f1", "number"}}.
"""

_INSTALL_HINT = "the seqeval metric needs the seqeval package: pip install seqeval (or pip install 'hfkd[dev]')"


class Seqeval(evaluate.Metric):
    """seqeval's classification_report and accuracy_score behind the `evaluate` interface."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _download_and_prepare(self, dl_manager) -> None:
        # Called by evaluate.load: fail when loading, not at the end of the first evaluation.
        try:
            import seqeval.metrics  # noqa: F401
        except ImportError as err:
            raise ImportError(_INSTALL_HINT) from err

    def _compute(
        self,
        predictions,
        references,
        suffix=False,
        scheme=None,
        mode=None,
        sample_weight=None,
        zero_division=0.0,
    ) -> dict:
        import seqeval.metrics
        import seqeval.scheme

        scheme_class = getattr(seqeval.scheme, scheme) if scheme is not None else None
        report = seqeval.metrics.classification_report(
            y_true=references,
            y_pred=predictions,
            suffix=suffix,
            output_dict=True,
            scheme=scheme_class,
            mode=mode,
            sample_weight=sample_weight,
            zero_division=zero_division,
        )
        overall = report.pop("micro avg")
        report.pop("macro avg")
        report.pop("weighted avg")
        return {
            "precision": float(overall["precision"]),
            "recall": float(overall["recall"]),
            "f1": float(overall["f1-score"]),
            "accuracy": float(seqeval.metrics.accuracy_score(y_true=references, y_pred=predictions)),
            "per_type": {
                entity_type: {
                    "precision": float(scores["precision"]),
                    "recall": float(scores["recall"]),
                    "f1": float(scores["f1-score"]),
                    "number": int(scores["support"]),
                }
                for entity_type, scores in report.items()
            },
        }
