"""HCCTwin 3D Slicer module: virtual follow-up CT per regimen and survival curves for HCC tumor boards.

Thin Qt + scene glue only. The engine is ``HCCTwinLib`` (importable without Slicer); the MRML bridge is
``HCCTwinLib.scene`` (also tested headless with slicer-core). Long work runs in a worker thread polled by a QTimer,
so the Qt thread is never blocked; Apply turns into Cancel while it runs.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

#: Pinned ranges installed on first use; never SimpleITK, numpy or vtk (Slicer's own) and torch via PyTorchUtils.
REQUIREMENTS_FILE = os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")
TORCH_REQUIREMENT = ">=2.1,<3"
POLL_INTERVAL_MS = 200


#
# Module
#
class HCCTwin(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("HCCTwin")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["HCCTwin developers"]
        self.parent.helpText = _(
            "Digital twin for hepatocellular carcinoma: segments liver, viable tumor, necrosis and portal-vein tumor "
            "thrombus, generates virtual follow-up CT for each candidate regimen at 8/16/24 weeks, and shows "
            "per-regimen survival curves. See the <a href='https://github.com/hcctwin/SlicerHCCTwin'>documentation</a>."
        )
        self.parent.acknowledgementText = _(
            "Research use only. Demo weights were trained on synthetic (simulated) data; not for clinical use."
        )


#
# Parameter node
#
@parameterNodeWrapper
class HCCTwinParameterNode:
    arterialVolume: vtkMRMLScalarVolumeNode
    portalVolume: vtkMRMLScalarVolumeNode
    followupVolume: vtkMRMLScalarVolumeNode
    followupWeeks: Annotated[int, WithinRange(0, 520)] = 8
    segmentation: vtkMRMLSegmentationNode
    # clinical values (units in the names, as in the cohort layout)
    ageYears: Annotated[float, WithinRange(0, 120)] = 60
    ecog: Annotated[int, WithinRange(0, 4)] = 0
    albuminGL: Annotated[float, WithinRange(0, 80)] = 40.0
    bilirubinUmolL: Annotated[float, WithinRange(0, 1000)] = 15.0
    inr: Annotated[float, WithinRange(0, 10)] = 1.1
    ascites: Annotated[str, Choice(["none", "mild", "moderate"])] = "none"
    encephalopathy: Annotated[str, Choice(["none", "grade1-2", "grade3-4"])] = "none"
    afpNgMl: Annotated[float, WithinRange(0, 1e7)] = 20.0
    nTumors: Annotated[int, WithinRange(0, 50)] = 1
    maxDiameterMm: Annotated[float, WithinRange(0, 300)] = 50.0
    pvtt: bool = False
    extrahepaticSpread: bool = False
    resectable: bool = False
    # what to predict
    regimenTace: bool = True
    regimenHaic: bool = True
    regimenSystemic: bool = True
    regimenNeoadjuvant: bool = False
    weeks: str = "8,16,24"
    samples: Annotated[int, WithinRange(1, 32)] = 4
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"


REGIMEN_PARAMETERS = {
    "regimenTace": "tace_pd1_len",
    "regimenHaic": "haic_pd1_len",
    "regimenSystemic": "pd1_tki",
    "regimenNeoadjuvant": "neoadj_haic_pd1_len_resection",
}


def clinicalValues(p: HCCTwinParameterNode) -> dict:
    """Parameter node -> clinical dict with the cohort layout's column names."""
    return {
        "age_years": p.ageYears, "ecog": p.ecog, "albumin_g_l": p.albuminGL, "bilirubin_umol_l": p.bilirubinUmolL,
        "inr": p.inr, "ascites": p.ascites, "encephalopathy": p.encephalopathy, "afp_ng_ml": p.afpNgMl,
        "n_tumors": p.nTumors, "max_diameter_mm": p.maxDiameterMm, "pvtt": int(p.pvtt),
        "extrahepatic_spread": int(p.extrahepaticSpread), "resectable": int(p.resectable),
    }


#
# Widget
#
class HCCTwinWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._worker = None
        self._timer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/HCCTwin.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = HCCTwinLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.progressBar.hide()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.cancelWorker()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelWorker()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.portalVolume:
            node = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if node:
                self._parameterNode.portalVolume = node

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterModified)
            self._onParameterModified()

    def _onParameterModified(self, caller=None, event=None) -> None:
        """Live scores and eligibility warnings; Apply enabled only with an input volume."""
        p = self._parameterNode
        if p is None:
            return
        self.ui.scoresLabel.text = self.logic.scoresText(clinicalValues(p), self.selectedRegimens())
        if self._worker is None:
            ready = bool(p.portalVolume or p.arterialVolume)
            self.ui.applyButton.enabled = ready
            self.ui.applyButton.toolTip = _("Run") if ready else _("Select the pre-treatment volumes first")

    def selectedRegimens(self) -> list[str]:
        return [rid for attr, rid in REGIMEN_PARAMETERS.items() if getattr(self._parameterNode, attr)]

    # -- running: worker thread + QTimer polling; Apply <-> Cancel
    def onApplyButton(self) -> None:
        if self._worker is not None:
            self.cancelWorker()
            return
        p = self._parameterNode
        try:
            self.logic.ensureDependencies()
            case = self.logic.caseFromNodes(p.arterialVolume, p.portalVolume, p.segmentation, clinicalValues(p))
            realFollowup = self.logic.followupFromNode(p.followupVolume, p.followupWeeks, case)
            weeks = [int(w) for w in p.weeks.replace(" ", "").split(",") if w]
            options = self.logic.options(samples=p.samples, seed=p.seed, device=p.device)
        except Exception as exc:  # bad input: tell the user, change nothing
            slicer.util.errorDisplay(str(exc), windowTitle="HCCTwin")
            return
        self._messages = queue.Queue()
        self._cancel = threading.Event()

        def progress(fraction, message):
            self._messages.put(("progress", fraction, message))
            return not self._cancel.is_set()

        def work():
            try:
                result = self.logic.run(case, self.selectedRegimens(), weeks, realFollowup=realFollowup,
                                        options=options, progress=progress)
                self._messages.put(("done", result, None))
            except Exception as exc:  # reported on the Qt thread
                self._messages.put(("error", exc, None))

        self._worker = threading.Thread(target=work, name="HCCTwinWorker", daemon=True)
        self.ui.applyButton.text = _("Cancel")
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.show()
        self._worker.start()
        self._timer = qt.QTimer()
        self._timer.timeout.connect(self._poll)
        self._timer.start(POLL_INTERVAL_MS)

    def _poll(self) -> None:
        while not self._messages.empty():
            kind, a, b = self._messages.get()
            if kind == "progress":
                self.ui.progressBar.setValue(int(100 * a))
                self.ui.statusLabel.text = b
            elif kind == "done":
                self._finish()
                self.logic.showResult(a)
                self.ui.statusLabel.text = _("Done")
            elif kind == "error":
                self._finish()
                from HCCTwinLib.errors import CancelledError

                if isinstance(a, CancelledError):
                    self.ui.statusLabel.text = _("Cancelled; the scene is unchanged.")
                else:
                    self.ui.statusLabel.text = _("Failed")
                    slicer.util.errorDisplay(f"HCCTwin failed: {a}", windowTitle="HCCTwin")

    def _finish(self) -> None:
        if self._timer:
            self._timer.stop()
        self._timer = None
        self._worker = None
        self.ui.applyButton.text = _("Apply")
        self.ui.progressBar.hide()
        self._onParameterModified()

    def cancelWorker(self) -> None:
        if self._worker is not None:
            self._cancel.set()
            self.ui.statusLabel.text = _("Cancelling...")


#
# Logic
#
class HCCTwinLogic(ScriptedLoadableModuleLogic):
    """Nodes -> Case -> pipeline -> scene. Usable without the GUI (``waitForCompletion`` style: ``run`` blocks)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return HCCTwinParameterNode(super().getParameterNode())

    @staticmethod
    def ensureDependencies(askConfirmation: bool = True) -> None:
        """Install torch (PyTorchUtils) and the pinned engine requirements on first use, after asking."""
        try:
            import lifelines  # noqa: F401
            import monai  # noqa: F401
            import torch  # noqa: F401
            return
        except ImportError:
            pass
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                _("HCCTwin needs PyTorch, MONAI and lifelines. Install them now (this may take several minutes)?")):
            raise RuntimeError("HCCTwin needs PyTorch, MONAI and lifelines; installation was declined.")
        try:
            import torch  # noqa: F401
        except ImportError:
            import PyTorchUtils

            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
                raise RuntimeError("PyTorch could not be installed; install it with the PyTorch extension.") from None
        with open(REQUIREMENTS_FILE) as fh:
            requirements = [ln.strip() for ln in fh if ln.strip() and not ln.startswith("#")]
        if hasattr(slicer, "pydeps"):  # Slicer >= 5.11: never replace Slicer's own packages
            slicer.pydeps.pip_ensure(requirements, skip_packages=["SimpleITK", "numpy", "vtk", "torch", "requests"])
        else:
            slicer.util.pip_install(requirements)

    def scoresText(self, clinical: dict, regimens: list[str]) -> str:
        from HCCTwinLib import clinical as clinicalScores
        from HCCTwinLib.errors import ClinicalValueError

        try:
            s = clinicalScores.compute_scores(clinical)
        except ClinicalValueError as exc:
            return f"<span style='color:#c0392b'>{exc}</span>"
        lines = [f"ALBI {s['albi_score']:.2f} (grade {s['albi_grade']}) &middot; Child-Pugh "
                 f"{s['child_pugh_class']}{s['child_pugh_points']} &middot; BCLC {s['bclc']} &middot; HAP "
                 f"{s['hap_class']} &middot; 6-and-12: {s['six_twelve_stratum']}"]
        for rid in regimens:
            for warning in clinicalScores.eligibility_warnings(rid, clinical):
                lines.append(f"<span style='color:#d35400'>&#9888; {warning}</span>")
        return "<br>".join(lines)

    def caseFromNodes(self, arterialNode, portalNode, segmentationNode=None, clinical=None):
        """Volume nodes (+ an optional, possibly user-corrected segmentation) -> engine Case (validated)."""
        from HCCTwinLib.io import assemble_case, to_sitk, validate_image
        from HCCTwinLib.scene.nodes import array_and_geometry_from_volume, labels_from_segmentation

        images = {}
        for name, node in (("arterial", arterialNode), ("portal", portalNode)):
            if node is not None:
                array, geometry = array_and_geometry_from_volume(node)
                images[name] = validate_image(to_sitk(array, geometry), node.GetName())
        labels = None
        if segmentationNode is not None and images:
            reference = images["portal" if "portal" in images else next(iter(images))][1]
            labels = (labels_from_segmentation(slicer.mrmlScene, slicer.modules.segmentations.logic(),
                                               segmentationNode, reference), reference)
        patientId = (portalNode or arterialNode).GetName() if (portalNode or arterialNode) else "case"
        return assemble_case(patientId, images, labels, clinical or {})

    def followupFromNode(self, followupNode, weeks: int, case):
        """A real follow-up volume node -> FollowUp on the pre-treatment grid (resampled in physical space; the
        follow-up is shown in the portal-venous role)."""
        if followupNode is None:
            return None
        from HCCTwinLib.io import resample_to, to_sitk, validate_image
        from HCCTwinLib.pipeline import FollowUp
        from HCCTwinLib.scene.nodes import array_and_geometry_from_volume

        array, geometry = array_and_geometry_from_volume(followupNode)
        array, geometry = validate_image(to_sitk(array, geometry), followupNode.GetName())
        array = resample_to(array, geometry, case.geometry)
        return FollowUp(weeks=int(weeks), phases={"portal": array}, kind="observed")

    @staticmethod
    def options(samples: int = 4, seed: int = 0, device: str = "auto"):
        from HCCTwinLib.pipeline import PipelineOptions

        return PipelineOptions(samples=int(samples), seed=int(seed), device=device)

    def run(self, case, regimens, weeks, realFollowup=None, options=None, progress=None):
        """Run the engine (in the calling thread; the Widget calls it from a worker thread)."""
        from HCCTwinLib.pipeline import run_case

        return run_case(case, regimens, weeks, real_followup=realFollowup, options=options, progress=progress)

    def showResult(self, result) -> None:
        """Put the result into the scene (Qt thread only): volumes, segmentation, table, layout."""
        from HCCTwinLib.scene import build

        build.show_result(slicer.mrmlScene, result, segmentations_logic=slicer.modules.segmentations.logic(),
                          layout_node=slicer.app.layoutManager().layoutLogic().GetLayoutNode()
                          if slicer.app.layoutManager() else None)


#
# Test
#
class HCCTwinTest(ScriptedLoadableModuleTest):
    """Slicer self-test: the same scene checks the pytest suite runs headless (HCCTwinLib/scene/selftest.py)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_HCCTwinSceneChecks()

    def test_HCCTwinSceneChecks(self):
        from HCCTwinLib.scene import selftest

        self.delayDisplay("Running HCCTwin scene checks on a small simulated case")
        failures = selftest.run_all(slicer.mrmlScene, slicer.modules.segmentations.logic(),
                                    layout_node=slicer.app.layoutManager().layoutLogic().GetLayoutNode())
        for name, error in failures.items():
            logging.error(f"{name}: {error}")
        self.assertEqual(failures, {}, f"failed checks: {sorted(failures)}")
        self.delayDisplay("Test passed")
