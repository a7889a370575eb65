"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, through Selenium),
served by a real `queuectl dashboard` process on a free port; /metrics read with prometheus-client's
parser. Without the browser these tests skip locally and fail under CI=true.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import urllib.error
import urllib.request

import pytest

from conftest import IN_CI, QUEUECTL, ROOT, wait_until

BOTH_BACKENDS = True
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCRIPT_JOB = "<script>alert(1)</script>"
SCREENSHOT = ROOT / "docs" / "dashboard.png"


def unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"the browser tests need it under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def browser(tmp_path):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed (pip install -e '.[test]')")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            unavailable(f"{path} is missing (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1100", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


class Dashboard:
    def __init__(self, instance):
        self.proc = subprocess.Popen([*QUEUECTL, "dashboard", "--port", "0"], cwd=instance.root, env=instance.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        line = self.proc.stderr.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+/)\?token=(\S+)", line)
        assert found, f"no URL announced: {line!r} {self.proc.poll()}"
        self.url, self.token = found.groups()

    def request(self, path: str, data: dict | None = None, headers: dict | None = None):
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.url.rstrip("/") + path, data=body, headers=headers or {},
                                     method="GET" if data is None else "POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)


@pytest.fixture
def dashboard(instance):
    server = Dashboard(instance)
    yield server
    server.stop()


def text_of(driver, css: str) -> str:
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e && e.textContent;", css)


def seed(instance) -> dict:
    """A completed job, two dead ones (one of them the <script> job), a pending one in a paused queue."""
    ids = {"ok": instance.enqueue("echo fine"), "dead": instance.enqueue("exit 3", max_retries=0),
           "script": instance.enqueue(SCRIPT_JOB, max_retries=0)}
    instance.run("queue", "pause", "later")
    ids["paused"] = instance.enqueue("echo later", queue="later")
    instance.run("worker", "start", "--count", "2", "--burst", timeout=120)
    return ids


def test_dashboard_in_chromium(instance, dashboard, browser, backend):
    ids = seed(instance)
    browser.get(dashboard.url + "?token=" + dashboard.token)
    wait_until(lambda: browser.execute_script("return document.body.dataset.loaded") == "1", 60,
               message="the overview to load its data")
    assert "token" not in browser.current_url          # the token went into a cookie

    # the counts on the page are those of `queuectl status --json`
    status = instance.json("status")["counts"]
    shown = {state: int(text_of(browser, f"#count-{state}")) for state in status}
    assert shown == status and shown["dead"] == 2 and shown["completed"] == 1
    if backend == "sqlite":
        browser.save_screenshot(str(SCREENSHOT))

    # the overview updates itself: a job enqueued now shows without a reload
    before = browser.execute_script("return performance.timeOrigin")
    instance.run("queue", "pause", "default")
    instance.enqueue("echo new")
    wait_until(lambda: text_of(browser, "#count-pending") == str(status["pending"] + 1), 30,
               message="the pending count to change on the page")
    assert browser.execute_script("return performance.timeOrigin") == before

    # the <script> job is text, in the list and on its own page, and nothing ran it
    browser.get(dashboard.url + "jobs?state=dead")
    commands = [td.text for td in browser.find_elements("css selector", "#jobs td.command")]
    assert SCRIPT_JOB in commands
    browser.get(dashboard.url + "jobs/" + ids["script"])
    wait_until(lambda: text_of(browser, '[data-field="state"]') == "dead", 30, message="the job page")
    assert text_of(browser, '[data-field="command"]') == SCRIPT_JOB
    assert browser.execute_script("return document.querySelectorAll('main script').length") == 0
    assert browser.execute_script("return typeof window.alert") == "function"   # never overwritten
    from selenium.common.exceptions import NoAlertPresentException
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text

    # a DLQ retry from the page moves the job to pending
    browser.get(dashboard.url + "dlq")
    browser.find_element("css selector", f'button[data-action="retry"][data-job="{ids["dead"]}"]').click()
    wait_until(lambda: "pending" in (text_of(browser, "#flash") or ""), 30, message="the retry to be confirmed")
    assert instance.job(ids["dead"])["state"] == "pending"
    assert instance.job(ids["script"])["state"] == "dead"

    # the job page follows a running job without a reload
    started, release = instance.root / "started", instance.root / "release"
    live = instance.enqueue(f"echo early-output; touch {started}; while [ ! -e {release} ]; do sleep 0.05; done; "
                            f"echo finished-now", queue="live")
    instance.start_pool(1, "--queue", "live")
    wait_until(started.exists, 60, message="the job to start")
    browser.get(dashboard.url + "jobs/" + live)
    wait_until(lambda: text_of(browser, '[data-field="state"]') == "processing", 30, message="the running job")
    loaded = browser.execute_script("return performance.timeOrigin")
    # the running attempt's output as it grows (stored while it runs, read through Queue.logs)
    wait_until(lambda: "early-output" in (text_of(browser, "#attempts pre.out") or ""), 30,
               message="the running attempt's output on the page")
    assert text_of(browser, "#attempts h3") == "attempt 1: running"
    release.touch()
    wait_until(lambda: text_of(browser, '[data-field="state"]') == "completed", 60,
               message="the job page to show the job completed")
    assert "finished-now" in text_of(browser, "#attempts pre.out")
    assert browser.execute_script("return performance.timeOrigin") == loaded    # refreshed, not reloaded


def test_actions_need_the_token_and_the_same_origin(instance, dashboard, browser):
    ids = seed(instance)
    dead = {"job_id": ids["dead"]}
    json_type = {"Content-Type": "application/json"}
    cookie = {"Cookie": f"queuectl_token_{dashboard.url.rsplit(':', 1)[1].strip('/')}={dashboard.token}"}
    assert dashboard.request("/api/retry", dead, json_type)[0] == 403                 # no token at all
    assert dashboard.request("/api/retry", dead, {**json_type, **cookie})[0] == 403    # a cookie is not enough
    assert dashboard.request("/api/retry", dead, {**json_type, "X-Queuectl-Token": "wrong"})[0] == 403
    cross = {**json_type, **cookie, "X-Queuectl-Token": dashboard.token, "Origin": "http://evil.example"}
    assert dashboard.request("/api/retry", dead, cross)[0] == 403
    assert dashboard.request("/api/enqueue", {"command": "touch pwned"},
                             {**json_type, "X-Queuectl-Token": dashboard.token})[0] == 404   # no such action
    assert instance.job(ids["dead"])["state"] == "dead"
    code, body = dashboard.request("/jobs")
    assert code == 403 and dashboard.token not in body                                 # pages need it too
    assert dashboard.request("/jobs", headers=cookie)[0] == 200
    assert dashboard.request(f"/api/jobs/{ids['dead']}")[0] == 403

    # a browser without the token gets the refusal page, and cannot act from it
    browser.get(dashboard.url + "dlq")
    assert "needs its token" in text_of(browser, "#why")
    browser.set_script_timeout(30)
    status = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/api/retry', {method: 'POST', headers: {'Content-Type': 'application/json',"
        " 'X-Queuectl-Token': 'guess'}, body: JSON.stringify({job_id: arguments[0]})}).then(r => done(r.status));",
        ids["dead"])
    assert status == 403
    assert instance.job(ids["dead"])["state"] == "dead"

    # with the token, the same request from the page works
    assert dashboard.request("/api/retry", dead, {**json_type, "X-Queuectl-Token": dashboard.token})[0] == 200
    assert instance.job(ids["dead"])["state"] == "pending"


def test_metrics_parse_and_match_the_store(instance, dashboard):
    from prometheus_client.parser import text_string_to_metric_families

    seed(instance)
    code, text = dashboard.request("/metrics")                 # no token needed
    assert code == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    jobs = {(s.labels["queue"], s.labels["state"]): s.value for s in families["queuectl_jobs"].samples}
    status = instance.json("status")["counts"]
    for state, n in status.items():
        assert sum(v for (q, s), v in jobs.items() if s == state) == n
    assert jobs[("later", "pending")] == 1 and jobs[("default", "dead")] == 2
    stats = instance.json("stats")
    attempts = {s.name: s.value for s in families["queuectl_attempts"].samples}
    assert attempts["queuectl_attempts_total"] == stats["total_runs"] == 3
    failures = {s.name: s.value for s in families["queuectl_attempt_failures"].samples}
    assert failures["queuectl_attempt_failures_total"] == stats["failed_runs"] == 2
    histogram = {(s.name, s.labels.get("le")): s.value for s in families["queuectl_attempt_duration_seconds"].samples}
    assert histogram[("queuectl_attempt_duration_seconds_count", None)] == 3
    assert histogram[("queuectl_attempt_duration_seconds_bucket", "+Inf")] == 3
    ages = {s.labels["queue"]: s.value for s in families["queuectl_oldest_pending_age_seconds"].samples}
    assert set(ages) == {"later"} and ages["later"] >= 0
    assert "queuectl_workers" in families
    # `queuectl metrics` prints the same families once
    once = {f.name for f in text_string_to_metric_families(instance.run("metrics").stdout)}
    assert once == set(families)


def test_without_the_web_extra_it_says_how_to_install_it(instance, tmp_path):
    blocker = tmp_path / "no-web"
    (blocker / "starlette").mkdir(parents=True)
    (blocker / "starlette" / "__init__.py").write_text("raise ImportError('starlette is not installed')\n")
    (blocker / "prometheus_client").mkdir()
    (blocker / "prometheus_client" / "__init__.py").write_text("raise ImportError('nope')\n")
    for command in (["dashboard"], ["metrics"]):
        proc = instance.run(*command, check=False, env={"PYTHONPATH": str(blocker)})
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith("queuectl: error: ") and "pip install 'queuectl[web]'" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_a_port_in_use_is_one_error_line(instance):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        proc = instance.run("dashboard", "--port", taken.getsockname()[1], check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("queuectl: error: cannot listen on 127.0.0.1:")
    assert len(proc.stderr.strip().splitlines()) == 1
