"""The report as one HTML page: inline CSS, images as data URIs, no script, no external URL,
so it opens from disk, from S3 or as an e-mail attachment without a network."""

from __future__ import annotations

import json
from html import escape

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
BEST_CONFIG_FIELDS = ("weights", "head", "head_units", "dropout", "lr", "backbone_lr_factor",
                      "batch_size", "epochs", "warmup_epochs")  # fmt: skip
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


def _e(value: object) -> str:
    return escape("–" if value is None else str(value))


def _table(
    headers: list[str], rows: list[list[str]], attrs: str = "", row_attrs: list[str] | None = None
) -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    row_attrs = row_attrs or [""] * len(rows)
    body = "".join(
        f"<tr{a}>" + "".join(cells) + "</tr>" for a, cells in zip(row_attrs, rows, strict=True)
    )
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _td(value: object, num: bool = False) -> str:
    return f"<td{' class=num' if num else ''}>{_e(value)}</td>"


def _field(name: str, cell: dict) -> str:
    """The exact figure behind a cell, for readers (and tests) of the page."""
    return f' data-field="{name}" data-value="{json.dumps(cell[name])}"'


def _number(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _section(key: str, body: str) -> str:
    return f'<section id="{key}" data-section="{key}"><h2>{SECTIONS[key]}</h2>{body}</section>'


def render_html(report: dict, images: dict[str, str]) -> str:
    """The page for ``report`` (see ``build_report``); ``images`` maps names to data URIs."""
    run = report["run"]
    body = {
        "summary": f'<p class="summary" id="summary-text">{_e(report["summary"]["text"])}</p>'
        + _cross_validation(report.get("cross_validation")),
        "table-1": _table_1(report),
        "leakage-audit": _leakage(report["leakage_audit"], run["protocol"]),
        "comparisons": _comparisons(report),
        "plots": "".join(
            f'<figure><img id="plot-{k}" alt="{_e(v)}" src="{images[k]}">'
            f"<figcaption>{_e(v)}</figcaption></figure>"
            for k, v in PLOTS.items()
        ),
        "external": external.section(
            report.get("external"), {k: v for k, v in images.items() if k.startswith("external-")}
        ),
        "sweep": _sweep(report["sweep"], report["models"]),
        "explanations": _explanations(report["explanations"], images),
        "data": _data(report["data"]),
        "run": _run(run),
    }
    nav = "".join(f'<a href="#{k}">{_e(v)}</a>' for k, v in SECTIONS.items())
    sections = "".join(_section(k, body[k]) for k in SECTIONS)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>braintl report {_e(run['run_id'])}</title><style>{CSS}</style></head><body>"
        f"<h1>braintl report: run {_e(run['run_id'])}</h1>"
        f'<p class="note">protocol <b>{_e(run["protocol"])}</b> · started {_e(run["started"])}'
        f" · rendered {_e(run['rendered'])} · {_e(run['url'])}</p>"
        f"{_warnings(report['warnings'])}<nav>{nav}</nav>"
        f"{sections}</body></html>"
    )


def _warnings(warnings: list[str]) -> str:
    """The run's plain warnings, before anything else on the page."""
    return "".join(f'<p class="warning"><b>Warning:</b> {_e(w)}</p>' for w in warnings)


def _seed_line(row: dict) -> str:
    if not row["seed_shown"]:
        return _e(row["seed_label"])
    return f"{_e(row['seed_label'])}: {_e(row['seed_name'] or 'the seed trained no such model')}"


def _table_1(report: dict) -> str:
    headers = ["model", "weights", "folds"] + [
        c.upper() if c == "auc" else c for c in TABLE_METRICS
    ]
    rows, row_attrs = [], []
    for row in report["table"]:
        name = _e(row["model"]) + (" <b>★ best</b>" if row["best"] else "")
        name += f'<div class="seed">{_seed_line(row)}</div>'
        cells = [f"<td>{name}</td>", _td(row["weights"]), _td(row["folds"], num=True)]
        for column in TABLE_METRICS:
            cell = row["cells"][column]
            cells.append(
                f'<td class="num" data-model="{_e(row["model"])}" data-metric="{column}">'
                f'<div class="test"{_field("test_estimate", cell)}>{interval(cell)}</div>'
                f'<div class="folds">images [<span{_field("test_image_low", cell)}>'
                f"{percent(cell['test_image_low'])}</span>–<span"
                f"{_field('test_image_high', cell)}>{percent(cell['test_image_high'])}</span>]"
                f'</div><div class="folds">one per group <span'
                f"{_field('one_per_group_estimate', cell)}>"
                f"{percent(cell['one_per_group_estimate'])}</span> [<span"
                f"{_field('one_per_group_low', cell)}>{percent(cell['one_per_group_low'])}"
                f"</span>–<span{_field('one_per_group_high', cell)}>"
                f"{percent(cell['one_per_group_high'])}</span>]</div>"
                f'<div class="folds"{_field("val_mean", cell)}>'
                f"val {mean_sd(cell['val_mean'], cell['val_sd'])}</div>"
                f'<div class="folds"{_field("test_mean", cell)}>'
                f"test folds {mean_sd(cell['test_mean'], cell['test_sd'])}</div>"
                f'<div class="seed"{_field("seed", cell)}>seed {percent(cell["seed"])}</div></td>'
            )
        rows.append(cells)
        best = ' class="best"' if row["best"] else ""
        row_attrs.append(f'{best} data-model="{_e(row["model"])}"')
    table = _table(headers, rows, ' id="table-1-table"', row_attrs)
    protocol = report["run"]["protocol"]
    leak = "leak-free: split by source group" if protocol == "groups" else "leaky, the seed's"
    return (
        table
        + f'<p class="note">Ours: held-out test set, protocol <b>{_e(protocol)}</b> ({leak}), '
        f"in %: the test estimate (<b>{_e(report['table'][0]['estimand'])}</b>) with its 95% "
        "group-bootstrap interval [low–high]; below it the "
        "image bootstrap's interval, the estimate and interval on one image per source group, "
        "and the mean ± sd over folds on the validation folds and on the test set. "
        f"{_e(report['estimate_note'])}</p>"
        f'<p class="note">Seed: {_e(report["seed"]["source"])}, Table 1; protocol '
        f"<b>paper</b> ({_e(report['seed']['protocol'])}). It reports no specificity; its "
        "recall is the sensitivity. Its figure stands only beside a model started from the "
        "seed's weights (ImageNet's; none for the 2D-CNN) on real scans, labelled like-for-like "
        "or not; random-initialised stand-ins and synthetic data get none.</p>"
    )


def _leakage(audit: dict, protocol: str) -> str:
    if not audit["rows"]:
        other = "paper" if protocol == "groups" else "groups"
        return (
            f'<p class="note" id="leakage-empty">Only the <b>{_e(protocol)}</b> protocol has run '
            "with these settings. Run the same settings with protocol "
            f"<b>{other}</b> into the same output to see how much the seed's protocol (augment, "
            "then split at random: copies of one scan in train and test) inflates the scores.</p>"
        )
    runs = ", ".join(f"{p}: {_e(r['run_id'])}" for p, r in sorted(audit["runs"].items()))
    metrics = list(audit["rows"][0]["groups"])
    headers = ["model"] + [
        f"{m}<br>groups · paper · inflation<br>paper originals · inflation" for m in metrics
    ]
    rows = []
    for row in audit["rows"]:
        cells = [_td(row["model"])]
        for m in metrics:
            cells.append(
                f'<td class="num" data-metric="{m}" data-value="{json.dumps(row["inflation"][m])}"'
                f' data-originals="{json.dumps(row["inflation_originals"][m])}">'
                f"{percent(row['groups'][m])} · {percent(row['paper'][m])} · "
                f"<b>{_signed(row['inflation'][m])}</b><br>"
                f"{percent(row['paper_originals'][m])} · "
                f"<b>{_signed(row['inflation_originals'][m])}</b></td>"
            )
        rows.append(cells)
    sets = audit["test_sets"]
    composition = "; ".join(
        f"{p}: {s['images']} images, {s['originals']} originals, tumor "
        f"{percent(s['tumor_share'])}% (originals {percent(s['tumor_share_originals'])}%)"
        for p, s in sorted(sets.items())
    )
    return (
        _table(headers, rows, ' id="leakage-table"')
        + f'<p class="note">Test scores in %, {_e(audit["rows"][0]["estimand"])}, runs {runs}. '
        "Inflation = paper − groups: what the seed's leaky protocol adds (its test set shares "
        "source scans with training). The second line scores the paper-protocol models on the "
        "original scans of their test set only, the kind of images and class mix the groups "
        "test set holds, so augmentation and prevalence do not pass for leakage. Held-out test "
        f"sets: {_e(composition)}.</p>"
    )


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:+.1f}"


def _comparisons(report: dict) -> str:
    delong = report["comparisons"]["delong"]
    rows = [
        [_td(r["other"])]
        + [_delong_cell(r, key) for key in DELONG_COLUMNS]
        + [_td(r.get("error", ""))]
        for r in delong
    ]
    best = report["summary"]["best_model"]
    headers = ["other model", *DELONG_COLUMNS.values(), "note"]
    estimand = report["comparisons"]["estimand"]
    unit = report["models"][0]["bootstrap"]
    out = (
        f"<h3>DeLong's test: {_e(best)} against each other model</h3>"
        + f'<p class="note" id="delong-estimand">AUCs here: <b>{_e(estimand)}</b>, the '
        "estimand of Table 1 and the summary.</p>"
        + (
            _table(
                headers,
                rows,
                ' id="delong-table"',
                [f' data-other="{_e(r["other"])}"' for r in delong],
            )
            if rows
            else '<p class="note">Only one model ran: nothing to compare.</p>'
        )
        + f'<p class="note">Paired test on the same held-out test images ({unit["groups"]} '
        f"groups, {unit['images']} images), two-sided p. {_e(report['comparisons']['method'])}"
        "</p><h3>Per-class accuracy</h3>"
    )
    rows = []
    for model in report["models"]:
        per_class = model["per_class_accuracy"]
        seed = (model["seed"] or {}).get("per_class_accuracy") or {}
        rows.append(
            [_td(model["model"])]
            + [
                _td(f"{interval_of(per_class[c])} (seed {percent(seed.get(c))})", True)
                for c in ("tumor", "no_tumor")
            ]
        )
    return out + _table(
        ["model", "Tumor (sensitivity)", "No Tumor (specificity)"], rows, ' id="per-class-table"'
    )


def _delong_cell(row: dict, key: str) -> str:
    return (
        f'<td class=num data-key="{key}" data-value="{json.dumps(row.get(key))}">'
        + _e(_number(row.get(key)))
        + "</td>"
    )


def _configs_table(configs: dict[str, dict], attrs: str) -> str:
    rows = [
        [_td(model)]
        + [
            _td(_number(v) if isinstance(v := config.get(f), float) else v)
            for f in BEST_CONFIG_FIELDS
        ]
        for model, config in configs.items()
    ]
    return _table(["model", *BEST_CONFIG_FIELDS], rows, attrs)


def _cross_validation(plan: dict | None) -> str:
    """Which fold chose the hyper-parameters and which folds were scored."""
    if not plan:
        return ""
    split = plan.get("tuning_split")
    sizes = (
        f" Tuning split: {split['train']} training and {split['val']} validation images."
        if split and split.get("val") is not None
        else ""
    )
    scored = ", ".join(map(str, plan["scored_folds"]))
    return (
        f'<p class="note" id="cross-validation">Folds: {plan["folds"]}; scored: {_e(scored)}. '
        f"{_e(plan['note'])}.{_e(sizes)}</p>"
    )


def _sweep(sweeps: dict, models: list[dict]) -> str:
    if not sweeps:
        return (
            '<p class="note" id="no-sweep">No sweep: every model trained with the seed\'s own '
            "settings (tuning <b>seed</b>; see <code>braintl.replica</code> for how the seed's "
            "text maps to them), so a run under the paper protocol replicates the seed.</p>"
            + _configs_table({m["model"]: m["config"] for m in models}, ' id="seed-configs"')
        )
    out = []
    for name, sweep in sweeps.items():
        trials = sweep.get("trials", [])
        hyper = sorted({k for t in trials for k in t} - TRIAL_FIELDS)
        headers = ["model", *hyper, "final val AUC", "best val AUC", "epochs", "ASHA stopped",
                   "error"]  # fmt: skip
        rows = [
            [_td(f"{t['backbone']}/{t['strategy']}")]
            + [_td(_number(t.get(h)) if isinstance(t.get(h), float) else t.get(h)) for h in hyper]
            + [_td(_number(t.get("val_auc")), True), _td(_number(t.get("best_val_auc")), True),
               _td(t.get("epochs_run"), True), _td("yes" if t.get("stopped_early") else "no"),
               _td(t.get("error") or "")]
            for t in trials
        ]  # fmt: skip
        out.append(
            f"<h3>Sweep {_e(name)}: {len(trials)} trials</h3>"
            + _table(headers, rows, f' class="sweep-trials" data-sweep="{_e(name)}"')
            + "<h4>Best configuration per model</h4>"
            + _configs_table(sweep.get("best", {}), ' class="sweep-best"')
        )
    return "".join(out)


def _explanations(explanations: dict, images: dict[str, str]) -> str:
    figures = []
    for i, case in enumerate(explanations["cases"]):
        verdict = "right" if case["correct"] else "wrong"
        figures.append(
            f'<figure><img class="gradcam" alt="Grad-CAM, test image {case["index"]}" '
            f'src="{images[f"gradcam-{i}"]}"><figcaption>true <b>{_e(case["label"])}</b>, called '
            f'<span class="{verdict}">{_e(case["predicted"])}</span> (P(tumor) '
            f"{case['prob']:.2f}), test image {case['index']}</figcaption></figure>"
        )
    return (
        f'<p class="note">Qualitative only: Grad-CAM of the tumor logit on the last feature map '
        f"of {_e(explanations['model'])}'s fold ensemble (the published model: the mean of the "
        f"maps of fold models {', '.join(map(str, explanations['folds']))}; threshold "
        f"{explanations['threshold']:.3f}), on held-out test scans per class, correct and wrong "
        "where there are any. Warm colours: regions that raised the tumor score. A heatmap shows "
        "what the model used, not that it is anatomy.</p>"
        + (f'<div class="cases">{"".join(figures)}</div>' if figures else "<p>No test scans.</p>")
    )


def _data(data: dict) -> str:
    meta, manifest = data["meta"], data["manifest"] or {}
    counts = _table(
        ["label", "files", "usable"],
        [
            [_td(label), _td(n, True), _td(manifest.get("usable_per_label", {}).get(label), True)]
            for label, n in manifest.get("per_label", {}).items()
        ],
        ' id="label-counts"',
    )
    quarantine = manifest.get("quarantined", [])
    groups = manifest.get("duplicate_groups", [])
    conflicts = manifest.get("label_conflicts", [])
    parts = []
    for part, sizes in meta.get("parts", {}).items():
        for role, count in sizes.items() if "total" not in sizes else [("", sizes)]:
            parts.append([_td(f"{part} {role}".strip())] + [
                _td(count.get(k), True) for k in ("tumor", "no_tumor", "total")
            ])  # fmt: skip
    return (
        f"<p>Fingerprint <code>{_e(data['fingerprint'])}</code> · tensors "
        f"<code>{_e(data['tensors_url'])}</code> · {_e(meta.get('originals'))} usable originals, "
        f"{_e(meta.get('augmented'))} augmented copies, {_e(meta.get('n'))} images at "
        f"{_e(meta.get('image_size'))} px · protocol {_e(meta.get('protocol'))} (source groups "
        f"in more than one part: {_e(meta.get('leakage'))})</p>"
        f"<h3>Counts per label</h3>{counts}"
        f"<h3>Quarantined files ({len(quarantine)})</h3>"
        + _table(
            ["file", "reason", "detail"],
            [[_td(q["file"]), _td(q["reason"]), _td(q["detail"])] for q in quarantine],
            ' id="quarantine"',
        )
        + f"<h3>Duplicate groups ({len(groups)}; label conflicts {len(conflicts)})</h3>"
        + ("<p>This data looks pre-augmented.</p>" if manifest.get("pre_augmented") else "")
        + _table(
            ["group", "kind", "labels", "members"],
            [
                [
                    _td(g["group"]),
                    _td(g["kind"]),
                    _td(", ".join(g["labels"])),
                    _td(", ".join(g["members"])),
                ]
                for g in groups + conflicts
            ],
            ' id="duplicate-groups"',
        )  # fmt: skip
        + "<h3>Split sizes per part and label</h3>"
        + _table(["part", "tumor", "no tumor", "total"], parts, ' id="split-sizes"')
        + "<h3>Augmentation</h3>"
        + f"<pre>{_e(json.dumps(data['augmentation'], indent=2))}</pre>"
    )


def _run(run: dict) -> str:
    stages = [[_td(k), _td(f"{v:.1f}", True)] for k, v in run["stages"].items()]
    versions = [[_td(k), _td(v)] for k, v in (run["versions"] or {}).items()]
    return (
        f"<p>Run <code>{_e(run['run_id'])}</code> at <code>{_e(run['url'])}</code>: started "
        f"{_e(run['started'])}, finished {_e(run['finished'] or 'not yet, at rendering')}, "
        f"report rendered {_e(run['rendered'])}.</p>"
        + "<h3>Time per stage (s)</h3>"
        + _table(["stage", "seconds"], stages, ' id="stages"')
        + "<h3>Versions</h3>"
        + _table(["package", "version"], versions, ' id="versions"')
        + f"<h3>Hardware</h3><pre>{_e(json.dumps(run['hardware'], indent=2))}</pre>"
        + f"<h3>Configuration</h3><pre>{_e(json.dumps(run['params'], indent=2))}</pre>"
    )
