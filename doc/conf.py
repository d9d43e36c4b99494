"""Sphinx configuration of the mne-unfolded-sbl documentation.

Build (offline, warnings are errors)::

    sphinx-build -W --keep-going -b html doc doc/_build/html

Environment variables read here:

``MNE_UNFOLDED_SBL_DOC_NO_EXAMPLES=1``
    Render the example gallery without executing any example
    (``plot_gallery = False``): fast iteration on the text.
``MNE_UNFOLDED_SBL_DOC_STRICT=1``
    Release / CI mode: a module listed in ``api.rst`` that cannot be
    imported, or an example folder without a gallery header, is a build
    warning (so an error under ``-W``) instead of a "pending" note.
``MNE_UNFOLDED_SBL_DOC_INTERSPHINX=1``
    Link to the MNE, NumPy, SciPy, PyTorch, Matplotlib and Python docs via
    intersphinx.  Needs internet (the inventories are downloaded), so it is
    off by default: an offline build with it on would warn.
``MNE_UNFOLDED_SBL_DOC_MATHJAX``
    Path or URL of ``tex-chtml.js`` to use instead of the MathJax CDN
    (e.g. a local copy, to view the built pages offline).
"""

import importlib
import inspect
import os
import re
import sys
import warnings
from datetime import date
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive, directives
from sphinx.util import logging as sphinx_logging

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

logger = sphinx_logging.getLogger("mne_unfolded_sbl.doc")


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


NO_EXAMPLES = _env_flag("MNE_UNFOLDED_SBL_DOC_NO_EXAMPLES")
STRICT = _env_flag("MNE_UNFOLDED_SBL_DOC_STRICT")
USE_INTERSPHINX = _env_flag("MNE_UNFOLDED_SBL_DOC_INTERSPHINX")

# Headless plotting for the gallery and any import-time matplotlib use.
os.environ.setdefault("MPLBACKEND", "Agg")
# Raw/epochs browsers in examples: matplotlib, never a Qt window.
os.environ.setdefault("MNE_BROWSER_BACKEND", "matplotlib")

import mne_unfolded_sbl  # noqa: E402

# -- Project information ----------------------------------------------------

project = "mne-unfolded-sbl"
author = "mne-unfolded-sbl developers"
copyright = f"{date.today().year}, {author}"
release = mne_unfolded_sbl.__version__
version = ".".join(release.split(".")[:2])

# -- General configuration --------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]
# Markdown model cards (pretrained/*.md); myst-parser is in the [doc] extra
HAVE_MYST = True
extensions.append("myst_parser")
if USE_INTERSPHINX:
    extensions.append("sphinx.ext.intersphinx")

templates_path = ["_templates"]
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = [
    "_build",
    "Thumbs.db",
    ".DS_Store",
    "generated/_api_listing.rst",  # input of autosummary only, see below
]
default_role = "py:obj"
pygments_style = "sphinx"
smartquotes = False
# External references (mne.*, torch.*, numpy.*) cannot be checked offline.
nitpicky = False
suppress_warnings = []

# -- autodoc / autosummary ---------------------------------------------------

autosummary_generate = ["generated/_api_listing.rst"]  # written below
autosummary_imported_members = False
autodoc_default_options = {"inherited-members": False}
autodoc_typehints = "none"  # types are in the numpydoc sections
autodoc_member_order = "bysource"
autoclass_content = "class"

# -- numpydoc (as in MNE) ------------------------------------------------------

numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False  # MNE turns it on with a large alias table
numpydoc_validation_checks = set()

# -- intersphinx (optional: needs internet) ----------------------------------

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable", None),
    "scipy": ("https://docs.scipy.org/doc/scipy", None),
    "matplotlib": ("https://matplotlib.org/stable", None),
    "mne": ("https://mne.tools/stable", None),
    "torch": ("https://docs.pytorch.org/docs/stable", None),
}
intersphinx_timeout = 10

# Labels of MNE's documentation used by docstrings that MNE's ``fill_doc``
# writes into our functions (e.g. ``%(verbose)s``).  Offline, without
# intersphinx, they are linked to the stable MNE docs directly.
MNE_REF_FALLBACK = {
    "tut-logging": (
        "https://mne.tools/stable/auto_tutorials/intro/50_configure_mne.html",
        "logging documentation",
    ),
}

# -- MathJax -------------------------------------------------------------------

if os.environ.get("MNE_UNFOLDED_SBL_DOC_MATHJAX"):
    mathjax_path = os.environ["MNE_UNFOLDED_SBL_DOC_MATHJAX"]

# -- HTML output (pydata-sphinx-theme, the theme MNE uses) -------------------

html_theme = "pydata_sphinx_theme"
html_title = f"mne-unfolded-sbl {release}"
html_static_path = ["_static"]
html_css_files = ["style.css"]
html_show_sourcelink = False
html_copy_source = False
html_last_updated_fmt = None
html_theme_options = {
    "navbar_align": "left",
    "navigation_depth": 3,
    "show_toc_level": 2,
    "show_prev_next": True,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version", "theme-version"],
    "navigation_with_keys": False,
}
html_sidebars = {
    "index": [],
    "install": [],
    "changes": [],
}
html_context = {"default_mode": "auto"}

# -- Model cards ---------------------------------------------------------------

PRETRAINED_DIR = ROOT / "pretrained"


def _model_cards():
    return sorted(p for p in PRETRAINED_DIR.glob("*.md") if p.is_file())


# -- The API listing ----------------------------------------------------------
#
# ``api.rst`` lists the public objects with ``.. api-section:: MODULE``
# blocks (content: object names relative to MODULE; option ``:all:`` takes
# the module's ``__all__`` instead).  Modules that cannot be imported yet
# (they are being written) become a "pending" note instead of a failed
# import; ``MNE_UNFOLDED_SBL_DOC_STRICT=1`` turns that into a warning.  The
# same blocks are written to ``generated/_api_listing.rst`` as plain
# autosummary blocks for autosummary's stub generation.

API_FILE = HERE / "api.rst"
API_LISTING = HERE / "generated" / "_api_listing.rst"
_SECTION_RE = re.compile(r"^\.\.\s+api-section::\s*([A-Za-z0-9_.]+)\s*$")


def parse_api_sections(text):
    """Return ``[(module, use_all, [names])]`` from the text of api.rst."""
    sections = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _SECTION_RE.match(lines[i])
        i += 1
        if not m:
            continue
        module, use_all, names = m.group(1), False, []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
            item = lines[i].strip()
            i += 1
            if not item:
                continue
            if item.startswith(":"):
                use_all = use_all or item.split(":")[1] == "all"
                continue
            names.append(item)
        sections.append((module, use_all, names))
    return sections


def _public_names(module):
    """``__all__``, else the public functions/classes defined in ``module``."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    prefix = module.__name__
    out = []
    for name, obj in vars(module).items():
        if name.startswith("_"):
            continue
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and (
            getattr(obj, "__module__", "") or ""
        ).startswith(prefix):
            out.append(name)
    return sorted(out)


def resolve_api_section(module_name, use_all, names):
    """Return ``(names_found, missing_names, import_error)`` for one block."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(module_name)
    except Exception as err:  # a module being written may fail any way
        return [], [], f"{type(err).__name__}: {err}"
    if use_all:
        names = _public_names(module)
    found, missing = [], []
    for name in names:
        obj = module
        try:
            for part in name.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            missing.append(name)
        else:
            found.append(name)
    return found, missing, None


API_SECTIONS = {}
if API_FILE.is_file():
    for _mod, _all, _names in parse_api_sections(API_FILE.read_text("utf-8")):
        API_SECTIONS[(_mod, _all, tuple(_names))] = resolve_api_section(
            _mod, _all, _names)

_listing = [
    ":orphan:",
    "",
    "Generated by conf.py from api.rst for autosummary's stub generation.",
    "",
]
for (_mod, _, _), (_found, _missing, _err) in API_SECTIONS.items():
    if not _found:
        continue
    _listing += [f".. currentmodule:: {_mod}", "", ".. autosummary::",
                 "   :toctree: .", ""]
    _listing += [f"   {n}" for n in _found] + [""]
API_LISTING.parent.mkdir(parents=True, exist_ok=True)
_text = "\n".join(_listing) + "\n"
if not API_LISTING.is_file() or API_LISTING.read_text("utf-8") != _text:
    API_LISTING.write_text(_text, "utf-8")


class APISectionDirective(Directive):
    """``.. api-section:: module`` -> an autosummary table, or a note."""

    required_arguments = 1
    has_content = True
    option_spec = {"all": directives.flag}

    def run(self):
        module = self.arguments[0]
        use_all = "all" in self.options
        names = [c.strip() for c in self.content if c.strip()]
        key = (module, use_all, tuple(names))
        if key not in API_SECTIONS:
            API_SECTIONS[key] = resolve_api_section(module, use_all, names)
        found, missing, err = API_SECTIONS[key]
        env = self.state.document.settings.env
        # line in api.rst itself (earlier blocks inserted lines before us)
        source, line = self.state_machine.get_source_and_line(self.lineno)
        loc = f"{source}:{line}"
        for name in missing:
            logger.warning(f"api.rst lists {module}.{name}, which does not "
                           "exist (renamed or removed?)", location=loc)
        if err is not None:
            msg = (f"Module {module} is not available in this build "
                   f"({err}); its reference is pending.")
            if STRICT:
                logger.warning(msg, location=loc)
            else:
                logger.info(msg)
            text = [".. note::", "",
                    f"   The module ``{module}`` is not part of this build "
                    "yet; its reference will appear here once it lands.", ""]
        elif not found:
            text = [f"*The module* ``{module}`` *exports no public object "
                    "yet.*", ""]
        else:
            text = [f".. currentmodule:: {module}", "", ".. autosummary::",
                    "   :toctree: generated/", "   :nosignatures:", ""]
            text += [f"   {n}" for n in found] + [""]
        self.state_machine.insert_input(text, str(env.doc2path(env.docname)))
        return []


# -- Model cards directive -----------------------------------------------------


class ModelCardsDirective(Directive):
    """Include every ``pretrained/*.md`` model card (or say there is none)."""

    has_content = False

    def run(self):
        env = self.state.document.settings.env
        cards = _model_cards()
        source = env.doc2path(env.docname)
        if not cards:
            text = [
                ".. note::", "",
                "   No pretrained weights are bundled with this version "
                "(``pretrained/`` holds no model card). "
                "``model=\"cb\"`` (the classical solver) works out of the box; "
                "train weights as described below and pass the path of the "
                "``.safetensors`` file as ``model``.", ""]
        else:
            text = []
            for card in cards:
                env.note_dependency(str(card))
                rel = os.path.relpath(card, Path(source).parent)
                if HAVE_MYST:
                    text += [f".. include:: {rel}",
                             "   :parser: myst_parser.sphinx_", ""]
                else:  # pragma: no cover
                    text += [card.stem, "~" * len(card.stem), "",
                             f".. literalinclude:: {rel}",
                             "   :language: markdown", ""]
        self.state_machine.insert_input(text, str(source))
        return []


# -- sphinx-gallery -----------------------------------------------------------

EXAMPLES_DIR = ROOT / "examples"
_HEADERS = ("GALLERY_HEADER.rst", "GALLERY_HEADER.txt", "README.rst",
            "README.txt", "index.rst")
HAS_GALLERY = EXAMPLES_DIR.is_dir() and any(
    (EXAMPLES_DIR / h).is_file() for h in _HEADERS)
# Examples that need a download are shown but never executed.
DOWNLOAD_EXAMPLES = ("plot_things_eeg2",)
# sphinx-gallery matches this regex against the full path of each file.
_sep = re.escape(os.sep)
FILENAME_PATTERN = (
    f"{_sep}plot_(?!{'|'.join(n[len('plot_'):] for n in DOWNLOAD_EXAMPLES)})"
    r"[^" + _sep + r"]*\.py$"
)

# mne_unfolded_sbl.viz renders brains (PyVista off-screen or its own
# renderer) into matplotlib figures, so the matplotlib scraper sees all of
# them; sphinx-gallery's "pyvista" scraper would instead require
# pyvista.BUILDING_GALLERY and a live plotter.
_scrapers = ["matplotlib"]

sphinx_gallery_conf = {
    "doc_module": ("mne_unfolded_sbl",),
    "reference_url": {"mne_unfolded_sbl": None},
    "backreferences_dir": "generated",
    "examples_dirs": [str(EXAMPLES_DIR)] if HAS_GALLERY else [],
    "gallery_dirs": ["auto_examples"] if HAS_GALLERY else [],
    "filename_pattern": FILENAME_PATTERN,
    "ignore_pattern": r"__init__\.py|(^|/)_",
    "plot_gallery": "False" if NO_EXAMPLES else "True",
    "image_scrapers": tuple(_scrapers),
    "reset_modules": ("matplotlib",),
    "within_subsection_order": "FileNameSortKey",
    "remove_config_comments": True,
    "abort_on_example_error": False,
    "only_warn_on_example_error": False,
    "min_reported_time": 1.0,
    "show_memory": False,
    "download_all_examples": False,
    "write_computation_times": True,
    "capture_repr": ("_repr_html_", "__repr__"),
}

autosummary_context = {"sphinx_gallery": True}

# Without a gallery header (examples not written yet) there is no gallery:
# write a stub index so the toctree entry resolves.
GALLERY_INDEX = HERE / "auto_examples" / "index.rst"
if not HAS_GALLERY:
    GALLERY_INDEX.parent.mkdir(parents=True, exist_ok=True)
    GALLERY_INDEX.write_text(
        "Examples\n========\n\n"
        ".. note::\n\n"
        "   The example gallery is pending: ``examples/`` has no gallery "
        "header (``GALLERY_HEADER.rst`` or ``README.txt``) in this "
        "checkout.\n", "utf-8")


# -- Hooks ---------------------------------------------------------------------


def _missing_reference(app, env, node, contnode):
    """Link MNE labels (e.g. ``tut-logging``) to mne.tools when offline."""
    if node.get("refdomain") != "std" or node.get("reftype") != "ref":
        return None
    target = node.get("reftarget")
    if target not in MNE_REF_FALLBACK:
        return None
    url, title = MNE_REF_FALLBACK[target]
    text = contnode.astext() if contnode is not None else title
    ref = nodes.reference("", "", internal=False, refuri=url)
    ref += nodes.inline(text, text)
    return ref


_BUILTIN_DOCS = {t.__doc__ for t in (int, float, str, bytes, bool, tuple,
                                      list, dict, set, frozenset, type(None))}


def _constant_docstring(app, what, name, obj, options, lines):
    """Constants without a ``#:`` comment would show ``int``'s docstring."""
    if what not in ("data", "attribute") or not lines:
        return
    if "\n".join(lines).strip() not in {(d or "").strip() for d in _BUILTIN_DOCS}:
        return
    value = repr(obj)
    lines[:] = [f"Value: ``{value}``."] if len(value) <= 60 else [
        f"A constant of type :class:`{type(obj).__name__}`."]


def _check_gallery(app, config):
    if not HAS_GALLERY:
        msg = ("examples/ has no gallery header (GALLERY_HEADER.rst or "
               "README.txt): the example gallery is a stub.")
        if STRICT:
            logger.warning(msg)
        else:
            logger.info(msg)


def setup(app):
    app.add_directive("api-section", APISectionDirective)
    app.add_directive("model-cards", ModelCardsDirective)
    # after intersphinx (priority 500) had its chance
    app.connect("missing-reference", _missing_reference, priority=900)
    app.connect("config-inited", _check_gallery)
    # before numpydoc (priority 500) reformats the docstring
    app.connect("autodoc-process-docstring", _constant_docstring, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
