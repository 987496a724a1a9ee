"""Synthetic test input for self-tests: a speckled frame with a dark elliptical lesion, and an ROI around it."""

import numpy as np
import slicer
import vtk


def syntheticFrame(shape, center, radii, seed):
    """Return (uint8 HxW speckled image with a dark elliptical lesion, bool HxW lesion mask).

    ``shape`` is (H, W), ``center`` (x, y) and ``radii`` (rx, ry), all in
    pixels. Tissue is 150 times multiplicative gamma speckle (mean 1); the
    lesion has a quarter of the tissue's brightness.
    """
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:shape[0], 0:shape[1]]
    truth = ((columns - center[0]) / radii[0]) ** 2 + ((rows - center[1]) / radii[1]) ** 2 <= 1.0
    tissue = 150.0 * rng.gamma(4.0, 0.25, size=shape)
    image = np.where(truth, 0.25 * tissue, tissue)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def placeRoiAroundMask(volume, mask, frame, margin):
    """Add an ROI node around a mask's bounding box grown by ``margin`` pixels, on frame ``frame`` of ``volume``.

    The corners go through the volume's IJK-to-RAS matrix; the ROI is 0.8
    voxels thick along K, centred on the frame.
    """
    rows, columns = np.nonzero(mask)
    lowIjk = (columns.min() - margin, rows.min() - margin, frame - 0.4)
    highIjk = (columns.max() + margin, rows.max() + margin, frame + 0.4)
    ijkToRas = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijkToRas)
    low = np.array(ijkToRas.MultiplyPoint((*lowIjk, 1.0))[:3])
    high = np.array(ijkToRas.MultiplyPoint((*highIjk, 1.0))[:3])
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "lesion box")
    roi.SetCenter(*((low + high) / 2))
    roi.SetSize(*np.abs(high - low))
    return roi
