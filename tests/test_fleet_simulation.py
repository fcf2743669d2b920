"""The fleet simulation (tests/fleet_simulation.py) holds its invariant, and
bites: deliberate faults in the rules of docs/fleet.md make it fail within a
few hundred seeds. Each mutation edits the source of fleet.py (the edit must
match exactly once) and runs the simulation against the mutated copy."""

from __future__ import annotations

import logging

import fleet_simulation
import pytest
from test_simulation import mutated

from gunicorn_companion import fleet

SEEDS = 150
SEEDS_TO_BITE = 400


@pytest.fixture(autouse=True)
def quiet():
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)


def test_never_two_instances_at_once():
    assert fleet_simulation.first_failure(SEEDS) is None


MUTATIONS = {
    # no lock-delay: a service that lost its data lets a new holder start
    # while the old one may still run
    "no lock-delay": ("start_at = t0 + delay\n", "start_at = t0\n"),
    # begin stopping only when the lease ends: the companion outlives it
    "stop at the lease's end": (
        "return lease.valid_until - lease_stop_budget(record.spec.stop_timeout)",
        "return lease.valid_until"),
    # release while the companion is still stopping
    "release before the exit": ("elif not wants and record.pid is None:", "elif not wants:"),
    # a past lock-delay left among the deadlines: the loop spins
    "a past deadline kept": (
        "if not lease.granted and lease.start_at is not None and lease.start_at > now:",
        "if not lease.granted and lease.start_at is not None:"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_the_fleet_simulation_catches(mutation, monkeypatch):
    old, new = MUTATIONS[mutation]
    monkeypatch.setattr(fleet_simulation, "Fleet", mutated(fleet, old, new).Fleet)
    assert fleet_simulation.first_failure(SEEDS_TO_BITE) is not None
