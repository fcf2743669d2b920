"""Gunicorn Applications that run companions, and ``gunicorn-companion serve``.

``BaseApplication.run()`` hard-codes ``Arbiter(self).run()``, so these classes
provide their own ``run()``: the same steps Gunicorn takes, with the
companion config checked first and ``CompanionArbiter`` in place of
``Arbiter``.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from gunicorn import debug, util
from gunicorn.app.base import BaseApplication
from gunicorn.app.wsgiapp import WSGIApplication
from gunicorn.config import Config, get_default_config_file

from . import settings
from .arbiter import CompanionArbiter, manager_stop_timeout
from .loading import CompanionConfig, ConfigSources, load_companion_config
from .spec import ConfigError
from .targets import resolve_all

SERVE_PROG = "gunicorn-companion serve"


def _fail(message: str) -> None:
    print(f"\nError: {message}\n", file=sys.stderr)
    sys.stderr.flush()
    sys.exit(1)


def format_effective_companions(specs, cfg=None) -> str:
    """--print-config's closing section: what each companion runs with once
    the defaults and derived values (reload_timeout) are filled in, and the
    manager's stop timeout with how it was derived."""
    lines = ["", "companions (effective values):"]
    if cfg is not None:
        timeout, how = manager_stop_timeout(cfg, specs)
        lines.append(f"  companion_manager_stop_timeout = {timeout:g} ({how})")
    for spec in specs:
        lines.append(
            f"  {spec.name:<20} stop_signal = {spec.stop_signal_name}, "
            f"stop_timeout = {spec.stop_timeout:g}, reload_timeout = {spec.reload_timeout:g}, "
            f"stop_as_group = {spec.stop_as_group}")
    if not specs:
        lines.append("  (none)")
    return "\n".join(lines)


class CompanionApplicationMixin:
    """What makes any Gunicorn Application run companions."""

    companion_config: CompanionConfig = CompanionConfig()

    def companion_sources(self) -> ConfigSources:
        """Embedded apps set the companion settings in code: read them from cfg."""
        inline = {name: self.cfg.settings[name].get() for name in settings.COMPANION_SETTINGS}
        return ConfigSources(inline=inline, known=tuple(settings.COMPANION_SETTINGS))

    def load_companions(self) -> None:
        """Read and validate the companion config; a fault stops the boot here,
        before anything is forked."""
        try:
            self.companion_config = load_companion_config(self.companion_sources())
        except ConfigError as exc:
            _fail(str(exc))

    def run_arbiter(self) -> None:
        try:
            CompanionArbiter(self).run()
        except ConfigError as exc:  # a target that does not resolve after the preload
            _fail(str(exc))
        except RuntimeError as exc:
            _fail(str(exc))


class CompanionApplication(CompanionApplicationMixin, BaseApplication):
    """Subclass this as you would ``gunicorn.app.base.BaseApplication``
    (implement ``load_config`` and ``load``) and set ``companion_workers``
    with ``self.cfg.set``; ``run()`` then starts Gunicorn with companions."""

    def run(self):
        self.load_companions()
        self.run_arbiter()


class _ServeArgumentParser(argparse.ArgumentParser):
    """Gunicorn's parser reads ``sys.argv[1:]``; ours skips ``serve`` as well.

    ``sys.argv`` itself keeps ``serve``: a USR2 re-exec runs
    ``sys.executable`` with ``sys.argv``, and that must start
    ``gunicorn-companion serve ...`` again.
    """

    def parse_known_args(self, args=None, namespace=None):
        if args is None:
            args = sys.argv[2:] if sys.argv[1:2] == ["serve"] else sys.argv[1:]
        return super().parse_known_args(args, namespace)


class ServeConfig(Config):
    def parser(self):
        # Built once per Config: load_config below needs it a second time, and
        # every SIGHUP builds a new Config before the new HTTP workers fork,
        # where building a parser of ~150 options was most of what companions
        # added to Gunicorn's reload. Its options have no defaults of their
        # own (Gunicorn's are None), so a parser built once parses like a new one.
        built = getattr(self, "_built_parser", None)
        if built is None:
            built = self._built_parser = self._build_parser()
        return built

    def _build_parser(self):
        parser = super().parser()
        parser.__class__ = _ServeArgumentParser
        # Show the companion settings in their own section of --help.
        group = parser.add_argument_group("Companions")
        for action in list(parser._actions):
            if action.dest in settings.COMPANION_SETTINGS:
                parser._optionals._group_actions.remove(action)
                group._group_actions.append(action)
        return parser


class CompanionWSGIApplication(CompanionApplicationMixin, WSGIApplication):
    """``gunicorn APP_MODULE`` with companions: ``gunicorn-companion serve``."""

    main_config_file: str | None = None
    cli_companion_values: dict = {}

    def load_default_config(self):
        self.cfg = ServeConfig(self.usage, prog=self.prog)

    def load_config(self):
        # Gunicorn reads -c relative to the directory it was started in, then
        # moves to --chdir: remember the former to find the file again.
        started_in = os.getcwd()
        super().load_config()
        # Remember where the companion settings came from, for rereads: the
        # config file, and the command line (which wins over it).
        parser = self.cfg.parser()
        args = parser.parse_args()
        env_args = parser.parse_args(self.cfg.get_cmd_args_from_env())
        location = args.config or env_args.config or get_default_config_file()
        if location and not location.startswith("python:"):
            location = location[len("file:"):] if location.startswith("file:") else location
            location = os.path.abspath(os.path.join(started_in, location))
        self.main_config_file = location
        given = {
            name for ns in (env_args, args) for name, value in vars(ns).items()
            if name in settings.COMPANION_SETTINGS and value is not None
        }
        self.cli_companion_values = {name: self.cfg.settings[name].get() for name in given}

    def companion_sources(self) -> ConfigSources:
        if self.main_config_file is None:
            return super().companion_sources()
        return ConfigSources(
            main_file=self.main_config_file,
            overrides=dict(self.cli_companion_values),
            known=tuple(settings.COMPANION_SETTINGS),
        )

    def run(self):
        # The steps of gunicorn.app.base.Application.run, with companions.
        if self.cfg.print_config:
            print(self.cfg)
        if self.cfg.print_config or self.cfg.check_config:
            self.load_companions()
            if self.cfg.print_config:
                print(format_effective_companions(self.companion_config.specs, self.cfg))
            try:
                self.load()
                self._set_pythonpath()
                resolve_all(self.companion_config.specs)
            except ConfigError as exc:
                _fail(str(exc))
            except Exception:
                print("\nError while loading the application:\n", file=sys.stderr)
                traceback.print_exc()
                sys.stderr.flush()
                sys.exit(1)
            sys.exit(0)
        self.load_companions()
        if self.cfg.spew:
            debug.spew()
        if self.cfg.daemon:
            if os.environ.get("NOTIFY_SOCKET"):
                print("Warning: you shouldn't specify `daemon = True` when launching by "
                      "systemd with `Type = notify`", file=sys.stderr, flush=True)
            util.daemonize(self.cfg.enable_stdio_inheritance)
        self._set_pythonpath()
        self.run_arbiter()

    def _set_pythonpath(self):
        if self.cfg.pythonpath:
            for path in self.cfg.pythonpath.split(","):
                path = os.path.abspath(path)
                if path not in sys.path:
                    sys.path.insert(0, path)


def serve(argv: list[str]) -> None:
    """``gunicorn-companion serve [gunicorn arguments]``."""
    # Keep `serve` in sys.argv so Gunicorn's USR2 re-exec runs this command again.
    if sys.argv[1:2] != ["serve"] or sys.argv[2:] != argv:
        sys.argv = [sys.argv[0], "serve", *argv]
    CompanionWSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]", prog=SERVE_PROG).run()
