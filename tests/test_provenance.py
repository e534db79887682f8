"""Groups from provenance: ``--group-by`` and ``--manifest`` give source groups (joined with the
pixel groups), the manifest's labels and its problems, reported; splits list their members."""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from braintl.cli import build_parser, main
from braintl.commands.data import config_from_args
from braintl.data.listing import DEFAULT_LABEL_MAP, list_images
from braintl.data.manifest import LABEL_CONFLICT, OK, QUARANTINED, scan
from braintl.data.phantoms import write_phantom_dataset
from braintl.data.prepare import DataConfig, build_tensors, prepare, scan_data
from braintl.data.provenance import NOT_IN_MANIFEST, compile_group_by, read_provenance
from braintl.data.splits import members, parts
from braintl.data.tensors import Split
from flows.params import RetrainParams
from tasks.data import snapshot

PATIENT = r"pat(?P<group>\d+)_"
AUGMENTED = r"aug_(?P<group>.+?)_\d+_\d+\."  # aug_<SOURCE>_<k>_<n>.jpg; SOURCE may hold ". "
FILE_NAME_TRUTH = re.compile(r"aug_(.+)_\d+_\d+\.jpg$")


@pytest.fixture
def patients(tmp_path) -> Path:
    """16 phantoms as 8 patients of 2 files each (pat0-3 tumor, pat4-7 no tumor)."""
    root = Path(write_phantom_dataset(tmp_path / "scans", {"yes": 8, "no": 8}, size=64))
    for k, path in enumerate(
        sorted(root.rglob("*.png"), key=lambda p: (p.parent.name != "yes", p))
    ):
        path.rename(path.parent / f"pat{k // 2}_{k % 2}.png")
    return root


def _by(manifest, key) -> dict:
    return {r.relpath: getattr(r, key) for r in manifest.records}


def _write_csv(path: Path, rows: list[tuple], header=("path", "label", "group")) -> str:
    with path.open("w", newline="", encoding="utf-8-sig") as f:  # with a BOM, as Excel writes
        csv.writer(f).writerows([header, *rows])
    return str(path)


def _part_leakage(members_of: dict[str, list[str]], source) -> int:
    """Sources found in more than one part, recomputed from the listed members."""
    where = defaultdict(set)
    for part, files in members_of.items():
        for f in files:
            where[source(f)].add(part)
    return sum(len(p) > 1 for p in where.values())


# --- the pattern ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern, expected",
    [("aug_(", "is not a regular expression"), ("aug_(.+)_", "no named group (?P<group>")],
)
def test_a_bad_pattern_is_refused_up_front(patients, capsys, monkeypatch, pattern, expected):
    with pytest.raises(ValueError, match=re.escape(expected)):
        compile_group_by(pattern)
    assert main(["data", "inspect", str(patients), "--group-by", pattern]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--group-by" in err[0] and expected in err[0]
    with pytest.raises(ValidationError) as info:
        RetrainParams(group_by=pattern)
    assert info.value.errors()[0]["loc"] == ("group_by",) and expected in str(info.value)
    monkeypatch.chdir(patients)
    assert main(["run", "--group-by", pattern]) == 2
    assert f"group_by: {pattern!r}" in capsys.readouterr().err


def test_group_by_joins_each_sources_files_and_counts_the_unmatched(patients, tmp_path):
    odd = write_phantom_dataset(tmp_path / "odd", {"no": 1}, size=64, seed=9)
    shutil.copy(next(Path(odd).rglob("*.png")), patients / "no" / "unnamed.png")
    listing = list_images(str(patients))
    pixels_only = _by(scan(listing), "group")
    assert len(set(pixels_only.values())) == 17  # distinct phantoms: one pixel group each
    manifest = scan(listing, provenance=read_provenance(PATIENT, None, DEFAULT_LABEL_MAP))
    group = _by(manifest, "group")
    for k in range(8):
        yes_or_no = "yes" if k < 4 else "no"
        assert group[f"{yes_or_no}/pat{k}_0.png"] == group[f"{yes_or_no}/pat{k}_1.png"]
    assert len(set(group.values())) == 9  # 8 patients and the unmatched file on its own
    summary = manifest.summary()["provenance"]
    assert summary["groups"] == 8 and summary["ungrouped"] == 1
    assert summary["files_per_group"] == {"min": 2, "median": 2.0, "max": 2}
    assert any("1 file(s) have no provenance group" in n for n in manifest.notes())
    kinds = {g["kind"] for g in manifest.summary()["duplicate_groups"]}
    assert kinds == {"provenance"}


def test_copies_across_sources_still_merge(patients):
    """Union: a copy of pat0's scan filed under pat1 joins both patients' files."""
    shutil.copy(patients / "yes" / "pat0_0.png", patients / "yes" / "pat1_9.png")
    provenance = read_provenance(PATIENT, None, DEFAULT_LABEL_MAP)
    manifest = scan(list_images(str(patients)), provenance=provenance)
    group = _by(manifest, "group")
    joined = {f"yes/pat{k}_{j}.png" for k in (0, 1) for j in (0, 1)} | {"yes/pat1_9.png"}
    assert len({group[f] for f in joined}) == 1
    assert len(set(group.values())) == 7
    (duplicate,) = [g for g in manifest.summary()["duplicate_groups"] if len(g["members"]) == 5]
    assert duplicate["kind"] == "exact+provenance"


# --- the manifest ----------------------------------------------------------------------------


def test_manifest_gives_labels_and_groups_and_reports_every_problem(patients, tmp_path, capsys):
    rows = [(f"yes/pat{k}_{j}.png", "tumor", f"P{k}") for k in range(4) for j in (0, 1)]
    rows += [(f"no/pat{k}_{j}.png", "no", f"P{k}") for k in range(4, 7) for j in (0, 1)]
    rows += [("no/pat7_0.png", "yes", "P70"), ("./yes/gone.png", "tumor", "P9")]
    rows += [("no/pat7_1.png", "no_tumor", "")]  # an empty group: its pixel group only
    csv_path = _write_csv(tmp_path / "m.csv", rows, header=("Path", "label", "patient"))
    extra = write_phantom_dataset(tmp_path / "extra", {"yes": 1}, size=64, seed=9)
    shutil.copy(next(Path(extra).rglob("*.png")), patients / "yes" / "extra.png")  # no row
    provenance = read_provenance(None, csv_path, DEFAULT_LABEL_MAP)
    manifest = scan(list_images(str(patients)), provenance=provenance)
    records = {r.relpath: r for r in manifest.records}
    assert records["no/pat7_0.png"].label == "tumor" and records["no/pat7_0.png"].status == OK
    extra = records["yes/extra.png"]
    assert (extra.status, extra.reason) == (QUARANTINED, NOT_IN_MANIFEST)
    assert records["no/pat4_0.png"].group == records["no/pat4_1.png"].group
    summary = manifest.summary()["provenance"]
    assert summary["missing_files"] == [{"path": "yes/gone.png", "line": 17}]
    assert summary["not_in_manifest"] == ["yes/extra.png"]
    assert summary["label_disagreements"] == [
        {"file": "no/pat7_0.png", "folder": "no_tumor", "manifest": "tumor"}
    ]
    assert summary["groups"] == 8 and summary["ungrouped"] == 1
    notes = "\n".join(manifest.notes())
    assert "yes/gone.png (line 17)" in notes and "not in --manifest, quarantined" in notes
    assert "no/pat7_0.png no_tumor -> tumor" in notes
    assert main(["data", "inspect", str(patients), "--manifest", csv_path]) == 0
    out = capsys.readouterr().out
    assert "1 row(s) without a listed file (skipped), 1 file(s) not in it (quarantined), " in out
    assert "provenance: 8 groups, files per group min 1 / median 2 / max 2" in out
    assert main(["data", "inspect", str(patients), "--manifest", csv_path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["provenance"] == summary


def test_a_source_of_two_labels_is_a_label_conflict(patients, tmp_path):
    """Like copies of different labels, a provenance group of two labels is kept out."""
    rows = [
        (str(p.relative_to(patients)), p.parent.name, p.stem[:-2]) for p in patients.rglob("*.png")
    ]
    rows = [
        (path, label, "pat0" if path == "no/pat4_0.png" else group) for path, label, group in rows
    ]
    csv_path = _write_csv(tmp_path / "m.csv", rows)
    provenance = read_provenance(None, csv_path, DEFAULT_LABEL_MAP)
    manifest = scan(list_images(str(patients)), provenance=provenance)
    conflicts = sorted(r.relpath for r in manifest.records if r.status == LABEL_CONFLICT)
    assert conflicts == ["no/pat4_0.png", "yes/pat0_0.png", "yes/pat0_1.png"]


@pytest.mark.parametrize(
    "text, expected",
    [
        (b"path,label\nyes/pat0_0.png,tumor\n", "needs the columns path,label,group"),
        (b"path,label,group\nyes/pat0_0.png,,P0\n", "line 2: empty path or label"),
        (b"path,label,group\nyes/pat0_0.png,tumour,P0\n", "label 'tumour' unknown"),
        (
            b"path,label,group\na.png,yes,1\na.png,yes,1\n",
            "line 3: 'a.png' again (first on line 2)",
        ),
        (b"path,label,group\n\xff\xfe,yes,1\n", "not UTF-8"),
        (b"path,label,group\npat0_0.png,yes,1\n", "write paths relative to DATA_URL"),
        (None, "does not exist"),
    ],
)
def test_a_broken_manifest_fails_with_the_fix(patients, tmp_path, capsys, text, expected):
    path = tmp_path / "m.csv"
    if text is not None:
        path.write_bytes(text)
    assert main(["data", "inspect", str(patients), "--manifest", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("braintl: error: --manifest") and expected in err[0]


# --- settings, caches and splits -------------------------------------------------------------


def test_provenance_changes_the_cache_key_and_rebuilds(patients, tmp_path):
    base = {"preprocess": {"image_size": 32}, "augment": {"enabled": False}, "folds": 2}
    out = str(tmp_path / "out")
    plain = prepare(str(patients), out, DataConfig(**base))
    grouped = DataConfig(**base, group_by=PATIENT)
    first = prepare(str(patients), out, grouped)
    assert not first.reused and prepare(str(patients), out, grouped).reused
    assert first.key != plain.key and first.manifest.fingerprint != plain.manifest.fingerprint
    # A manifest edited in place: same URL, new groups -> a new snapshot and a new cache.
    files = sorted(str(p.relative_to(patients)) for p in patients.rglob("*.png"))
    csv_path = _write_csv(tmp_path / "m.csv", [(f, f.split("/")[0], f[:-6]) for f in files])
    by_manifest = DataConfig(**base, manifest_url=csv_path)
    before = prepare(str(patients), out, by_manifest), snapshot.fn(str(patients), csv_path)
    _write_csv(tmp_path / "m.csv", [(f, f.split("/")[0], f[:-4]) for f in files])  # 1 a file
    after = prepare(str(patients), out, by_manifest), snapshot.fn(str(patients), csv_path)
    assert not after[0].reused and after[0].key != before[0].key and after[1] != before[1]
    assert len({r.group for r in after[0].manifest.records}) == 16
    assert len({r.group for r in before[0].manifest.records}) == 8


@pytest.mark.parametrize(
    "command", [["data", "inspect", "d"], ["data", "split", "d"], ["data", "prepare"], ["train"]]
)
def test_data_commands_and_train_take_the_flags(command):
    args = build_parser().parse_args([*command, "--group-by", PATIENT, "--manifest", "m.csv"])
    config = config_from_args(args)
    assert (config.group_by, config.manifest_url) == (PATIENT, "m.csv")


def test_run_passes_provenance_to_the_data_and_the_run_key(tmp_path):
    plain = RetrainParams()
    grouped = RetrainParams(group_by=PATIENT, manifest_url=str(tmp_path / "m.csv"))
    config = grouped.data_config()
    assert (config.group_by, config.manifest_url) == (PATIENT, str(tmp_path / "m.csv"))
    assert plain.run_key("f") != grouped.run_key("f")
    assert plain.data_config().cache_key("f") != config.cache_key("f")
    with pytest.raises(ValidationError, match="manifest_url"):
        RetrainParams(manifest_url="s3://key:secret@bucket/m.csv")


def test_split_json_lists_members_that_show_no_leakage(patients, capsys):
    argv = ["data", "split", str(patients), "--group-by", PATIENT, "--folds", "2", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    listed = [f for files in result["members"].values() for f in files]
    assert sorted(listed) == sorted(str(p.relative_to(patients)) for p in patients.rglob("*.png"))
    assert set(result["members"]) == {"test", "fold0", "fold1"}
    patient = re.compile(PATIENT)
    assert _part_leakage(result["members"], lambda f: patient.search(f).group(1)) == 0
    assert result["leakage"] == 0 and result["provenance"]["groups"] == 8


def test_one_fold_lists_the_training_remainder():
    split = Split("groups", test=np.array([0]), folds=(np.array([1]),), leaky=False)
    assert {k: v.tolist() for k, v in parts(split, 4).items()} == {
        "test": [0], "fold0": [1], "train": [2, 3]
    }  # fmt: skip
    assert members(split, 6, ["a", "b", "c", "d"]) == {
        "test": ["a"], "fold0": ["b"], "train": ["c", "d"]
    }  # fmt: skip


# --- the real pre-augmented set (names are the truth) ----------------------------------------


def _truth(relpath: str) -> str:
    return FILE_NAME_TRUTH.search(relpath).group(1)


@pytest.mark.real_data
def test_group_by_on_the_augmented_set_groups_every_source_and_splits_without_leakage(real_data):
    """brain_mri_augmented (2065 files, about a minute): the pattern names 252 sources."""
    config = DataConfig(
        preprocess={"image_size": 32}, augment={"enabled": False}, group_by=AUGMENTED
    )
    manifest, pixels = scan_data(str(real_data.parent / "brain_mri_augmented"), config)
    groups_of = defaultdict(set)
    for r in manifest.records:
        groups_of[_truth(r.relpath)].add(r.group)
    assert len(groups_of) == 252 and all(len(g) == 1 for g in groups_of.values())
    summary = manifest.summary()
    assert summary["provenance"]["groups"] == 252 and summary["provenance"]["ungrouped"] == 0
    assert summary["label_conflicts"] == [] and summary["groups"] <= 252
    tensors = build_tensors(manifest, pixels, config)
    parts_members = members(tensors.split, len(tensors), tensors.meta["files"])
    assert sum(map(len, parts_members.values())) == len(manifest.records) == 2065
    assert _part_leakage(parts_members, _truth) == 0


@pytest.mark.real_data
def test_a_manifest_of_the_augmented_set_splits_without_leakage(real_data, tmp_path, capsys):
    root = real_data.parent / "brain_mri_augmented"
    rows = [
        (f"{p.parent.name}/{p.name}", p.parent.name, _truth(p.name))
        for p in sorted(root.rglob("*.jpg"))
    ]
    csv_path = _write_csv(tmp_path / "sources.csv", rows, header=("path", "label", "patient"))
    assert main(["data", "split", str(root), "--manifest", csv_path, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    provenance = result["provenance"]
    assert provenance["groups"] == 252 and provenance["ungrouped"] == 0
    assert (provenance["missing_files"], provenance["not_in_manifest"]) == ([], [])
    assert provenance["label_disagreements"] == []
    assert sum(map(len, result["members"].values())) == 2065
    assert _part_leakage(result["members"], _truth) == 0 and result["leakage"] == 0
