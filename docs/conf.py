"""Sphinx configuration of fnn's documentation site.

Build it strictly (warnings are errors; a tutorial that raises fails it)::

    pip install -e ".[docs]"
    python -m sphinx -W --keep-going -b html docs docs/_build/html

Tutorials (``docs/course/*.md``, ``docs/guide/*.md``) are MyST markdown
notebooks: myst-nb executes every ``{code-cell}`` at each build, so each
number and figure on the site comes from the code beside it. Nothing is
cached between builds.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

# The notebook kernels inherit this environment. Two virtual CPU devices let
# the "at scale" tutorial shard a batch on any machine; LLVM at -O0 compiles
# the tutorials' many small programs several times faster (the results are
# the same programs, at most an ulp apart in float32). Set XLA_FLAGS
# yourself to build with other settings.
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0",
)

project = "fnn"
author = "the fnn authors"
copyright = "2026, the fnn authors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
    "api_coverage",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "api/generated/toc.md"]
root_doc = "index"

# --- autodoc / napoleon (Google style docstrings) ---
autodoc_default_options = {
    "members": True,
    "undoc-members": True,
    "member-order": "bysource",
    "show-inheritance": False,
}
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True
napoleon_use_ivar = True  # "Attributes:" as fields: no duplicate entries
# Type hints name things Sphinx cannot resolve (jax.Array, optax types);
# they are shown, not linked, and must not fail the strict build.
nitpicky = False

# --- myst / myst-nb ---
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "force"  # execute every notebook on every build
nb_execution_raise_on_error = True  # a cell that raises fails the build
nb_execution_timeout = 180  # seconds per cell
nb_execution_show_tb = True
nb_merge_streams = True

# --- HTML ---
html_theme = "furo"
html_title = "fnn"
html_static_path = []

# --- the API reference: one page per public module, generated ---
# Each public module ``fnn.<name>`` gets ``api/generated/fnn.<name>.rst``
# (an ``automodule`` with its members), so the reference follows the code:
# a new module or name appears without editing the docs, and the
# ``api_coverage`` extension fails the build if a public name is missing.
# Modules whose public names are all re-exported by ``fnn.layers`` (dense,
# conv, ...) are documented on their own pages, where their backward maths
# lives; the ``fnn.layers`` page indexes them.
import api_coverage  # noqa: E402

API_ORDER = [
    "fnn",
    "fnn.protocol",
    "fnn.layers",
    "fnn.activations",
    "fnn.losses",
    "fnn.backprop",
    "fnn.optim",
    "fnn.train",
    "fnn.parallel",
    "fnn.data",
    "fnn.checkpoint",
    "fnn.initializers",
    "fnn.augment",
    "fnn.diagnostics",
]


def _layer_modules(modules):
    """The modules some of whose public names ``fnn.layers`` re-exports."""
    import importlib

    layers = importlib.import_module("fnn.layers")
    exported = {id(getattr(layers, n)) for n in layers.__all__}
    out = []
    for name in modules:
        if name in ("fnn", "fnn.layers", "fnn.protocol"):
            continue
        mod = importlib.import_module(name)
        names = api_coverage.public_names(mod)
        if any(id(getattr(mod, n, None)) in exported for n in names):
            out.append(name)
    return out


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def _data_entry(name: str, value) -> list[str]:
    """reST for a public data name that has no ``#:`` doc comment."""
    from fnn.protocol import Layer

    if isinstance(value, Layer):
        import fnn.activations as activations

        fn = _snake(name)
        what = (
            f"applies :func:`fnn.activations.{fn}` elementwise; its "
            f"``backward`` multiplies ``dy`` by the hand-written derivative "
            f"``fnn.activations.derivative(fnn.activations.{fn})``."
            if callable(getattr(activations, fn, None))
            else "a ready-made layer."
        )
        return [
            f".. py:data:: {name}",
            "   :type: fnn.protocol.Layer",
            "",
            f"   The layer ``{value.name}``, without options (``{name}`` and "
            f"``{name}()`` are the same layer): {what}",
            "",
        ]
    shown = repr(value)
    shown = shown if len(shown) <= 70 else shown[:60] + " ..."
    lines = [
        f".. py:data:: {name}",
        f"   :type: {type(value).__name__}",
        f"   :value: {shown}",
        "",
    ]
    doc = _instance_doc(value)
    if doc:
        lines += ["   " + line if line else "" for line in doc.splitlines()]
        lines += [""]
    return lines


def _instance_doc(value) -> str:
    """Documentation of a record instance such as ``fnn.losses.mse``: its own
    docstring, or its ``value`` function's (a ``Loss``/``Penalty`` record),
    in Google style, converted to reST by napoleon."""
    import inspect

    from sphinx.ext.napoleon import Config
    from sphinx.ext.napoleon.docstring import GoogleDocstring

    doc = value.__doc__ if value.__doc__ != type(value).__doc__ else None
    if not doc and callable(getattr(value, "value", None)):
        doc = inspect.getdoc(value.value)
        if doc and callable(getattr(value, "grad", None)):
            doc += (
                "\n\nIts hand-written gradient is ``.grad`` "
                "(never ``jax.grad``); calling it gives the value."
            )
    if not doc:
        return ""
    config = Config(napoleon_use_ivar=True, napoleon_use_rtype=False)
    return str(GoogleDocstring(inspect.cleandoc(doc), config))


def _documented_by_autodoc(module, name) -> bool:
    """Whether ``automodule :members: name`` shows ``name`` by itself: a
    function or class, or data with a ``#:`` doc comment."""
    from sphinx.pycode import ModuleAnalyzer

    if api_coverage.is_routine_or_class(getattr(module, name)):
        return True
    try:
        attr_docs = ModuleAnalyzer.for_module(module.__name__).find_attr_docs()
    except Exception:  # no source
        return False
    return ("", name) in attr_docs


def _api_pages():
    """``{module name: reStructuredText}`` of every generated API page."""
    import importlib

    modules = api_coverage.public_modules("fnn")
    layer_modules = _layer_modules(modules)
    elsewhere = set()  # objects documented on a page other than fnn.layers
    for sub in modules:
        if sub not in ("fnn", "fnn.layers"):
            mod = importlib.import_module(sub)
            elsewhere |= {id(getattr(mod, n)) for n in api_coverage.public_names(mod)}
    pages = {}
    for name in modules:
        mod = importlib.import_module(name)
        names = api_coverage.public_names(mod)
        if name == "fnn":  # the package: its docstring; names live in modules
            names = []
        if name == "fnn.layers":
            names = [n for n in names if id(getattr(mod, n)) not in elsewhere]
        auto = [n for n in names if _documented_by_autodoc(mod, n)]
        data = [n for n in names if n not in auto]
        title = f"``{name}``"
        body = [title, "=" * len(title), "", f".. automodule:: {name}"]
        body += [f"   :members: {', '.join(auto)}" if auto else "   :no-members:"]
        body += [""]
        for n in data:
            body += _data_entry(n, getattr(mod, n))
        if name == "fnn.layers":
            layers_all = set(mod.__all__)
            body += ["Where each layer is documented:", ""]
            for sub in ["fnn.protocol", *layer_modules]:
                subm = importlib.import_module(sub)
                listed = ", ".join(
                    f":obj:`~{sub}.{n}`"
                    for n in api_coverage.public_names(subm)
                    if n in layers_all
                )
                body += [f"- :mod:`{sub}`: {listed}"]
            body += [""]
        pages[name] = "\n".join(body)
    return pages, layer_modules


def _write_api_pages():
    out = HERE / "api" / "generated"
    out.mkdir(parents=True, exist_ok=True)
    pages, layer_modules = _api_pages()
    for stale in out.glob("*.rst"):
        if stale.stem not in pages:
            stale.unlink()
    for name, text in pages.items():
        path = out / f"{name}.rst"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    ordered = [m for m in API_ORDER if m in pages and m not in layer_modules]
    ordered += sorted(m for m in pages if m not in ordered and m not in layer_modules)
    toc = [
        "% Generated by docs/conf.py at each build; do not edit.",
        "",
        "```{toctree}",
        ":maxdepth: 1",
        "",
        *[f"generated/{m}" for m in ordered],
        "```",
        "",
        "Layer implementations, re-exported by `fnn.layers`:",
        "",
        "```{toctree}",
        ":maxdepth: 1",
        "",
        *[f"generated/{m}" for m in layer_modules],
        "```",
        "",
    ]
    toc_path = out / "toc.md"
    text = "\n".join(toc)
    if not toc_path.exists() or toc_path.read_text() != text:
        toc_path.write_text(text)


_write_api_pages()
