"""What distillation gained: sizes, scores, latency and the distillation metric, rendered and
written atomically.

metric: the distillation metric and the DM ranking (pure); measure: sizes, evaluation, latency and
`build_report`; render: Markdown tables and the plot; io: the report files, written atomically;
model_card: the README.md of a distilled student.
"""

from hfkd.report.io import atomic_write, write_report
from hfkd.report.measure import (
    build_report,
    count_parameters,
    evaluate_model,
    measure_latencies,
    measure_latency,
    safetensors_size,
)
from hfkd.report.metric import DM_ALPHAS, distillation_metric, rank_students
from hfkd.report.render import plot_report, report_to_markdown

__all__ = [
    "DM_ALPHAS", "atomic_write", "build_report", "count_parameters", "distillation_metric",
    "evaluate_model", "measure_latencies", "measure_latency", "plot_report", "rank_students",
    "report_to_markdown", "safetensors_size", "write_report",
]
