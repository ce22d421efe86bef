"""The Slicer module's Widget (HCCTwin.py) driven with a mocked logic (issue 26): regimen check-boxes built from the
regimen catalogue (a site's catalogue brings its own), the selection kept in the parameter node, scores and
eligibility asked of the logic for the ticked regimens, a new selection after a run handed to
``logic.updateSelection`` and Apply refused without a regimen.

Qt cannot run here: ``qt`` is a fake (check-boxes with ``checked``/``toggled``, a layout, a timer) and the GUI-only
Slicer imports are stubbed as in ``test_module_logic``; the logic is a ``unittest.mock`` object, so these tests check
what the Widget asks of its logic, not the logic itself (``test_module_logic`` does that).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import types
from pathlib import Path
from unittest import mock

import pytest
import slicer
from test_module_logic import _stub_modules

from HCCTwinLib.clinical import CLINICAL_FIELDS, REQUIRED_FIELDS
from HCCTwinLib.regimens import DEFAULT_CATALOGUE_PATH
from HCCTwinLib.scene.logic import TwinLogic

MODULE_FILE = Path(__file__).resolve().parents[2] / "HCCTwin.py"


class _Signal:
    def __init__(self):
        self.slots = []

    def connect(self, slot):
        self.slots.append(slot)

    def emit(self, *args):
        for slot in self.slots:
            slot(*args)


class _CheckBox:
    """Enough of QCheckBox: text, toolTip, objectName, ``checked`` (a change emits toggled unless blocked)."""

    def __init__(self, text=""):
        self.text, self.toolTip, self._name = text, "", ""
        self._checked, self._blocked = False, False
        self.toggled = _Signal()

    def setObjectName(self, name):
        self._name = name

    def objectName(self):
        return self._name

    def connect(self, signal, slot):
        assert signal == "toggled(bool)", signal
        self.toggled.connect(slot)

    def blockSignals(self, block):
        was, self._blocked = self._blocked, block
        return was

    @property
    def checked(self):
        return self._checked

    @checked.setter
    def checked(self, value):
        changed = bool(value) != self._checked
        self._checked = bool(value)
        if changed and not self._blocked:
            self.toggled.emit(self._checked)

    def click(self):
        self.checked = not self.checked


class _ComboBox:
    """Enough of QComboBox: items with data, ``currentIndex`` (a change emits currentIndexChanged unless
    blocked), findData."""

    def __init__(self):
        self.items, self._index, self._blocked = [], -1, False
        self.changed = _Signal()

    def clear(self):
        self.items, self._index = [], -1

    def addItem(self, text, data=None):
        self.items.append((text, data))
        if self._index < 0:
            self._index = 0

    def itemData(self, index):
        return self.items[index][1] if 0 <= index < len(self.items) else None

    def findData(self, data):
        return next((n for n, (_, d) in enumerate(self.items) if d == data), -1)

    def connect(self, signal, slot):
        assert signal == "currentIndexChanged(int)", signal
        self.changed.connect(slot)

    def blockSignals(self, block):
        was, self._blocked = self._blocked, block
        return was

    @property
    def currentIndex(self):
        return self._index

    @currentIndex.setter
    def currentIndex(self, index):
        changed = index != self._index
        self._index = index
        if changed and not self._blocked:
            self.changed.emit(index)


class _Layout:
    def __init__(self):
        self.widgets = []

    def addWidget(self, widget):
        self.widgets.append(widget)


class _Container:
    def __init__(self):
        self._layout = _Layout()

    def layout(self):
        return self._layout


class _Timer:
    def __init__(self):
        self.started = 0
        self.timeout = _Signal()

    def setSingleShot(self, flag):
        pass

    def setInterval(self, ms):
        pass

    def start(self, *args):
        self.started += 1

    def stop(self):
        pass


def _fake_qt() -> types.ModuleType:
    qt = types.ModuleType("qt")
    qt.QCheckBox, qt.QTimer = _CheckBox, _Timer
    return qt


def _stubs() -> dict[str, types.ModuleType]:
    """``test_module_logic``'s stubs with the fake ``qt`` the Widget needs."""
    return {**_stub_modules(), "qt": _fake_qt()}


class _Label:
    def __init__(self):
        self.text, self.toolTip, self.enabled = "", "", True


class _ParameterNode(types.SimpleNamespace):
    """The parameter node's fields with the defaults of ``HCCTwinParameterNode`` (the stubbed wrapper leaves the
    class as written), and the wrapper's connectGui / disconnectGui."""

    def connectGui(self, ui):
        return "tag"

    def disconnectGui(self, tag):
        pass


def _parameter_node(module) -> _ParameterNode:
    cls = module.HCCTwinParameterNode
    values = {name: getattr(cls, name, None) for name in cls.__annotations__}
    values["clinical"] = module.ClinicalValues()  # the pack's defaults, as the wrapper makes them
    values["portalVolume"] = object()  # an input volume is selected
    return _ParameterNode(**values)


@pytest.fixture
def module(monkeypatch):
    for name, stub in _stubs().items():
        monkeypatch.setitem(sys.modules, name, stub)
    errors = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: errors.append(text), raising=False)

    @contextlib.contextmanager
    def try_with_error_display(message, waitCursor=False):  # as Slicer's: show the error, then raise it again
        try:
            yield
        except Exception:
            errors.append(message)
            raise

    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", try_with_error_display, raising=False)
    spec = importlib.util.spec_from_file_location("HCCTwinWidgetUnderTest", MODULE_FILE)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)  # as an import would (dataclasses look it up)
    spec.loader.exec_module(mod)
    mod.errors = errors
    return mod


def _site_catalogue(tmp_path: Path) -> Path:
    """The packaged catalogue plus a site's own regimen (preselected) and without direct resection."""
    data = json.loads(DEFAULT_CATALOGUE_PATH.read_text())
    extra = dict(data["regimens"][0], id="site_tace_atezo_bev", name="TACE + atezolizumab + bevacizumab",
                 short_name="TACE+A+B", color="#17becf")
    extra.pop("preselected", None)
    data["regimens"] = [r for r in data["regimens"] if r["id"] != "resection"] + [extra]
    path = tmp_path / "site_regimens.json"
    path.write_text(json.dumps(data))
    return path


def _widget(module, choices, result=None):
    logic = mock.Mock(name="logic")
    logic.regimenChoices.return_value = choices
    logic.scoresText.return_value = "scores"
    logic.result = result
    logic.shownRegimens.return_value = []
    logic.shownEndpoint.return_value = "os"
    logic.uncertaintyShown.return_value = False
    logic.updateSelection.return_value = []
    node = _parameter_node(module)
    logic.getParameterNode.return_value = node
    w = module.HCCTwinWidget(logic=logic)
    w.ui = types.SimpleNamespace(regimensWidget=_Container(), scoresLabel=_Label(), applyButton=_Label(),
                                 reportButton=_Label(), saveBundleButton=_Label(), statusLabel=_Label(),
                                 followupRegimenComboBox=_ComboBox())
    w.addObserver = w.removeObserver = lambda *args: None
    w._selectionTimer = _Timer()
    w._buildRegimenCheckBoxes()
    w._buildFollowupRegimenChoices()
    w.initializeParameterNode()
    return w, logic, node


def test_check_boxes_come_from_the_catalogue_with_its_preselection(module):
    choices = TwinLogic.regimenChoices()
    w, logic, node = _widget(module, choices)
    boxes = w.ui.regimensWidget.layout().widgets
    assert [b.text for b in boxes] == [name for _, name, _ in choices]
    assert "Direct hepatectomy" in [b.text for b in boxes]  # the hard-coded four lacked the catalogue's fifth
    assert [b.objectName() for b in boxes] == [f"regimen_{rid}" for rid, _, _ in choices]
    preselected = [rid for rid, _, pre in choices if pre]
    assert preselected == ["tace_pd1_len", "haic_pd1_len", "pd1_tki"]
    assert node.regimens == ",".join(preselected)
    assert [b.checked for b in boxes] == [pre for _, _, pre in choices]
    assert w.selectedRegimens() == preselected
    # the logic is asked for scores and eligibility of the ticked regimens
    assert logic.scoresText.call_args.args[1] == preselected
    assert w.ui.scoresLabel.text == "scores"


def test_a_site_catalogue_brings_its_own_check_boxes(module, tmp_path):
    choices = TwinLogic.regimenChoices(_site_catalogue(tmp_path))
    w, logic, node = _widget(module, choices)
    names = [b.text for b in w.ui.regimensWidget.layout().widgets]
    assert names[-1] == "TACE + atezolizumab + bevacizumab" and "Direct hepatectomy" not in names
    assert w.selectedRegimens() == ["tace_pd1_len", "haic_pd1_len", "pd1_tki", "site_tace_atezo_bev"]


def test_ticking_writes_the_parameter_node_and_the_parameter_node_ticks_the_boxes(module):
    w, logic, node = _widget(module, TwinLogic.regimenChoices())
    boxes = {b.objectName(): b for b in w.ui.regimensWidget.layout().widgets}
    boxes["regimen_pd1_tki"].click()
    boxes["regimen_resection"].click()
    assert node.regimens == "tace_pd1_len,haic_pd1_len,resection"
    w._onParameterModified()
    assert logic.scoresText.call_args.args[1] == ["tace_pd1_len", "haic_pd1_len", "resection"]
    # a selection stored in the scene (e.g. a loaded .mrb) ticks the boxes, in catalogue order, without writing back
    node.regimens = "pd1_tki, tace_pd1_len,not_in_this_catalogue"
    w._onParameterModified()
    assert [rid for rid, b in w._regimenBoxes.items() if b.checked] == ["tace_pd1_len", "pd1_tki"]
    assert node.regimens == "pd1_tki, tace_pd1_len,not_in_this_catalogue"
    assert w.selectedRegimens() == ["tace_pd1_len", "pd1_tki"]
    # a selection with nothing this catalogue knows falls back to its preselection when the module is entered
    node.regimens = "not_in_this_catalogue"
    w.initializeParameterNode()
    assert w.selectedRegimens() == ["tace_pd1_len", "haic_pd1_len", "pd1_tki"]


def test_a_new_selection_after_a_run_goes_to_the_logic_without_running_models(module):
    w, logic, node = _widget(module, TwinLogic.regimenChoices(), result=object())
    logic.shownRegimens.return_value = ["tace_pd1_len", "haic_pd1_len", "pd1_tki"]
    logic.updateSelection.return_value = ["resection"]
    boxes = {b.objectName(): b for b in w.ui.regimensWidget.layout().widgets}
    boxes["regimen_haic_pd1_len"].click()
    boxes["regimen_resection"].click()
    w._onParameterModified()
    assert w._selectionTimer.started >= 1  # applied after a short delay (several clicks, one update)
    w._applySelection()
    logic.updateSelection.assert_called_once_with(["tace_pd1_len", "pd1_tki", "resection"])
    logic.run.assert_not_called()
    assert "resection" in w.ui.statusLabel.text and "Apply" in w.ui.statusLabel.text
    assert module.errors == []
    # nothing ticked: the logic is not called, the user is told
    for box in w._regimenBoxes.values():
        box.checked = False
    assert node.regimens == ""
    w._applySelection()
    assert logic.updateSelection.call_count == 1
    assert w.ui.statusLabel.text == "Choose at least one regimen."


def test_apply_without_a_regimen_is_refused_before_anything_runs(module):
    w, logic, node = _widget(module, TwinLogic.regimenChoices())
    for box in w._regimenBoxes.values():
        box.checked = False
    w.onApplyButton()
    assert module.errors == ["Choose at least one regimen."]
    logic.caseFromNodes.assert_not_called()
    logic.run.assert_not_called()


def test_a_failing_selection_update_is_shown_and_leaves_the_widget_usable(module):
    w, logic, node = _widget(module, TwinLogic.regimenChoices(), result=object())
    logic.updateSelection.side_effect = RuntimeError("no survival model for resection")
    w._regimenBoxes["resection"].click()
    w._applySelection()
    assert module.errors == ["Updating the regimen selection failed."]
    assert w.ui.statusLabel.text == ""  # no "updated" message for an update that failed


def test_clinical_values_come_from_the_typed_pack_with_the_cohort_column_names(module):
    node = _parameter_node(module)
    node.clinical.afpNgMl, node.clinical.pvtt, node.clinical.ascites = 400.0, True, "mild"
    row = module.clinicalValues(node)
    assert row["afp_ng_ml"] == 400.0 and row["pvtt"] == 1 and row["ascites"] == "mild"
    assert row["extrahepatic_spread"] == 0 and row["age_years"] == module.ClinicalValues().ageYears
    assert set(row) <= set(CLINICAL_FIELDS) and set(REQUIRED_FIELDS) <= set(row)


def test_the_twin_check_line_is_shown_after_a_run_with_a_real_followup(module):
    w, logic, node = _widget(module, TwinLogic.regimenChoices())
    w.ui.twinCheckLabel = _Label()
    logic.twinCheckText.return_value = "Twin check at week 8 (TACE): the virtual follow-up is closer ..."
    w._showTwinCheck(object())
    assert w.ui.twinCheckLabel.text.startswith("Twin check at week 8") and w.ui.twinCheckLabel.visible
    logic.twinCheckText.return_value = ""
    w._showTwinCheck(object())
    assert w.ui.twinCheckLabel.visible is False
    # the real logic: the check's headline, nothing without one
    assert TwinLogic.twinCheckText(types.SimpleNamespace(twin_check=None)) == ""
    check = types.SimpleNamespace(headline=lambda: "Twin check at week 5 (x): ...")
    assert TwinLogic.twinCheckText(types.SimpleNamespace(twin_check=check)) == "Twin check at week 5 (x): ..."


def test_the_received_regimen_is_chosen_from_the_catalogue_and_goes_with_both_followup_phases(module, tmp_path):
    choices = TwinLogic.regimenChoices(_site_catalogue(tmp_path))
    w, logic, node = _widget(module, choices)
    combo = w.ui.followupRegimenComboBox
    assert [d for _, d in combo.items] == [""] + [rid for rid, _, _ in choices]
    assert combo.items[0][0] == "not given" and combo.currentIndex == 0 and w.receivedRegimen() is None
    combo.currentIndex = combo.findData("site_tace_atezo_bev")
    assert node.followupRegimen == "site_tace_atezo_bev" and w.receivedRegimen() == "site_tace_atezo_bev"
    # a scene's stored choice selects the item without writing back; one this catalogue lacks shows "not given"
    node.followupRegimen = "haic_pd1_len"
    w._onParameterModified()
    assert combo.currentIndex == combo.findData("haic_pd1_len")
    node.followupRegimen = "not_in_this_catalogue"
    w._onParameterModified()
    assert combo.currentIndex == 0 and node.followupRegimen == "not_in_this_catalogue"
    assert w.receivedRegimen() is None
    # Apply hands both follow-up phases and the received regimen to the logic (the run itself is not started here)
    node.followupRegimen = "tace_pd1_len"
    node.followupVolume, node.followupArterialVolume, node.followupWeeks = "portal node", "arterial node", 6
    logic.caseFromNodes.return_value = "case"
    logic.followupFromNode.side_effect = RuntimeError("stop before the worker starts")
    w.onApplyButton()
    logic.followupFromNode.assert_called_once_with("portal node", 6, "case", regimen="tace_pd1_len",
                                                   arterialNode="arterial node")
    assert module.errors == ["stop before the worker starts"]
    logic.run.assert_not_called()
