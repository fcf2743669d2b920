"""Where companion settings come from, read the same way at boot and on reread.

The master reads them once at boot (errors stop the boot before any fork);
the manager reads them again for SIGHUP and ``reread`` (errors leave the
running configuration in place). Both go through ``load_companion_config``,
so a config that boots is exactly a config that rereads.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import runpy
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .spec import (
    DEFAULT_LEASE_TTL,
    DEFAULTABLE_KEYS,
    CompanionSpec,
    ConfigError,
    fleet_faults,
    parse_companions,
    suggest,
    validate_lease_ttl,
)

LEASE_SETTINGS = ("companion_lease_url", "companion_lease_ttl")
SPEC_SETTINGS = (("companion_workers",) + tuple(f"companion_{k}" for k in DEFAULTABLE_KEYS)
                 + LEASE_SETTINGS)


@dataclass(frozen=True)
class ConfigSources:
    """What to read: the main config file (None when the settings were given
    in code), values given in code, and values from the command line, which
    win over both files as they do in Gunicorn."""

    main_file: str | None = None
    inline: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    # every companion_* setting name Gunicorn knows, for typo suggestions
    known: tuple[str, ...] = SPEC_SETTINGS


@dataclass(frozen=True)
class CompanionConfig:
    specs: tuple[CompanionSpec, ...] = ()
    config_file: str | None = None  # the companion_config_file read, if any
    # where fleet singletons keep their leases (None: no fleet singleton)
    lease_url: str | None = None
    lease_ttl: float = DEFAULT_LEASE_TTL

    def by_name(self) -> dict[str, CompanionSpec]:
        return {s.name: s for s in self.specs}


def read_python_config(location: str) -> dict[str, Any]:
    """Execute a Gunicorn-style config (a path, ``file:PATH`` or ``python:MODULE``)."""
    try:
        if location.startswith("python:"):
            name = location[len("python:"):]
            # a reread must see an edited module, not the copy cached at boot
            module = sys.modules.get(name)
            module = importlib.reload(module) if module else importlib.import_module(name)
            return dict(vars(module))
        path = location[len("file:"):] if location.startswith("file:") else location
        if not os.path.exists(path):
            raise ConfigError(f"config file {path!r} does not exist")
        return runpy.run_path(path, run_name="__config__")
    except ConfigError:
        raise
    except SyntaxError as exc:
        raise ConfigError(
            f"cannot read config file {location!r}: SyntaxError: {exc.msg} (line {exc.lineno})"
        ) from None
    except BaseException as exc:  # a config file may even call sys.exit()
        raise ConfigError(
            f"cannot read config file {location!r}: {type(exc).__name__}: {exc}"
        ) from None


def companion_values(
    namespace: Mapping[str, Any], where: str, allowed: tuple[str, ...], known: tuple[str, ...]
) -> tuple[dict[str, Any], list[str]]:
    """The ``companion_*`` names of a config namespace; unknown ones are errors
    (Gunicorn itself ignores unknown names, which hides typos)."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, value in namespace.items():
        if not name.startswith("companion_"):
            continue
        if name in allowed:
            values[name] = value
        elif name in known:
            problems.append(f"{where}: {name} cannot be set here; set it in the main config")
        else:
            # compare what follows the shared prefix: the prefix alone would
            # make every name look close to every other
            prefix = len("companion_")
            hint = suggest(name[prefix:], [k[prefix:] for k in known])
            hint = hint.replace(" (did you mean '", " (did you mean 'companion_")
            problems.append(f"{where}: unknown setting {name!r}{hint}")
    return values, problems


def load_companion_config(sources: ConfigSources) -> CompanionConfig:
    """Read and validate the companion settings; raise ConfigError listing every fault."""
    if sources.main_file is not None:
        namespace = read_python_config(sources.main_file)
        values, problems = companion_values(
            namespace, sources.main_file, sources.known, sources.known
        )
    else:
        values, problems = dict(sources.inline), []
    values.update(sources.overrides)
    config_file = values.get("companion_config_file")
    if config_file:
        namespace = read_python_config(config_file)
        file_values, file_problems = companion_values(
            namespace, config_file, SPEC_SETTINGS, sources.known
        )
        problems += file_problems
        # the companion file replaces the main config's companion settings;
        # the command line still wins over both
        values = {k: v for k, v in values.items() if k not in SPEC_SETTINGS}
        values.update(file_values)
        values.update({k: v for k, v in sources.overrides.items() if k in SPEC_SETTINGS})
    specs: tuple[CompanionSpec, ...] = ()
    try:
        specs = parse_companions(values.get("companion_workers"), values)
    except ConfigError as exc:
        problems += exc.problems
    lease_url, lease_ttl = _lease_values(values, problems)
    if not problems:
        problems += fleet_faults(specs, lease_url, lease_ttl, _importable)
    if not problems and lease_url:
        # a URL the client cannot parse would otherwise show only as a
        # service that cannot be reached, on every host, forever
        from .lease import url_fault
        fault = url_fault(lease_url)
        if fault:
            problems.append(fault)
    if problems:
        raise ConfigError(problems)
    return CompanionConfig(specs=specs, config_file=config_file or None,
                           lease_url=lease_url, lease_ttl=lease_ttl)


def _lease_values(values: Mapping[str, Any], problems: list[str]) -> tuple[str | None, float]:
    url = values.get("companion_lease_url") or None
    if url is not None and not isinstance(url, str):
        problems.append(f"companion_lease_url must be a URL string, got {url!r}")
        url = None
    ttl = values.get("companion_lease_ttl")
    try:
        ttl = DEFAULT_LEASE_TTL if ttl is None else validate_lease_ttl(ttl)
    except ValueError as exc:
        problems.append(f"companion_lease_ttl {exc}")
        ttl = DEFAULT_LEASE_TTL
    return url, ttl


def _importable(module: str) -> bool:
    """Whether a lease client library is installed (found, not imported: the
    master does not need it loaded, only the keeper does)."""
    return importlib.util.find_spec(module) is not None
