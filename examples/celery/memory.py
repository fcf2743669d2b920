"""Print the memory of each companion's process tree: RSS, PSS and USS.

    python examples/celery/memory.py [-s SOCKET] [--json]

Asks the running companion manager for its companions (``gunicorn-companion
status --json`` on the control socket: ``-s``, else ``$GUNICORN_COMPANION_SOCKET``,
else the default of gunicorn.conf.py), then adds up, for each companion and
every process below it, the figures of ``/proc/PID/smaps_rollup``:

- RSS: resident memory, shared pages counted in full in every process;
- PSS: proportional set size, each shared page divided among its sharers
  (the PSS of all processes adds up to the memory really used);
- USS: unique set size (Private_Clean + Private_Dirty), what the process alone
  uses: the memory that would come back if it exited.

For comparison it also shows the companion manager and the Gunicorn master
(which holds the preloaded app that forked companions share), each on its own.
Linux only; reading another user's processes needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

FIELDS = ("rss", "pss", "uss")


def default_socket() -> str:
    """The control socket gunicorn.conf.py uses when $GUNICORN_COMPANION_SOCKET is unset."""
    return os.environ.get("GUNICORN_COMPANION_SOCKET") or os.path.join(
        tempfile.gettempdir(), f"celery-example-{os.getuid()}", "companions.sock"
    )


def control_command() -> list[str]:
    """``gunicorn-companion``: beside this Python, else on PATH, else ``python -m``."""
    beside = os.path.join(os.path.dirname(sys.executable), "gunicorn-companion")
    if os.access(beside, os.X_OK):
        return [beside]
    found = shutil.which("gunicorn-companion")
    return [found] if found else [sys.executable, "-m", "gunicorn_companion"]


def companions(socket_path: str) -> list[dict]:
    """The manager's status entries (name, pid, state, ...)."""
    done = subprocess.run(
        [*control_command(), "-s", socket_path, "status", "--json"],
        capture_output=True, text=True, timeout=30,
    )
    if done.returncode != 0:
        raise SystemExit(f"memory.py: gunicorn-companion status failed: "
                         f"{(done.stderr or done.stdout).strip()}")
    return json.loads(done.stdout)["companions"]


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return int(data[data.rindex(")") + 2:].split()[1])


def tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = parent_of(int(entry))
            if parent is not None:
                parents[int(entry)] = parent
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def memory_kib(pid: int) -> dict[str, int]:
    """RSS, PSS and USS of one process in KiB (zeros if it is gone)."""
    values = dict.fromkeys(FIELDS, 0)
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if not parts or not parts[0].isdigit():
                    continue
                kib = int(parts[0])
                if key == "Rss":
                    values["rss"] = kib
                elif key == "Pss":
                    values["pss"] = kib
                elif key in ("Private_Clean", "Private_Dirty"):
                    values["uss"] += kib
    except OSError:
        pass
    return values


def measure(name: str, root: int) -> dict:
    pids = tree(root)
    totals = dict.fromkeys(FIELDS, 0)
    for pid in pids:
        for key, kib in memory_kib(pid).items():
            totals[key] += kib
    return {"name": name, "pids": pids, **{f"{key}_kib": value for key, value in totals.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-s", "--socket", default=None,
                        help="the manager's control socket (default: $GUNICORN_COMPANION_SOCKET, "
                             "else the example's default)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    rows = []
    manager = None
    for entry in companions(args.socket or default_socket()):
        pid = entry.get("pid")
        if not pid:
            continue  # not running
        rows.append(measure(entry["name"], pid))
        manager = manager or parent_of(pid)
    # For comparison, the manager and the master on their own (their other
    # children are the companions above and the HTTP workers).
    master = manager and parent_of(manager)
    for name, pid in (("(manager)", manager), ("(master)", master)):
        if pid:
            rows.append({"name": name, "pids": [pid],
                         **{f"{key}_kib": kib for key, kib in memory_kib(pid).items()}})

    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'PROCESS TREE':<16} {'PIDS':<16} {'RSS':>9} {'PSS':>9} {'USS':>9}")
    for row in rows:
        pids = ",".join(map(str, row["pids"]))
        sizes = " ".join(f"{row[f'{key}_kib'] / 1024:>8.1f}M" for key in FIELDS)
        print(f"{row['name']:<16} {pids:<16} {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
