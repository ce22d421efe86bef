"""HCCTwin 3D Slicer module: virtual follow-up CT per regimen and survival curves for HCC tumor boards.

Thin Qt + scene glue only. The engine is ``HCCTwinLib`` (importable without Slicer); the MRML bridge is
``HCCTwinLib.scene`` (also tested headless with slicer-core). Long work runs in a worker thread polled by a QTimer,
so the Qt thread is never blocked; Apply turns into Cancel while it runs. After a run, changing the regimen selection,
the survival endpoint (OS/PFS) or the uncertainty overlay updates the scene without running any model.
"""

from __future__ import annotations

import logging
import os
import pathlib
import queue
import threading
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper, parameterPack
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from HCCTwinLib.scene.logic import TwinLogic

#: Pinned ranges installed on first use; never SimpleITK, numpy or vtk (Slicer's own) and torch via PyTorchUtils.
REQUIREMENTS_FILE = os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")
TORCH_REQUIREMENT = ">=2.1,<3"
POLL_INTERVAL_MS = 200
#: A change of the regimen check-boxes is applied this long after the last click (several clicks, one update).
SELECTION_DELAY_MS = 300


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
@parameterPack
class ClinicalValues:
    """The patient's clinical values, as the form shows them (units in the names); :meth:`asCohortRow` gives them
    with the cohort layout's column names (``clinical.csv``), which the engine reads."""

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

    def asCohortRow(self) -> dict:
        return {
            "age_years": self.ageYears, "ecog": self.ecog, "albumin_g_l": self.albuminGL,
            "bilirubin_umol_l": self.bilirubinUmolL, "inr": self.inr, "ascites": self.ascites,
            "encephalopathy": self.encephalopathy, "afp_ng_ml": self.afpNgMl, "n_tumors": self.nTumors,
            "max_diameter_mm": self.maxDiameterMm, "pvtt": int(self.pvtt),
            "extrahepatic_spread": int(self.extrahepaticSpread), "resectable": int(self.resectable),
        }


@parameterNodeWrapper
class HCCTwinParameterNode:
    arterialVolume: vtkMRMLScalarVolumeNode
    portalVolume: vtkMRMLScalarVolumeNode
    # a real follow-up study: portal-venous and/or arterial phase, its week and the regimen the patient received
    followupVolume: vtkMRMLScalarVolumeNode
    followupArterialVolume: vtkMRMLScalarVolumeNode
    followupWeeks: Annotated[int, WithinRange(0, 520)] = 8
    followupRegimen: str = ""
    segmentation: vtkMRMLSegmentationNode
    # clinical values: a typed pack (bound in the .ui as clinical.<name>)
    clinical: ClinicalValues
    # what to predict; regimens: the ticked regimen ids, comma-separated (set by the check-boxes the Widget builds
    # from the regimen catalogue; empty: the catalogue's preselection)
    regimens: str = ""
    weeks: str = "8,16,24"
    samples: Annotated[int, WithinRange(1, 32)] = 4
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    alignPhases: bool = True
    # how the results are shown (no model runs when these change)
    endpoint: Annotated[str, Choice(["OS", "PFS"])] = "OS"
    showUncertainty: bool = False
    # report and scene bundle
    outputDirectory: pathlib.Path
    deidentify: bool = False


#: parameters without a widget of the .ui: the Widget's code sets them (the regimen check-boxes and the choices of the
#: received regimen are built from the catalogue at setup)
PARAMETERS_SET_BY_CODE = ("regimens", "followupRegimen")


def clinicalValues(p: HCCTwinParameterNode) -> dict:
    """Parameter node -> clinical dict with the cohort layout's column names."""
    return p.clinical.asCohortRow()


#
# Widget
#
class HCCTwinWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None, logic=None) -> None:
        """``logic``: the logic to drive (default: an :class:`HCCTwinLogic` on Slicer's scene, made in ``setup``);
        a test gives its own."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = logic
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._worker = None
        self._timer = None
        self._selectionTimer = None
        self._runOptions = None
        self._runSegmentation = None
        self._regimenBoxes = {}  # regimen id -> its QCheckBox, in catalogue order
        self._preselected = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/HCCTwin.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        if self.logic is None:
            self.logic = HCCTwinLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.reportButton.connect("clicked(bool)", self.onReportButton)
        self.ui.saveBundleButton.connect("clicked(bool)", self.onSaveBundleButton)
        self.ui.progressBar.hide()
        self._buildRegimenCheckBoxes()
        self._buildFollowupRegimenChoices()
        self._selectionTimer = qt.QTimer()
        self._selectionTimer.setSingleShot(True)
        self._selectionTimer.setInterval(SELECTION_DELAY_MS)
        self._selectionTimer.timeout.connect(self._applySelection)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.cancelWorker()
        if self._selectionTimer:
            self._selectionTimer.stop()
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
        self.logic.forgetResult()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- regimen check-boxes: one per regimen of the catalogue (a site's catalogue brings its own)
    def _buildRegimenCheckBoxes(self) -> None:
        layout = self.ui.regimensWidget.layout()
        tip = _("After a run, changing the selection updates the curves, the table and the views without re-running "
                "the models")
        self._preselected = []
        for rid, name, preselected in self.logic.regimenChoices():
            box = qt.QCheckBox(name)
            box.toolTip = tip
            box.setObjectName(f"regimen_{rid}")
            box.connect("toggled(bool)", self._onRegimenBoxToggled)
            layout.addWidget(box)
            self._regimenBoxes[rid] = box
            if preselected:
                self._preselected.append(rid)

    def _buildFollowupRegimenChoices(self) -> None:
        """The regimen received before the real follow-up: "not given" and the catalogue's regimens."""
        combo = self.ui.followupRegimenComboBox
        combo.clear()
        combo.addItem(_("not given"), "")
        for rid, name, _preselected in self.logic.regimenChoices():
            combo.addItem(name, rid)
        combo.connect("currentIndexChanged(int)", self._onFollowupRegimenChosen)

    def _onFollowupRegimenChosen(self, index: int) -> None:
        if self._parameterNode is not None:
            self._parameterNode.followupRegimen = str(self.ui.followupRegimenComboBox.itemData(index) or "")

    def _showFollowupRegimen(self) -> None:
        """Select the parameter node's received regimen in the combo box (without writing it back; an id this
        catalogue does not have shows "not given")."""
        combo = self.ui.followupRegimenComboBox
        index = max(combo.findData(self._parameterNode.followupRegimen or ""), 0)
        if combo.currentIndex != index:
            wasBlocked = combo.blockSignals(True)
            combo.currentIndex = index
            combo.blockSignals(wasBlocked)

    def _onRegimenBoxToggled(self, checked: bool = False) -> None:
        if self._parameterNode is not None:
            self._parameterNode.regimens = ",".join(rid for rid, box in self._regimenBoxes.items() if box.checked)

    def _showRegimenSelection(self) -> None:
        """Tick the boxes of the parameter node's selection (without writing it back)."""
        selected = set(self.selectedRegimens())
        for rid, box in self._regimenBoxes.items():
            if box.checked != (rid in selected):
                wasBlocked = box.blockSignals(True)
                box.checked = rid in selected
                box.blockSignals(wasBlocked)

    def _inCatalogue(self, regimens: str) -> list[str]:
        ticked = {rid for rid in regimens.replace(" ", "").split(",") if rid}
        return [rid for rid in self._regimenBoxes if rid in ticked]

    def receivedRegimen(self) -> str | None:
        """The regimen received before the real follow-up, when the catalogue has it (None: not given)."""
        rid = (self._parameterNode.followupRegimen or "").strip() if self._parameterNode is not None else ""
        return rid if rid in self._regimenBoxes else None

    def selectedRegimens(self) -> list[str]:
        """The ticked regimens in catalogue order (ids the catalogue does not have are dropped)."""
        return [] if self._parameterNode is None else self._inCatalogue(self._parameterNode.regimens)

    def initializeParameterNode(self) -> None:
        node = self.logic.getParameterNode()
        if not self._inCatalogue(node.regimens):  # a new scene (or a selection this catalogue does not have)
            node.regimens = ",".join(self._preselected)
        self.setParameterNode(node)
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
        self._showRegimenSelection()
        self._showFollowupRegimen()
        self.ui.scoresLabel.text = self.logic.scoresText(clinicalValues(p), self.selectedRegimens())
        if self._worker is None:
            ready = bool(p.portalVolume or p.arterialVolume)
            self.ui.applyButton.enabled = ready
            self.ui.applyButton.toolTip = _("Run") if ready else _("Select the pre-treatment volumes first")
        haveResult = self.logic.result is not None and self._worker is None
        self.ui.reportButton.enabled = haveResult
        self.ui.saveBundleButton.enabled = haveResult
        if haveResult:
            self._updateShownResult()

    def _updateShownResult(self) -> None:
        """Endpoint and overlay follow the GUI at once; a new regimen selection after a short delay."""
        p = self._parameterNode
        try:
            if p.endpoint.lower() != self.logic.shownEndpoint():
                self.logic.showEndpoint(p.endpoint.lower())
            if p.showUncertainty != self.logic.uncertaintyShown():
                if not self.logic.showUncertainty(p.showUncertainty) and p.showUncertainty:
                    self.ui.statusLabel.text = _("This run has no uncertainty volumes (one sample per time point?).")
        except Exception as exc:  # noqa: BLE001 - show it, keep the GUI usable
            logging.exception("HCCTwin: updating the views failed")
            self.ui.statusLabel.text = _("Updating the views failed: {error}").format(error=exc)
        if self.selectedRegimens() != self.logic.shownRegimens():
            self._selectionTimer.start()

    def _applySelection(self) -> None:
        """New regimen selection after a run: survival recomputed from the run's outputs, curves, table and views
        updated; no segmentation or generation runs (press Apply for new virtual follow-ups)."""
        if self.logic.result is None or self._worker is not None or self._parameterNode is None:
            return
        regimens = self.selectedRegimens()
        if not regimens:
            self.ui.statusLabel.text = _("Choose at least one regimen.")
            return
        try:
            with slicer.util.tryWithErrorDisplay(_("Updating the regimen selection failed."), waitCursor=True):
                withoutVolumes = self.logic.updateSelection(regimens)
        except Exception:  # noqa: BLE001 - already shown to the user
            return
        text = _("Curves, table and views updated for {n} regimen(s) without re-running the models.").format(
            n=len(regimens))
        if withoutVolumes:
            text += " " + _("No virtual follow-ups for {regimens}: press Apply to generate them.").format(
                regimens=", ".join(withoutVolumes))
        self.ui.statusLabel.text = text

    # -- running: worker thread + QTimer polling; Apply <-> Cancel
    def onApplyButton(self) -> None:
        if self._worker is not None:
            self.cancelWorker()
            return
        p = self._parameterNode
        if not self.selectedRegimens():
            slicer.util.errorDisplay(_("Choose at least one regimen."), windowTitle="HCCTwin")
            return
        try:
            self.logic.ensureDependencies()
            case = self.logic.caseFromNodes(p.arterialVolume, p.portalVolume, p.segmentation, clinicalValues(p))
            realFollowup = self.logic.followupFromNode(p.followupVolume, p.followupWeeks, case,
                                                       regimen=self.receivedRegimen(),
                                                       arterialNode=p.followupArterialVolume)
            weeks = [int(w) for w in p.weeks.replace(" ", "").split(",") if w]
            options = self.logic.options(samples=p.samples, seed=p.seed, device=p.device,
                                         alignPhases=p.alignPhases)
        except Exception as exc:  # bad input: tell the user, change nothing
            slicer.util.errorDisplay(str(exc), windowTitle="HCCTwin")
            return
        self._selectionTimer.stop()
        self._runOptions = options
        self._runSegmentation = p.segmentation  # a given (corrected) segmentation is shown, never replaced
        regimens = self.selectedRegimens()
        self._messages = queue.Queue()
        self._cancel = threading.Event()

        def progress(fraction, message):
            self._messages.put(("progress", fraction, message))
            return not self._cancel.is_set()

        def work():
            try:
                result = self.logic.run(case, regimens, weeks, realFollowup=realFollowup, options=options,
                                        progress=progress)
                self._messages.put(("done", result, None))
            except Exception as exc:  # reported on the Qt thread
                self._messages.put(("error", exc, None))

        self._worker = threading.Thread(target=work, name="HCCTwinWorker", daemon=True)
        self.ui.applyButton.text = _("Cancel")
        self.ui.reportButton.enabled = False
        self.ui.saveBundleButton.enabled = False
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
                p = self._parameterNode
                try:
                    with slicer.util.tryWithErrorDisplay(_("Showing the result failed."), waitCursor=True):
                        self.logic.showResult(a, options=self._runOptions, endpoint=p.endpoint.lower() if p else "os",
                                              showUncertainty=bool(p and p.showUncertainty),
                                              segmentationNode=self._runSegmentation)
                    self.ui.statusLabel.text = _("Done")
                    self._showDomainBanner(a)
                    self._showTwinCheck(a)
                except Exception:  # noqa: BLE001 - already shown to the user
                    self.ui.statusLabel.text = _("Failed")
                finally:
                    self._finish()  # also applies a regimen selection changed while the run was going
            elif kind == "error":
                self._finish()
                from HCCTwinLib.errors import CancelledError

                if isinstance(a, CancelledError):
                    self.ui.statusLabel.text = _("Cancelled; the scene is unchanged.")
                else:
                    self.ui.statusLabel.text = _("Failed")
                    slicer.util.errorDisplay(f"HCCTwin failed: {a}", windowTitle="HCCTwin")

    def _showDomainBanner(self, result) -> None:
        """The out-of-domain guard's verdict as a coloured banner above the results (hidden when inside)."""
        text, style = self.logic.domainBanner(result)
        self.ui.domainLabel.text = text
        self.ui.domainLabel.styleSheet = style
        self.ui.domainLabel.visible = bool(text)

    def _showTwinCheck(self, result) -> None:
        """The twin check below the banner: did the virtual follow-up of the received regimen come closer to the
        real follow-up than the unchanged scan (hidden without a real follow-up)?"""
        text = self.logic.twinCheckText(result)
        self.ui.twinCheckLabel.text = text
        self.ui.twinCheckLabel.visible = bool(text)

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

    # -- report and scene bundle
    def _outputDirectory(self) -> pathlib.Path:
        p = self._parameterNode
        folder = p.outputDirectory if p is not None else None
        if not folder or str(folder) in ("", "."):
            folder = self.logic.defaultOutputDirectory()
            if p is not None:
                p.outputDirectory = folder
        return pathlib.Path(folder)

    def onReportButton(self) -> None:
        p = self._parameterNode
        try:
            with slicer.util.tryWithErrorDisplay(_("Writing the report failed."), waitCursor=True):
                paths = self.logic.writeReport(self._outputDirectory(), deidentify=bool(p and p.deidentify))
                self.ui.statusLabel.text = _("Report written: {path}").format(path=paths["html"])
                qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(paths["html"])))
        except Exception:  # noqa: BLE001 - already shown to the user
            pass

    def onSaveBundleButton(self) -> None:
        try:
            with slicer.util.tryWithErrorDisplay(_("Saving the scene bundle failed."), waitCursor=True):
                path = self.logic.saveSceneBundle(self._outputDirectory() / "scene.mrb")
                self.ui.statusLabel.text = _("Scene saved: {path}").format(path=path)
        except Exception:  # noqa: BLE001 - already shown to the user
            pass


#
# Logic
#
class HCCTwinLogic(ScriptedLoadableModuleLogic, TwinLogic):
    """``HCCTwinLib.scene.logic.TwinLogic`` on Slicer's scene and module logics, plus what only a running Slicer
    has: the parameter node, installing the dependencies, a picture of the view layout for the report.
    Usable without the GUI (``run`` blocks)."""

    def __init__(self, scene=None, segmentationsLogic=None, sequencesLogic=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        TwinLogic.__init__(self, scene if scene is not None else slicer.mrmlScene,
                           segmentations_logic=segmentationsLogic or slicer.modules.segmentations.logic(),
                           sequences_logic=sequencesLogic or slicer.modules.sequences.logic(),
                           layout_node=self._layoutNode, capture_layout=self.captureLayout)

    def getParameterNode(self):
        return HCCTwinParameterNode(super().getParameterNode())

    @staticmethod
    def _layoutNode():
        layoutManager = slicer.app.layoutManager()
        return layoutManager.layoutLogic().GetLayoutNode() if layoutManager else None

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

    @staticmethod
    def defaultOutputDirectory() -> pathlib.Path:
        import time

        return pathlib.Path(slicer.app.defaultScenePath) / f"HCCTwin-{time.strftime('%Y%m%d-%H%M%S')}"

    def captureLayout(self, path) -> pathlib.Path | None:
        """PNG of the current view layout (what the user sees), or None when it cannot be captured."""
        path = pathlib.Path(path)
        try:
            import ScreenCapture

            ScreenCapture.ScreenCaptureLogic().captureImageFromView(None, str(path))
        except Exception:  # noqa: BLE001 - older ScreenCapture: grab the layout widget
            try:
                import ctk

                slicer.util.forceRenderAllViews()
                ctk.ctkWidgetsUtils.grabWidget(slicer.app.layoutManager().viewport()).save(str(path))
            except Exception:  # noqa: BLE001 - the report is still useful without it
                logging.warning("HCCTwin: could not capture the view layout for the report", exc_info=True)
                return None
        return path if path.is_file() else None


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
        self.setUp()
        self.test_HCCTwinLogicResultViews()

    def test_HCCTwinSceneChecks(self):
        from HCCTwinLib.scene import selftest

        self.delayDisplay("Running HCCTwin scene checks on a small simulated case")
        failures = selftest.run_all(slicer.mrmlScene, slicer.modules.segmentations.logic(),
                                    layout_node=slicer.app.layoutManager().layoutLogic().GetLayoutNode())
        for name, error in failures.items():
            logging.error(f"{name}: {error}")
        self.assertEqual(failures, {}, f"failed checks: {sorted(failures)}")
        self.delayDisplay("Test passed")

    def test_HCCTwinLogicResultViews(self):
        """The Widget's Logic calls in the application: result -> scene (views + plot layout), endpoint switch,
        uncertainty overlay, a regimen selection without re-running the models; checked with the shared checks."""
        from HCCTwinLib.scene import selftest

        self.delayDisplay("Showing a result through the Logic and changing the regimen selection")
        case, realFollowup = selftest.small_case()
        logic = HCCTwinLogic()
        result = logic.run(case, ["tace_pd1_len", "haic_pd1_len", "pd1_tki"], [8, 16, 24], realFollowup=realFollowup)
        selftest.add_synthetic_outputs(result)  # where the models are not installed
        ids = logic.showResult(result)
        failures = {}
        for name, check in selftest.result_checks(slicer.mrmlScene, result, ids).items():
            try:
                check()
            except Exception as exc:  # collect every failure with its message
                failures[name] = f"{type(exc).__name__}: {exc}"
        logic.showEndpoint("pfs")
        self.assertEqual(ids.endpoint, "pfs")
        if ids.uncertainty_proxies:
            self.assertTrue(logic.showUncertainty(True))
        self.assertFalse(logic.showUncertainty(False))
        if "survival" in result.provenance:  # the survival engine is installed: the Widget's selection path
            logic.updateSelection(["tace_pd1_len", "pd1_tki"])
            selftest.check_survival_charts(slicer.mrmlScene, result, logic.ids)
            selftest.check_no_duplicates(slicer.mrmlScene)
        for name, error in failures.items():
            logging.error(f"{name}: {error}")
        self.assertEqual(failures, {}, f"failed checks: {sorted(failures)}")
        self.delayDisplay("Test passed")
