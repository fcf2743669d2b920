"""Targets and a WSGI app the integration tests run as companions.

Each target appends its pid to ``$COMPANION_STATE/<name>.starts`` when it
starts, so a test knows every process a companion ran as, in order.
"""

import itertools
import json
import os
import signal
import sys
import time

# A large preloaded structure: forked companions must share it, not copy it.
BIG = bytearray(int(os.environ.get("COMPAPP_BIG_MB", "0")) * 1024 * 1024) or None
if BIG is not None:
    BIG[:] = b"\x01" * len(BIG)  # touch every page in the master


def _state_dir():
    return os.environ["COMPANION_STATE"]


def _record_start():
    name = os.environ.get("GUNICORN_COMPANION_NAME", "unknown")
    with open(os.path.join(_state_dir(), f"{name}.starts"), "a") as f:
        f.write(f"{os.getpid()}\n")


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello from the web\n"]


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello from asgi\n"})


def sleeper():
    _record_start()
    while True:
        signal.pause()


def crasher():
    _record_start()
    time.sleep(float(os.environ.get("CRASH_AFTER", "0.2")))
    sys.exit(3)


def stubborn():
    """Ignores SIGTERM: only SIGKILL stops it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _record_start()
    while True:
        signal.pause()


def reporter():
    """Tells the test where it runs and what it sees, then prints to both streams."""
    _record_start()
    name = os.environ["GUNICORN_COMPANION_NAME"]
    info = {
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgid(0),
        "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
    }
    with open(os.path.join(_state_dir(), f"{name}.json"), "w") as f:
        json.dump(info, f)
    print(f"out from {name}", flush=True)
    print(f"err from {name}", file=sys.stderr, flush=True)
    while True:
        signal.pause()


def big_reader():
    """Stays idle without touching BIG, so its pages stay shared."""
    _record_start()
    while True:
        signal.pause()


not_callable = 42


def _note(filename, text):
    with open(os.path.join(_state_dir(), filename), "a") as f:
        f.write(f"{text}\n")


def forker():
    """Starts a child in its own process group (like an RQ work horse) and a
    child that escapes into a session of its own (like a daemon)."""
    import subprocess
    _record_start()
    name = os.environ["GUNICORN_COMPANION_NAME"]
    child = subprocess.Popen(["sleep", "1000"])
    escaped = subprocess.Popen(["sleep", "1001"], start_new_session=True)
    _note(f"{name}.children", f"{child.pid} {escaped.pid}")
    while True:
        signal.pause()


def instance():
    _record_start()
    _note(f"{os.environ['GUNICORN_COMPANION_NAME']}.instances",
          f"{os.getpid()} {os.environ['GUNICORN_COMPANION_INSTANCE']}")
    while True:
        signal.pause()


def ready_later():
    import gunicorn_companion
    _record_start()
    time.sleep(float(os.environ.get("READY_AFTER", "0.5")))
    gunicorn_companion.ready()
    while True:
        signal.pause()


def heartbeats_then_hangs():
    import gunicorn_companion
    _record_start()
    until = time.monotonic() + float(os.environ.get("HEARTBEAT_FOR", "1"))
    while time.monotonic() < until:
        gunicorn_companion.heartbeat()  # called in a tight loop on purpose
    while True:
        signal.pause()


def grower():
    """Writes (and so unshares) GROW_MB of memory, then idles."""
    _record_start()
    hog = bytearray(int(os.environ.get("GROW_MB", "64")) * 1024 * 1024)
    hog[::4096] = b"\x01" * len(hog[::4096])
    while True:
        signal.pause()


def burster():
    """Writes BURST_LINES numbered lines as fast as it can, to both streams."""
    _record_start()
    count = int(os.environ.get("BURST_LINES", "20000"))
    pad = "x" * 80
    out = sys.stdout
    for i in range(count):
        out.write(f"line {i:07d} {pad}\n")
        if i % 1000 == 0:
            print(f"err {i:07d}", file=sys.stderr)
    out.flush()
    sys.stderr.flush()
    _note(f"{os.environ['GUNICORN_COMPANION_NAME']}.done", os.getpid())
    while True:
        signal.pause()


def flooder():
    """Writes numbered lines to stdout as fast as the pipe takes them, forever."""
    _record_start()
    pad = "x" * 80
    out = sys.stdout.buffer
    i = 0
    while True:
        out.write(f"flood {i:09d} {pad}\n".encode())
        i += 1


def counter():
    """Prints a numbered line every COUNT_INTERVAL seconds (2 ms)."""
    _record_start()
    interval = float(os.environ.get("COUNT_INTERVAL", "0.002"))
    for i in itertools.count():
        print(f"count {i}", flush=True)
        time.sleep(interval)


def last_words():
    """Says hello and goodbye, then crashes; the goodbye must precede the next hello."""
    _record_start()
    print(f"hello {os.getpid()}", flush=True)
    time.sleep(0.05)
    print(f"bye {os.getpid()}", end="", flush=True)  # no newline: the manager adds it
    os._exit(3)


def talker():
    """Prints a numbered line every 50 ms."""
    _record_start()
    i = 0
    while True:
        print(f"talk {i}", flush=True)
        i += 1
        time.sleep(0.05)


def pool():
    """A process pool that owns its children, as Celery's prefork pool and
    RQ's WorkerPool do: on SIGTERM the parent tells each child to finish its
    work and waits for it. A child signalled directly notes it and dies, the
    way billiard's children do (the work in flight is lost)."""
    _record_start()
    name = os.environ["GUNICORN_COMPANION_NAME"]
    kids = []

    def stop(signum, frame):
        for _, write_end in kids:
            os.write(write_end, b"x")
        for pid, _ in kids:
            os.waitpid(pid, 0)
        _note(f"{name}.pool", f"{os.getpid()} parent done")
        os._exit(0)

    # SIGTERM held until every child is known (a stop may come as soon as
    # one says it works) and, in each child, until it has its own handler
    signal.signal(signal.SIGTERM, stop)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    for _ in range(int(os.environ.get("POOL_SIZE", "2"))):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(write_end)

            def killed(signum, frame):
                _note(f"{name}.pool", f"{os.getpid()} killed by signal {signum}")
                os._exit(1)

            signal.signal(signal.SIGTERM, killed)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            _note(f"{name}.pool", f"{os.getpid()} working")
            os.read(read_end, 1)  # "finish now", or EOF: the parent is gone
            time.sleep(float(os.environ.get("POOL_FINISH_SECONDS", "0.3")))
            _note(f"{name}.pool", f"{os.getpid()} finished its work")
            os._exit(0)
        os.close(read_end)
        kids.append((pid, write_end))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    while True:
        signal.pause()


def abandoner():
    """Leaves a child in its process group behind when it exits on its own;
    the child notes SIGTERM and exits, or ignores it with CHILD_IGNORES_TERM."""
    _record_start()
    name = os.environ["GUNICORN_COMPANION_NAME"]
    pid = os.fork()
    if pid == 0:
        def termed(signum, frame):
            _note(f"{name}.child", f"{os.getpid()} got SIGTERM")
            if not os.environ.get("CHILD_IGNORES_TERM"):
                os._exit(0)

        signal.signal(signal.SIGTERM, termed)
        _note(f"{name}.child", f"{os.getpid()} started")
        while True:
            signal.pause()
    # exit once the child has said it started, so the test knows its pid
    path = os.path.join(_state_dir(), f"{name}.child")
    while not (os.path.exists(path) and f"{pid} started" in open(path).read()):
        time.sleep(0.01)
    os._exit(5)


if os.environ.get("COMPAPP_MASTER_ATEXIT"):
    # registered at import, in the master (preload): never to run in a companion
    import atexit

    atexit.register(lambda: _note("master-atexit", os.getpid()))


def returns_after_cleanup():
    """Registers an exit handler and returns, as a program's main() would."""
    import atexit

    _record_start()
    name = os.environ["GUNICORN_COMPANION_NAME"]
    atexit.register(lambda: _note(f"{name}.atexit", os.getpid()))
    return 0


def _slow_child(path):
    time.sleep(0.3)
    with open(path, "a") as f:
        f.write(f"{os.getpid()} done\n")


def starts_process_and_returns():
    """Starts a non-daemon multiprocessing child and returns at once, as
    django-q's `qcluster` command does: exiting must join the child first."""
    import multiprocessing

    _record_start()
    name = os.environ["GUNICORN_COMPANION_NAME"]
    multiprocessing.Process(target=_slow_child,
                            args=(os.path.join(_state_dir(), f"{name}.mpchild"),)).start()


def whoami():
    """Records the identity it runs with (and whether it could get root back)."""
    import ctypes
    _record_start()
    name = os.environ["GUNICORN_COMPANION_NAME"]
    pdeathsig = ctypes.c_int(0)
    ctypes.CDLL(None).prctl(2, ctypes.byref(pdeathsig), 0, 0, 0)  # PR_GET_PDEATHSIG
    try:
        os.setuid(0)
        regained = True
    except PermissionError:
        regained = False
    info = {"resuid": os.getresuid(), "resgid": os.getresgid(), "groups": sorted(os.getgroups()),
            "pdeathsig": pdeathsig.value, "regained_root": regained}
    path = os.path.join(_state_dir(), f"{name}.identity.json")
    with open(f"{path}.tmp", "w") as f:
        json.dump(info, f)
    os.replace(f"{path}.tmp", path)  # whole when the test sees it
    print(f"hello from {name}", flush=True)
    while True:
        signal.pause()


def hands_off_to_a_program():
    """Replaces itself with another program, as Frappe's socket.io companion
    does with node; that program says ready() over the inherited channel."""
    _record_start()
    code = ("import os, signal\n"
            "os.write(int(os.environ['GUNICORN_COMPANION_NOTIFY_FD']),"
            " f'ready {os.getpid()}'.encode())\n"
            "while True: signal.pause()\n")
    os.execv(sys.executable, [sys.executable, "-c", code])


def forger():
    """Claims, over the notify channel, that another companion is ready."""
    import gunicorn_companion.notify as notify

    _record_start()
    victim_starts = os.path.join(_state_dir(), "victim.starts")
    while not os.path.exists(victim_starts) or not open(victim_starts).read().strip():
        time.sleep(0.01)
    victim = int(open(victim_starts).read().split()[0])
    fd = notify._channel()
    for _ in range(20):
        os.write(fd, f"ready {victim}".encode())
        time.sleep(0.05)
    _note("forger.done", os.getpid())
    while True:
        signal.pause()


def fleet_member():
    """A fleet singleton for tests/test_fleet.py: announces itself in the
    shared ``$FLEET_DIR`` (its pid, for the sampler that counts live
    instances across hosts; its fencing token, appended), then sleeps."""
    import gunicorn_companion
    fleet_dir = os.environ["FLEET_DIR"]
    token = gunicorn_companion.fencing_token()
    # the token first: whoever sees the instance can look its token up
    with open(os.path.join(fleet_dir, "tokens"), "a") as f:
        f.write(f"{os.getpid()} {token} {os.environ['FLEET_HOST']}\n")
    with open(os.path.join(fleet_dir, "instances", str(os.getpid())), "w") as f:
        f.write(f"{token}\n")
    _record_start()
    while True:
        signal.pause()
