"""Boot: the companion manager built whole from plain values, in the freshly
forked child, and its boot result reported on the lifeline.

Each boot concern lives here once: resolving targets (the master after its
preload, the manager for the rest, a reread for what changed), preparing the
lock directory, and whether to gc.freeze before a fork.
"""

from __future__ import annotations

import gc
import os
import selectors
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from . import handshake, privileges, safefs, sdnotify
from .commands import dispatch
from .fleet import Fleet, KeeperLink
from .host import OsHost
from .loading import CompanionConfig, ConfigSources, load_companion_config
from .loop import ManagerLoop
from .server import ControlServer, ControlSocketError
from .spawn import become_subreaper, set_parent_death_signal, unblock_signals
from .spec import CompanionSpec, ConfigError
from .supervisor import Supervisor
from .targets import resolve_all


def gc_freeze_wanted(cfg) -> bool:
    """Only a preloaded app has objects worth keeping shared across forks."""
    return bool(cfg.preload_app and cfg.companion_gc_freeze)


def freeze_before_fork(wanted: bool) -> None:
    if wanted:
        # the objects made so far join the permanent generation: collections
        # in the child then leave their pages shared
        gc.freeze()


def resolve_targets(specs: tuple[CompanionSpec, ...],
                    known: dict[str, Callable] | None = None) -> dict[str, Callable]:
    """Each spec's callable by companion name: from ``known`` (keyed by the
    target string, resolved in the master after its preload) where it is
    there, else imported now. ConfigError lists every fault."""
    known = known or {}
    targets = {s.name: known[s.target] for s in specs if s.target in known}
    targets.update(resolve_all(tuple(s for s in specs if s.target not in known)))
    return targets


def default_lock_dir() -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    # A manager that dropped root still sees root's XDG_RUNTIME_DIR (sudo
    # sets one): only a runtime dir of its own user is its own.
    if runtime and _owned_by_us(runtime):
        return os.path.join(runtime, "gunicorn-companion")
    return os.path.join(tempfile.gettempdir(), f"gunicorn-companion-{os.geteuid()}")


def _owned_by_us(path: str) -> bool:
    try:
        return os.stat(path).st_uid == os.geteuid()
    except OSError:
        return False


def prepare_lock_dir(configured: str | None) -> str:
    """Create (or accept) the lock directory. In a shared /tmp another user
    may have made it first, to plant symlinks or hold our locks: it must be
    ours and private (safefs.private_dir_fault), or the boot stops."""
    path = configured or default_lock_dir()
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create companion_lock_dir {path!r}: {exc.strerror}") from None
    fault = safefs.private_dir_fault(path)
    if fault:
        raise ConfigError(f"companion_lock_dir {path!r} {fault}")
    if not os.access(path, os.W_OK):
        raise ConfigError(f"companion_lock_dir {path!r} is not writable")
    return path


@dataclass(frozen=True)
class BootValues:
    """Everything the manager is built from, taken from the master before the fork."""

    config: CompanionConfig
    sources: ConfigSources
    log: object
    cfg: object  # Gunicorn's Config: identity, lock dir, control socket settings
    master_pid: int
    lock_scope: str
    title: Callable[[str], None]
    known_targets: dict[str, Callable]  # by target string, resolved in the master
    take_over_socket: bool  # the new master of a hot upgrade takes the socket over
    # under systemd's Type=notify the manager writes its news on the lifeline
    # for the master to forward (sdnotify.py), and a keep-alive this often
    notify_systemd: bool = False
    systemd_keepalive: float | None = None


def _rearm_parent_death(master_pid: int) -> None:
    # PDEATHSIG, then re-check: the master may have died before prctl.
    # USR2 and not SIGKILL: the manager must live long enough to kill its
    # companions' own children, which no PDEATHSIG reaches.
    if set_parent_death_signal(signal.SIGUSR2) and os.getppid() != master_pid:
        os._exit(1)


def build(values: BootValues) -> ManagerLoop:
    """The manager, whole: host, supervisor and loop, signals installed.
    Raises ConfigError, ControlSocketError or PrivilegeError when it cannot
    boot; the caller reports that on the lifeline."""
    cfg, log, specs = values.cfg, values.log, values.config.specs
    # A session of our own holds the whole companion tree, so it can be
    # found and killed as one even after we are gone (see kill_leftovers);
    # as subreaper we inherit (and reap, and kill) orphaned descendants.
    os.setsid()
    become_subreaper()
    selector = selectors.DefaultSelector()
    host = OsHost(selector, log, title=values.title, master_pid=values.master_pid,
                  gc_freeze=gc_freeze_wanted(cfg))
    supervisor = Supervisor(
        values.config, {},
        host=host, log=log,
        load_config=lambda: load_companion_config(values.sources),
        resolve=resolve_targets,
        master_pid=values.master_pid,
        prepare_lock_dir=lambda: prepare_lock_dir(cfg.companion_lock_dir),
        lock_scope=values.lock_scope,
        memory_check_interval=cfg.companion_memory_check_interval,
    )
    loop = ManagerLoop(supervisor, selector)
    loop.install_signals()
    unblock_signals()
    _rearm_parent_death(values.master_pid)
    base = privileges.gunicorn_identity(cfg)
    if problems := privileges.faults(specs, base):
        raise ConfigError(problems)
    supervisor.use_identity(base)
    if not privileges.keeps_root(specs, base):
        # Before any user code runs here (the imports below, without
        # preload). Changing credentials cleared PDEATHSIG: set it again.
        if privileges.drop_to(base):
            _rearm_parent_death(values.master_pid)
    # Without preload nothing was resolved in the master; with it, a
    # companion added by a reload since the boot was not either.
    supervisor.targets = resolve_targets(specs, values.known_targets)
    if any(s.host_singleton for s in specs):
        supervisor.lock_dir = prepare_lock_dir(cfg.companion_lock_dir)
    if cfg.companion_control_socket:
        server = ControlServer(
            cfg.companion_control_socket,
            cfg.companion_control_socket_mode,
            selector=selector,
            handle=lambda request, respond: dispatch(supervisor, request, respond),
            log=log,
            # Gunicorn's user owns the socket, even when the manager kept root
            owner=supervisor.base_identity,
        )
        server.bind(take_over=values.take_over_socket)
        loop.attach_control(server)
        log.info("Companion control socket listening at %s", server.path)
    if values.config.lease_url:
        start_fleet(supervisor, selector, values.config)
    return loop


def start_fleet(supervisor: Supervisor, selector, config: CompanionConfig) -> None:
    """The keeper of fleet leases, forked last: it must keep none of the
    manager's fds (the control socket's included)."""
    host = supervisor.host
    link = KeeperLink(selector, host, config.lease_url, config.lease_ttl,
                      on_news=lambda line: None, on_gone=lambda: None)
    fleet = Fleet(config.lease_ttl, link, apply=supervisor.apply,
                  records=lambda: supervisor.records, now=host.now, log=supervisor.log)
    link.on_news, link.on_gone = fleet.news, fleet.keeper_gone
    try:
        link.start()
    except OSError as exc:
        raise ConfigError(f"cannot start the lease keeper: {exc}") from None
    supervisor.fleet = fleet


def run(values: BootValues, lifeline: int) -> int:
    """Build the manager, report on the lifeline, run until it is done."""
    try:
        loop = build(values)
    except (ConfigError, ControlSocketError, privileges.PrivilegeError) as exc:
        os.write(lifeline, handshake.error_line(str(exc)))
        os._exit(1)
    if values.notify_systemd:
        # never blocks the loop: a master that stopped reading loses news only
        os.set_blocking(lifeline, False)
        loop.news = sdnotify.ManagerNews(lifeline, values.systemd_keepalive)
    os.write(lifeline, handshake.READY)
    values.log.info("Companion manager running (pid: %s) with %d companions",
                    os.getpid(), len(loop.supervisor.records))
    return loop.run()
