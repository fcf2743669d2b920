"""Resolving ``"module:callable"`` targets, and the checks that need the disk.

Separate from ``spec`` because importing runs user code; the errors name the
companion and the exact fault, as the boot prints them.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from collections.abc import Callable

from .spec import INHERIT, MERGE_WITH_STDOUT, CompanionSpec, ConfigError


def resolve_target(target: str) -> Callable[[], object]:
    """Import ``module:attr.path`` and return the callable; ValueError says why not."""
    module_name, _, attr_path = target.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except BaseException as exc:  # a module may raise anything, even SystemExit
        raise ValueError(
            f"module {module_name!r} could not be imported: {type(exc).__name__}: {exc}"
        ) from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise ValueError(f"{target!r} is not callable (it is a {type(obj).__name__})")
    return obj


def output_path(spec: CompanionSpec, value: str) -> str:
    """Relative output paths are taken from the companion's working directory."""
    return os.path.join(spec.cwd or os.getcwd(), value)


def check_environment(spec: CompanionSpec) -> list[str]:
    """Faults a companion would hit at every start: better to name them at boot."""
    problems = []
    if spec.cwd is not None and not os.path.isdir(spec.cwd):
        problems.append(f"companion {spec.name!r}: cwd {spec.cwd!r} is not a directory")
    for key in ("stdout", "stderr"):
        value = getattr(spec, key)
        if value in (INHERIT, MERGE_WITH_STDOUT):
            continue
        directory = os.path.dirname(output_path(spec, value)) or "."
        if not os.path.isdir(directory):
            problems.append(
                f"companion {spec.name!r}: {key} {value!r}: directory {directory!r} does not exist"
            )
    return problems


def find_program(spec: CompanionSpec) -> str | None:
    """The executable an exec companion runs: a path as given, else the first
    match on PATH (the companion's own, if its env sets one), else next to the
    Python running Gunicorn, so a virtualenv's programs (celery, rq) are found
    even when the virtualenv is not activated."""
    program = spec.command[0]
    if os.sep in program:
        path = program if os.path.isabs(program) else os.path.join(spec.cwd or os.getcwd(),
                                                                     program)
        return path if os.access(path, os.X_OK) and os.path.isfile(path) else None
    env_path = dict(spec.env).get("PATH", os.environ.get("PATH", os.defpath))
    return (shutil.which(program, path=env_path)
            or shutil.which(program, path=os.path.dirname(sys.executable)))


def resolve_all(specs: tuple[CompanionSpec, ...]) -> dict[str, Callable[[], object]]:
    """Every companion's callable by name; ConfigError lists every fault."""
    resolved: dict[str, Callable[[], object]] = {}
    problems: list[str] = []
    for spec in specs:
        problems += check_environment(spec)
        if spec.command:
            if find_program(spec) is None:
                problems.append(f"companion {spec.name!r}: command {spec.command[0]!r} is not "
                                "an executable file" + ("" if os.sep in spec.command[0]
                                                         else " found on PATH"))
            continue
        try:
            resolved[spec.name] = resolve_target(spec.target)
        except ValueError as exc:
            problems.append(f"companion {spec.name!r}: target {spec.target!r}: {exc}")
    if problems:
        raise ConfigError(problems)
    return resolved
