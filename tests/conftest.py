import os

import pytest
from support import Server, short_socket_path


@pytest.fixture
def server(tmp_path):
    """Factory: ``server(config_text, app=..., args=...)`` -> a started Server.

    Every server is stopped and every process of its session killed at the end,
    whatever the test did.
    """
    started = []

    def make(config: str, **kwargs) -> Server:
        root = tmp_path / f"srv{len(started)}"
        root.mkdir()
        srv = Server(root, config, **kwargs)
        started.append(srv)
        return srv.start()

    yield make
    for srv in started:
        srv.cleanup()


@pytest.fixture
def sock_path():
    """A control socket path short enough for AF_UNIX, removed afterwards."""
    path = short_socket_path()
    yield path
    for leftover in path.parent.iterdir():
        leftover.unlink()
    os.rmdir(path.parent)
