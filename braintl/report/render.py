"""The report as one HTML page: inline CSS, images as data URIs, no script, no external URL,
so it opens from disk, from S3 or as an e-mail attachment without a network.

The markup lives in ``templates/`` (Jinja2, auto-escaped, strict): every name, label, key and
note from a run is text on the page, never markup, whatever its characters. This module gives
the templates their constants, number formats and row builders."""

from __future__ import annotations

import json

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from braintl.report import external
from braintl.report.tables import TABLE_METRICS, interval, interval_of, mean_sd, percent

SECTIONS = {
    "summary": "Summary",
    "table-1": "Table 1: ours beside the seed's",
    "leakage-audit": "Leakage audit",
    "comparisons": "Comparisons",
    "plots": "Plots",
    "external": "External validation",
    "sweep": "Sweep",
    "explanations": "Explanations (Grad-CAM)",
    "data": "Data",
    "run": "Run",
}
PLOTS = {
    "roc": "ROC curves of every model (its fold ensemble's probability)",
    "confusion": "Confusion matrices (rows: true class; the fold ensemble at its threshold)",
    "learning": "Learning curves: train loss and validation AUC per epoch, one colour per fold",
    "calibration": "Calibration: reliability diagram with Brier score and ECE (the fold "
    "ensemble's probability)",
}
TRIAL_FIELDS = {"backbone", "strategy", "trial_id", "val_auc", "best_val_auc", "epochs_run",
                "stopped_early", "error", "reports", "placement"}  # fmt: skip
# report.json's DeLong field → its column on the page.
DELONG_COLUMNS = {
    "auc_a": "AUC best (fold ensemble)",
    "auc_b": "AUC other (fold ensemble)",
    "diff": "difference",
    "z": "z",
    "p": "p (groups)",
    "p_holm": "p Holm",
    "p_images": "p (images)",
}
BEST_CONFIG_FIELDS = (
    "weights",
    "head",
    "head_units",
    "dropout",
    "lr",
    "backbone_lr_factor",
    "batch_size",
    "epochs",
    "warmup_epochs",
)
CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1400px;padding:1em 2em;
color:#1d2733}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #d0d7de;padding-bottom:.2em;
margin-top:1.8em}
nav a{margin-right:1em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:.3em .5em;vertical-align:top;text-align:left}
th{background:#f3f5f7}
td.num{text-align:right;white-space:nowrap}
tr.best{background:#fff6d6}
.test{font-weight:600}.folds,.seed{font-size:.85em;color:#57606a}.seed{color:#8a4b00}
.summary{background:#eef6ff;border-left:4px solid #2f6fb3;padding:.8em 1em;font-size:1.05em}
.note{color:#57606a;font-size:.9em}
.warning{background:#fff1f0;border-left:4px solid #b42318;padding:.6em 1em;font-size:1.05em}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #d0d7de}
figcaption{font-size:.85em;color:#57606a;max-width:520px}
.cases figure{width:160px}.cases img{width:160px;image-rendering:pixelated}
.wrong{color:#b42318}.right{color:#1a7f37}
pre{background:#f6f8fa;padding:.6em;overflow:auto;font-size:.85em;max-height:30em}
"""
Row = list[tuple[object, bool]]  # (value, right-aligned number) per cell


def _dash(value: object) -> object:
    return "–" if value is None else value


def _number(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _figure(value: object) -> object:
    """A hyper-parameter as the sweep tables show it: floats to 4 digits, anything else as is."""
    return _number(value) if isinstance(value, float) else value


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:+.1f}"


def _short(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _hyper_fields(trials: list[dict]) -> list[str]:
    return sorted({k for t in trials for k in t} - TRIAL_FIELDS)


def _configs_rows(configs: dict[str, dict]) -> list[Row]:
    return [
        [(model, False)] + [(_figure(config.get(f)), False) for f in BEST_CONFIG_FIELDS]
        for model, config in configs.items()
    ]


def _per_class_rows(models: list[dict]) -> list[Row]:
    rows = []
    for model in models:
        per_class = model["per_class_accuracy"]
        seed = (model["seed"] or {}).get("per_class_accuracy") or {}
        rows.append(
            [(model["model"], False)]
            + [
                (f"{interval_of(per_class[c])} (seed {percent(seed.get(c))})", True)
                for c in ("tumor", "no_tumor")
            ]
        )
    return rows


def _label_rows(manifest: dict) -> list[Row]:
    usable = manifest.get("usable_per_label", {})
    return [
        [(label, False), (n, True), (usable.get(label), True)]
        for label, n in manifest.get("per_label", {}).items()
    ]


def _part_rows(meta: dict) -> list[Row]:
    rows = []
    for part, sizes in meta.get("parts", {}).items():
        for role, count in sizes.items() if "total" not in sizes else [("", sizes)]:
            rows.append(
                [(f"{part} {role}".strip(), False)]
                + [(count.get(k), True) for k in ("tumor", "no_tumor", "total")]
            )
    return rows


ENV = Environment(
    loader=PackageLoader("braintl.report", "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
)
ENV.filters |= {
    "dash": _dash,
    "number": _number,
    "percent": percent,
    "interval": interval,
    "signed": _signed,
    "short": _short,
    "figure": _figure,
    "pretty": lambda value: json.dumps(value, indent=2),
}
ENV.globals |= {
    "css": CSS,
    "sections": SECTIONS,
    "plots": PLOTS,
    "table_metrics": list(TABLE_METRICS),
    "delong_columns": DELONG_COLUMNS,
    "config_fields": list(BEST_CONFIG_FIELDS),
    "score_names": external.SCORE_NAMES,
    "shown_copies": external.SHOWN_COPIES,
    "named_copies": external.named_copies,
    "mean_sd": mean_sd,
    "interval_of": interval_of,
    "hyper_fields": _hyper_fields,
    "configs_rows": _configs_rows,
    "model_configs": lambda models: {m["model"]: m["config"] for m in models},
    "per_class_rows": _per_class_rows,
    "label_rows": _label_rows,
    "part_rows": _part_rows,
    "quarantine_rows": lambda quarantined: [
        [(q[k], False) for k in ("file", "reason", "detail")] for q in quarantined
    ],
    "group_rows": lambda gs: [
        [
            (g["group"], False),
            (g["kind"], False),
            (", ".join(g["labels"]), False),
            (", ".join(g["members"]), False),
        ]
        for g in gs
    ],
    "stage_rows": lambda stages: [[(k, False), (f"{v:.1f}", True)] for k, v in stages.items()],
    "plain_rows": lambda pairs: [[(k, False), (v, False)] for k, v in pairs.items()],
}


def render_html(report: dict, images: dict[str, str]) -> str:
    """The page for ``report`` (see ``build_report``); ``images`` maps names to data URIs."""
    return ENV.get_template("report.html").render(report=report, run=report["run"], images=images)
