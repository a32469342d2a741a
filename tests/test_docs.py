"""The documentation's executable parts: docstring examples and API coverage.

The site itself (``docs/``) is built strictly by ``.ci/run``; these tests
need no Sphinx. They run every ``>>>`` example in fnn's docstrings as a
doctest, and check the rule the site's ``api_coverage`` extension enforces
(every public name of every public module appears in the API reference),
so that a mistake shows up in the test suite already.
"""

import doctest
import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

import pytest

import fnn

DOCS = Path(__file__).resolve().parents[1] / "docs"
sys.path.insert(0, str(DOCS / "_ext"))
import api_coverage  # noqa: E402

sys.path.remove(str(DOCS / "_ext"))

ALL_MODULES = sorted(
    ["fnn"]
    + [
        info.name
        for info in pkgutil.walk_packages(fnn.__path__, prefix="fnn.")
        if not info.ispkg or info.name != "fnn"
    ]
)


@pytest.mark.parametrize("name", ALL_MODULES)
def test_docstring_examples_run(name):
    """Every ``>>>`` example in the module's docstrings prints what it says."""
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    reports = []  # doctest swaps sys.stdout while it runs: collect instead
    for test in finder.find(module, name):
        if test.examples and test.filename and "fnn" in test.filename:
            runner.run(test, out=reports.append)
    failed, _ = runner.summarize(verbose=False)
    assert failed == 0, f"{failed} doctest(s) failed in {name}:\n" + "".join(reports)


def test_public_modules_found():
    """The coverage rule sees the modules the README's table lists."""
    names = api_coverage.public_modules("fnn")
    for expected in (
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
    ):
        assert expected in names
    assert not any(n.split(".")[-1].startswith("_") for n in names)


@pytest.mark.parametrize("name", api_coverage.public_modules("fnn"))
def test_public_functions_and_classes_have_docstrings(name):
    """Autodoc renders a docstring for each public function and class; one
    without would be an empty entry in the reference."""
    module = importlib.import_module(name)
    bare = []
    for attr in api_coverage.public_names(module):
        value = getattr(module, attr)
        assert value is not None or attr.isupper(), f"{name}.{attr} is None"
        if inspect.isfunction(value) or inspect.isclass(value):
            if not (inspect.getdoc(value) or "").strip():
                bare.append(attr)
    assert not bare, f"{name}: public names without a docstring: {bare}"


def test_every_public_name_is_documented_somewhere():
    """With the names each generated API page documents (docs/conf.py), the
    coverage rule finds nothing missing."""
    documented = set()
    for modname in api_coverage.public_modules("fnn"):
        module = importlib.import_module(modname)
        documented.add(modname)
        if modname in ("fnn", "fnn.layers"):
            continue  # re-exports, documented on their own modules' pages
        documented |= {f"{modname}.{n}" for n in api_coverage.public_names(module)}
    assert api_coverage.missing_names(documented) == []


def test_coverage_rule_flags_a_missing_name():
    """The rule is not vacuous: drop one documented name and it is reported."""
    documented = {"fnn.losses.mse"}
    missing = api_coverage.missing_names(documented)
    assert "fnn.losses.mse" not in missing
    assert "fnn.losses.mae" in missing
    assert "fnn.layers.Dense" in missing  # documented nowhere in this set


def test_docs_extra_and_strict_build_are_wired():
    """pyproject's docs extra has the build's tools, and CI builds strictly."""
    root = DOCS.parent
    pyproject = (root / "pyproject.toml").read_text()
    docs_line = next(
        line for line in pyproject.splitlines() if line.startswith("docs = [")
    )
    for tool in ("sphinx", "myst-nb", "furo", "ipykernel", "matplotlib"):
        assert f'"{tool}' in docs_line
    ci = (root / ".ci" / "run").read_text()
    assert "-W --keep-going" in ci
    conf = (DOCS / "conf.py").read_text()
    assert "nb_execution_raise_on_error = True" in conf
    assert 'nb_execution_mode = "force"' in conf
