"""External validation: external sets built here (phantoms from another "scanner", with copies
of development scans planted in them), screened by the real duplicate search, scored by the
published model of a real flow run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import ray
from PIL import Image
from temporary_prefect import temporary_prefect

from braintl import external
from braintl.cli import build_parser
from braintl.commands.run import params_from_args
from braintl.data.phantoms import Scanner, write_phantom_dataset
from braintl.data.prepare import DataConfig
from braintl.errors import UserError
from braintl.markdown import markdown_escape
from braintl.timeouts import PREPARE_SECONDS_PER_FILE, Timeouts
from flows.params import RetrainParams
from flows.retrain import retrain

OTHER_SCANNER = Scanner(gamma=1.6, noise=2.5)


def _sets(root: Path) -> tuple[str, str, dict[str, str]]:
    """Development phantoms (48 px), an external set from another scanner at another size and
    seed, and three copies of development scans planted in it: the file itself, a mirrored
    and resized one, a rotated JPEG. Returns (development, external, planted → its source)."""
    dev = write_phantom_dataset(str(root / "dev"), {"yes": 16, "no": 16}, size=48, seed=0)
    ext = write_phantom_dataset(
        str(root / "ext"), {"yes": 10, "no": 10}, size=64, seed=1, scanner=OTHER_SCANNER
    )
    shutil.copy(root / "dev/yes/phantom_yes_0003.png", root / "ext/yes/copy_a.png")
    flipped = Image.open(root / "dev/no/phantom_no_0005.png").transpose(
        Image.Transpose.FLIP_LEFT_RIGHT
    )
    flipped.resize((64, 64)).save(root / "ext/no/copy_b.png")
    Image.open(root / "dev/yes/phantom_yes_0007.png").rotate(90).save(root / "ext/yes/copy_c.jpg")
    planted = {
        "yes/copy_a.png": "yes/phantom_yes_0003.png",
        "no/copy_b.png": "no/phantom_no_0005.png",
        "yes/copy_c.jpg": "yes/phantom_yes_0007.png",
    }
    return dev, ext, planted


def test_copies_of_development_scans_are_removed_and_counted(tmp_path):
    dev, ext, planted = _sets(tmp_path)
    (source,) = external.screen(dev, [ext], DataConfig())
    assert source["listed"] == 23 and source["copies_removed"] == 3
    assert {c["file"]: c["of"][0] for c in source["copies"]} == planted
    kept = {
        m["url"].rsplit("/", 2)[-2] + "/" + m["url"].rsplit("/", 1)[-1] for m in source["members"]
    }
    assert len(kept) == 20 and not kept & set(planted)
    assert source["per_label"] == {"no_tumor": 10, "tumor": 10}
    assert len({m["group"] for m in source["members"]}) == 20  # distinct phantoms, own groups


def test_a_bad_external_folder_is_refused_naming_it_and_the_fix(tmp_path):
    dev, ext, _ = _sets(tmp_path)
    missing = str(tmp_path / "nowhere")
    with pytest.raises(UserError, match=f"--external {missing}: .*does not exist.*leave this"):
        external.screen(dev, [ext, missing], DataConfig())
    one_label = tmp_path / "one-label"
    shutil.copytree(tmp_path / "ext/yes", one_label / "yes")
    with pytest.raises(UserError, match=f"--external {one_label}: .*fewer than two labels"):
        external.screen(dev, [str(one_label)], DataConfig())
    copies = tmp_path / "copies"  # every scan a development scan: nothing left to score
    shutil.copytree(tmp_path / "dev", copies)
    with pytest.raises(UserError, match=r"after removing 32 copies .* 0 scans remain"):
        external.screen(dev, [str(copies)], DataConfig())


def test_external_urls_from_the_form_and_the_command_line(tmp_path):
    data, other = str(tmp_path / "scans"), str(tmp_path / "other")
    args = ["run", "--data", data, "--external", other, "--external", f"{other}2"]
    params = RetrainParams(**params_from_args(build_parser().parse_args(args)))
    assert params.external_data_urls == [other, f"{other}2"]
    for urls, expected in [
        ([f"{data}/yes"], "lies inside data_url"),
        ([other, other], "given twice"),
        (["s3://AKIA1:s3cr3t@b/x"], "embeds credentials"),
    ]:
        with pytest.raises(ValueError, match=expected):
            RetrainParams(data_url=data, external_data_urls=urls)
    # Screening and scoring each read the development data and every external set once.
    per_set = 100_000 * PREPARE_SECONDS_PER_FILE
    assert Timeouts().external(DataConfig(max_images=100_000), 2) == 3 * per_set
    assert Timeouts(external_s=5).external(DataConfig(), 2) == 5


def test_scores_count_a_group_once():
    import numpy as np

    y = np.array([1, 1, 1, 1, 0, 0])
    p = np.array([0.9, 0.9, 0.9, 0.2, 0.1, 0.6])
    apart, copies = (external.score(y, p, g, 0.5) for g in ([0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 3]))
    assert apart["scores"]["sensitivity"]["estimate"] == 0.75
    assert apart["scores"]["specificity"]["estimate"] == 0.5
    assert (apart["groups"], copies["groups"]) == (6, 4)
    # One scan and two copies of it: the bootstrap draws it as one case, so wider intervals.
    width = {k: s["scores"]["auc"]["high"] - s["scores"]["auc"]["low"] for k, s in
             {"apart": apart, "copies": copies}.items()}  # fmt: skip
    assert width["copies"] > width["apart"]


@pytest.mark.slow
def test_flow_scores_the_published_model_on_external_sets(tmp_path):
    dev, ext, _ = _sets(tmp_path / "data")
    out = tmp_path / "out"
    params = RetrainParams(
        profile="quick",
        data_url=dev,
        out_url=str(out),
        external_data_urls=[ext],
        backbones=["scratch_cnn"],
        image_size=32,
        epochs=1,
        folds=3,
        test_fraction=0.25,
        sweep={"num_samples": 1},
    )
    missing = str(tmp_path / "nowhere")
    ray.shutdown()
    try:
        with temporary_prefect(tmp_path / "prefect"):
            bad = params.model_copy(update={"external_data_urls": [ext, missing]})
            refused = retrain(bad, return_state=True)
            assert refused.is_failed() and f"--external {missing}: " in refused.message
            # Before any training: nothing prepared, no run (OUT/.prefect holds task results).
            assert not (out / "cache").exists() and not (out / "runs").exists()
            state = retrain(params, return_state=True)
    finally:
        ray.shutdown()
    assert state.is_completed(), state.message
    record = state.result()
    run = Path(record["run_url"])
    latest = json.loads((out / "latest.json").read_text())
    (source,) = latest["external"]["sources"]
    assert source["name"] == "ext" and source["copies_removed"] == 3 and source["n"] == 20
    assert latest["external"]["internal"]["n"] == 8  # a quarter of 32 held out
    assert latest["external"] == record["external"]
    assert json.loads((run / "results.json").read_text())["external"] == latest["external"]

    report = json.loads((run / "report/report.json").read_text())
    validation = report["external"]
    assert validation["model"] == record["model"]
    info = json.loads((run / "model/model.json").read_text())
    assert validation["threshold"] == info["threshold"]  # the published model's, not tuned here
    assert validation["sources"][0]["copies_removed"] == 3
    assert validation["sources"][0]["roc"]["fpr"] and validation["internal"]["reliability"]
    html = (run / "report/index.html").read_text()
    assert 'data-section="external"' in html and 'id="external-table"' in html
    assert 'id="plot-external-roc"' in html and 'id="plot-external-calibration"' in html
    auc = validation["sources"][0]["scores"]["auc"]["estimate"]
    assert f'data-set="ext" data-metric="auc" data-value="{json.dumps(auc)}"' in html

    card = (run / "model/MODEL_CARD.md").read_text()
    assert "## External validation" in card and markdown_escape(ext) in card
    assert info["external"] == latest["external"]
