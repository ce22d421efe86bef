"""DICOM tree inventory, phase rules and import_dicom_cohort on a hand-made TCIA-like tree."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from HCCTwinLib import io
from HCCTwinLib.cases import Geometry
from HCCTwinLib.dicom import import_dicom_cohort, load_phase_rules, scan_dicom_tree, write_ct_series, write_seg
from HCCTwinLib.dicom.importer import classify_series
from HCCTwinLib.errors import InputError

from conftest import make_phantom

SHAPE = (10, 20, 24)
GEOM = Geometry(SHAPE, (1.5, 1.5, 3.0), (-18.0, -15.0, 40.0))
BASE = dt.date(2020, 1, 10)


def _study(root, pid, date, series, *, seg_on=None, seg_labels=None, seed=0, study_uid=None, folder=None):
    """Write one study: ``series`` = [(SeriesDescription, hu)], optionally a SEG on the series ``seg_on`` (headers)."""
    study_uid = study_uid or generate_uid()
    for_uid = generate_uid()
    folder = root / pid.replace("/", "_") / (folder or f"{date:%m-%d-%Y}-NA-CT-{study_uid[-5:]}")
    written = {}
    for n, (description, hu) in enumerate(series, start=2):
        written[description] = write_ct_series(
            hu, GEOM, folder / f"{n}.000000-{description}", patient_id=pid, patient_name="Doe^Jane",
            study_uid=study_uid, frame_of_reference_uid=for_uid, study_date=date, series_description=description,
            series_number=n)
    if seg_on is not None:
        write_seg(seg_labels, seg_on.headers, folder / "300.000000-Segmentation" / "1-1.dcm")
    return written


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom") / "HCC-TACE-Seg"
    hu, labels = make_phantom(SHAPE)
    art, por = hu + 60, hu
    fu_labels = labels.copy()
    fu_labels[fu_labels == 2] = 3  # necrosis after treatment
    # P1: pre (arterial, portal venous, delayed + SEG), w08 (SEG stored in a later study), a repeat in the same week
    pre = _study(root, "P1", BASE, [("ARTERIAL", art), ("PORTAL VENOUS", por), ("DELAYED", hu - 20)])
    write_seg(labels, pre["PORTAL VENOUS"].headers, root / "P1" / "seg-pre" / "1-1.dcm")
    w08 = _study(root, "P1", BASE + dt.timedelta(days=54), [("Art 5mm", art - 30), ("PV 5mm", por - 10)])
    _study(root, "P1", BASE + dt.timedelta(days=59), [("ARTERIAL", art), ("PORTAL VENOUS", por)])
    seg_only = write_seg(fu_labels, w08["PV 5mm"].headers, root / "P1" / "segstudy" / "1-1.dcm")
    ds = pydicom.dcmread(seg_only)  # stored by the annotating site as a study of its own
    ds.StudyInstanceUID, ds.StudyDate = generate_uid(), "20200601"
    ds.save_as(seg_only)
    # P2: descriptions no rule knows
    _study(root, "P2", BASE, [("Recon 2", art), ("Recon 3", por)])
    # P3: the pre-treatment arterial series misses a slice
    broken = _study(root, "P3", BASE, [("ARTERIAL", art), ("PORTAL VENOUS", por)])
    broken["ARTERIAL"].files[4].unlink()
    # P4: a PatientID that would leave the output folder
    _study(root, "../evil", BASE, [("ARTERIAL", art), ("PORTAL VENOUS", por)], folder="evil")
    (root / "clinical.csv").write_text("TCIA_ID,OS\nP1,10\n")
    (root / "junk.dcm").write_bytes(b"not dicom at all" * 20)
    return {"root": root, "labels": labels, "fu_labels": fu_labels, "art": art, "por": por}


def test_inventory_of_nested_tree(tree):
    inv = scan_dicom_tree(tree["root"])
    assert sorted(inv.patients) == ["../evil", "P1", "P2", "P3"]
    assert inv.non_dicom == 2  # clinical.csv, junk.dcm
    p1 = inv.patients["P1"]
    studies = p1.ordered_studies()
    assert [s.date for s in studies[:3]] == [BASE, BASE + dt.timedelta(days=54), BASE + dt.timedelta(days=59)]
    pre = studies[0]
    kinds = sorted((s.modality, s.description, len(s.files)) for s in pre.series.values())
    assert kinds == [("CT", "ARTERIAL", 10), ("CT", "DELAYED", 10), ("CT", "PORTAL VENOUS", 10),
                     ("SEG", "Segmentation", 1)]
    seg = next(s for s in pre.series.values() if s.modality == "SEG")
    portal = next(s for s in pre.series.values() if s.description == "PORTAL VENOUS")
    assert seg.referenced_series == [portal.uid]
    assert sorted(len(s.files) for s in inv.patients["P3"].all_series().values()) == [9, 10]
    text = json.dumps(inv.to_dict())
    assert "Doe" not in text and "Jane" not in text
    assert inv.to_dict()["by_patient"]["P1"][0]["series"][0]["description"] == "ARTERIAL"


@pytest.mark.parametrize("description, phase", [
    ("ARTERIAL", "arterial"), ("Late arterial 2.5mm", "arterial"), ("Art 5mm", "arterial"),
    ("PORTAL VENOUS", "portal"), ("PV 5mm", "portal"), ("Venous phase", "portal"), ("DELAYED VENOUS", None),
    ("Pre contrast", None), ("PRE LIVER", None), ("Arterial + portal", None), ("Recon 2", None), ("Partial", None),
    ("Scout", None), ("Coronal PV", None),
])
def test_phase_rules_defaults(description, phase):
    assert classify_series(description, load_phase_rules())[0] == phase


def test_phase_rules_from_file(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"portal": ["recon 3"], "arterial": "recon 2"}))
    rules = load_phase_rules(path)
    assert classify_series("Recon 2", rules)[0] == "arterial" and classify_series("Recon 3", rules)[0] == "portal"
    assert classify_series("Delayed", rules)[0] is None  # ignore list kept
    path.write_text(json.dumps({"kidney": ["k"]}))
    with pytest.raises(InputError, match="unknown phase"):
        load_phase_rules(path)
    path.write_text("{not json")
    with pytest.raises(InputError, match="unreadable"):
        load_phase_rules(path)


def test_import_dicom_tree(tree, tmp_path):
    out = tmp_path / "cohort"
    messages = []
    log = import_dicom_cohort(tree["root"], out, progress=lambda f, m: messages.append(f))
    assert messages and messages[-1] == 1.0
    assert json.loads((out / "import_log.json").read_text()) == log
    by_pid = {p["patient_id"]: p for p in log["patients"]}
    assert by_pid["P1"]["status"] == "imported" and by_pid["P1"]["followups"] == ["w08"]
    for pid, why in (("P2", "no series matched the phase rules"), ("P3", "missing"),
                     ("../evil", "cannot be a folder name")):
        assert by_pid[pid]["status"] == "skipped" and why in by_pid[pid]["reason"], by_pid[pid]
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["P1"]
    assert not (tmp_path / "evil").exists() and not (out.parent / "evil").exists()
    # pre: arterial + portal (delayed ignored), labels from the SEG
    case = io.load_case(out / "cases" / "P1" / "pre")
    assert sorted(case.phases) == ["arterial", "portal"] and case.geometry.same_grid(GEOM)
    np.testing.assert_array_equal(case.labels, tree["labels"])
    assert np.abs(case.phases["arterial"] - tree["art"]).max() <= 0.5 + 1e-6
    # w08 (54 days): labels from the SEG kept in another study; the repeat five days later is skipped
    fu = io.load_case(out / "cases" / "P1" / "followup" / "w08")
    np.testing.assert_array_equal(fu.labels, tree["fu_labels"])
    assert np.abs(fu.phases["portal"] - (tree["por"] - 10)).max() <= 0.5 + 1e-6
    used = {u["target"]: u for u in log["used"]}
    assert sorted(used) == ["followup/w08", "pre"] and used["followup/w08"]["days_from_baseline"] == 54
    assert used["pre"]["phases"]["portal"]["description"] == "PORTAL VENOUS"
    assert any(s["description"] == "DELAYED" and "ignored" in s["why"] for s in used["pre"]["unused_series"])
    assert used["pre"]["labels"]["on_phase"] == "portal"
    reasons = [s["reason"] for s in log["skipped"] if s["patient_id"] == "P1"]
    assert any("same week w08" in r for r in reasons) and any("only SEG" in r for r in reasons)
    text = (out / "import_log.json").read_text()
    assert "Doe" not in text and "Jane" not in text
    clinical, _ = io.read_clinical_table(out / "clinical.csv")
    assert clinical.to_dict("records") == [{"patient_id": "P1", "followups": "w08"}]
    # the output folder must be new or empty
    with pytest.raises(InputError, match="not empty"):
        import_dicom_cohort(tree["root"], out)


def test_import_with_phase_rules_and_broken_seg(tree, tmp_path):
    log = import_dicom_cohort(tree["root"], tmp_path / "c1", phase_rules={"arterial": ["recon 2"],
                                                                          "portal": ["recon 3"]})
    by_pid = {p["patient_id"]: p for p in log["patients"]}
    assert by_pid["P2"]["status"] == "imported"
    # a truncated SEG: the study is imported without labels, the reason is logged
    root = tmp_path / "copy"
    shutil.copytree(tree["root"] / "P1", root / "P1")
    seg = root / "P1" / "seg-pre" / "1-1.dcm"
    seg.write_bytes(seg.read_bytes()[:-500])
    log = import_dicom_cohort(root, tmp_path / "c2")
    pre = next(u for u in log["used"] if u["target"] == "pre")
    assert pre["labels"] is None and any("labels not imported" in n and "truncated" in n for n in pre["notes"])
    assert io.find_image(tmp_path / "c2" / "cases" / "P1" / "pre", "labels") is None
    with pytest.raises(InputError, match="no DICOM image files"):
        import_dicom_cohort(tmp_path / "c2", tmp_path / "c3")
