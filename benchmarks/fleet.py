"""Fleet singletons: failover times, overlap and renewal traffic.

    .venv/bin/python benchmarks/fleet.py [--trials 30] [--backends postgresql,redis]
                                         [--traffic-seconds 60]

(`make bench-fleet`.) Three real Gunicorn masters on this machine stand in for
three hosts sharing one real lease service (Debian's PostgreSQL and
redis-server, started here), with one fleet singleton, TTL 3 s and
stop_timeout 0.5 s: the setup of tests/test_fleet.py, whose helpers this
reuses. For each backend:

- ``sigkill``: SIGKILL the holder's master; the failover is the time from the
  signal to the first 10 ms sample that shows the new instance live on
  another host. The companion manager outlives its master, stops the
  companion and releases the lease, so this is nearly a graceful handoff.
- ``sigkill-tree``: SIGKILL every process of the holder's tree at once
  (master, manager, keeper, companion), as a host that loses power: nobody
  releases, and the lease must run out first (TTL after the last renewal).
- ``sigterm``: SIGTERM the holder's master; a graceful stop releases the lease,
  so the handoff takes a waiter's next poll (at most a second).
- After each trial the host gets a fresh master and the fleet is whole again.
- ``overlap``: every 10 ms through all trials, the live instances across all
  hosts are counted; the figure is the number of samples with two or more
  (must be 0).
- ``traffic``: with the fleet settled, the bytes and requests (TCP data
  segments sent, one per statement or command) per host per minute on its
  keeper's connection to the service, read from the kernel (``ss -tni``);
  the holder renews every TTL/3, the waiters ask every second.

Writes benchmarks/results/fleet.md and fleet.json (generated, ignored by git)
and prints the table. Exits 0 when every measurement ran, 1 when one did
not, 2 when a backend's server or client is missing (it says which).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the tests' fleet, servers and helpers

RESULTS = HERE / "results"
FAULTS = ("sigkill", "sigkill-tree", "sigterm")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile, nearest-rank (no interpolation between trials)."""
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def connections(port: int) -> dict[int, dict[str, int]]:
    """Per pid, the summed counters of its TCP connections to 127.0.0.1:port."""
    out = subprocess.run(["ss", "-tnpiH", "dst", f"127.0.0.1:{port}"], capture_output=True,
                         text=True, check=True).stdout
    found: dict[int, dict[str, int]] = {}
    pid = None
    for line in out.splitlines():
        owner = re.search(r"pid=(\d+)", line)
        if owner:
            pid = int(owner.group(1))
            continue
        if pid is None:
            continue
        counters = found.setdefault(pid, {"sent": 0, "received": 0, "requests": 0})
        for key, name in (("sent", "bytes_sent"), ("received", "bytes_received"),
                          ("requests", "data_segs_out")):
            match = re.search(rf"\b{name}:(\d+)", line)
            if match:
                counters[key] += int(match.group(1))
        pid = None
    return found


def first_seen(run, pid: int, since: float) -> float:
    """When the sampler first saw ``pid`` live, at or after ``since`` (it may be
    a sample behind whoever found the instance first)."""
    from support import wait_until

    def seen():
        return next((at for at, pids in list(run.samples) if at >= since and pid in pids),
                    None)

    return wait_until(seen, 10, message=f"the sampler to see {pid}")


def restore_host(run, host: int) -> None:
    """A fresh master on ``host``, waiting behind the holder, as before the trial."""
    from support import status, wait_until
    from test_fleet import NAME

    server = run.servers[host]
    server.cleanup()
    server.start()
    sock = run.sockets[host]

    def waiting():
        try:
            return "(token" in (status(sock, timeout=5)[NAME].get("waiting") or "")
        except Exception:  # not up yet: its control socket answers soon
            return False

    wait_until(waiting, 60, interval=0.05, message=f"host {host} back, waiting")


def trial(run, fault: str, timeout: float) -> float:
    pid = run.one_instance(timeout=timeout)
    host = run.host_of(pid)
    server = run.servers[host]
    tree = server.tree() if fault == "sigkill-tree" else [server.pid]
    sent_at = time.monotonic()
    for member in tree:
        try:
            os.kill(member, signal.SIGTERM if fault == "sigterm" else signal.SIGKILL)
        except ProcessLookupError:
            pass  # a member that exited since the tree was read
    new = run.one_instance(other_than=pid, timeout=timeout)
    took = first_seen(run, new, sent_at) - sent_at
    restore_host(run, host)
    return took


def traffic(run, port: int, seconds: float) -> dict:
    """Bytes and requests per minute for the holder and for each waiter."""
    pid = run.one_instance(timeout=60)
    holder = run.host_of(pid)
    owners = {}
    for host, server in enumerate(run.servers):
        for member in server.tree():
            owners[member] = host
    before = connections(port)
    time.sleep(seconds)  # the measurement's window: the traffic is what it measures
    after = connections(port)
    per_host: dict[int, dict[str, float]] = {}
    for p, counters in after.items():
        if p not in owners:
            continue
        start = before.get(p, {"sent": 0, "received": 0, "requests": 0})
        host = per_host.setdefault(owners[p], {"sent": 0, "received": 0, "requests": 0})
        for key in host:
            host[key] += (counters[key] - start[key]) * 60 / seconds
    return {"holder": holder, "still_holder": run.instances() == (pid,),
            "per_host": {str(h): v for h, v in sorted(per_host.items())}}


def service_port(service) -> int:
    return service.server.port


def measure(backend: str, trials: int, traffic_seconds: float, root: Path) -> dict:
    from test_fleet import LEASE_SERVICES, TTL, FleetRun

    service = LEASE_SERVICES[backend](root / f"{backend}-data")
    (root / f"{backend}-data").mkdir(exist_ok=True)
    service.start()
    run = FleetRun(root / backend, service.url)
    (root / backend).mkdir(exist_ok=True)
    result: dict = {"backend": backend, "ttl": TTL, "failover": {}, "errors": []}
    try:
        run.start()
        timeout = 3 * TTL + 30
        for fault in FAULTS:
            times = []
            for i in range(trials):
                try:
                    times.append(trial(run, fault, timeout))
                except AssertionError as exc:
                    result["errors"].append(f"{fault} trial {i}: {str(exc)[:300]}")
                print(f"{backend} {fault} {len(times)}/{trials}", file=sys.stderr, end="\r")
            result["failover"][fault] = times
        result["traffic"] = traffic(run, service_port(service), traffic_seconds)
    finally:
        run.close()
        result["samples"] = len(run.samples)
        result["overlap_samples"] = sum(1 for _, pids in run.samples if len(pids) > 1)
        result["most_at_once"] = run.most_at_once()
        getattr(service, "close", service.stop)()
    return result


def report(results: list[dict], trials: int) -> str:
    lines = [
        "# Fleet singletons: failover and renewal traffic",
        "",
        f"Three Gunicorn masters on one machine, one fleet singleton, TTL "
        f"{results[0]['ttl']:g} s, stop_timeout 0.5 s; {trials} trials per fault "
        "(benchmarks/fleet.py).",
        "",
        "| backend | fault | trials | p50 (s) | p99 (s) | max (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        for fault, times in r["failover"].items():
            if times:
                lines.append(f"| {r['backend']} | {fault} | {len(times)} | "
                             f"{statistics.median(times):.2f} | {percentile(times, 99):.2f} | "
                             f"{max(times):.2f} |")
            else:
                lines.append(f"| {r['backend']} | {fault} | 0 | - | - | - |")
    lines += ["", "| backend | samples (10 ms) | samples with 2+ instances | most at once |",
              "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['backend']} | {r['samples']} | {r['overlap_samples']} | "
                     f"{r['most_at_once']} |")
    lines += ["", "Traffic on each host's connection to the service, per minute "
              "(requests: TCP data segments sent, one per statement or command):", "",
              "| backend | host | role | requests/min | bytes sent/min | bytes received/min |",
              "|---|---|---|---|---|---|"]
    for r in results:
        t = r.get("traffic")
        if not t:
            continue
        for host, v in t["per_host"].items():
            role = "holder" if int(host) == t["holder"] else "waiter"
            lines.append(f"| {r['backend']} | {host} | {role} | {v['requests']:.0f} | "
                         f"{v['sent']:.0f} | {v['received']:.0f} |")
    errors = [e for r in results for e in r["errors"]]
    if errors:
        lines += ["", "Trials that did not complete:", ""] + [f"- {e}" for e in errors]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--backends", default="postgresql,redis")
    parser.add_argument("--traffic-seconds", type=float, default=60.0)
    parser.add_argument("--ttl", type=float, default=None,
                        help="companion_lease_ttl (default: the tests', 3 s)")
    parser.add_argument("--name", default="fleet", help="results file name (no suffix)")
    args = parser.parse_args(argv)
    import pytest
    import test_fleet

    if args.ttl is not None:
        test_fleet.TTL = args.ttl  # FleetRun writes it into each host's config

    results = []
    with tempfile.TemporaryDirectory(prefix="gc-bench-fleet-") as tmp:
        for backend in args.backends.split(","):
            try:
                results.append(measure(backend, args.trials, args.traffic_seconds,
                                       Path(tmp)))
            except pytest.skip.Exception as exc:
                print(f"fleet benchmark: {backend}: {exc}", file=sys.stderr)
                return 2
    text = report(results, args.trials)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text(text)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=1))
    print(text)
    failed = any(r["errors"] or r["overlap_samples"] for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
