"""Tumor-board report: ``result.json`` (the pipeline summary as a dict) -> HTML + PDF + survival PNGs.

Public API::

    plot_survival(summary, out_png, endpoint="os") -> Path
    write_report(summary, out_dir, *, images=None, deidentify=False) -> dict[str, Path]

``content`` turns the summary into sections (the one place that decides what the report says), ``html`` and ``pdf``
draw the same sections, ``plots`` draws the survival curves. Engine code: imports neither qt nor slicer; the
rendered Slicer layout comes in as a PNG through ``images``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from ..errors import InputError
from .content import (
    DEIDENTIFIED,
    build_sections,
    curves,
    deidentify_summary,
    disclaimer_text,
    patient_label,
    scrub_text,
)
from .figures import KEY_IMAGE, landmark_figure
from .html import render_html, write_html
from .pdf import write_pdf
from .plots import plot_survival, survival_figure

__all__ = ["plot_survival", "survival_figure", "write_report", "DEIDENTIFIED"]

TITLE = "HCCTwin tumor-board report"
#: A picture embedded in the report may have at most this many pixels (a 4K screenshot has 8.3 million); a PNG that
#: declares more would need gigabytes to decode.
MAX_IMAGE_PIXELS = 40_000_000


def check_report_image(path: str | Path) -> Path:
    """InputError unless ``path`` is a readable PNG/JPEG of at most :data:`MAX_IMAGE_PIXELS` pixels (only the header
    is read)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        head = path.read_bytes()[:24] if path.is_file() else b""
    except OSError:
        head = b""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        _check_pixels(path, width, height)
    try:
        with Image.open(path) as img:
            width, height = img.size
            kind = img.format
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path}: not a readable image ({exc}); give a PNG or JPEG picture.") from None
    if kind not in ("PNG", "JPEG"):
        raise InputError(f"{path}: a {kind} image; give a PNG or JPEG picture.")
    _check_pixels(path, width, height)
    from PIL import ImageFile

    # decode it now (its size is bounded): a damaged picture is named as such, not as a damaged result. WeasyPrint
    # sets PIL's process-wide LOAD_TRUNCATED_IMAGES when it is imported (after a first report in a long-lived
    # process, e.g. Slicer): the check asks for a complete image whatever that flag says
    lenient = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as img:
            img.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{path}: the picture is damaged or truncated ({exc}); save the screenshot again.") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient
    return path


def _check_pixels(path: Path, width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(f"{path}: the image declares {width} x {height} pixels ({width * height / 1e6:.0f} million), "
                         f"more than the {MAX_IMAGE_PIXELS / 1e6:.0f} million a report picture may have; save a "
                         f"smaller screenshot.")


def write_report(summary: Mapping, out_dir: str | Path, *, images: Mapping[str, str | Path] | None = None,
                 deidentify: bool = False, key_image: str | Path | None = None) -> dict[str, Path]:
    """Write ``report.html``, ``report.pdf`` (the same HTML document laid out on A4 pages by WeasyPrint),
    ``survival.png`` (and ``survival_pfs.png`` / ``landmark.png`` when those curves exist) into ``out_dir``; returns
    ``{"html", "pdf", "survival_png"[, "survival_pfs_png", "landmark_png"]}`` -> paths.

    The first page is the tumor-board summary (:func:`~HCCTwinLib.report.content.summary_section`); ``key_image``
    (default: ``out_dir/key_image.png`` when ``hcctwin predict`` drew it) goes there. ``images`` maps captions to
    extra PNGs (e.g. ``{"Linked views: pre | real | virtual": "layout.png"}``); they are embedded in both files.
    ``deidentify=True`` leaves the patient ID and name out of every text, caption and the PDF metadata (the patient
    shows as "de-identified"); pixels of the given images are embedded as they are, so render them without patient
    annotations.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = {str(k): check_report_image(v) for k, v in (images or {}).items()}
    if key_image is None and (out_dir / KEY_IMAGE).is_file():
        key_image = out_dir / KEY_IMAGE
    if key_image is not None:
        key_image = check_report_image(key_image)
    if deidentify:
        images = {scrub_text(k, summary): v for k, v in images.items()}
        summary = deidentify_summary(summary)
    paths: dict[str, Path] = {"survival_png": plot_survival(summary, out_dir / "survival.png", "os")}
    plots = {"os": paths["survival_png"]}
    if curves(summary, "pfs"):
        paths["survival_pfs_png"] = plot_survival(summary, out_dir / "survival_pfs.png", "pfs")
        plots["pfs"] = paths["survival_pfs_png"]
    fig = landmark_figure(summary)
    if fig is not None:
        paths["landmark_png"] = out_dir / "landmark.png"
        fig.savefig(paths["landmark_png"])
        plots["landmark"] = paths["landmark_png"]
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = build_sections(summary, images=images, plots=plots, date=date,
                              key_image=str(key_image) if key_image else None)
    patient = DEIDENTIFIED if deidentify else patient_label(summary)
    title = f"{TITLE}: patient {patient}"
    banner = "Research use only. Demo weights are trained on synthetic data; not for clinical use."

    metadata = {"Title": title, "Author": "HCCTwin", "Subject": disclaimer_text(summary),
                "Creator": f"HCCTwin {summary.get('hcctwin_version') or __version__}",
                "Keywords": "HCC; tumor board; digital twin; research use only"}
    paths["html"] = write_html(sections, out_dir / "report.html", title=title, banner=banner, metadata=metadata)
    paths["pdf"], _ = write_pdf(sections, out_dir / "report.pdf", title=title, banner=banner, metadata=metadata,
                                html=render_html(sections, title=title, banner=banner, metadata=metadata))
    return paths
