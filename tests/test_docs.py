"""The API reference (doc/api.rst) lists every public object.

``doc/api.rst`` documents objects with ``.. api-section:: MODULE`` blocks
(see ``doc/conf.py``): either explicit names or ``:all:`` (the module's
``__all__``).  These tests read those blocks without building the docs.
"""

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import mne_unfolded_sbl

API_RST = Path(__file__).resolve().parents[1] / "doc" / "api.rst"
SECTION_RE = re.compile(r"^\.\.\s+api-section::\s*([A-Za-z0-9_.]+)\s*$")

#: Public modules that need no section of their own.
NOT_DOCUMENTED = {
    "mne_unfolded_sbl.cli",  # command-line dispatcher (documented as CLI)
    "mne_unfolded_sbl.inverse",  # re-exported by mne_unfolded_sbl itself
    "mne_unfolded_sbl.core",  # documented module by module
    "mne_unfolded_sbl.pretrained_weights",  # data package of the weights
}


def _sections():
    """``{module: (use_all, [names])}`` merged over all blocks of api.rst."""
    out = {}
    lines = API_RST.read_text("utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = SECTION_RE.match(lines[i])
        i += 1
        if not m:
            continue
        use_all, names = False, []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
            item = lines[i].strip()
            i += 1
            if item.startswith(":"):
                use_all = use_all or item.split(":")[1] == "all"
            elif item:
                names.append(item)
        prev_all, prev_names = out.get(m.group(1), (False, []))
        out[m.group(1)] = (prev_all or use_all, prev_names + names)
    return out


def _import_or_skip(name):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name == name:  # listed, but not written yet
            pytest.skip(f"{name} does not exist yet")
        raise


def _public_names(module):
    names = getattr(module, "__all__", None)
    if names is not None:
        return set(names)
    return {
        name for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and (getattr(obj, "__module__", "") or "").startswith(module.__name__)
    }


SECTIONS = _sections()


def test_api_rst_has_sections():
    assert "mne_unfolded_sbl" in SECTIONS
    assert "apply_unfolded_sbl" in SECTIONS["mne_unfolded_sbl"][1]


@pytest.mark.parametrize("module_name", sorted(SECTIONS))
def test_every_public_object_is_documented(module_name):
    module = _import_or_skip(module_name)
    use_all, names = SECTIONS[module_name]
    for name in names:  # listed names exist
        obj = module
        for part in name.split("."):
            assert hasattr(obj, part), (
                f"doc/api.rst lists {module_name}.{name}, which does not exist")
            obj = getattr(obj, part)
    if use_all:
        return
    missing = sorted(_public_names(module) - set(names))
    assert not missing, (
        f"public objects of {module_name} missing from doc/api.rst: {missing}")


def test_every_public_module_has_a_section():
    found = []
    for info in pkgutil.walk_packages(mne_unfolded_sbl.__path__,
                                      prefix="mne_unfolded_sbl."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts) or info.name in NOT_DOCUMENTED:
            continue
        if any(".".join(parts[:i]) in SECTIONS for i in range(2, len(parts))):
            continue  # inside a package documented as a whole (its __all__)
        found.append(info.name)
    missing = sorted(set(found) - set(SECTIONS))
    assert not missing, f"modules without a section in doc/api.rst: {missing}"
