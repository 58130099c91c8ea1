"""What distillation gained: sizes, scores, latency and the distillation metric, rendered and written atomically."""

from hfkd.report.measure import (
    DM_ALPHAS,
    atomic_write,
    build_report,
    count_parameters,
    distillation_metric,
    evaluate_model,
    measure_latencies,
    measure_latency,
    plot_report,
    rank_students,
    report_to_markdown,
    safetensors_size,
    write_report,
)

__all__ = [
    "DM_ALPHAS", "atomic_write", "build_report", "count_parameters", "distillation_metric", "evaluate_model",
    "measure_latencies", "measure_latency", "plot_report", "rank_students", "report_to_markdown",
    "safetensors_size", "write_report",
]
