"""The Slicer module's logic with its scene injected (issue 26): nodes -> Case -> pipeline -> scene, regimen
selection, endpoint and overlay switches, report and scene bundle.

``HCCTwin.py``'s ``HCCTwinLogic`` is this class plus what only a running Slicer has (the parameter node, installing
dependencies, grabbing the view layout as a picture); the Widget takes a logic as a constructor argument, so a test
can give it another one. Here nothing reaches for ``slicer.mrmlScene`` or ``slicer.modules``: the scene and the
Segmentations / Sequences module logics are arguments, so the same code runs in 3D Slicer and headless (slicer-core,
:class:`~HCCTwinLib.scene.headless.HeadlessSlicer`).

Method names follow Slicer's (camelCase): the Widget calls them.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

from ..errors import ClinicalValueError
from ..regimens import load_catalogue
from . import build


class TwinLogic:
    """``scene``: the MRML scene; ``segmentations_logic`` / ``sequences_logic``: Slicer's module logics (or the
    headless ones); ``layout_node``: a function returning the layout node (None without a layout manager);
    ``capture_layout``: a function ``path -> path or None`` writing a picture of the view layout for the report
    (None: reports carry no layout picture)."""

    def __init__(self, scene, *, segmentations_logic=None, sequences_logic=None,
                 layout_node: Callable[[], Any] | None = None,
                 capture_layout: Callable[[pathlib.Path], pathlib.Path | None] | None = None) -> None:
        self.scene = scene
        self.segmentationsLogic = segmentations_logic
        self.sequencesLogic = sequences_logic
        self._layoutNode = layout_node or (lambda: None)
        self._captureLayout = capture_layout
        self.result = None  # the last TwinResult shown (pure data)
        self.options = None  # its PipelineOptions (survival model path for a new selection)
        self.ids = None  # HCCTwinLib.scene.build.SceneNodes of the shown result

    # -- inputs --------------------------------------------------------------------------------------------------
    @staticmethod
    def regimenChoices(catalogue_path=None) -> list[tuple[str, str, bool]]:
        """``(id, name, preselected)`` of every regimen of the catalogue, in its order: the packaged one, or a
        site's JSON (``catalogue_path``). The Widget builds one check-box per entry."""
        return [(r.id, r.name, r.preselected) for r in load_catalogue(catalogue_path).values()]

    @staticmethod
    def scoresText(clinical: dict, regimens: list[str]) -> str:
        """Scores and eligibility warnings as rich text for the module panel (an invalid value: its message)."""
        from ..clinical import compute_scores
        from ..regimens import eligibility_warnings

        try:
            s = compute_scores(clinical)
        except ClinicalValueError as exc:
            return f"<span style='color:#c0392b'>{exc}</span>"
        lines = [f"ALBI {s['albi_score']:.2f} (grade {s['albi_grade']}) &middot; Child-Pugh "
                 f"{s['child_pugh_class']}{s['child_pugh_points']} &middot; BCLC {s['bclc']} &middot; HAP "
                 f"{s['hap_class']} &middot; 6-and-12: {s['six_twelve_stratum']}"]
        for rid in regimens:
            for warning in eligibility_warnings(rid, clinical):
                lines.append(f"<span style='color:#d35400'>&#9888; {warning}</span>")
        return "<br>".join(lines)

    def caseFromNodes(self, arterialNode, portalNode, segmentationNode=None, clinical=None):
        """Volume nodes (+ an optional, possibly user-corrected segmentation) -> engine Case (validated)."""
        from ..io import assemble_case, to_sitk, validate_image
        from .nodes import array_and_geometry_from_volume, labels_from_segmentation

        images = {}
        for name, node in (("arterial", arterialNode), ("portal", portalNode)):
            if node is not None:
                array, geometry = array_and_geometry_from_volume(node)
                images[name] = validate_image(to_sitk(array, geometry), node.GetName())
        labels = None
        if segmentationNode is not None and images:
            reference = images["portal" if "portal" in images else next(iter(images))][1]
            labels = (labels_from_segmentation(self.scene, self.segmentationsLogic, segmentationNode, reference),
                      reference)
        patientId = (portalNode or arterialNode).GetName() if (portalNode or arterialNode) else "case"
        return assemble_case(patientId, images, labels, clinical or {})

    @staticmethod
    def followupFromNode(followupNode, weeks: int, case, regimen: str | None = None, deformable: bool = True,
                         arterialNode=None):
        """Real follow-up volume nodes (``followupNode``: portal-venous, ``arterialNode``: arterial; either may be
        None) -> ObservedScan on the grid of its portal phase (the arterial resampled onto it), None without either.
        ``regimen``: the regimen received before it (the twin check compares the real scan with that regimen's
        virtual follow-up). The pipeline registers it to the pre-treatment scan (rigid + affine, then deformable inside
        the liver) on the worker thread, so the Qt thread is never blocked by the registration; with both phases the
        follow-up is segmented by the model that drew the pre-treatment labels (one phase alone is not)."""
        if followupNode is None and arterialNode is None:
            return None
        from ..cases import ObservedScan
        from ..io import assemble_case, to_sitk, validate_image
        from .nodes import array_and_geometry_from_volume

        images = {}
        for name, node in (("portal", followupNode), ("arterial", arterialNode)):
            if node is not None:
                array, geometry = array_and_geometry_from_volume(node)
                images[name] = validate_image(to_sitk(array, geometry), node.GetName())
        study = assemble_case("followup", images, None, {})
        return ObservedScan(weeks=int(weeks), phases=dict(study.phases), geometry=study.geometry, regimen=regimen,
                            deformable=deformable)

    @staticmethod
    def options(samples: int = 4, seed: int = 0, device: str = "auto", alignPhases: bool = True):
        from ..pipeline import PipelineOptions

        return PipelineOptions(samples=int(samples), seed=int(seed), device=device, align_phases=bool(alignPhases))

    @staticmethod
    def twinCheckText(result) -> str:
        """The twin check's one line (the real follow-up against the virtual one of the received regimen and the
        unchanged scan, :mod:`HCCTwinLib.twincheck`); empty without a real follow-up or a check."""
        check = getattr(result, "twin_check", None)
        return check.headline() if check is not None else ""

    @staticmethod
    def domainBanner(result) -> tuple[str, str]:
        """``(rich text, style sheet)`` of the banner that shows the out-of-domain guard's verdict (empty text:
        nothing to show). "outside" is red and says the results are unreliable; "caution" is orange."""
        return build.domain_banner(getattr(result, "domain", None))

    @staticmethod
    def run(case, regimens, weeks, realFollowup=None, options=None, progress=None):
        """Run the engine (in the calling thread; the Widget calls it from a worker thread)."""
        from ..pipeline import run_case

        return run_case(case, regimens, weeks, real_followup=realFollowup, options=options, progress=progress)

    # -- the shown result ----------------------------------------------------------------------------------------
    def showResult(self, result, options=None, regimens=None, endpoint: str = "os", showUncertainty: bool = False,
                   segmentationNode=None):
        """Put the result into the scene (Qt thread only): volumes, segmentation, sequences, survival charts, tables,
        uncertainty overlay and the "pre | real | virtual" + plot + table layout. Returns the scene node ids.

        ``segmentationNode`` (the segmentation the run used, e.g. corrected by the user) is shown as it is; without
        it, the segmentation shown for the same patient before is re-used; only otherwise a new one is made.
        """
        if segmentationNode is None and self.ids is not None and self.result is not None and self.ids.segmentation:
            # a segmentation shown for this patient before (possibly corrected by the user) is re-used, never replaced
            previous = self.scene.GetNodeByID(self.ids.segmentation)
            if previous is not None and self.result.case.patient_id == result.case.patient_id:
                segmentationNode = previous
        self.ids = build.show_result(
            self.scene, result, segmentations_logic=self.segmentationsLogic, sequences_logic=self.sequencesLogic,
            layout_node=self._layoutNode(), segmentation_node=segmentationNode, regimens=regimens,
            endpoint=endpoint, show_uncertainty=showUncertainty)
        self.result, self.options = result, options
        return self.ids

    def forgetResult(self) -> None:
        """The scene is closing: its nodes go, so does the result they show."""
        self.result, self.options, self.ids = None, None, None

    def _needResult(self):
        if self.result is None or self.ids is None:
            raise RuntimeError("No HCCTwin result in the scene: press Apply first.")
        return self.result

    def shownRegimens(self) -> list[str]:
        return list(self.ids.regimens_shown) if self.ids is not None else []

    def shownEndpoint(self) -> str | None:
        return self.ids.endpoint if self.ids is not None else None

    def uncertaintyShown(self) -> bool:
        return bool(self.ids is not None and self.ids.uncertainty_visible)

    def updateSelection(self, regimens) -> list[str]:
        """Another regimen selection for the shown result without running the segmentation or the generator:
        survival (and the eligibility of a regimen that was not in the run) is recomputed from the run's outputs
        by ``pipeline.update_survival`` (about 0.5 s), then the curves, the table and the views are updated (nodes
        re-used by name). Returns the chosen regimens that have no virtual follow-ups (Apply generates them)."""
        from .. import pipeline

        result = self._needResult()
        regimens = list(regimens)
        pipeline.update_survival(result, self.options, regimens)
        self.ids = build.update_selection(self.scene, result, regimens, self.ids)
        return [rid for rid in regimens if rid not in result.followups]

    def showEndpoint(self, endpoint: str) -> None:
        """Survival chart in the plot view: "os" or "pfs"."""
        self._needResult()
        build.show_endpoint(self.scene, self.ids, endpoint)

    def showUncertainty(self, visible: bool) -> bool:
        """Per-voxel SD of the virtual follow-up as a foreground overlay on the virtual views; returns whether it is
        shown (False when the run has no uncertainty volumes)."""
        self._needResult()
        return build.set_uncertainty_visible(self.scene, self.ids, visible)

    # -- outputs -------------------------------------------------------------------------------------------------
    def writeReport(self, outputDir, deidentify: bool = False) -> dict:
        """Tumor-board report (HTML + PDF + survival PNGs) of the shown result into ``outputDir``.

        The captured view layout is included unless ``deidentify``: Slicer's views can show node names (which hold
        the patient's volume names), so a de-identified report carries the survival plots and tables only.
        """
        from ..report import write_report
        from ..report.figures import write_key_image

        result = self._needResult()
        out = pathlib.Path(outputDir)
        out.mkdir(parents=True, exist_ok=True)
        images = {}
        if not deidentify and self._captureLayout is not None:
            layoutPng = self._captureLayout(out / "layout.png")
            if layoutPng is not None:
                images["Pre-treatment | real follow-up | virtual follow-up (linked views) and survival curves"] = \
                    layoutPng
        if not deidentify:  # result.json holds the patient ID
            result.write_json(out / "result.json")
        keyImage = write_key_image(result, out)  # pixels only (captions are regimen names): kept when de-identified
        return write_report(result.summary(), out, images=images, deidentify=deidentify, key_image=keyImage)

    def saveSceneBundle(self, path) -> pathlib.Path:
        """The scene as a Slicer data bundle (``.mrb``, opens in 3D Slicer); node names are kept as they are."""
        from .bundle import save_scene_bundle

        return save_scene_bundle(self.scene, path)


__all__ = ["TwinLogic"]
