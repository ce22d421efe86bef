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


def _parameter_fields() -> set[str]:
    tree = ast.parse((MODULE / "HCCTwin.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "HCCTwinParameterNode")
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}


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
    assert classes["HCCTwinLogic"] == ["ScriptedLoadableModuleLogic"]
    assert classes["HCCTwinTest"] == ["ScriptedLoadableModuleTest"]


def test_every_parameter_has_a_widget_and_every_widget_a_parameter():
    names, params = _ui_widgets()
    fields = _parameter_fields()
    assert set(params.values()) == fields
    assert len(params) == len(set(params.values())), "two widgets bound to one parameter"


def test_widget_code_uses_only_widgets_that_exist_in_the_ui():
    names, _ = _ui_widgets()
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE / "HCCTwin.py").read_text()))
    assert used and used <= names, used - names


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
