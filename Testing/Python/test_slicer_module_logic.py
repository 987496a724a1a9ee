"""The module's headless logic (ApplePerturbLogic in ApplePerturb.py) on real MRML nodes and real models.

ApplePerturb.py imports Slicer's application layer (``qt``, ``slicer.i18n``,
``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``), which the
slicer-core wheel lacks. The fixture below provides minimal stand-ins for
those names only. Everything the logic computes runs on slicer-core's real
MRML nodes, the library's real backbones and real files. The module's own
Slicer self-test methods run here too.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
import unittest
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is needed for MRML nodes")
import slicer  # noqa: E402
import torch  # noqa: E402
from slicer_scene import MODULE_DIR, add_roi, add_volume, mrml_scene  # noqa: E402,F401

from ApplePerturbLib.backbones.unet import UNetBackbone, save_unet  # noqa: E402
from ApplePerturbLib.metrics import dice_score, fairness_metrics  # noqa: E402
from ApplePerturbSlicer.synthetic_image import syntheticFrame  # noqa: E402

APPLICATION_MODULES = ("qt", "slicer.i18n", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper")


def _application_layer_stand_ins() -> dict[str, types.ModuleType]:
    qt = types.ModuleType("qt")
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text

    scripted = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModuleLogic:
        def __init__(self):
            pass

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            pass

    scripted.ScriptedLoadableModule = type("ScriptedLoadableModule", (), {})
    scripted.ScriptedLoadableModuleWidget = type("ScriptedLoadableModuleWidget", (), {})
    scripted.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    scripted.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest

    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.WithinRange = lambda minimum, maximum: ("WithinRange", minimum, maximum)
    return {"qt": qt, "slicer.i18n": i18n, "slicer.ScriptedLoadableModule": scripted,
            "slicer.parameterNodeWrapper": wrapper}


@pytest.fixture(scope="module")
def module():
    """ApplePerturb.py imported with stand-ins for the Slicer application layer."""
    saved = {name: sys.modules.get(name) for name in APPLICATION_MODULES}
    sys.modules.update(_application_layer_stand_ins())
    try:
        spec = importlib.util.spec_from_file_location("ApplePerturb", MODULE_DIR / "ApplePerturb.py")
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        yield loaded
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


@pytest.fixture(scope="module")
def unet_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("unet") / "unet.safetensors"
    save_unet(UNetBackbone(features=(4, 4, 8, 8, 16, 4), input_size=64).freeze(), path)
    return path


def roi_around(scene, mask, frame=0, margin=8):
    rows, columns = np.nonzero(mask)
    low = np.array([columns.min() - margin, rows.min() - margin, frame - 0.4])
    high = np.array([columns.max() + margin, rows.max() + margin, frame + 0.4])
    return add_roi(scene, (low + high) / 2, high - low)


@pytest.mark.slow
def test_self_test_methods_pass(module, mrml_scene):
    """Run the module's own Slicer self-test methods (LiteMedSAM, real weights) on slicer-core."""
    test = module.ApplePerturbTest("test_segment_with_box")
    test.test_segment_with_box()
    mrml_scene.Clear(False)
    test.test_segment_study_propagation()
    mrml_scene.Clear(False)
    test.test_rejects_labelmap()


@pytest.mark.slow
def test_compare_writes_both_segments(module, mrml_scene, tmp_path):
    from ApplePerturbLib.apple.networks import AttributeDiscriminator, PerturbationGenerator
    from ApplePerturbLib.backbones import build_backbone
    from ApplePerturbLib.perturber import save_perturber

    backbone = build_backbone("litemedsam")
    torch.manual_seed(0)
    perturber = tmp_path / "litemedsam-sex.safetensors"
    save_perturber(perturber, PerturbationGenerator(256), AttributeDiscriminator(256, 2), backbone,
                   {"attribute": "sex", "groups": ["female", "male"]})

    image, truth = syntheticFrame((160, 200), center=(100, 80), radii=(40, 28), seed=4)
    volume = add_volume(mrml_scene, image[np.newaxis], name="image")
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    logic = module.ApplePerturbLogic()
    logic.model = module.ModelSettings(perturber=perturber, device="cpu")
    result = logic.segment_with_box(volume, roi_around(mrml_scene, truth), segmentation, 0, compare=True)

    segments = segmentation.GetSegmentation()
    assert segments.GetSegmentIdBySegmentName("lesion (APPLE)") == result.segmentId
    assert segments.GetSegmentIdBySegmentName("lesion (unperturbed)")
    assert result.diceWithUnperturbed == pytest.approx(dice_score(result.mask, result.unperturbedMask))
    assert result.unperturbedArea_mm2 == pytest.approx(float(result.unperturbedMask.sum()))
    assert logic.segmenters.encode_count == 1, "perturbed and unperturbed masks share one encoding"


def test_unet_study_without_prompt_and_cancel(module, mrml_scene, unet_file):
    frames = np.stack([syntheticFrame((64, 64), center=(32, 30 + k), radii=(10, 8), seed=k)[0] for k in range(4)])
    volume = add_volume(mrml_scene, frames, name="clip")
    logic = module.ApplePerturbLogic()
    logic.model = module.ModelSettings(backbone="unet", checkpoint=unet_file, device="cpu")

    progress = []
    outcomes = logic.segment_study(volume, None, module.PromptMode.NONE,
                                   progress_callback=lambda done, total, outcome: progress.append((done, total)),
                                   should_cancel=lambda: len(progress) >= 2)
    assert progress == [(1, 4), (2, 4)]
    assert [outcome.prompt for outcome in outcomes] == ["none", "none"]
    assert logic.segmenters.encode_count == 2


def test_box_backbone_rejects_no_prompt_mode(module, mrml_scene):
    frames = np.stack([syntheticFrame((64, 64), center=(32, 32), radii=(10, 8), seed=0)[0]] * 2)
    volume = add_volume(mrml_scene, frames, name="clip")
    logic = module.ApplePerturbLogic()
    logic.model = module.ModelSettings(device="cpu")
    with pytest.raises(ValueError, match="needs a box prompt"):
        logic.segment_study(volume, None, module.PromptMode.NONE)


def test_segment_with_box_input_errors(module, mrml_scene, unet_file):
    image, truth = syntheticFrame((64, 64), center=(32, 32), radii=(10, 8), seed=0)
    volume = add_volume(mrml_scene, image[np.newaxis], name="image")
    logic = module.ApplePerturbLogic()
    logic.model = module.ModelSettings(backbone="unet", checkpoint=unet_file, device="cpu")
    with pytest.raises(ValueError, match="segmentation"):
        logic.segment_with_box(volume, None, None)
    with pytest.raises(ValueError, match="Frame 3"):
        logic.segment_with_box(volume, None, mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode"), frame_index=3)
    logic.model = module.ModelSettings(backbone="unet", checkpoint=unet_file.with_name("gone.safetensors"))
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        logic.segment_with_box(volume, None, mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode"))


def test_unet_segments_without_roi(module, mrml_scene, unet_file):
    image, _ = syntheticFrame((64, 64), center=(32, 32), radii=(10, 8), seed=0)
    volume = add_volume(mrml_scene, image[np.newaxis], name="image")
    volume.SetSpacing(0.5, 0.5, 1.0)
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    logic = module.ApplePerturbLogic()
    logic.model = module.ModelSettings(backbone="unet", checkpoint=unet_file, device="cpu")
    result = logic.segment_with_box(volume, None, segmentation)
    assert result.box is None
    assert result.area_mm2 == pytest.approx(result.mask.sum() * 0.25)
    assert segmentation.GetSegmentation().GetSegmentIdBySegmentName("lesion") == result.segmentId


def test_load_metrics_into_table(module, mrml_scene, tmp_path):
    dice = [0.9, 0.8, 0.7, 0.6]
    groups = ["female", "female", "male", "male"]
    metrics = {"base": fairness_metrics(dice, groups, ["female", "male"]),
               "apple": fairness_metrics([0.85, 0.8, 0.78, 0.75], groups, ["female", "male"]),
               "attribute": "sex"}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics), encoding="utf-8")

    logic = module.ApplePerturbLogic()
    table, group_table, chart, loaded = logic.load_metrics_into_table(path)
    assert loaded["attribute"] == "sex"
    assert table.GetTable().GetColumnByName("APPLE") is not None
    assert group_table.GetNumberOfRows() == 2
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    again = logic.load_metrics_into_table(path, table, group_table, chart)
    assert again[:3] == (table, group_table, chart)
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode") == 2

    summary = module.summarizeMetrics(loaded)
    assert "base 0.750 -> APPLE 0.795" in summary
    assert "DSC_delta" in summary


def test_load_metrics_errors(module, mrml_scene, tmp_path):
    logic = module.ApplePerturbLogic()
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        logic.load_metrics_into_table(tmp_path / "metrics.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        logic.load_metrics_into_table(broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"accuracy": 1}), encoding="utf-8")
    with pytest.raises(ValueError, match="base"):
        logic.load_metrics_into_table(wrong)
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 0, "an invalid file leaves no nodes behind"
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 0


def test_background_jobs_find_the_library(module):
    options = module.ApplePerturbLogic.backgroundJobOptions()
    library_parent = Path(options["python_path"][0])
    assert (library_parent / "ApplePerturbLib" / "__init__.py").is_file()
    assert Path(options["executable"]).exists()


def test_perturber_description_warns_about_backbone(module):
    metadata = {"backbone": "medsam", "attribute": "age", "groups": ["<50", ">=50"], "alpha": 1.0, "beta": 0.5,
                "epochs": 10, "train_images": 120, "final_losses": {"dsc": 0.8123}}
    text = module.describePerturber(metadata, "litemedsam")
    assert "age (<50 / >=50)" in text
    assert "0.812" in text
    assert "choose medsam" in text
    assert "Warning" not in module.describePerturber(metadata, "medsam")
