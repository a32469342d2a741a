"""A Sphinx extension that fails the strict build when the API reference
misses a public name.

For every public module of the ``fnn`` package (``fnn.<name>``, no leading
underscore) it computes the public names (:func:`public_names`) and warns,
which ``-W`` turns into a build error, for each one whose object is
documented nowhere in the reference (under its own module or under a module
that re-exports it, as :mod:`fnn.layers` re-exports the layer modules).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil


def public_modules(package: str = "fnn") -> list[str]:
    """Names of ``package``'s public submodules, importable ones only."""
    pkg = importlib.import_module(package)
    names = [package]
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            names.append(f"{package}.{info.name}")
    return sorted(names)


def public_names(module) -> list[str]:
    """A module's public names.

    Its ``__all__`` less dunders (``__version__`` is not API); or else, without
    one, the names with no leading underscore bound to a function or class
    defined in the module (not imported), to an instance of a class defined
    in fnn (a layer such as ``Relu``, a loss such as ``mse``), or to an
    UPPER_CASE constant (a number, string or tuple).
    """
    if hasattr(module, "__all__"):  # dunders (``__version__``) are not API
        return [n for n in module.__all__ if not n.startswith("__")]
    names = []
    for name, value in vars(module).items():
        if name.startswith("_") or inspect.ismodule(value):
            continue
        if inspect.isfunction(value) or inspect.isclass(value):
            if getattr(value, "__module__", None) == module.__name__:
                names.append(name)
        elif type(value).__module__.split(".")[0] == "fnn":
            names.append(name)
        elif name.isupper() and isinstance(value, (int, float, str, tuple)):
            names.append(name)
    return names


def is_routine_or_class(value) -> bool:
    """What ``automodule :members:`` documents by itself."""
    return inspect.isroutine(value) or inspect.isclass(value)


_MISSING = object()


def _resolve(fullname: str):
    """The object a dotted name documents, or a sentinel if unimportable."""
    parts = fullname.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return _MISSING
        return obj
    return _MISSING


def missing_names(documented: set[str], package: str = "fnn") -> list[str]:
    """Public ``module.name``s whose object no documented name refers to."""
    documented_ids = set()
    for fullname in documented:
        obj = _resolve(fullname)
        if obj is not _MISSING and (callable(obj) or inspect.ismodule(obj)):
            documented_ids.add(id(obj))
    missing = []
    for modname in public_modules(package):
        module = importlib.import_module(modname)
        for name in public_names(module):
            fullname = f"{modname}.{name}"
            if fullname in documented:
                continue
            obj = getattr(module, name, _MISSING)
            if obj is not _MISSING and callable(obj) and id(obj) in documented_ids:
                continue
            missing.append(fullname)
    return missing


def _check(app, env):
    from sphinx.util import logging

    logger = logging.getLogger(__name__)
    objects = env.get_domain("py").objects
    documented = set(objects) | {f"{m}" for m in env.get_domain("py").modules}
    for fullname in missing_names(documented):
        logger.warning(
            "api_coverage: public name %s is not in the API reference "
            "(add its module to docs/api/ or a docstring so autodoc shows it)",
            fullname,
        )


def setup(app):
    app.connect("env-check-consistency", _check)
    return {"version": "1", "parallel_read_safe": True}
