"""A MRML scene that behaves like the Slicer application's, built from the slicer-core wheel.

Import this module only after ``pytest.importorskip("slicer")``. It puts the
module folder ``ApplePerturb/`` on ``sys.path``, as Slicer does for a scripted
module, so the tests import ``ApplePerturbSlicer`` like the module does.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import slicer
import vtk

MODULE_DIR = Path(__file__).resolve().parents[2] / "ApplePerturb"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

_converter_rules_registered = False


def _register_converter_rules() -> None:
    """Register the labelmap <-> closed surface rules once per process (the factory is a singleton)."""
    global _converter_rules_registered
    if _converter_rules_registered:
        return
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
    _converter_rules_registered = True


@pytest.fixture
def mrml_scene(monkeypatch):
    """Yield a fresh ``vtkMRMLScene`` set as ``slicer.mrmlScene``, with the module logics Slicer has.

    ``slicer.modules.<name>.logic()`` is provided for the Volumes and
    Segmentations logics because ``slicer.util`` helpers call it.
    """
    # The wheel's logics print harmless warnings (no application, no settings) to stderr.
    previous_verbosity = vtk.vtkLogger.GetCurrentVerbosityCutoff()
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)

    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)

    logics = {
        "Colors": slicer.vtkSlicerColorLogic(),
        "Markups": slicer.vtkSlicerMarkupsLogic(),
        "Volumes": slicer.vtkSlicerVolumesLogic(),
        "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic(),
        "Sequences": slicer.vtkSlicerSequencesLogic(),
    }
    for name, logic in logics.items():
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, logic)
    _register_converter_rules()

    modules = types.SimpleNamespace(
        volumes=types.SimpleNamespace(logic=lambda: logics["Volumes"]),
        segmentations=types.SimpleNamespace(logic=lambda: logics["Segmentations"]),
    )
    monkeypatch.setattr(slicer, "modules", modules, raising=False)

    yield scene

    scene.Clear(True)
    vtk.vtkLogger.SetStderrVerbosity(previous_verbosity)


def add_volume(scene, voxels: np.ndarray, ijk_to_ras=None, name: str = "image", vector: bool = False):
    """Add a scalar (or, with ``vector``, vector) volume with voxels ``(K, H, W[, C])`` and a 4x4 IJK-to-RAS matrix."""
    class_name = "vtkMRMLVectorVolumeNode" if vector else "vtkMRMLScalarVolumeNode"
    matrix = np.eye(4) if ijk_to_ras is None else np.asarray(ijk_to_ras, dtype=float)
    return slicer.util.addVolumeFromArray(voxels, matrix, name, class_name)


def add_roi(scene, center_ras, size_mm, name: str = "ROI", parent_transform=None):
    """Add a placed box ROI with its centre and side lengths in RAS millimetres."""
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
    roi.SetCenter(*center_ras)
    roi.SetSize(*size_mm)
    if parent_transform is not None:
        roi.SetAndObserveTransformNodeID(parent_transform.GetID())
    return roi


def add_linear_transform(scene, matrix, name: str = "transform"):
    """Add a linear transform node with a 4x4 parent-to-world matrix."""
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(np.asarray(matrix, dtype=float)))
    return node
