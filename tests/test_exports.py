"""The public surface: ``__all__``, front-end parity, docstrings, py.typed, version."""

from __future__ import annotations

import importlib.metadata
import inspect
import re
import sys
import types
import typing
from pathlib import Path

import pytest

import flowlet
import flowlet.functional as F
from flowlet import Flow, Pipeline, in_process, in_thread, op, thread_local

PUBLIC_MODULES = [flowlet, op, F]

STAGES = {"map", "filter", "flat_map", "batch"}
"""The stage operators every front end offers."""

# What each front end has besides the stages. A new name in a front end must be added
# here (or to STAGES, and then to every front end) on purpose.
PIPELINE_EXTRAS = {"through", "collect", "drain", "for_each", "stream"}
FLOW_EXTRAS = {"through"}
OP_EXTRAS: set[str] = set()
FUNCTIONAL_EXTRAS = {"Operator", "chain", "collect", "drain", "for_each"}

TERMINALS = {"collect", "drain", "for_each"}

# Public-looking attributes a module may have without exporting them: other public
# names imported for annotations or implementation. Imports from typing and friends and
# type variables are recognised below and need no entry.
NOT_EXPORTED = {
    "flowlet": set[str](),
    "flowlet.op": {"Flow"},
    "flowlet.functional": {"Flow", "pipe"},
}

TYPING_PLUMBING_ORIGINS = {"__future__", "typing", "typing_extensions", "collections.abc", "types"}


def is_plumbing(value: object) -> bool:
    if isinstance(value, (typing.TypeVar, typing.ParamSpec, types.ModuleType)):
        return True
    return getattr(value, "__module__", None) in TYPING_PLUMBING_ORIGINS


def public_attributes(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not is_plumbing(value)
    }


def public_methods(cls: type) -> set[str]:
    return {
        name for name, value in vars(cls).items() if not name.startswith("_") and callable(value)
    }


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_every_name_in_all_exists(module: types.ModuleType) -> None:
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []
    assert len(module.__all__) == len(set(module.__all__)), "duplicates in __all__"


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_every_public_attribute_is_exported_or_allowed(module: types.ModuleType) -> None:
    unexported = public_attributes(module) - set(module.__all__) - NOT_EXPORTED[module.__name__]
    assert unexported == set()


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_allowed_unexported_names_are_still_present(module: types.ModuleType) -> None:
    # Keeps NOT_EXPORTED honest: an entry that no longer applies must be removed.
    stale = NOT_EXPORTED[module.__name__] - public_attributes(module)
    assert stale == set()


def test_top_level_exports_the_documented_api() -> None:
    assert set(flowlet.__all__) == {
        "pipe",
        "Pipeline",
        "ProcessCallError",
        "Flow",
        "op",
        "functional",
        "in_thread",
        "in_process",
        "thread_local",
    }
    assert flowlet.functional is F
    assert flowlet.op is op


def test_star_import_gives_exactly_all() -> None:
    for module in PUBLIC_MODULES:
        namespace: dict[str, object] = {}
        exec(f"from {module.__name__} import *", namespace)
        assert set(namespace) - {"__builtins__"} == set(module.__all__)


def test_every_front_end_has_the_same_stage_operators() -> None:
    pipeline_stages = public_methods(Pipeline) - PIPELINE_EXTRAS
    flow_stages = public_methods(Flow) - FLOW_EXTRAS
    op_stages = set(op.__all__) - OP_EXTRAS
    functional_stages = set(F.__all__) - FUNCTIONAL_EXTRAS
    assert pipeline_stages == STAGES
    assert flow_stages == STAGES
    assert op_stages == STAGES
    assert functional_stages == STAGES


def test_front_end_extras_are_all_present() -> None:
    # The other direction: an extra that was removed or renamed must leave the lists.
    assert public_methods(Pipeline) >= PIPELINE_EXTRAS
    assert public_methods(Flow) >= FLOW_EXTRAS
    assert set(op.__all__) >= OP_EXTRAS
    assert set(F.__all__) >= FUNCTIONAL_EXTRAS


def test_pipeline_and_functional_have_the_same_terminals() -> None:
    assert public_methods(Pipeline) & TERMINALS == TERMINALS
    assert set(F.__all__) & TERMINALS == TERMINALS


def signature_without_self(fn: typing.Callable[..., object]) -> list[tuple[str, object, object]]:
    parameters = list(inspect.signature(fn).parameters.values())
    if parameters and parameters[0].name == "self":
        parameters = parameters[1:]
    return [(p.name, p.kind, p.default) for p in parameters]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_options_are_the_same_in_every_front_end(name: str) -> None:
    expected = signature_without_self(getattr(Pipeline, name))
    assert signature_without_self(getattr(Flow, name)) == expected
    assert signature_without_self(getattr(op, name)) == expected
    assert signature_without_self(getattr(F, name)) == expected


def test_for_each_options_are_the_same_in_pipeline_and_functional() -> None:
    pipeline_options = signature_without_self(Pipeline.for_each)
    functional_options = signature_without_self(F.for_each)
    # F.for_each(fn, source, /, *, concurrency=1): the source comes after the function.
    assert [p for p in functional_options if p[0] != "source"] == pipeline_options


def public_callables() -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    classes: list[type] = []
    for module in PUBLIC_MODULES:
        for name in module.__all__:
            value = getattr(module, name)
            if isinstance(value, types.ModuleType):
                continue
            qualified = f"{module.__name__}.{name}"
            found.append((qualified, value))
            if isinstance(value, type):
                classes.append(value)
    # The classes the offloading helpers return are part of the API users touch.
    classes += [returned_class(fn) for fn in (in_thread, in_process, thread_local)]
    for cls in classes:
        found.append((f"{cls.__module__}.{cls.__qualname__}", cls))
        for method in sorted(public_methods(cls)):
            found.append((f"{cls.__module__}.{cls.__qualname__}.{method}", vars(cls)[method]))
    return found


def returned_class(fn: typing.Callable[..., object]) -> type:
    annotation = inspect.signature(fn, eval_str=True).return_annotation
    cls = typing.get_origin(annotation) or annotation
    assert isinstance(cls, type)
    return cls


def test_every_public_callable_has_a_docstring() -> None:
    undocumented = [
        name
        for name, value in public_callables()
        if not (getattr(value, "__doc__", None) or "").strip()
    ]
    assert undocumented == []


def test_py_typed_ships_in_the_package_directory() -> None:
    package_dir = Path(flowlet.__file__).parent
    assert (package_dir / "py.typed").is_file()


def project_version() -> str:
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    if sys.version_info >= (3, 11):
        import tomllib

        return str(tomllib.loads(text)["project"]["version"])
    # 3.10 has no tomllib: read the one line of the [project] table.
    project_table = text.split("[project]", 1)[1].split("\n[", 1)[0]
    match = re.search(r'^version\s*=\s*"([^"]+)"\s*$', project_table, re.MULTILINE)
    assert match is not None, "no version in the [project] table of pyproject.toml"
    return match.group(1)


def test_version_matches_pyproject() -> None:
    assert flowlet.__version__ == project_version()


def test_version_matches_installed_metadata() -> None:
    assert importlib.metadata.version("flowlet") == flowlet.__version__
