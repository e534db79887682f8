"""The run report: Table 1 beside the seed's, leakage audit, comparisons, plots, sweep,
Grad-CAM, data and run; one self-contained HTML page plus report.json, table.csv and table.md
under ``OUT_URL/runs/<run_id>/report/`` (:mod:`braintl.report.build`).

The package itself imports nothing: ``braintl train`` and ``predict`` use
:mod:`braintl.report.estimands` through ``braintl.publish`` and should not pay for the plotting
and HTML modules (matplotlib, jinja2) that building a report needs."""
