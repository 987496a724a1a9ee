"""Dependency checks of the Slicer module (ApplePerturbSlicer.dependencies) outside Slicer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "ApplePerturb"
sys.path.insert(0, str(MODULE_DIR))

from ApplePerturbSlicer import dependencies  # noqa: E402


def test_installed_packages_are_found():
    status = dependencies.check_dependencies()
    assert status.ready, status.message
    assert status.missing == []
    assert status.message == "All Python packages found."


def test_missing_package_is_reported_by_distribution_name(monkeypatch):
    monkeypatch.setitem(dependencies.REQUIRED_PACKAGES, "radiomics", "pyradiomics-bhklab")
    monkeypatch.setitem(dependencies.REQUIRED_PACKAGES, "apple_perturb_absent_package", "absent-package")
    status = dependencies.check_dependencies()
    assert not status.ready
    assert status.missing == ["apple_perturb_absent_package"]
    assert "absent-package" in status.message
    assert "Check / install" in status.message


def test_missing_library_is_reported_and_not_installed(monkeypatch):
    monkeypatch.setattr(dependencies, "LIBRARY_PACKAGE", "apple_perturb_absent_library")
    status = dependencies.check_dependencies()
    assert not status.ready
    assert not status.library_found
    assert status.missing == []
    assert "apple_perturb_absent_library was not found" in status.message
    assert "docs/slicer.md" in status.message


def test_check_imports_nothing(monkeypatch):
    for name in ("monai", "segment_anything"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    dependencies.check_dependencies()
    assert "monai" not in sys.modules
    assert "segment_anything" not in sys.modules


def test_broken_names_are_not_importable():
    assert not dependencies.is_importable("apple_perturb_absent_package.sub")
    assert dependencies.is_importable("json")


def test_requirements_file_is_read_without_comments():
    requirements = dependencies.read_requirements(MODULE_DIR / "Resources" / "requirements.txt")
    assert "segment-anything>=1.0" in requirements
    assert all(not line.startswith("#") for line in requirements)
    assert not any(line.startswith("torch") for line in requirements)


def test_requirements_options_and_inline_comments_are_skipped(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# comment\n--index-url https://example.invalid\nmonai>=1.4  # MONAI\n\ntqdm\n", encoding="utf-8")
    assert dependencies.read_requirements(path) == ["monai>=1.4", "tqdm"]


def test_missing_requirements_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="requirements"):
        dependencies.read_requirements(tmp_path / "requirements.txt")
