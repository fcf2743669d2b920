"""The status page in a real headless Chromium (Debian's ``chromium``,
installed by .ci/run): it renders, shows every companion, and shows a
restart. The page's own script (polling /status.json) draws the table that
is checked: Chromium's virtual time runs its timer within the budget."""

import html
import re
import shutil
import subprocess

import pytest
from cdp import Browser, end_browser
from support import Control, control_config, free_port, wait_until

from gunicorn_companion import metrics

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium)")

COMPANIONS = """[
    {"name": "sleepy", "target": "compapp:sleeper", "startsecs": 0},
    {"name": "web.socket@io-1", "target": "compapp:sleeper", "startsecs": 0},
    {"name": "ticker", "target": "compapp:crasher", "startsecs": 0, "restart_delay": 0.5},
]"""


def render(url: str, profile) -> str:
    """The DOM once the page's scripts ran for a few (virtual) seconds."""
    # The network is closed here: without the background-networking flags
    # Chromium's own connections are refused many at a time, and slowly.
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
            "--virtual-time-budget=4000", "--dump-dom", url]
    browser = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = browser.communicate(timeout=120)
    finally:
        end_browser(browser)  # its helper processes too, before the profile goes
    assert browser.returncode == 0, err[-2000:]
    return out


def rows(dom: str) -> dict[str, list[str]]:
    """The table's cells by companion, as the browser shows them."""
    found = {}
    for name, body in re.findall(r'<tr data-companion="([^"]*)">(.*?)</tr>', dom, re.S):
        cells = re.findall(r"<td>(?:<span[^>]*>)?(.*?)(?:</span>)?</td>", body, re.S)
        found[html.unescape(name)] = [html.unescape(c) for c in cells]
    return found


def test_the_status_page_renders_every_companion_and_shows_a_restart(server, sock_path,
                                                                     tmp_path):
    port = free_port()
    srv = server(control_config(sock_path, COMPANIONS,
                                f'companion_metrics_bind = "127.0.0.1:{port}"'))
    srv.wait_starts("sleepy")
    srv.wait_starts("web.socket@io-1")
    srv.wait_log("Companion metrics at")
    url = f"http://127.0.0.1:{port}/"

    dom = render(url, tmp_path / "profile")
    refreshed = re.search(r'<tbody id="rows" data-refreshes="(\d+)"', dom)
    assert refreshed, "the page's script never refreshed the table:\n" + dom[-3000:]
    assert '<meta name="viewport"' in dom
    before = rows(dom)
    assert set(before) == {"sleepy", "web.socket@io-1", "ticker"}
    sleepy_pid = srv.starts("sleepy")[-1]
    assert before["sleepy"][:3] == ["sleepy", "RUNNING", str(sleepy_pid)]
    # rss / pss / uss, each a measured size, as the CLI writes one
    memory = before["sleepy"][5]
    assert re.fullmatch(r"(\d+(\.\d)?[KMG] / ){2}\d+(\.\d)?[KMG]", memory), before["sleepy"]

    reply = Control(sock_path).request({"cmd": "restart", "name": "sleepy"})
    assert reply["ok"], reply
    new_pid = srv.wait_starts("sleepy", 2)[-1]
    ticker_restarts = int(before["ticker"][4])
    srv.until(lambda: len(srv.starts("ticker")) > ticker_restarts + 2,
              message="ticker to restart")

    after = rows(render(url, tmp_path / "profile"))
    assert set(after) == set(before)
    assert after["sleepy"][:3] == ["sleepy", "RUNNING", str(new_pid)]
    assert int(after["ticker"][4]) > ticker_restarts
    assert after["ticker"][6] == "exit code 3"


def test_the_open_page_updates_itself_after_a_restart(server, sock_path):
    """A page left open (as on a phone) shows the new pid by itself: its
    script redraws the table, the page is never reloaded."""
    port = free_port()
    srv = server(control_config(sock_path, COMPANIONS,
                                f'companion_metrics_bind = "127.0.0.1:{port}"'))
    old_pid = srv.wait_starts("sleepy")[-1]
    srv.wait_log("Companion metrics at")
    browser = Browser(CHROMIUM, f"http://127.0.0.1:{port}/")
    try:
        def cell(name, column):
            return browser.evaluate(
                f"(function(){{var r=document.querySelector('tr[data-companion=\"{name}\"]');"
                f"return r ? r.children[{column}].textContent : null;}})()")

        wait_until(lambda: cell("sleepy", 2) == str(old_pid), message="the page to show sleepy")
        browser.evaluate("window.stillTheSamePage = true")
        reply = Control(sock_path).request({"cmd": "restart", "name": "sleepy"})
        assert reply["ok"], reply
        new_pid = srv.wait_starts("sleepy", 2)[-1]
        wait_until(lambda: cell("sleepy", 2) == str(new_pid),
                   timeout=metrics.REFRESH_SECONDS * 5,
                   message="the open page to show sleepy's new pid")
        assert cell("sleepy", 1) == "RUNNING"
        assert browser.evaluate("window.stillTheSamePage") is True  # redrawn, not reloaded
        assert int(browser.evaluate(
            "document.getElementById('rows').getAttribute('data-refreshes')")) >= 1
    finally:
        browser.close()
