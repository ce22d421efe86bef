"""Regenerate the file lists in HCCTwin/CMakeLists.txt (every Lib file and resource, as Slicer needs them listed).

Run after adding or removing a file: ``python scripts/update_cmake_sources.py``. The test suite checks the lists.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "HCCTwin"
RESOURCE_SUFFIXES = {".png", ".ui", ".json", ".txt", ".md", ".safetensors", ".svg", ".csv"}


def scripts() -> list[str]:
    files = sorted(p.relative_to(MODULE).as_posix() for p in (MODULE / "HCCTwinLib").rglob("*.py")
                   if "__pycache__" not in p.parts)
    return ["${MODULE_NAME}.py", *files]


def resources() -> list[str]:
    found = []
    for base in (MODULE / "Resources", MODULE / "HCCTwinLib"):
        for p in base.rglob("*"):
            if p.is_file() and p.suffix in RESOURCE_SUFFIXES and "__pycache__" not in p.parts:
                found.append(p.relative_to(MODULE).as_posix())
    return sorted(found)


def render(text: str) -> str:
    def block(name: str, items: list[str]) -> str:
        return f"set(MODULE_{name}\n" + "".join(f"  {item}\n" for item in items) + "  )"

    text = re.sub(r"set\(MODULE_PYTHON_SCRIPTS\n.*?\n  \)", block("PYTHON_SCRIPTS", scripts()), text, flags=re.S)
    return re.sub(r"set\(MODULE_PYTHON_RESOURCES\n.*?\n  \)", block("PYTHON_RESOURCES", resources()), text,
                  flags=re.S)


if __name__ == "__main__":
    path = MODULE / "CMakeLists.txt"
    path.write_text(render(path.read_text()))
    print(f"updated {path}")
