"""The run report: Table 1 beside the seed's, leakage audit, comparisons, plots, sweep,
Grad-CAM, data and run; one self-contained HTML page plus report.json, table.csv and table.md
under ``OUT_URL/runs/<run_id>/report/``."""

from braintl.report.build import REPORT_DIR, build_report, write_report

__all__ = ["REPORT_DIR", "build_report", "write_report"]
