"""HCCTwin engine: digital twin of HCC treatment response (importable without Slicer).

Layers (one direction only): ``cases``/``io`` -> ``clinical``/``regimens`` -> models -> ``pipeline`` ->
``scene`` (MRML bridge) / ``report`` / ``cli``. Nothing outside ``scene/`` imports ``slicer`` or ``qt``.
"""

__version__ = "0.1.0"

DISCLAIMER = (
    "Research use only. Demo data are simulated and demo weights are trained on simulated data; "
    "not for clinical use or treatment decisions."
)
