"""The Slicer extension is laid out as Slicer needs it, and the Widget's .ui matches its parameter node.

3D Slicer cannot run here, so these checks read the files the way Slicer's build and the parameterNodeWrapper use them.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
MODULE = ROOT / "HCCTwin"
sys.path.insert(0, str(ROOT / "scripts"))
import update_cmake_sources  # noqa: E402


def test_top_level_cmake_has_extension_metadata():
    text = (ROOT / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf'set\({key} "[^"]+"\)', text), key
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    assert "add_subdirectory(HCCTwin)" in text and "Slicer_EXTENSION_CPACK" in text


def test_module_cmake_lists_every_lib_file_and_resource():
    text = (MODULE / "CMakeLists.txt").read_text()
    assert update_cmake_sources.render(text) == text, "run: python scripts/update_cmake_sources.py"
    for needed in ("slicerMacroBuildScriptedModule", "WITH_GENERIC_TESTS", "slicer_add_python_unittest",
                   "Resources/UI/HCCTwin.ui", "Resources/Icons/HCCTwin.png", "HCCTwinLib/io.py"):
        assert needed in text, needed


def _flat_parameters() -> dict[str, ast.expr]:
    """The parameter node's parameters as the .ui binds them: ``name`` -> annotation, a parameter pack's members as
    ``pack.member`` (the dotted names the parameterNodeWrapper's connectGui accepts)."""
    tree = ast.parse((MODULE / "HCCTwin.py").read_text())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    packs = {name for name, c in classes.items()
             if any(getattr(d, "id", "") == "parameterPack" for d in c.decorator_list)}
    out: dict[str, ast.expr] = {}
    for field in (n for n in classes["HCCTwinParameterNode"].body if isinstance(n, ast.AnnAssign)):
        pack = getattr(field.annotation, "id", None)
        if pack in packs:
            for member in (n for n in classes[pack].body if isinstance(n, ast.AnnAssign)):
                out[f"{field.target.id}.{member.target.id}"] = member.annotation
        else:
            out[field.target.id] = field.annotation
    return out


def _parameter_fields() -> set[str]:
    return set(_flat_parameters())


def test_clinical_values_are_a_parameter_pack():
    fields = _flat_parameters()
    assert "clinical.ageYears" in fields and "clinical.resectable" in fields
    assert not any(name in fields for name in ("ageYears", "afpNgMl"))


def _ui_widgets() -> tuple[set[str], dict[str, str]]:
    root = ET.parse(MODULE / "Resources" / "UI" / "HCCTwin.ui").getroot()
    names, params = set(), {}
    for w in root.iter("widget"):
        names.add(w.get("name"))
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                params[w.get("name")] = p.find("string").text
    return names, params


def test_module_script_has_the_four_classes():
    tree = ast.parse((MODULE / "HCCTwin.py").read_text())
    classes = {n.name: [b.id for b in n.bases if isinstance(b, ast.Name)] for n in tree.body
               if isinstance(n, ast.ClassDef)}
    assert classes["HCCTwin"] == ["ScriptedLoadableModule"]
    assert "ScriptedLoadableModuleWidget" in classes["HCCTwinWidget"]
    # the Logic's code lives in HCCTwinLib.scene.logic.TwinLogic (scene injected, tested headless)
    assert classes["HCCTwinLogic"] == ["ScriptedLoadableModuleLogic", "TwinLogic"]
    assert classes["HCCTwinTest"] == ["ScriptedLoadableModuleTest"]


def _set_by_code() -> set[str]:
    tree = ast.parse((MODULE / "HCCTwin.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "PARAMETERS_SET_BY_CODE" for t in n.targets))
    return set(ast.literal_eval(node.value))


def test_every_parameter_has_a_widget_and_every_widget_a_parameter():
    names, params = _ui_widgets()
    fields = _parameter_fields()
    by_code = _set_by_code()
    assert by_code <= fields, by_code - fields
    assert set(params.values()) == fields - by_code
    assert len(params) == len(set(params.values())), "two widgets bound to one parameter"
    code = (MODULE / "HCCTwin.py").read_text()
    for name in by_code:  # a parameter without a widget must be written by the Widget's code
        assert re.search(rf"self\._parameterNode\.{name} = ", code), name


def test_widget_code_uses_only_widgets_that_exist_in_the_ui():
    names, _ = _ui_widgets()
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE / "HCCTwin.py").read_text()))
    assert used and used <= names, used - names


def _ui_classes() -> dict[str, str]:
    root = ET.parse(MODULE / "Resources" / "UI" / "HCCTwin.ui").getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


#: widget-name suffix (the naming convention of the .ui) -> Qt classes a widget with that name may have
NAME_CLASSES = {
    "PathLineEdit": {"ctkPathLineEdit"}, "CollapsibleButton": {"ctkCollapsibleButton"}, "Button": {"QPushButton"},
    "CheckBox": {"QCheckBox"}, "ComboBox": {"QComboBox"}, "SpinBox": {"QSpinBox", "QDoubleSpinBox"},
    "LineEdit": {"QLineEdit"}, "Label": {"QLabel"}, "Selector": {"qMRMLNodeComboBox"}, "Bar": {"QProgressBar"},
    "Widget": {"QWidget", "QFrame"},
}


def _expected_classes(name: str) -> set[str]:
    for suffix in sorted(NAME_CLASSES, key=len, reverse=True):
        if name.endswith(suffix):
            return NAME_CLASSES[suffix]
    raise AssertionError(f"widget {name!r} does not follow the naming convention ({', '.join(NAME_CLASSES)})")


def test_widget_names_used_in_the_code_have_the_expected_class():
    classes = _ui_classes()
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE / "HCCTwin.py").read_text()))
    for name in sorted(used):
        assert name in classes, f"{name} is not in HCCTwin.ui"
        assert classes[name] in _expected_classes(name), f"{name} is a {classes[name]} in HCCTwin.ui"


def _widget_class_for(annotation: ast.expr) -> set[str]:
    """Widget classes the parameterNodeWrapper can bind to a parameter of this (AST) type annotation."""
    if isinstance(annotation, ast.Subscript) and getattr(annotation.value, "id", "") == "Annotated":
        base, *extras = annotation.slice.elts
        if any(isinstance(e, ast.Call) and getattr(e.func, "id", "") == "Choice" for e in extras):
            return {"QComboBox"}
        return _widget_class_for(base)
    name = annotation.id if isinstance(annotation, ast.Name) else ast.unparse(annotation)
    if name.startswith("vtkMRML"):
        return {"qMRMLNodeComboBox"}
    return {"bool": {"QCheckBox"}, "int": {"QSpinBox", "QSlider"}, "float": {"QDoubleSpinBox", "ctkSliderWidget"},
            "str": {"QLineEdit", "QTextEdit"}, "pathlib.Path": {"ctkPathLineEdit", "ctkDirectoryButton"}}[name]


def test_every_parameter_is_bound_to_a_widget_of_a_class_that_can_hold_it():
    _, params = _ui_widgets()
    widget_of = {param: widget for widget, param in params.items()}
    classes = _ui_classes()
    for name, annotation in _flat_parameters().items():
        if name in _set_by_code():
            continue
        widget = widget_of[name]
        assert classes[widget] in _widget_class_for(annotation), (
            f"parameter {name} ({ast.unparse(annotation)}) is bound to a {classes[widget]}")


def test_custom_widget_classes_are_declared_in_the_ui():
    root = ET.parse(MODULE / "Resources" / "UI" / "HCCTwin.ui").getroot()
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    custom = {c for c in _ui_classes().values() if not c.startswith("Q")}
    assert custom <= declared, custom - declared


def test_widget_connects_to_methods_that_exist():
    tree = ast.parse((MODULE / "HCCTwin.py").read_text())
    methods = {n.name: {f.name for f in n.body if isinstance(f, ast.FunctionDef)} for n in tree.body
               if isinstance(n, ast.ClassDef)}
    text = (MODULE / "HCCTwin.py").read_text()
    slots = set(re.findall(r"connect\((?:\"[^\"]*\",\s*)?self\.(\w+)\)", text))
    assert {"onApplyButton", "onReportButton", "onSaveBundleButton", "_applySelection"} <= slots
    assert slots <= methods["HCCTwinWidget"], slots - methods["HCCTwinWidget"]
    logic_calls = set(re.findall(r"self\.logic\.(\w+)\(", text))
    assert {"updateSelection", "showEndpoint", "showUncertainty", "writeReport", "saveSceneBundle"} <= logic_calls
    lib = ast.parse((MODULE / "HCCTwinLib" / "scene" / "logic.py").read_text())
    twin = next(n for n in lib.body if isinstance(n, ast.ClassDef) and n.name == "TwinLogic")
    available = methods["HCCTwinLogic"] | {f.name for f in twin.body if isinstance(f, ast.FunctionDef)}
    assert logic_calls <= available, logic_calls - available


def test_engine_imports_neither_qt_nor_slicer_outside_scene():
    for path in (MODULE / "HCCTwinLib").rglob("*.py"):
        if "scene" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for mod in mods:
                assert mod.split(".")[0] not in {"qt", "slicer", "ctk"}, f"{path} imports {mod}"


def test_cli_help_lists_the_commands_that_exist():
    out = subprocess.run([sys.executable, "-m", "HCCTwinLib.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for command in ("demo", "simulate", "inspect", "scores"):
        assert command in out
    assert "not for clinical use" in out


@pytest.mark.parametrize("target", ["demo:", "test:"])
def test_makefile_and_readme_give_the_two_commands(target):
    assert re.search(rf"^{target}", (ROOT / "Makefile").read_text(), re.M)
    assert f"make {target[:-1]}" in (ROOT / "README.md").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_import_graph_has_no_cycles():
    """The engine's rooms (top-level modules and sub-packages) import down only (docs/architecture.md)."""
    import import_graph

    house = import_graph.house(MODULE / "HCCTwinLib")
    assert house["cycles"] == [] and house["upward_arrows"] == [], house["cycles"]
    floors = house["floor_of"]
    # the main road runs up the floors
    for road in (["cases", "segmentation", "survival", "pipeline", "scene", "cli"],
                 ["cases", "twin", "survival", "pipeline", "scene", "cli"]):
        heights = [floors[f"HCCTwinLib.{r}"] for r in road]
        assert heights == sorted(heights) and len(set(heights)) == len(heights), dict(zip(road, heights))
    assert floors["HCCTwinLib.cases"] <= 1 and floors["HCCTwinLib.labels"] == 0


def test_import_graph_finds_a_cycle(tmp_path):
    import import_graph

    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import thing\n")
    (pkg / "sub" / "__init__.py").write_text("def thing():\n    from ..a import x\n")
    (pkg / "b.py").write_text("from . import a\n")
    house = import_graph.house(pkg)
    assert house["cycles"] == [["pkg.a", "pkg.sub"]] and house["floor_of"]["pkg.b"] == 1
    assert house["imports_in_functions_share"] == pytest.approx(1 / 3, abs=1e-3)


def test_the_slicer_module_logic_and_the_cli_load_without_the_packages_slicer_lacks():
    """docs/architecture.md: `scene.logic` (loaded with the Slicer module, before its "install dependencies" step)
    and `cli` (`hcctwin --help`) import no stage that loads pandas, scipy, lifelines, torch or MONAI."""
    code = ("import sys; import HCCTwinLib.scene.logic, HCCTwinLib.cli, HCCTwinLib.pipeline; "
            "print(sorted(m for m in ('pandas', 'scipy', 'lifelines', 'torch', 'monai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=MODULE, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
