"""The ``gunicorn-companion`` command.

``serve`` runs Gunicorn with companions; every other subcommand talks to a
running manager's control socket. Only ``serve`` imports Gunicorn: the control
commands must start fast.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        from .app import serve

        serve(argv[1:])
        return 0
    if argv[:1] == ["import-supervisor"]:
        from .supervisor_import import main as import_main

        return import_main(argv[1:])
    if argv[:1] == ["import-procfile"]:
        from .procfile_import import main as procfile_main

        return procfile_main(argv[1:])
    from .ctl import main as control_main

    return control_main(argv)


if __name__ == "__main__":
    sys.exit(main())
