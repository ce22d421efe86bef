"""Site clinical table -> HCCTwin columns through a column-mapping file (HCCTwinLib.sitemap)."""

import json

import numpy as np
import pandas as pd
import pytest

from HCCTwinLib.errors import InputError
from HCCTwinLib.sitemap import (
    SIMULATED_SITE_MAPPING,
    ColumnMapping,
    apply_mapping,
    load_mapping,
    read_site_clinical,
    reader_columns,
    site_table,
)


def _hcctwin_table():
    return pd.DataFrame({
        "patient_id": ["P1", "P2", "P3"], "age_years": [61, 55, 70], "sex": ["M", "F", "M"], "ecog": [0, 1, 0],
        "child_pugh_points": [5, 6, 7], "albumin_g_l": [41.0, 35.5, 30.0], "bilirubin_umol_l": [12.0, 20.5, 34.2],
        "inr": [1.0, 1.1, 1.3], "ascites": [0, 1, 2], "encephalopathy": [0, 0, 1], "afp_ng_ml": [12.1, 400.0, 3.0],
        "etiology": ["HBV", "HCV", "alcohol"], "n_tumors": [1, 3, 2], "max_diameter_mm": [45.0, 82.0, 30.0],
        "pvtt": [0, 1, 0], "extrahepatic_spread": [0, 0, 1], "bclc": ["A", "C", "C"], "resectable": [1, 0, 0],
        "regimen": ["tace_pd1_len", "haic_pd1_len", "pd1_tki"], "os_months": [30.5, 11.2, 18.0],
        "os_event": [0, 1, 1], "pfs_months": [12.0, 4.1, 6.6], "pfs_event": [1, 1, 0],
        "metastasis_months": [30.5, 9.0, 0.0], "metastasis_event": [0, 1, 1],
        "best_response_mrecist": ["PR", "SD", "PD"], "reader1_mrecist": ["PR", "SD", None],
        "reader2_mrecist": ["CR", "SD", None], "reader3_mrecist": ["PR", "PD", None],
        "split": ["development", "validation", "test"]})


def test_simulated_site_mapping_round_trip(tmp_path):
    table = _hcctwin_table()
    site = site_table(table, SIMULATED_SITE_MAPPING)
    # the site table really is in site names, units and codes
    assert "TCIA_ID" in site.columns and "patient_id" not in site.columns
    assert site["OS"].iloc[0] == pytest.approx(30.5 * 30.4375 / 7, abs=1e-3)  # weeks
    assert list(site["Censored_OS"]) == [1, 0, 0]
    assert site["T_BIL"].iloc[0] == pytest.approx(12.0 / 17.1, abs=1e-4)  # mg/dL
    assert site["Alb"].iloc[0] == pytest.approx(4.1)  # g/dL
    assert site["Tr_Size"].iloc[1] == pytest.approx(8.2)  # cm
    assert list(site["Sex"]) == [1, 2, 1]
    assert list(site["1_mRECIST"][:2]) == [2, 3]
    path = tmp_path / "site.csv"
    site.to_csv(path, index=False)
    mapping_path = SIMULATED_SITE_MAPPING.to_json(tmp_path / "mapping.json")
    back, notes = read_site_clinical(path, mapping_path)
    assert any("weeks" in n for n in notes)
    assert list(back["patient_id"]) == ["P1", "P2", "P3"]
    for col in table.columns:
        a, b = table[col], back[col]
        if a.dtype.kind in "fi":
            np.testing.assert_allclose(b.astype(float), a.astype(float), atol=1e-3, err_msg=col)
        else:
            assert [None if (x is None or x != x) else x for x in b] == list(a), col


def test_unit_and_code_errors_name_the_problem(tmp_path):
    site = pd.DataFrame({"ID": ["A", "B"], "Bili": [1.2, "high"], "Sex": ["m", "x"]})
    mapping = ColumnMapping.from_dict({"columns": {"patient_id": "ID",
                                                   "bilirubin_umol_l": {"column": "Bili", "unit": "mg/dL"}}})
    with pytest.raises(InputError, match=r"patient B: Bili = 'high' is not a number"):
        apply_mapping(site, mapping)
    mapping = ColumnMapping.from_dict({"columns": {"patient_id": "ID",
                                                   "sex": {"column": "Sex", "values": {"m": "M", "f": "F"}}}})
    with pytest.raises(InputError, match=r"patient B: Sex = 'x' has no entry"):
        apply_mapping(site, mapping)
    mapping = ColumnMapping.from_dict({"columns": {"patient_id": "ID", "age_years": "AGE"}})
    with pytest.raises(InputError, match=r"'AGE' are not in the clinical table"):
        apply_mapping(site, mapping)


@pytest.mark.parametrize("bad, match", [
    ({"columns": {"age_years": "Age"}}, "no \"patient_id\""),
    ({"columns": {"patient_id": "ID", "os_months": {"column": "OS", "unit": "fortnights"}}}, "unit 'fortnights'"),
    ({"columns": {"patient_id": "ID", "ecog": {"column": "PS", "unit": "mm"}}}, "no unit to convert"),
    ({"columns": {"patient_id": "ID", "ecog": {"col": "PS"}}}, "must be a site column name"),
    ({"columns": {"patient_id": "ID", "ecog": "ID"}}, "more than one HCCTwin column"),
    ({"format": "other/2", "columns": {"patient_id": "ID"}}, "is not 'hcctwin-column-mapping/1'"),
    ([1, 2], "JSON object"),
])
def test_malformed_mapping_is_refused(tmp_path, bad, match):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(InputError, match=match):
        load_mapping(path)


def test_invert_needs_a_flag_and_missing_cells_stay_missing():
    site = pd.DataFrame({"ID": ["A", "B", "C"], "Censored": [1, None, 2]})
    mapping = ColumnMapping.from_dict({"columns": {"patient_id": "ID",
                                                   "os_event": {"column": "Censored", "invert": True}}})
    with pytest.raises(InputError, match="is not 0/1"):
        apply_mapping(site, mapping)
    out, _ = apply_mapping(site.iloc[:2], mapping)
    assert out["os_event"].iloc[0] == 0 and np.isnan(out["os_event"].iloc[1])


def test_duplicate_site_ids_are_refused(tmp_path):
    path = tmp_path / "site.csv"
    path.write_text("TCIA_ID,Age\nHCC_001,60\nHCC_001,61\n")
    with pytest.raises(InputError, match="more than once"):
        read_site_clinical(path, ColumnMapping.from_dict({"columns": {"patient_id": "TCIA_ID", "age_years": "Age"}}))


def test_reader_columns_grouped_by_time_point():
    table = pd.DataFrame(columns=["patient_id", "reader1_mrecist", "reader2_mrecist", "reader1_mrecist_w16",
                                  "reader_notes"])
    assert reader_columns(table) == {"first": ["reader1_mrecist", "reader2_mrecist"], "w16": ["reader1_mrecist_w16"]}
