"""The simulation must bite: deliberate faults in the supervision core make
it fail within a few hundred seeds, and a failure replays from its seed.

Each mutation edits the source text of a real module (the edit must match
exactly once, so a refactoring that moves the code fails here loudly) and
runs the simulation against the mutated copy; the installed modules are left
alone.
"""

from __future__ import annotations

import importlib
import inspect
import types

import pytest
import simulation

from gunicorn_companion import commands, handle, lifecycle, supervisor

SEEDS_TO_BITE = 300


def mutated(module: types.ModuleType, old: str, new: str, **names) -> types.ModuleType:
    """A copy of ``module`` with ``old`` replaced by ``new``; ``names`` are
    set before its code runs."""
    source = inspect.getsource(module)
    assert source.count(old) == 1, f"the mutation's text is not in {module.__name__} once: {old!r}"
    copy = types.ModuleType(module.__name__)
    copy.__dict__.update(names)
    copy.__package__ = module.__package__
    copy.__file__ = module.__file__
    exec(compile(source.replace(old, new), module.__file__, "exec"), copy.__dict__)
    return copy


def drop_sigkill_after_stop_timeout(monkeypatch):
    lc = mutated(lifecycle, "killed, actions = _kill_group(record)",
                 "killed, actions = record, []")
    # the supervisor over the mutated state machine: its events and records
    sup = mutated(supervisor, "from . import lifecycle as lc\n", "", lc=lc)
    monkeypatch.setattr(simulation, "Supervisor", sup.Supervisor)


def release_singleton_lock_too_early(monkeypatch):
    # a lock file of its own for each instance: the old instance's lock no
    # longer keeps the new one waiting
    sup = mutated(supervisor, 'f"{scope}-{spec.name}.lock"',
                  'f"{scope}-{spec.name}-{len(self.pids)}-{self.host.now()}.lock"')
    monkeypatch.setattr(simulation, "Supervisor", sup.Supervisor)


def answer_stop_before_the_process_is_gone(monkeypatch):
    cmds = mutated(commands, "        if record.state in QUIESCENT_STATES:\n"
                             "            how = f\" ({record.last_exit",
                   "        if record.state in QUIESCENT_STATES | {State.STOPPING}:\n"
                   "            how = f\" ({record.last_exit")
    monkeypatch.setattr(simulation, "commands", cmds)


def lose_an_exit(monkeypatch):
    # an exit reaped but never handed to the state machine (every 7th pid)
    sup = mutated(supervisor, "name = self.pids.pop(pid, None)",
                  "name = self.pids.pop(pid, None) if pid % 7 else None")
    monkeypatch.setattr(simulation, "Supervisor", sup.Supervisor)


def replace_the_manager_before_its_tree_is_gone(monkeypatch):
    # the master's handle skips DRAINING: a replacement forks once its
    # backoff passes, whether or not the lifeline said the old tree is gone
    mutant = mutated(handle, "return replace(handle, phase=Phase.DRAINING, pid=0,",
                     "return replace(handle, phase=Phase.IDLE, pid=0,")
    monkeypatch.setattr(simulation, "handle", mutant)


def skip_the_change_into_starting(monkeypatch):
    # the change held back until Spawned is never announced: the stream
    # jumps from BACKOFF (or STOPPED) straight to RUNNING
    sup = mutated(supervisor, "changes.append((previous, State.STARTING, exit_))", "pass")
    monkeypatch.setattr(simulation, "Supervisor", sup.Supervisor)


# each with what the simulation must say when it catches it
MUTATIONS = [
    (drop_sigkill_after_stop_timeout, ("passed without SIGKILL",)),
    (release_singleton_lock_too_early, ("runs twice",)),
    (answer_stop_before_the_process_is_gone, ("answered ok while",)),
    (lose_an_exit, ("which is no process of it", "is tracked but gone")),
    (replace_the_manager_before_its_tree_is_gone, ("forked while the old tree lives",)),
    (skip_the_change_into_starting, ("whose last event said", "but its last event said")),
]


def first_failure(seeds: int) -> tuple[int, str] | None:
    for seed in range(seeds):
        why = simulation.failure_of(seed)
        if why is not None:
            return seed, why
    return None


def test_the_unmutated_core_passes(pytestconfig):
    assert first_failure(pytestconfig.getoption("simulation_seeds")) is None


@pytest.mark.parametrize(("mutation", "says"), MUTATIONS, ids=[m.__name__ for m, _ in MUTATIONS])
def test_the_simulation_catches(mutation, says, monkeypatch):
    mutation(monkeypatch)
    found = first_failure(SEEDS_TO_BITE)
    assert found is not None, f"{mutation.__name__} survived {SEEDS_TO_BITE} seeds"
    assert any(phrase in found[1] for phrase in says), found


def test_a_failure_replays_from_its_seed_and_shrinks(monkeypatch):
    lose_an_exit(monkeypatch)
    seed, why = first_failure(SEEDS_TO_BITE)
    assert simulation.failure_of(seed) == why  # deterministic: the same fault again
    full = simulation.Simulation(seed).schedule
    keep = simulation.shrink(seed, full)
    assert len(keep) <= len(full)
    assert simulation.failure_of(seed, [full[j] for j in keep]) is not None


def test_main_prints_the_closing_line(capsys):
    assert simulation.main(["--seeds", "3"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "simulate: 3 seeds, 0 failures"


def test_main_fails_and_says_how_to_replay(monkeypatch, capsys):
    lose_an_exit(monkeypatch)
    seed, _ = first_failure(SEEDS_TO_BITE)
    assert simulation.main(["--seed", str(seed)]) == 1
    out = capsys.readouterr().out
    assert f"seed {seed} failed" in out
    assert f"replay: make simulate SEED={seed} KEEP=" in out
    assert out.splitlines()[-1] == "simulate: 1 seeds, 1 failures"


def test_the_mutations_leave_the_installed_modules_alone():
    assert importlib.import_module("gunicorn_companion.supervisor") is supervisor
    assert "pid % 7" not in inspect.getsource(supervisor)
