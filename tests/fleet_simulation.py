"""Deterministic simulation of a fleet singleton across several hosts.

Each simulated host runs the real manager-side code (supervisor.py over the
real lifecycle, fleet.py's Fleet) and the real keeper (keeper.py's Keeper),
against a simulated lease service with Redis's semantics (the Lua scripts of
lease_redis.py, written again over a dict and a virtual clock). One seeded
random generator draws the faults: messages between manager and keeper
delayed, the service down or restarted empty, a keeper killed, a whole host
frozen (SIGSTOP, a VM pause) and thawed, a master stopped gracefully or
killed, companions slow to stop or deaf to their stop signal.

After every step the invariant of docs/fleet.md is checked: two instances
never run at once, except an instance of a host that was frozen while it
ran, which must hold a lower token than any instance started after it (the
fencing token is what guards its writes) and be gone within a kill's grace
of its host's thaw.

    python tests/fleet_simulation.py --seeds 500
    python tests/fleet_simulation.py --seed 17 -v
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import logging
import random
import signal
import sys
from collections import defaultdict

from gunicorn_companion.fleet import Fleet
from gunicorn_companion.keeper import Keeper
from gunicorn_companion.lease import Acquired, Busy, Holder, LeaseUnavailable
from gunicorn_companion.loading import CompanionConfig
from gunicorn_companion.spec import LEASE_KILL_GRACE, CompanionSpec
from gunicorn_companion.supervisor import Supervisor

TTL = 3.0
HOSTS = 3
DURATION = 120.0  # simulated seconds per seed
EPS = 1e-9


class Violation(AssertionError):
    """The invariant does not hold."""


class Service:
    """A Redis lease service: the lease key with a server-side expiry, and
    the token counter, which a restart without persistence loses."""

    def __init__(self, world: World):
        self.world = world
        self.up = True
        self.leases: dict[str, tuple[int, str, float]] = {}  # name -> token, owner, expires
        self.counters: dict[str, int] = {}
        self.epoch = 10**15  # the server's TIME in microseconds at t=0

    def _time_us(self) -> int:
        return self.epoch + int(self.world.now * 1e6)

    def _current(self, name):
        lease = self.leases.get(name)
        if lease is not None and lease[2] <= self.world.now:
            del self.leases[name]
            return None
        return lease

    def _check(self):
        if not self.up:
            raise LeaseUnavailable("simulated: service down")

    def try_acquire(self, name, owner, ttl):
        self._check()
        lease = self._current(name)
        if lease is not None:
            if lease[1] == owner:
                self.leases[name] = (lease[0], owner, self.world.now + ttl)
                return Acquired(lease[0], 0.0)
            return Busy(Holder(lease[1], lease[0]))
        last = self.counters.get(name)
        token = max(self._time_us(), (last or 0) + 1)
        self.counters[name] = token
        self.leases[name] = (token, owner, self.world.now + ttl)
        return Acquired(token, ttl if last is None else 0.0)

    def renew(self, name, token, ttl):
        self._check()
        lease = self._current(name)
        if lease is None or lease[0] != token:
            return False
        self.leases[name] = (token, lease[1], self.world.now + ttl)
        return True

    def release(self, name, token):
        self._check()
        lease = self._current(name)
        if lease is not None and lease[0] == token:
            del self.leases[name]

    def close(self):
        pass


class Pipe:
    """One direction of the keeper's socketpair: in order, each line late by
    a random delay (a busy keeper, a slow manager loop)."""

    def __init__(self, world: World, host: SimHost, deliver):
        self.world, self.host, self.deliver = world, host, deliver
        self.last = 0.0
        self.open = True

    def sendall(self, data: bytes) -> None:
        if not self.open:
            raise BrokenPipeError
        delay = self.world.rng.choice([0.0, 0.001, 0.01, 0.05, 0.2, 0.6])
        self.last = max(self.last, self.world.now + delay)
        for line in data.decode().splitlines():
            self.world.at(self.last, self.host, lambda line=line: self.open and self.deliver(line))


class SimLink:
    """The manager's KeeperLink over a simulated keeper."""

    def __init__(self, host: SimHost):
        self.host = host
        self.pid = None
        self.keeper = None
        self.to_keeper = None
        self.to_manager = None

    def start(self):
        world, host = self.host.world, self.host
        keeper = Keeper(None, "redis://sim", TTL, host.owner, clock=lambda: world.now)
        keeper.backend = world.service
        self.to_manager = Pipe(world, host, lambda line: host.fleet.news(line))
        keeper.sock = self.to_manager
        self.to_keeper = Pipe(world, host, self._to_keeper)
        self.keeper = keeper
        self.host.schedule_keeper()

    def _to_keeper(self, line):
        if self.keeper is not None:
            self.keeper.command(line)
            self.keeper.act()
            self.host.schedule_keeper()

    def send(self, *words):
        if self.to_keeper is not None:
            self.to_keeper.sendall((" ".join(str(w) for w in words) + "\n").encode())

    def kill_keeper(self):
        """SIGKILL of the keeper: the manager reads EOF a moment later."""
        if self.keeper is None:
            return
        self.keeper = None
        self.to_keeper.open = self.to_manager.open = False
        self.to_keeper = None
        self.host.world.at(self.host.world.now + 0.001, self.host, self.host.fleet.keeper_gone)

    def restart(self):
        self.kill_keeper_quietly()
        self.start()

    def kill_keeper_quietly(self):
        if self.keeper is not None:
            self.to_keeper.open = self.to_manager.open = False
        self.keeper = None

    def close(self, wait):
        self.kill_keeper_quietly()


class Instance:
    def __init__(self, host: SimHost, pid: int, token: int):
        self.host, self.pid, self.token = host, pid, token
        self.started = host.world.now
        self.exited_at: float | None = None
        self.frozen = False  # its host was frozen while it ran
        self.thawed_at: float | None = None


class Output:
    def __init__(self):
        self.dropped = defaultdict(int)
        self.owner_of = None


class SimHost:
    """One host: a manager (the real Supervisor and Fleet), its keeper and
    its companion's processes. It is also the manager's Host."""

    def __init__(self, world: World, index: int):
        self.world = world
        self.index = index
        self.owner = f"h{index}:{100 + index}"
        self.output = Output()
        self.frozen_until: float | None = None
        self.down = False
        self.procs: dict[int, Instance] = {}
        self.exits: list[tuple[int, int]] = []
        self.keeper_at: float | None = None
        self.boots = 0
        self.boot()

    def boot(self):
        spec = CompanionSpec(name="sched", target="m:f", singleton="fleet",
                             stop_timeout=self.world.rng.choice([0.1, 0.3, 0.5]), startsecs=0,
                             restart_delay=0.2)
        config = CompanionConfig(specs=(spec,), lease_url="redis://sim", lease_ttl=TTL)
        self.sup = Supervisor(config, {}, host=self, log=logging.getLogger("fleetsim"),
                              load_config=lambda: config, resolve=lambda specs: {})
        self.link = SimLink(self)
        self.fleet = Fleet(TTL, self.link, apply=self.sup.apply,
                           records=lambda: self.sup.records, now=self.now,
                           log=logging.getLogger("fleetsim"), owner=self.owner)
        self.sup.fleet = self.fleet
        self.link.start()
        self.down = False
        self.sup.start()

    # -- the Host protocol ---------------------------------------------------------------

    def now(self):
        return self.world.now

    def random(self):
        return self.world.rng.random()

    def spawn(self, spec, target, *, lock_path, identity, fencing_token=None):
        pid = next(self.world.pids)
        instance = Instance(self, pid, fencing_token)
        self.procs[pid] = instance
        self.world.started(instance)
        return pid

    def signal_process(self, pid, sig):
        instance = self.procs.get(pid)
        if instance is None or instance.exited_at is not None:
            return False
        rng = self.world.rng
        if sig == signal.SIGKILL:
            # the assumption of docs/fleet.md: gone within the kill grace
            self.world.at(self.world.now + rng.uniform(0, LEASE_KILL_GRACE * 0.9), self,
                          lambda: self._exit(instance, -signal.SIGKILL), frozen_delays=False)
        else:
            after = rng.choice([0.0, 0.05, 0.2, 2.0, None])  # None: deaf to it
            if after is not None:
                self.world.at(self.world.now + after, self, lambda: self._exit(instance, 0))
        return True

    def signal_group(self, pgid, sig):
        return self.signal_process(pgid, sig)

    def _exit(self, instance, code):
        if instance.exited_at is not None:
            return
        instance.exited_at = self.world.now
        self.exits.append((instance.pid, (-code) & 0x7F if code < 0 else code << 8))
        if not self.down:
            self.world.at(self.world.now, self, self.sup.reap)  # SIGCHLD

    def reap(self):
        while self.exits:
            pid, status = self.exits.pop(0)
            self.procs.pop(pid, None)
            yield pid, status

    def exited(self, pid):
        pass

    def group_members(self, pgid):
        return []

    def process_groups(self, pgids):
        return {}

    def children(self):
        return []

    def private_bytes(self, pid):
        return 0

    def master_gone(self):
        return False

    def follow(self, names, responder):
        pass

    def reopen_output(self):
        pass

    def kill_session(self):
        return True

    def close(self):
        pass

    # -- driving it ----------------------------------------------------------------------------

    def schedule_keeper(self):
        keeper = self.link.keeper
        due = keeper.due() if keeper is not None else None
        if due is not None and (self.keeper_at is None or due < self.keeper_at - EPS
                                or self.keeper_at < self.world.now):
            self.keeper_at = due
            self.world.at(max(due, self.world.now), self, self._keeper_turn)

    def _keeper_turn(self):
        self.keeper_at = None
        if self.link.keeper is not None:
            self.link.keeper.act()
        self.schedule_keeper()

    def manager_turn(self):
        """What the manager's loop does when its next deadline comes."""
        if not self.down:
            self.sup.fire_due()
        self.schedule_keeper()

    def live(self) -> list[Instance]:
        return [i for i in self.procs.values() if i.exited_at is None]

    def crash_manager(self):
        """The manager SIGKILLed: its companion gets PDEATHSIG (SIGKILL), its
        keeper too; the lease is not released. The master starts a new one."""
        self.down = True
        self.link.kill_keeper_quietly()
        for instance in self.live():
            self.world.at(self.world.now + self.world.rng.uniform(0, LEASE_KILL_GRACE * 0.9),
                          self, lambda i=instance: self._exit(i, -signal.SIGKILL),
                          frozen_delays=False)
        self.world.at(self.world.now + 1.0, self, self._reboot)

    def _reboot(self):
        if any(i.exited_at is None for i in self.procs.values()):
            self.world.at(self.world.now + 0.1, self, self._reboot)
            return
        self.procs.clear()
        self.exits.clear()
        self.boots += 1
        self.owner = f"h{self.index}:{1000 * self.boots + self.index}"  # a new manager pid
        self.boot()


class World:
    def __init__(self, seed: int, verbose: bool = False):
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0.0
        self.verbose = verbose
        self.queue: list = []
        self.seq = itertools.count()
        self.pids = itertools.count(1000)
        self.service = Service(self)
        self.instances: list[Instance] = []
        self.hosts = [SimHost(self, i) for i in range(HOSTS)]

    def at(self, when, host, what, frozen_delays=True):
        heapq.heappush(self.queue, (when, next(self.seq), host, what, frozen_delays))

    def started(self, instance: Instance):
        for other in self.instances:
            if other.exited_at is None and other.host is not instance.host:
                if not other.frozen:
                    raise Violation(f"seed {self.seed} t={self.now:.3f}: {instance.host.owner} "
                                    f"started an instance (token {instance.token}) while "
                                    f"{other.host.owner}'s (token {other.token}) runs")
                if other.token >= instance.token:
                    raise Violation(f"seed {self.seed} t={self.now:.3f}: token "
                                    f"{instance.token} not above the frozen holder's "
                                    f"{other.token}")
        self.instances.append(instance)
        self.log(f"{instance.host.owner} starts an instance, token {instance.token}")

    def log(self, text):
        if self.verbose:
            print(f"{self.now:8.3f} {text}")

    def check(self):
        for instance in self.instances:
            if (instance.exited_at is None and instance.thawed_at is not None
                    and self.now > instance.thawed_at + LEASE_KILL_GRACE + EPS):
                if any(o.token > instance.token for o in self.instances):
                    raise Violation(f"seed {self.seed} t={self.now:.3f}: the thawed instance "
                                    f"of {instance.host.owner} (token {instance.token}) still "
                                    "runs")
                # a pause shorter than its lease: it rightly runs on, and from
                # now on must never overlap again
                instance.frozen, instance.thawed_at = False, None

    # -- faults ------------------------------------------------------------------------------

    def draw_faults(self):
        rng = self.rng
        t = 1.0
        while t < DURATION - 20:
            t += rng.expovariate(1 / 6.0)
            fault = rng.choice(["service_down", "service_restart", "keeper", "freeze",
                                "crash", "stop_start", "nothing"])
            host = rng.choice(self.hosts)
            self.at(t, None, lambda f=fault, h=host: self.fault(f, h), frozen_delays=False)

    def fault(self, fault, host):
        rng = self.rng
        self.log(f"fault: {fault} {host.owner}")
        if fault == "service_down" and self.service.up:
            self.service.up = False
            self.at(self.now + rng.uniform(0.5, 3 * TTL), None, self._service_up,
                    frozen_delays=False)
        elif fault == "service_restart":
            self.service.leases.clear()
            self.service.counters.clear()
        elif fault == "keeper" and not host.down and host.frozen_until is None:
            host.link.kill_keeper()
        elif fault == "freeze" and host.frozen_until is None and not host.down:
            until = self.now + rng.choice([0.5, TTL / 2, TTL + 1, 3 * TTL])
            host.frozen_until = until
            for instance in host.live():
                instance.frozen, instance.thawed_at = True, None
            self.at(until, None, lambda: self._thaw(host), frozen_delays=False)
        elif fault == "crash" and not host.down and host.frozen_until is None:
            host.crash_manager()
        elif fault == "stop_start" and not host.down and host.frozen_until is None:
            host.sup.request("sched", "stop")
            self.at(self.now + rng.uniform(0.1, 2 * TTL), host,
                    lambda: host.down or host.sup.request("sched", "start"))

    def _service_up(self):
        self.service.up = True

    def _thaw(self, host):
        host.frozen_until = None
        for instance in host.live():
            if instance.frozen:
                instance.thawed_at = self.now
        # the manager's loop wakes: its overdue deadlines first
        host.manager_turn()

    # -- the loop ----------------------------------------------------------------------------

    def run(self):
        self.draw_faults()
        spins, last = 0, -1.0
        while True:
            nearest = self.queue[0][0] if self.queue else None
            host_due = None
            for host in self.hosts:
                if host.down or host.frozen_until is not None:
                    continue
                due = host.sup.next_deadline()
                if due is not None and (host_due is None or due < host_due[0]):
                    host_due = (due, host)
            if host_due is not None and (nearest is None or host_due[0] <= nearest):
                self.now = max(self.now, host_due[0])
                host_due[1].manager_turn()
            elif nearest is not None:
                when, _, host, what, frozen_delays = heapq.heappop(self.queue)
                if when > DURATION:
                    break
                self.now = max(self.now, when)
                if host is not None and host.frozen_until is not None and frozen_delays:
                    # a frozen host does nothing: its events wait for the thaw
                    self.at(host.frozen_until + EPS, host, what)
                    continue
                # (a crashed manager's events are dropped where they land:
                # closed pipes, a reap that checks ``down``)
                what()
            else:
                break
            if self.now > DURATION:
                break
            spins = spins + 1 if self.now == last else 0
            last = self.now
            if spins > 10000:
                raise Violation(f"seed {self.seed} t={self.now:.3f}: no progress: a deadline "
                                "that stays due (the manager's loop would spin)")
            self.check()
        # the fleet settles on one instance once the faults are over
        return self


def run_seed(seed: int, verbose: bool = False) -> None:
    World(seed, verbose).run()


def first_failure(seeds: int, start: int = 0):
    for seed in range(start, start + seeds):
        try:
            run_seed(seed)
        except Violation as exc:
            return seed, str(exc)
        except Exception as exc:  # a crash of the code under test is a failure too
            return seed, f"{type(exc).__name__}: {exc}"
    return None


def main(argv=None) -> int:
    logging.disable(logging.CRITICAL)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--seed", type=int)
    parser.add_argument("-v", action="store_true")
    args = parser.parse_args(argv)
    if args.seed is not None:
        run_seed(args.seed, args.v)
        print(f"seed {args.seed}: ok")
        return 0
    failure = first_failure(args.seeds)
    if failure:
        print(f"FAILED: {failure[1]}\nreplay: python tests/fleet_simulation.py --seed "
              f"{failure[0]} -v")
        return 1
    print(f"{args.seeds} seeds: never two instances at once")
    return 0


if __name__ == "__main__":
    sys.exit(main())
