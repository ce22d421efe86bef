"""DICOM for real cohorts: CT series and DICOM SEG writing/reading, DICOM tree inventory, cohort import.

Sites bring cohorts as DICOM trees arranged like public TCIA collections (e.g. HCC-TACE-Seg: per patient a
pre-treatment and post-treatment multiphase CT study, liver/tumour masks as DICOM SEG). This package turns such a
tree into the HCCTwin cohort layout (:mod:`HCCTwinLib.simulate.cohort`), and writes simulated cohorts as DICOM:

- :mod:`.series` - a CT volume (HU + :class:`~HCCTwinLib.cases.Geometry`) as a DICOM CT series (one file per
  slice, int16 + rescale) and back;
- :mod:`.seg` - an HCCTwin label map as a DICOM SEG (BINARY, one segment per label) and any DICOM SEG back onto the
  grid of the CT series it references, segment names mapped to HCCTwin labels;
- :mod:`.inventory` - scan a DICOM tree (any nesting) into patients -> studies -> series;
- :mod:`.importer` - :func:`import_dicom_cohort`: DICOM tree -> cohort layout (NIfTI) + ``import_log.json``.

Needs the optional packages pydicom and highdicom (``pip install hcctwin[dicom]``); importing this package without
them raises :class:`DicomSupportMissing` naming the install command. Only the DICOM PatientID is ever read into
HCCTwin; patient names are written when a caller gives them (simulated cohorts) but never read.
"""

from __future__ import annotations

from ..errors import HCCTwinError


class DicomSupportMissing(HCCTwinError, ImportError):
    """pydicom / highdicom are not installed."""


try:  # the optional dependencies, checked once with a clear message
    import highdicom  # noqa: F401
    import pydicom  # noqa: F401
except ImportError as _exc:  # pragma: no cover - the test environment has them
    raise DicomSupportMissing(f"DICOM support needs the packages pydicom and highdicom ({_exc}); install them with "
                              f"`pip install \"hcctwin[dicom]\"` (or `pip install pydicom highdicom`).") from _exc

from .importer import DEFAULT_PHASE_RULES, import_dicom_cohort, load_phase_rules  # noqa: E402
from .inventory import Inventory, scan_dicom_tree  # noqa: E402
from .seg import DEFAULT_SEGMENT_RULES, map_segment_label, read_seg, write_seg  # noqa: E402
from .series import DicomSeries, read_ct_series, write_ct_series  # noqa: E402

__all__ = ["DicomSupportMissing", "write_ct_series", "read_ct_series", "DicomSeries", "write_seg", "read_seg",
           "map_segment_label", "DEFAULT_SEGMENT_RULES", "scan_dicom_tree", "Inventory", "import_dicom_cohort",
           "DEFAULT_PHASE_RULES", "load_phase_rules"]
