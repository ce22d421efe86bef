"""Slicer scene bundles (``.mrb``): save a scene so that 3D Slicer opens it, and load one back (tests, batch).

An ``.mrb`` is a zip of one folder ``<name>/`` holding ``<name>.mrml`` and the node data (``Data/*.nrrd``,
``*.seg.nrrd``, ``*.seq.nrrd``, tables). Saving uses MRML's own ``SaveSceneToSlicerDataBundleDirectory`` (the call
Slicer's "Save scene as data bundle" makes) into a private temporary folder, then zips it the way
``vtkMRMLScene::WriteToMRB`` does. Doing the zip here, rather than calling ``WriteToMRB``, keeps the temporary files
out of the current directory when the scene has no cache manager (a bare ``vtkMRMLScene``) and out of the console.

Saving adds storage nodes to the scene (as saving in Slicer does) and leaves the scene's URL and root directory as
they were; no data node is changed.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

__all__ = ["save_scene_bundle", "load_scene_bundle", "BundleError"]


class BundleError(RuntimeError):
    """A scene bundle could not be written or read; the message says why."""


def _messages():
    import slicer

    return slicer.vtkMRMLMessageCollection()


def save_scene_bundle(scene, path: str | Path) -> Path:
    """Write ``scene`` to the Slicer data bundle ``path`` (must end with ``.mrb``; an existing file is replaced).

    Returns the path. Raises :class:`BundleError` with MRML's messages when a node cannot be saved.
    """
    path = Path(path)
    if path.suffix.lower() != ".mrb":
        raise ValueError(f"scene bundle path {str(path)!r} must end with .mrb (3D Slicer opens .mrb bundles)")
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.stem or "scene"
    url, root = scene.GetURL(), scene.GetRootDirectory()
    messages = _messages()
    with tempfile.TemporaryDirectory(prefix="hcctwin-mrb-") as tmp:
        bundle_dir = Path(tmp) / name
        bundle_dir.mkdir()
        try:
            ok = scene.SaveSceneToSlicerDataBundleDirectory(str(bundle_dir), None, messages)
        finally:
            scene.SetURL(url)
            scene.SetRootDirectory(root)
        if not ok:
            raise BundleError(f"could not save the scene as {path}: {messages.GetAllMessagesAsString().strip()}")
        mrml = bundle_dir / f"{name}.mrml"
        if not mrml.is_file():  # MRML names the file after the folder; accept another name too
            found = sorted(bundle_dir.glob("*.mrml"))
            if not found:
                raise BundleError(f"could not save the scene as {path}: no .mrml file was written")
        partial = path.with_name(path.name + ".partial")
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.write(bundle_dir, f"{name}/")
            for file in sorted(bundle_dir.rglob("*")):
                zf.write(file, file.relative_to(tmp).as_posix())
        partial.replace(path)
    return path


def _register_missing_node_classes(scene, mrml_text: str) -> None:
    """A bare ``vtkMRMLScene`` knows only the core node classes; register the module ones the file uses (sequence
    browser, segment editor, ...) when this process has them."""
    import re

    import slicer

    for tag in sorted(set(re.findall(r"<([A-Za-z][A-Za-z0-9]*)[\s>/]", mrml_text))):
        if tag == "MRML" or scene.GetClassNameByTag(tag):
            continue
        cls = getattr(slicer, f"vtkMRML{tag}Node", None)
        if cls is not None:
            scene.RegisterNodeClass(cls())


def load_scene_bundle(path: str | Path, scene=None):
    """Read the ``.mrb`` at ``path`` into ``scene`` (a new ``vtkMRMLScene`` when None) and return the scene.

    Inside 3D Slicer, ``slicer.util.loadScene(path)`` is the usual way; this is for tests and batch checks that the
    bundle opens. The node data are read into memory, so the unpacked files can go afterwards.
    """
    import slicer

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scene bundle {path} does not exist")
    if scene is None:
        scene = slicer.vtkMRMLScene()
    with tempfile.TemporaryDirectory(prefix="hcctwin-mrb-") as tmp:
        try:
            with zipfile.ZipFile(path) as zf:
                zf.extractall(tmp)
        except zipfile.BadZipFile as exc:
            raise BundleError(f"{path} is not a Slicer scene bundle (not a zip file): {exc}") from exc
        found = sorted(Path(tmp).rglob("*.mrml"), key=lambda p: len(p.parts))
        if not found:
            raise BundleError(f"{path} is not a Slicer scene bundle: it holds no .mrml file")
        mrml = found[0]
        _register_missing_node_classes(scene, mrml.read_text(errors="replace"))
        url, root = scene.GetURL(), scene.GetRootDirectory()
        scene.SetURL(str(mrml))
        scene.SetRootDirectory(str(mrml.parent))
        messages = _messages()
        try:
            scene.Import(messages)
        finally:
            scene.SetURL(url)
            scene.SetRootDirectory(root)
        errors = messages.GetAllMessagesAsString().strip()
        if scene.GetNumberOfNodes() == 0:
            raise BundleError(f"could not read the scene bundle {path}: {errors or 'no nodes'}")
    return scene
