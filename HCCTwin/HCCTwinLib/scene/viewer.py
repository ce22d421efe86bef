"""``hcctwin view RESULT_DIR``: the tumor board's screen when 3D Slicer is not installed — a read-only browser viewer
of one result, served on localhost only.

Built on trame + trame-slicer: the MRML scene, slice logics and displayable managers are Slicer's own (slicer-core,
offscreen EGL/OSMesa rendering, no display, no GPU); each slice view is rendered on the server and streamed to the page
as JPEG frames (trame-rca ``RemoteControlledArea``); mouse wheel and drag in a view go to Slicer's slice interactor.

The page: linked axial views *pre-treatment | real follow-up (when the result has one) | virtual follow-up*, each
fitted to its volume and centred on the largest pre-treatment lesion; the regimen and the time point chosen in the
page; an uncertainty-overlay switch (the ``*_std`` volume as the virtual view's foreground); a slice slider that moves
the linked views together; the survival curves and the results table from ``result.json``. No patient ID unless
``--show-patient-id``; the server binds 127.0.0.1 and offers nothing to change or upload.

The result folder is what ``hcctwin predict`` and ``hcctwin demo`` write (:func:`HCCTwinLib.pipeline.save_result`):
``result.json``, ``pre/{phase,labels}.nii.gz``, ``real/wWW/...`` and ``<regimen>/wWW/{phase,phase_std,labels}``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..errors import InputError
from ..labels import lesion_focus
from ..survival_result import SurvivalResult

#: the page's slice views, in pixels
VIEW_HEIGHT = 420
#: seconds after start-up before the other regimens and time points are read in the background
PREFETCH_DELAY_S = 1.0


def _log(t0: float, message: str) -> None:
    print(f"[hcctwin view {time.perf_counter() - t0:6.2f} s] {message}", file=sys.stderr, flush=True)


class ResultFolder:
    """Where the volumes of one result are (nothing is read here but ``result.json``)."""

    def __init__(self, root: str | Path, phase: str = "portal"):
        self.root = Path(root)
        path = self.root / "result.json"
        if not path.is_file():
            raise InputError(f"{self.root}: no result.json; give a folder written by `hcctwin predict` or "
                             f"`hcctwin demo`.")
        try:
            self.summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise InputError(f"{path}: not a readable result.json ({exc}); write it again with `hcctwin "
                             f"predict`.") from None
        if not isinstance(self.summary, dict):
            raise InputError(f"{path}: not a result.json of `hcctwin predict`.")
        self.regimens = [str(r) for r in self.summary.get("regimens") or []]
        self.weeks = [int(w) for w in self.summary.get("weeks") or []]
        self.phase = phase
        self.pre_dir = self.root / "pre"
        if self._image(self.pre_dir, phase) is None:
            raise InputError(f"{self.root}: no pre-treatment {phase} phase (pre/{phase}.nii.gz). Results written "
                             f"before this version do not hold their inputs: run `hcctwin predict` again.")
        real = self.summary.get("real_followup") if isinstance(self.summary.get("real_followup"), dict) else None
        self.real_weeks = int(real["weeks"]) if real and real.get("weeks") is not None else None
        self.real_regimen = real.get("regimen") if real else None
        self.real_dir = self.root / "real" / f"w{self.real_weeks:02d}" if self.real_weeks is not None else None
        if self.real_dir is not None and self._image(self.real_dir, phase) is None:
            self.real_dir = None

    @staticmethod
    def _image(folder: Path, stem: str) -> Path | None:
        for ext in (".nii.gz", ".nii", ".nrrd", ".mha"):
            if (folder / f"{stem}{ext}").is_file():
                return folder / f"{stem}{ext}"
        return None

    def pre(self, stem: str | None = None) -> Path | None:
        return self._image(self.pre_dir, stem or self.phase)

    def real(self) -> Path | None:
        return None if self.real_dir is None else self._image(self.real_dir, self.phase)

    def virtual(self, regimen: str, week: int, *, std: bool = False) -> Path | None:
        return self._image(self.root / regimen / f"w{week:02d}", f"{self.phase}_std" if std else self.phase)


def largest_lesion_ras(label_path: Path) -> tuple[float, float, float] | None:
    """RAS position (mm) the views centre on: :func:`HCCTwinLib.labels.lesion_focus` of a label map file (the
    slice of the largest tumour cross-section), or None without tumour."""
    from ..io import read_image

    labels, geometry = read_image(label_path, labels=True)
    focus = lesion_focus(labels)
    if focus is None:
        return None
    k, j, i = focus
    return tuple(float(v) for v in (geometry.ijk_to_ras() @ np.array([i, j, k, 1.0]))[:3])


class TwinVolumes:
    """The MRML side: volumes loaded on first use and kept (per regimen and week)."""

    def __init__(self, app, folder: ResultFolder, t0: float):
        self.app, self.scene, self.folder, self.t0 = app, app.scene, folder, t0
        self.virtual_ids: dict[tuple[str, int], tuple[str | None, str | None]] = {}
        self.std_top: float | None = None  # one colour scale for every uncertainty overlay
        self.pre_id = self._add(folder.pre(), f"pre-treatment {folder.phase}")
        real = folder.real()
        self.real_id = self._add(real, f"real follow-up w{folder.real_weeks:02d}") if real else None
        labels = folder.pre("labels")
        self.lesion_ras = largest_lesion_ras(labels) if labels is not None else None
        if self.lesion_ras is None:
            from .render import volume_center_ras

            self.lesion_ras = volume_center_ras(self.scene.GetNodeByID(self.pre_id))

    def _add(self, path: Path, name: str, *, ct: bool = True) -> str:
        from ..io import read_image
        from .nodes import add_volume

        array, geometry = read_image(path)
        return add_volume(self.scene, array, geometry, name, dtype=np.int16 if ct else np.float32).GetID()

    def has(self, regimen: str, week: int) -> bool:
        return self.folder.virtual(regimen, week) is not None

    def virtual(self, regimen: str, week: int) -> tuple[str | None, str | None]:
        """(virtual volume id, uncertainty volume id) of a regimen and week, read on first use."""
        key = (regimen, int(week))
        if key not in self.virtual_ids:
            t = time.perf_counter()
            path, std = self.folder.virtual(*key), self.folder.virtual(*key, std=True)
            vid = self._add(path, f"virtual {regimen} w{week:02d}") if path else None
            sid = self._add(std, f"uncertainty {regimen} w{week:02d}", ct=False) if std else None
            if sid is not None:
                self._style_uncertainty(sid)
            self.virtual_ids[key] = (vid, sid)
            _log(self.t0, f"read virtual {regimen} w{week:02d} in {time.perf_counter() - t:.2f} s")
        return self.virtual_ids[key]

    def _style_uncertainty(self, sid: str) -> None:
        import slicer

        from .build import style_uncertainty_display

        node = self.scene.GetNodeByID(sid)
        if self.std_top is None:  # the first overlay read fixes the colour scale (99.5th percentile of its SD)
            self.std_top = float(np.percentile(slicer.util.arrayFromVolume(node), 99.5)) or 1.0
        style_uncertainty_display(node, self.std_top)


def _quiet_slice_view(scene, app_logic, name):
    """A trame-slicer slice view that is cheap to create and render on a CPU: no rendering while it is set up
    (trame-slicer renders on every MRML change during construction; the remote factory then installs its own
    coalescing render strategy) and no multisampling (2D slices gain nothing from it; it doubles software render
    time)."""
    from trame_slicer.views import SliceView
    from trame_slicer.views.render_scheduler import NoScheduleRendering

    view = SliceView(scene, app_logic, name, scheduled_render_strategy=NoScheduleRendering())
    view.render_window().SetMultiSamples(0)
    return view


def survival_images(folder: ResultFolder, survival: SurvivalResult | None = None) -> dict[str, str]:
    """``{"os": data URL, "pfs": data URL}``: the PNGs the run wrote, else drawn from result.json ('' when the
    result has no curves). ``survival``: the folder's survival part when already parsed."""
    from ..report.plots import plot_survival

    survival = SurvivalResult.from_summary(folder.summary) if survival is None else survival
    out = {}
    for key, name in (("os", "survival.png"), ("pfs", "survival_pfs.png")):
        path = folder.root / name
        if not path.is_file():
            if not survival.curves(key):
                out[key] = ""
                continue
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                data = plot_survival(folder.summary, Path(tmp) / name, key).read_bytes()
        else:
            data = path.read_bytes()
        out[key] = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return out


def build_server(result_dir: str | Path, *, phase: str = "portal", show_patient_id: bool = False,
                 prefetch_delay_s: float = PREFETCH_DELAY_S, t0: float | None = None):
    """The trame server of the viewer (not started): Slicer scene, remote slice views, state and page."""
    from trame.app import get_server
    from trame.ui.vuetify3 import SinglePageLayout
    from trame.widgets import client, html
    from trame.widgets import vuetify3 as v3
    from trame_rca.encoders import RcaImageEncoder
    from trame_slicer.rca_view import RemoteViewFactory
    from trame_slicer.views import ViewLayoutDefinition, ViewProps, ViewType

    from . import layout as L
    from .build import regimen_label, survival_table_columns
    from .headless import HeadlessSlicer

    t0 = time.perf_counter() if t0 is None else t0
    folder = ResultFolder(result_dir, phase)
    server = get_server(name="hcctwin_view", client_type="vue3")
    state, ctrl = server.state, server.controller
    app = HeadlessSlicer()
    app.view_manager.register_factory(RemoteViewFactory(
        server, _quiet_slice_view, ViewType.SLICE_VIEW, rca_encoder=RcaImageEncoder.JPEG, target_fps=30.0,
        interactive_quality=85, populate_view_ui_f=None))  # no layout/zoom buttons: read-only
    volumes = TwinVolumes(app, folder, t0)
    _log(t0, "pre-treatment and real follow-up read")
    names = [L.PRE_VIEW] + ([L.REAL_VIEW] if volumes.real_id else []) + [L.VIRTUAL_VIEW]
    views = {}
    for name in names:
        label, color = L.VIEW_STYLE[name]
        views[name] = app.view_manager.create_view(ViewLayoutDefinition(
            name, ViewType.SLICE_VIEW, ViewProps(label=label, orientation="Axial", color=color,
                                                 group=L.COMPARE_VIEW_GROUP)))
    regimens = [r for r in folder.regimens if any(volumes.has(r, w) for w in folder.weeks)]
    if not regimens:
        raise InputError(f"{folder.root}: the result has no virtual follow-up volumes (<regimen>/wWW/"
                         f"{phase}.nii.gz); run `hcctwin predict` with a generator installed.")
    regimen0 = folder.real_regimen if folder.real_regimen in regimens else regimens[0]
    week0 = folder.real_weeks if folder.real_weeks in folder.weeks else folder.weeks[0]
    vid, sid = volumes.virtual(regimen0, week0)
    L.assign_volumes(app.scene, {L.PRE_VIEW: volumes.pre_id, L.VIRTUAL_VIEW: vid,
                                 **({L.REAL_VIEW: volumes.real_id} if volumes.real_id else {})})
    L.link_slice_views(app.scene, names)
    L.sync_slice_views(app.scene, names, volumes.lesion_ras)

    def fit(name):
        """Centred on the lesion, zoomed out so the whole volume is in view (again on every browser resize)."""
        view = views[name]
        dims = view.render_window().GetSize()
        background = app.scene.GetNodeByID(volumes.pre_id)
        offset = view.get_slice_value()
        L.sync_slice_views(app.scene, [name], volumes.lesion_ras)
        L.fit_around(app.scene, name, background, volumes.lesion_ras, dimensions=dims if min(dims) > 1 else None)
        view.set_slice_value(offset)

    for name, view in views.items():
        fit(name)
        view.interactor().AddObserver("WindowResizeEvent", lambda *_a, n=name: fit(n))

    state.trame__title = "HCCTwin viewer"
    state.regimen, state.week, state.uncertainty = regimen0, week0, False
    state.regimen_items = [{"title": regimen_label(r), "value": r} for r in regimens]
    state.week_items = [{"title": f"week {w}", "value": w} for w in folder.weeks]
    state.has_uncertainty = sid is not None
    lo, hi = views[L.PRE_VIEW].get_slice_range()
    state.slice_min, state.slice_max = float(lo), float(hi)
    state.slice_step = float(views[L.PRE_VIEW].get_slice_step() or 1.0)
    state.slice_offset = float(views[L.PRE_VIEW].get_slice_value())
    pid = folder.summary.get("patient_id")
    state.title = "HCCTwin virtual follow-up" + (f" · {pid}" if show_patient_id and pid else "")
    state.disclaimer = str(folder.summary.get("disclaimer") or "Research use only.")
    state.real_caption = (f"Real follow-up w{folder.real_weeks:02d}"
                          + (f" ({regimen_label(folder.real_regimen)})" if folder.real_regimen else "")
                          if volumes.real_id else "")
    state.virtual_caption = ""
    state.survival_endpoint = "os"
    survival = SurvivalResult.from_summary(folder.summary)
    state.survival_images = survival_images(folder, survival)
    table = SimpleNamespace(regimens=folder.regimens, weeks=folder.weeks, survival=survival,
                            response=folder.summary.get("response") or {})
    columns = survival_table_columns(table, folder.regimens)
    keys = [k for k in columns if k != "Regimen ID"]
    state.table_headers = [{"title": k, "key": f"c{i}"} for i, k in enumerate(keys)]
    state.table_rows = [{f"c{i}": str(columns[k][row]) for i, k in enumerate(keys)}
                        for row in range(len(columns[keys[0]]) if keys else 0)]

    def show_virtual(regimen, week, uncertainty):
        vid, sid = volumes.virtual(regimen, int(week))
        L.assign_volumes(app.scene, {L.VIRTUAL_VIEW: vid}, foregrounds={L.VIRTUAL_VIEW: sid if uncertainty else None},
                         foreground_opacity=0.5)
        state.has_uncertainty = sid is not None
        state.virtual_caption = (f"Virtual follow-up w{int(week):02d} ({regimen_label(regimen)})"
                                 + (" + uncertainty (SD)" if uncertainty and sid else ""))

    @state.change("regimen", "week", "uncertainty")
    def _on_selection(regimen, week, uncertainty, **_):
        show_virtual(regimen, week, uncertainty)

    @state.change("slice_offset")
    def _on_slice(slice_offset, **_):  # as if the user scrolled the first view: the link moves the others
        if abs(float(slice_offset) - views[L.PRE_VIEW].get_slice_value()) > 1e-6:
            L.move_linked_slice(app.app_logic, app.scene, L.PRE_VIEW, float(slice_offset))

    show_virtual(regimen0, week0, False)

    async def prefetch():  # the other regimens and weeks, after the first frames went out
        await asyncio.sleep(prefetch_delay_s)
        for r in regimens:
            for w in folder.weeks:
                volumes.virtual(r, w)
                await asyncio.sleep(0.05)

    if prefetch_delay_s >= 0:
        from trame.app import asynchronous

        ctrl.on_server_ready.add(lambda *_a, **_k: asynchronous.create_task(prefetch()))

    def view_panel(name: str, caption: str, elem_id: str):
        with v3.VCol(cols=12 // len(names), classes="pa-1"):
            html.Div(caption, classes="text-subtitle-2 px-2", style=f"background:{L.VIEW_STYLE[name][1]};color:white;")
            with html.Div(id=elem_id, style=f"height:{VIEW_HEIGHT}px;position:relative;background:black;"):
                client.ServerTemplate(name=server.translator.translate_key(name))

    with SinglePageLayout(server, full_height=True) as page:
        page.title.set_text("")
        with page.toolbar:
            html.Div("{{ title }}", classes="text-h6 ml-2")
            v3.VSpacer()
            html.Div("Research use only · read-only", classes="text-caption mr-4")
        with page.content, v3.VContainer(fluid=True, classes="pa-2"):
            with v3.VRow(dense=True, align="center"):
                for label, key in (("Regimen", "regimen"), ("Time point", "week")):  # one button per choice
                    with v3.VCol(cols="auto"):
                        html.Span(f"{label} ", classes="mr-2")
                        with v3.VBtnToggle(v_model=(key,), mandatory=True, density="compact", color="primary",
                                           id=f"{key}-select"):
                            v3.VBtn("{{ item.title }}", v_for=f"item in {key}_items", key="item.value",
                                    value=("item.value",), id=(f"`{key}-${{item.value}}`",))
                with v3.VCol(cols="auto"):
                    v3.VSwitch(v_model=("uncertainty",), label="Uncertainty overlay (SD)", hide_details=True,
                               density="compact", color="orange", disabled=("!has_uncertainty",),
                               id="uncertainty-toggle")
                with v3.VCol():
                    v3.VSlider(v_model=("slice_offset",), min=("slice_min",), max=("slice_max",),
                               step=("slice_step",), label="Slice (mm)", hide_details=True, density="compact",
                               thumb_label=True, id="slice-slider")
            with v3.VRow(dense=True):
                view_panel(L.PRE_VIEW, "Pre-treatment", "view-pre")
                if volumes.real_id:
                    view_panel(L.REAL_VIEW, "{{ real_caption }}", "view-real")
                view_panel(L.VIRTUAL_VIEW, "{{ virtual_caption }}", "view-virtual")
            with v3.VRow(dense=True):
                with v3.VCol(cols=12, md=5):
                    with v3.VBtnToggle(v_model=("survival_endpoint",), mandatory=True, density="compact"):
                        v3.VBtn("Overall survival", value="os")
                        v3.VBtn("Progression-free survival", value="pfs")
                    html.Img(src=("survival_images[survival_endpoint]",), style="width:100%;", id="survival-img",
                             v_if="survival_images[survival_endpoint]")
                    html.Div("No survival prediction in this result.", v_if="!survival_images[survival_endpoint]")
                with v3.VCol(cols=12, md=7):
                    v3.VDataTable(headers=("table_headers",), items=("table_rows",), density="compact",
                                  items_per_page=-1, hide_default_footer=True, id="results-table")
            html.Div("{{ disclaimer }}", classes="text-caption mt-2")
    _log(t0, "page built")
    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(result_dir: str | Path, *, port: int = 0, phase: str = "portal", show_patient_id: bool = False,
          t0: float | None = None) -> None:
    """Build the viewer and serve it on ``http://127.0.0.1:PORT/`` until interrupted (Ctrl-C)."""
    t0 = time.perf_counter() if t0 is None else t0
    server = build_server(result_dir, phase=phase, show_patient_id=show_patient_id, t0=t0)
    port = port or free_port()
    _log(t0, f"SERVING http://127.0.0.1:{port}/ (Ctrl-C stops it)")
    server.start(host="127.0.0.1", port=port, open_browser=False, show_connection_info=False, timeout=0)
