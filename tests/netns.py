"""Network partitions between "hosts" on one machine, with network namespaces.

``Network(hosts=3)`` creates one namespace for the lease service and one per
host, each host joined to a bridge in the service's namespace by a veth pair.
Every address lives inside those namespaces (a private subnet on the bridge),
so nothing here touches the machine's own network, and several runs at once
do not collide (the namespace names carry our pid and a counter).

The faults, on one host's link:

- ``cut(i)``: ``ip link set down`` on the host's end. The host has no route to
  the service any more: new connections and sends fail at once.
- ``drop(i)``: an nftables rule in the host's namespace that silently drops
  every packet to and from the service. TCP retransmits into the void and a
  call hangs until its own timeout: the harder case for a lease.
- ``heal(i)``: undoes both.

``Netns.popen(argv)`` runs a program inside a namespace (``ip netns exec``);
``Netns.call(fn)`` runs a Python function in a thread that has entered the
namespace (setns(2) applies to the calling thread only), so that the test
process itself can reach the service, e.g. to wait until it answers. A socket
keeps the namespace it was created in, whichever thread uses it later.

``network()`` is a pytest fixture helper: it skips with the reason when
namespaces cannot be created here (not root, no ``ip``, a container without
CAP_SYS_ADMIN) and when ``nft`` is missing, and removes every namespace in
its finalizer, even when the test failed.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest

NFT_HINT = "apt-get install nftables"
CLONE_NEWNET = 0x40000000
SUBNET = "10.77.0"  # on a bridge inside our own namespace: nothing else sees it
SERVICE_ADDRESS = f"{SUBNET}.1"
_names = itertools.count()
T = TypeVar("T")


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Netns:
    """One network namespace, by name (under /run/netns)."""

    def __init__(self, name: str):
        self.name = name
        ip("netns", "add", name)
        ip("-n", name, "link", "set", "lo", "up")

    @property
    def prefix(self) -> tuple[str, ...]:
        """Prepend to an argv to run it in this namespace (it execs in place)."""
        return ("ip", "netns", "exec", self.name)

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen([*self.prefix, *argv], **kwargs)

    def run(self, argv: list[str]) -> None:
        done = subprocess.run([*self.prefix, *argv], capture_output=True, text=True,
                              timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"in {self.name}: {' '.join(argv)}: {done.stderr.strip()}")

    def call(self, fn: Callable[[], T]) -> T:
        """fn() in a thread that entered this namespace; its result or exception."""
        outcome: list = []

        def inside():
            try:
                fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
                try:
                    if _libc().setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns into {self.name}")
                finally:
                    os.close(fd)
                outcome.append((True, fn()))
            except BaseException as exc:  # handed to the caller, raised there
                outcome.append((False, exc))

        thread = threading.Thread(target=inside, name=f"netns {self.name}")
        thread.start()
        thread.join()
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


class Network:
    """A service namespace with a bridge, and ``hosts`` host namespaces on it."""

    def __init__(self, hosts: int = 3):
        tag = f"gc{os.getpid() % 100000}n{next(_names)}"
        self.namespaces: list[Netns] = []
        try:
            self.service = self._add(Netns(f"{tag}-svc"))
            ip("-n", self.service.name, "link", "add", "br0", "type", "bridge")
            ip("-n", self.service.name, "addr", "add", f"{SERVICE_ADDRESS}/24", "dev", "br0")
            ip("-n", self.service.name, "link", "set", "br0", "up")
            self.hosts: list[Netns] = []
            for i in range(hosts):
                host = self._add(Netns(f"{tag}-h{i}"))
                # the two ends are named in their own namespaces: no clash with
                # another run's links, which live in other namespaces
                ip("link", "add", f"{tag}h{i}", "netns", host.name, "type", "veth",
                   "peer", "name", f"{tag}s{i}", "netns", self.service.name)
                ip("-n", host.name, "link", "set", f"{tag}h{i}", "name", "eth0")
                ip("-n", self.service.name, "link", "set", f"{tag}s{i}", "name", f"port{i}")
                ip("-n", self.service.name, "link", "set", f"port{i}", "master", "br0", "up")
                ip("-n", host.name, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
                ip("-n", host.name, "link", "set", "eth0", "up")
                self.hosts.append(host)
        except BaseException:
            self.close()
            raise

    def _add(self, ns: Netns) -> Netns:
        self.namespaces.append(ns)
        return ns

    @staticmethod
    def address(i: int) -> str:
        return f"{SUBNET}.{10 + i}"

    def cut(self, i: int) -> None:
        """Take host ``i``'s link down: its calls fail fast (no route)."""
        ip("-n", self.hosts[i].name, "link", "set", "eth0", "down")

    def drop(self, i: int) -> None:
        """Silently drop every packet between host ``i`` and the service."""
        rules = (f"table inet partition {{\n"
                 f"  chain in {{ type filter hook input priority 0; policy accept;\n"
                 f"    ip saddr {SERVICE_ADDRESS} drop; }}\n"
                 f"  chain out {{ type filter hook output priority 0; policy accept;\n"
                 f"    ip daddr {SERVICE_ADDRESS} drop; }}\n"
                 f"}}\n")
        done = subprocess.run([*self.hosts[i].prefix, "nft", "-f", "-"], input=rules,
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"nft in {self.hosts[i].name}: {done.stderr.strip()}")

    def heal(self, i: int) -> None:
        """Undo cut() and drop() on host ``i``."""
        subprocess.run([*self.hosts[i].prefix, "nft", "delete", "table", "inet", "partition"],
                       capture_output=True, timeout=30)  # absent unless dropped
        ip("-n", self.hosts[i].name, "link", "set", "eth0", "up")

    def close(self) -> None:
        """Delete every namespace (their veths and bridge go with them)."""
        for ns in reversed(self.namespaces):
            ns.delete()
        self.namespaces.clear()


def unavailable_reason() -> str | None:
    """Why partitions cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "the ip command is missing (apt-get install iproute2)"
    if shutil.which("nft") is None:
        return f"nft is missing: install it ({NFT_HINT}) to run the partition tests"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    try:
        probe = Netns(f"gc{os.getpid() % 100000}probe{next(_names)}")
    except RuntimeError as exc:
        return f"ip netns is not permitted here: {exc}"
    probe.delete()
    return None


def network(request, hosts: int = 3) -> Network:
    """A Network for this test, deleted by a finalizer; skips when impossible."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    net = Network(hosts)
    request.addfinalizer(net.close)
    return net


__all__ = ["SERVICE_ADDRESS", "Netns", "Network", "network", "unavailable_reason"]
