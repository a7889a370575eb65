"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, through Selenium),
served by a real `queuectl dashboard` process on a free port; /metrics read with prometheus-client's
parser. Without the browser these tests skip locally and fail under CI=true.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import IN_CI, PG_URL, QUEUECTL, ROOT, pg_execute, wait_until

BOTH_BACKENDS = True
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCRIPT_JOB = "<script>alert(1)</script>"
SCREENSHOT = ROOT / "docs" / "dashboard.png"


def unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"the browser tests need it under CI: {reason}")
    pytest.skip(reason)


class Chromium:
    """One headless Chromium per test process (a start costs about a second of CPU), started again
    when it is gone: a worker run in this process (test_core) kills every child of the process it
    finds when an attempt ends, as a worker may (it starts nothing else), and chromedriver is one."""

    def __init__(self, folder):
        self.folder, self.driver = folder, None

    def get(self):
        if self.driver is not None and not self._alive():
            try:
                self.driver.quit()
            except Exception:
                pass
            self.driver = None
        if self.driver is None:
            self.driver = self._start()
        return self.driver

    def _alive(self) -> bool:
        process = self.driver.service.process
        if process is None or process.poll() is not None:
            return False
        try:
            self.driver.current_url
            return True
        except Exception:
            return False

    def _start(self):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=1280,1100", f"--user-data-dir={self.folder}"):
            options.add_argument(flag)
        return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)

    def quit(self):
        if self.driver is not None:
            self.driver.quit()


@pytest.fixture(scope="session")
def chromium(tmp_path_factory):
    try:
        import selenium  # noqa: F401
    except ImportError:
        unavailable("selenium is not installed (pip install -e '.[test]')")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            unavailable(f"{path} is missing (apt-get install chromium chromium-driver)")
    browsers = Chromium(tmp_path_factory.mktemp("chromium"))
    yield browsers
    browsers.quit()


@pytest.fixture
def browser(chromium):
    """The test process's Chromium, left as a new one: a blank page, no cookie, nothing cached."""
    from selenium.common.exceptions import NoAlertPresentException

    driver = chromium.get()
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    driver.get("about:blank")
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    driver.execute_cdp_cmd("Network.clearBrowserCache", {})
    yield driver
    try:
        driver.switch_to.alert.dismiss()             # an alert left open would block the next test's pages
    except NoAlertPresentException:
        pass
    driver.get("about:blank")                        # no page of this test's dashboard polls on


class Dashboard:
    def __init__(self, instance, *args, env: dict | None = None):
        self.proc = subprocess.Popen([*QUEUECTL, *args, "dashboard", "--port", "0"], cwd=instance.root,
                                     env={**instance.env, **(env or {})}, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        line = self.proc.stderr.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+/)\?token=(\S+)", line)
        assert found, f"no URL announced: {line!r} {self.proc.poll()}"
        self.url, self.token = found.groups()
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))
        self.cookie = {"Cookie": f"queuectl_token_{self.port}={self.token}"}
        self.proc.stderr.readline()              # the /metrics line

    def request(self, path: str, data: dict | bytes | None = None, headers: dict | None = None):
        """GET, or POST of ``data`` (a dict sent as JSON, or bytes sent as they are)."""
        body = None if data is None else data if isinstance(data, bytes) else json.dumps(data).encode()
        req = urllib.request.Request(self.url.rstrip("/") + path, data=body, headers=headers or {},
                                     method="GET" if data is None else "POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def act(self, action: str, data: dict):
        """An action as the dashboard's own script sends it."""
        return self.request(f"/api/{action}", data, {"Content-Type": "application/json",
                                                     "X-Queuectl-Token": self.token, **self.cookie})

    def login(self, browser, path: str = "") -> None:
        browser.get(self.url + path + "?token=" + self.token)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)


@pytest.fixture
def dashboard(instance):
    instance.checked_cli("init")             # the dashboard never creates a store (a typo in --db is an error)
    server = Dashboard(instance)
    yield server
    server.stop()


def text_of(driver, css: str) -> str:
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e && e.textContent;", css)


def seed(instance) -> dict:
    """A completed job, two dead ones (one of them the <script> job), a pending one in a paused queue."""
    ids = {"ok": instance.enqueue("echo fine"), "dead": instance.enqueue("exit 3", max_retries=0),
           "script": instance.enqueue(SCRIPT_JOB, max_retries=0)}
    instance.checked_cli("queue", "pause", "later")
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
    status = instance.cli_json("status")["counts"]
    shown = {state: int(text_of(browser, f"#count-{state}")) for state in status}
    assert shown == status and shown["dead"] == 2 and shown["completed"] == 1

    # the overview updates itself: a job enqueued now shows without a reload
    before = browser.execute_script("return performance.timeOrigin")
    instance.checked_cli("queue", "pause", "default")
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
    first_load = browser.execute_script("return performance.timeOrigin")
    browser.find_element("css selector", f'button[data-action="retry"][data-job="{ids["dead"]}"]').click()
    wait_until(lambda: "pending" in (text_of(browser, "#flash") or ""), 30, message="the retry to be confirmed")
    assert instance.job(ids["dead"])["state"] == "pending"
    assert instance.job(ids["script"])["state"] == "dead"
    # then the page loads itself again, without the retried job
    wait_until(lambda: browser.execute_script("return document.readyState === 'complete' && performance.timeOrigin")
               not in (False, first_load), 30, message="the DLQ page to load itself again after the retry")
    assert not browser.find_elements("css selector", f'button[data-job="{ids["dead"]}"]')
    # ... unless it is being left meanwhile: a reload fired while the next page loads would take the user
    # back here (this test, on a slow moment, ended on /dlq after browser.get of the overview). beforeunload
    # comes as a navigation begins; a timer of 1 s set after it fires after the page's 600 ms one would have,
    # so the page must still be this one.
    browser.find_element("css selector", f'button[data-action="retry"][data-job="{ids["script"]}"]').click()
    wait_until(lambda: "retry done" in (text_of(browser, "#flash") or "") and ids["script"] in text_of(browser, "#flash"),
               30, message="the second retry to be confirmed")
    kept = browser.execute_script("return performance.timeOrigin")
    browser.set_script_timeout(30)
    browser.execute_async_script("window.dispatchEvent(new Event('beforeunload')); "
                                 "setTimeout(arguments[arguments.length - 1], 1000);")
    assert browser.execute_script("return performance.timeOrigin") == kept
    assert instance.job(ids["script"])["state"] == "pending"
    browser.get(dashboard.url + "dlq")
    assert not browser.find_elements("css selector", f'button[data-job="{ids["script"]}"]')

    # the job page follows a running job without a reload
    started, release = instance.root / "started", instance.root / "release"
    live = instance.enqueue(f"echo early-output; touch {started}; while [ ! -e {release} ]; do sleep 0.05; done; "
                            f"echo finished-now", queue="live")
    instance.start_pool(1, "--queue", "live")
    wait_until(started.exists, 60, message="the job to start")
    if backend == "sqlite":          # the README's picture: with a worker and the job it runs
        browser.get(dashboard.url)
        wait_until(lambda: live in (text_of(browser, "#workers") or ""), 30, message="the worker on the overview")
        browser.save_screenshot(str(SCREENSHOT))
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
    seed(instance)
    code, text = dashboard.request("/metrics")                 # no token needed
    assert code == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    jobs = {(s.labels["queue"], s.labels["state"]): s.value for s in families["queuectl_jobs"].samples}
    status = instance.cli_json("status")["counts"]
    for state, n in status.items():
        assert sum(v for (q, s), v in jobs.items() if s == state) == n
    assert jobs[("later", "pending")] == 1 and jobs[("default", "dead")] == 2
    stats = instance.cli_json("stats")
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
    # the charts come from the store: a dashboard started after the runs shows them
    later = Dashboard(instance)
    try:
        data = json.loads(later.request("/api/overview", headers=later.cookie)[1])
    finally:
        later.stop()
    for series in (data["hour"], data["day"]):
        assert sum(p["runs"] for p in series) == 3 and sum(p["failed"] for p in series) == 2
    assert data["counts"] == status


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
    instance.run("init")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        proc = instance.run("dashboard", "--port", taken.getsockname()[1], check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("queuectl: error: cannot listen on 127.0.0.1:")
    assert len(proc.stderr.strip().splitlines()) == 1


# --- the class behind "the <script> job shows as text": every field a job, a worker or a schedule
# --- brings to a page, in the HTML, in attributes and in what the script redraws without a reload

PAYLOAD = """'"><img src=x onerror="document.title='xss'"><script>document.title='xss'</script>&amp;"""
GIVE_UP_WITH_PAYLOAD = f'''
from queuectl import hookimpl
from queuectl.models import RetryDecision

@hookimpl(tryfirst=True)
def queuectl_retry_decision(job, attempt, queue):
    return RetryDecision(False, reason={PAYLOAD!r})
'''


def injected(driver) -> list:
    """Elements or attributes that job text made (the page itself has none of them)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('img, iframe, object, embed, main script, [onerror], [onload]')]"
        ".map(e => e.outerHTML).concat(document.title.includes('xss') ? ['title changed'] : [])")


def test_job_text_from_every_field_renders_as_text(instance, browser):
    (instance.plugins / "give_up.py").write_text(GIVE_UP_WITH_PAYLOAD)
    dead = instance.enqueue(f"printf '%s' {json.dumps(PAYLOAD)}; printf '%s' {json.dumps(PAYLOAD)} >&2; "
                            f"exit 3 # {PAYLOAD}", labels={"team": PAYLOAD}, max_retries=0)
    instance.run("worker", "start", "--burst", timeout=120)
    instance.run("schedule", "add", "nightly", "--cron", "0 2 * * *", "--command", PAYLOAD)
    started, release = instance.root / "started", instance.root / "release"
    running = instance.enqueue(f"printf '%s' {json.dumps(PAYLOAD)}; touch {started}; "
                               f"while [ ! -e {release} ]; do sleep 0.05; done # {PAYLOAD}", queue="live")
    instance.start_pool(1, "--queue", "live", env={"QUEUECTL_HOST_ID": PAYLOAD})
    wait_until(started.exists, 60, message="the job to start")
    server = Dashboard(instance)
    try:
        server.login(browser)
        wait_until(lambda: browser.execute_script("return document.body.dataset.loaded") == "1", 60,
                   message="the overview's data (drawn by the script)")
        wait_until(lambda: PAYLOAD in (text_of(browser, "#workers") or ""), 30, message="the worker's host")
        assert running in text_of(browser, "#workers")               # with the job it runs
        assert injected(browser) == []
        families = {f.name: f for f in text_string_to_metric_families(server.request("/metrics")[1])}
        assert PAYLOAD in {s.labels["host"] for s in families["queuectl_workers"].samples}
        for path, where in [(f"jobs/{dead}", "#attempts"), (f"jobs/{running}", "#fields"),
                            (f"jobs/{running}", "#attempts"), (f"jobs/{running}", "#attempts-list"), ("jobs", "#jobs"),
                            ("jobs?q=" + urllib.parse.quote(PAYLOAD), "#jobs"), ("dlq", "#jobs"),
                            ("schedules", "#schedules")]:
            browser.get(server.url + path)
            wait_until(lambda: PAYLOAD in (text_of(browser, where) or ""), 30, message=f"the text on /{path}")
            if path.startswith("jobs/"):     # the script has redrawn the fields and attempts from JSON
                wait_until(lambda: browser.execute_script("return document.body.dataset.rendered"), 30,
                           message="the job page's own refresh")
            assert injected(browser) == [], path
        assert PAYLOAD in text_of(browser, "#schedules")
        # an attempt's output asked for on the page: from /api/jobs/ID/attempts/N, drawn by the script
        browser.get(server.url + f"jobs/{dead}")
        wait_until(lambda: browser.execute_script("return document.body.dataset.rendered"), 30, message="the page")
        browser.execute_script("document.getElementById('attempts').replaceChildren()")
        browser.find_element("css selector", 'a[data-show="1"]').click()
        wait_until(lambda: PAYLOAD in (text_of(browser, "#attempts pre.out") or ""), 30, message="attempt 1 shown")
        assert text_of(browser, '#attempts pre[data-stream="stderr"]') == PAYLOAD and injected(browser) == []
        assert browser.current_url.endswith(f"jobs/{dead}")                  # loaded in place, not navigated
    finally:
        release.touch()
        server.stop()
    job = instance.job(dead)
    assert job["labels"] == {"team": PAYLOAD} and PAYLOAD in job["last_error"]


# --- bad values from the address bar or a form: one clear 400, never a 500 or a traceback ---

BAD_REQUESTS = [
    ("/jobs?before=99999999999999999999999", "page cursor must be an integer from 1"),
    ("/jobs?before=9223372036854775808", "page cursor must be an integer from 1"),
    ("/jobs?before=0", "page cursor must be an integer from 1"),
    ("/jobs?before=-5", "page cursor must be an integer from 1"),
    ("/jobs?before=1e5", "page cursor must be an integer from 1"),
    ("/jobs?before=%EF%BC%91", "page cursor must be an integer from 1"),      # a fullwidth digit
    ("/jobs?before=" + "9" * 5000, "page cursor must be an integer from 1"),
    ("/dlq?before=abc", "page cursor must be an integer from 1"),
    ("/jobs?state=bogus", "unknown state 'bogus'"),
    ("/jobs?queue=%00", "queue name"),
    ("/jobs?queue=" + "q" * 100, "queue name"),
    ("/jobs?q=a%00b", "the text filter contains a NUL byte"),
    ("/jobs?q=" + "x" * 5000, "the text filter is 5000 bytes, more than 4095"),
    ("/jobs/a%00b", "a job id contains a NUL byte"),
]


def test_bad_filter_and_paging_values_are_a_clear_400(instance, dashboard):
    # Every bad value in turn against one running dashboard (a server start per value was most of the
    # cost); each is checked whole, and every miss is reported, not only the first.
    instance.enqueue("true")
    wrong = []
    for path, message in BAD_REQUESTS:
        code, body = dashboard.request(path, headers=dashboard.cookie)
        if code != 400 or message not in html.unescape(body) or "Traceback" in body:
            wrong.append(f"{path[:60]}: {code} {body[:300]!r}")
        elif dashboard.request("/jobs", headers=dashboard.cookie)[0] != 200:
            wrong.append(f"{path[:60]}: the dashboard stopped serving after it")
    assert not wrong, "\n".join(wrong)


BAD_DLQ_FILTERS = [
    ({"exit_code": "x"}, "exit_code must be an integer from 0 to 255"),
    ({"exit_code": 256}, "exit_code must be an integer from 0 to 255"),
    ({"exit_code": True}, "exit_code must be an integer"),
    ({"exit_code": None, "since": "yesterday"}, "--since expects a duration"),
    ({"exit_code": 3, "since": 5}, "needs 'since'"),
]


def test_dlq_retry_with_bad_filters_is_refused_and_retries_nothing(instance, dashboard):
    dead = instance.enqueue("exit 3", max_retries=0)
    instance.run("worker", "start", "--burst", timeout=120)
    wrong = []
    for body, message in BAD_DLQ_FILTERS:          # in turn, against one dashboard and one dead job
        code, text = dashboard.act("dlq-retry", body)
        if code != 400 or message not in json.loads(text).get("error", ""):
            wrong.append(f"{body}: {code} {text[:300]!r}")
        elif instance.job(dead)["state"] != "dead":
            wrong.append(f"{body}: refused, yet the dead job was retried")
    assert not wrong, "\n".join(wrong)


RAW_BAD_BODIES = [
    (b'{"job_id": "%s", "job_id": "other"}', "appears twice"),     # which one was meant?
    (b'{"job_id": "%s", "extra": NaN}', "NaN is not JSON"),
    (b'{"job_id": "%s"} trailing', "Extra data"),
    (b'{"job_id": "\xff%s"}', "expected a JSON object"),         # not UTF-8
    (b'\xef\xbb\xbf{"job_id": "%s"}', "BOM"),
    (b'["%s"]', "expected a JSON object"),
    (b"", "expected a JSON object"),
]


def test_action_bodies_are_read_as_strictly_as_the_clis_json(instance, dashboard):
    """An action's body is JSON read the one strict way queuectl reads JSON from outside: a key given
    twice, NaN, text after the object, bytes that are not UTF-8 are a 400 naming the problem, and the
    job is left as it was; the same body written plainly is done."""
    dead = instance.enqueue("exit 3", max_retries=0)
    instance.run("worker", "start", "--burst", timeout=120)
    headers = {"Content-Type": "application/json", "X-Queuectl-Token": dashboard.token, **dashboard.cookie}

    def post(body: bytes):
        return dashboard.request("/api/retry", body, headers)

    wrong = []
    for template, message in RAW_BAD_BODIES:
        body = template.replace(b"%s", dead.encode())
        code, text = post(body)
        if code != 400 or message not in json.loads(text).get("error", ""):
            wrong.append(f"{body!r}: {code} {text[:300]!r}")
        elif instance.job(dead)["state"] != "dead":
            wrong.append(f"{body!r}: refused, yet the dead job was retried")
    assert not wrong, "\n".join(wrong)
    assert post(b'{"job_id": "%s"}' % dead.encode())[0] == 200
    assert instance.job(dead)["state"] == "pending"


def test_a_store_error_is_a_clear_page_not_a_traceback(instance, dashboard):
    """A failure nobody planned for (here: the store's jobs table renamed under the dashboard by another
    tool) is one line on the dashboard's terminal and a page saying so, never a traceback."""
    instance.enqueue("true")
    assert dashboard.request("/jobs", headers=dashboard.cookie)[0] == 200
    if instance.config.get("pg-schema"):
        pg_execute(f'ALTER TABLE "{instance.config["pg-schema"]}".jobs RENAME TO jobs_away')
    else:
        import sqlite3
        with sqlite3.connect(instance.root / "queue.db") as conn:
            conn.execute("ALTER TABLE jobs RENAME TO jobs_away")
    for _ in range(3):
        code, body = dashboard.request("/jobs", headers=dashboard.cookie)
        assert code in (500, 503) and "Traceback" not in body
    dashboard.stop()
    err = dashboard.proc.stderr.read()
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("queuectl: error:")]) == 1, err


BUGGY_STORE = '''
from queuectl import hookimpl
from queuectl.builtin.postgres_store import PostgresStore
from queuectl.builtin.sqlite_store import SQLiteStore


def make(url, queue):
    real = url.split("+", 1)[1]
    base = PostgresStore if real.startswith("postgres") else SQLiteStore

    class Buggy(base):
        """The built-in store with a bug in one verb, as a third-party store could have."""

        def schedules(self):
            return [1 / 0]
    return Buggy(real, queue)


@hookimpl
def queuectl_register_storage(register):
    register("buggy", make, schemes=("buggy",))
'''


def test_an_unforeseen_error_is_a_500_page_and_one_line(instance):
    """An exception no one turned into a QueueError (here: a store plugin's bug in one verb) is a
    500 page naming its kind and one line, no traceback; the other pages still work."""
    from test_plugins import write_plugin

    instance.run("schedule", "add", "nightly", "--cron", "0 2 * * *", "--command", "true")
    write_plugin(instance, "buggy_store", BUGGY_STORE)
    real = instance.config["db"] if instance.config.get("pg-schema") else f"sqlite://{instance.root / 'queue.db'}"
    buggy = Dashboard(instance, "--db", f"buggy+{real}")
    try:
        for _ in range(2):
            code, body = buggy.request("/schedules", headers=buggy.cookie)
            assert code == 500 and "internal error (ZeroDivisionError)" in body and "Traceback" not in body
        assert buggy.request("/jobs", headers=buggy.cookie)[0] == 200
    finally:
        buggy.stop()
    err = buggy.proc.stderr.read()
    assert err.startswith("queuectl: error: GET /schedules failed: ZeroDivisionError: ") and "Traceback" not in err
    assert len(err.splitlines()) == 1, err


# --- where the requests come from -------------------------------------------------------------

def test_a_loopback_dashboard_answers_only_loopback_host_names(instance, dashboard):
    """DNS rebinding: a page at evil.example whose name now resolves to 127.0.0.1 sends Host: evil.example."""
    for path in ("/", "/metrics", "/api/overview", "/static/app.js", f"/?token={dashboard.token}"):
        code, body = dashboard.request(path, headers={**dashboard.cookie, "Host": f"evil.example:{dashboard.port}"})
        assert code == 403 and "answers only localhost names" in html.unescape(body), path
        assert dashboard.token not in body
    code, body = dashboard.act("pause", {"queue": "default"})
    assert code == 200
    for host in (f"localhost:{dashboard.port}", f"127.0.0.1:{dashboard.port}", f"[::1]:{dashboard.port}"):
        assert dashboard.request("/", headers={**dashboard.cookie, "Host": host})[0] == 200, host


def test_the_token_in_the_url_becomes_a_cookie_and_leaves_the_address(instance, dashboard):
    opener = urllib.request.build_opener(NoRedirect)
    for path, target in [("/", "/"), ("/jobs?state=dead", "/jobs?state=dead"), ("//evil.example/x", "/evil.example/x")]:
        sep = "&" if "?" in path else "?"
        with pytest.raises(urllib.error.HTTPError) as redirect:
            opener.open(dashboard.url.rstrip("/") + path + sep + "token=" + dashboard.token, timeout=30)
        assert redirect.value.code == 303
        assert redirect.value.headers["Location"] == target
        cookie = redirect.value.headers["Set-Cookie"]
        assert f"queuectl_token_{dashboard.port}={dashboard.token}" in cookie
        assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    code, body = dashboard.request("/?token=wrong")
    assert code == 403 and dashboard.token not in body


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_cross_origin_posts_are_refused(instance, dashboard):
    dead = instance.enqueue("exit 3", max_retries=0)
    instance.run("worker", "start", "--burst", timeout=120)
    headers = {"Content-Type": "application/json", "X-Queuectl-Token": dashboard.token, **dashboard.cookie}
    for origin in ("http://evil.example", f"http://127.0.0.1:{dashboard.port + 1}", "null"):
        code, body = dashboard.request("/api/retry", {"job_id": dead}, {**headers, "Origin": origin})
        assert code == 403 and "cross-site" in body
    form = {**headers, "Content-Type": "text/plain"}           # what a cross-site <form> can send
    assert dashboard.request("/api/retry", {"job_id": dead}, form)[0] == 403
    assert instance.job(dead)["state"] == "dead"


def test_listening_beyond_loopback_warns(instance):
    """The warning, and no Host check (names the machine has are the user's to choose): the token guards it."""
    instance.run("init")
    proc = subprocess.Popen([*QUEUECTL, "dashboard", "--host", "0.0.0.0", "--port", "0"], cwd=instance.root,
                            env=instance.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        first = proc.stderr.readline()
        assert first.startswith("queuectl: warning: the dashboard listens on 0.0.0.0, reachable from other machines")
        found = re.search(r"http://0\.0\.0\.0:(\d+)/\?token=(\S+)", proc.stderr.readline())
        port, token = found.groups()
        ask = urllib.request.Request(f"http://127.0.0.1:{port}/jobs", headers={
            "Host": f"queue-box.example:{port}", "Cookie": f"queuectl_token_{port}={token}"})
        wait_until(lambda: urllib.request.urlopen(ask, timeout=30).status == 200, 30, message="a page")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)   # uvicorn re-raises the signal once it has stopped
    assert "Traceback" not in proc.stderr.read()


# --- the store: missing, deleted under the dashboard, unreachable ------------------------------

def test_a_missing_store_is_one_line_and_no_new_store(instance, tmp_path):
    missing = tmp_path / "tyop.db"
    proc = instance.run("--db", missing, "dashboard", "--port", "0", check=False, timeout=60)
    assert proc.returncode == 1 and proc.stderr == f"queuectl: error: no store at {missing} (check --db; " \
                                                   f"'queuectl init' creates one)\n"
    assert not missing.exists()


@pytest.mark.only_backend("sqlite")          # a store file
def test_a_store_deleted_under_the_dashboard_stops_it_with_one_line(instance):
    instance.enqueue("true")
    server = Dashboard(instance)
    assert server.request("/api/overview", headers=server.cookie)[0] == 200
    (instance.root / "queue.db").rename(instance.root / "moved.db")
    code, body = wait_until(lambda: (lambda r: r if r[0] != 200 else None)(
        server.request("/api/overview", headers=server.cookie)), 30, message="the dashboard to notice")
    assert code == 503 and "was deleted while in use" in json.loads(body)["error"]
    assert server.proc.wait(timeout=30) == 1
    err = server.proc.stderr.read()
    assert err.startswith("queuectl: error: the store ") and len(err.splitlines()) == 1, err


@pytest.mark.only_backend("postgres")
def test_postgres_going_away_is_a_clear_page_and_one_line(instance, browser):
    """The dashboard reaches PostgreSQL through a TCP relay that this test cuts and restores."""
    instance.enqueue("true")
    relay = Relay("127.0.0.1", 5432)
    url = PG_URL.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}")
    assert url != PG_URL
    server = Dashboard(instance, "--db", url)
    try:
        server.login(browser)
        wait_until(lambda: browser.execute_script("return document.body.dataset.loaded") == "1", 60,
                   message="the overview")
        relay.cut()
        code, body = server.request("/jobs", headers=server.cookie)
        assert code == 503 and "unavailable" in body and "Traceback" not in body
        wait_until(lambda: (text_of(browser, "#flash") or "").startswith("not updated: store "), 60,
                   message="the open overview to say it is not updated")
        relay.restore()
        wait_until(lambda: server.request("/jobs", headers=server.cookie)[0] == 200, 60, message="the store back")
        wait_until(lambda: text_of(browser, "#flash") == "", 60, message="the overview to recover")
    finally:
        server.stop()
        relay.close()
    err = [line for line in server.proc.stderr.read().splitlines() if "error" in line]
    assert "Traceback" not in "".join(err)
    assert 1 <= len(err) <= 3, err          # one line per outage (the relay's cut can show two ways), not per poll


class Relay:
    """A TCP relay to host:port on a port of its own; cut() drops every connection and refuses new ones
    (the server is gone, as far as a client can tell), restore() listens again on the same port."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.lock = threading.Lock()
        self.conns: list = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._accepting()

    def _accepting(self) -> None:
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)     # wakes the accept(): close() alone would not
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            conns, self.conns = self.conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def restore(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self._accepting()

    def close(self) -> None:
        self.cut()


def test_actions_from_the_pages(instance, dashboard, browser):
    """Each action through the page's own buttons and form, checked in the store: a DLQ retry of a
    filtered set (a typo in its exit code retries nothing), cancel of a pending and of a running job,
    pause and resume of a queue."""
    three = [instance.enqueue("exit 3", max_retries=0) for _ in range(2)]
    four = instance.enqueue("exit 4", max_retries=0)
    instance.run("worker", "start", "--burst", timeout=120)
    dashboard.login(browser, "dlq")

    def submit(exit_code: str) -> str:
        box = browser.find_element("css selector", "#dlq-retry input[name=exit_code]")
        box.clear()
        box.send_keys(exit_code)
        browser.execute_script("document.getElementById('flash').textContent = ''")
        browser.find_element("css selector", "#dlq-retry button[type=submit]").click()
        return wait_until(lambda: text_of(browser, "#flash"), 30, message="the form's answer")

    assert "retry refused: exit_code must be an integer from 0 to 255" in submit("3x")
    assert {instance.job(j)["state"] for j in [*three, four]} == {"dead"}
    loaded = browser.execute_script("return performance.timeOrigin")
    assert submit("3").startswith("2 dead job(s) moved to pending")
    assert [instance.job(j)["state"] for j in [*three, four]] == ["pending", "pending", "dead"]
    wait_until(lambda: browser.execute_script("return performance.timeOrigin") != loaded, 30,
               message="the DLQ page to reload")

    instance.checked_cli("cancel", *three)
    started, release = instance.root / "started", instance.root / "release"
    running = instance.enqueue(f"touch {started}; while [ ! -e {release} ]; do sleep 0.05; done", queue="live")
    waiting = instance.enqueue("echo never", queue="held")
    instance.checked_cli("queue", "pause", "held")
    instance.start_pool(1, "--queue", "live")
    wait_until(started.exists, 60, message="the job to start")
    for job_id, before in ((waiting, "pending"), (running, "processing")):
        browser.get(dashboard.url + "jobs/" + job_id)
        wait_until(lambda: text_of(browser, '[data-field="state"]') == before, 30, message=f"the {before} job")
        loaded = browser.execute_script("return performance.timeOrigin")
        browser.find_element("css selector", f'button[data-action="cancel"][data-job="{job_id}"]').click()
        wait_until(lambda: instance.job(job_id)["state"] == "cancelled", 30, message=f"the {before} job cancelled")
        # the page reloads itself after an action: let it, or it could cancel the next browser.get
        wait_until(lambda: browser.execute_script("return performance.timeOrigin") != loaded, 30,
                   message="the job page to reload")

    browser.get(dashboard.url)
    for action, paused in (("resume", False), ("pause", True)):
        # found and clicked in one step: the overview redraws its tables every 2 s
        wait_until(lambda: browser.execute_script(
            "const b = document.querySelector(arguments[0]); if (b) b.click(); return !!b;",
            f'button[data-action="{action}"][data-queue="held"]'), 30, message=f"the {action} button")
        wait_until(lambda: {q["name"]: q["paused"] for q in instance.cli_json("queue", "list")}.get("held") is paused,
                   30, message=f"the queue {action}d")


#: Tables whose size does not grow with the jobs: counters, the day's per-minute ring, queues, workers.
SMALL_TABLES = {"queue_counts", "run_series", "queues", "workers", "w"}


def test_the_overview_metrics_and_job_pages_never_scan_the_jobs(tmp_path):
    """What the issue's "no full scan at a million jobs" means, checked on the plan of every statement
    the overview, /metrics and the job pages run: SQLite seeks an index (SEARCH), or walks one (or
    the table in seq order) under a LIMIT without sorting, so it stops after the page."""
    from queuectl import Queue
    from queuectl.builtin.web.app import overview_data
    from queuectl.builtin.web.jobpage import attempt_output, job_data
    from queuectl.builtin.web.metrics import render

    (tmp_path / "config.yaml").write_text("db: queue.db\n")
    queue = Queue.open(config=str(tmp_path / "config.yaml"), env={})
    queue.enqueue_many([{"command": f"echo {i}", "queue": ("a", "b")[i % 2]} for i in range(50)])
    seen: list = []
    queue.store.conn.set_trace_callback(seen.append)
    render(queue)
    overview_data(queue)
    for filters in ({}, {"state": "pending"}, {"queue": "a"}, {"queue": "a", "state": "pending"}, {"before": 10}):
        queue.page(**filters)
    queue.store.conn.set_trace_callback(None)
    one = queue.list(limit=1)[0].id
    subprocess.run([*QUEUECTL, "worker", "start", "--burst"], cwd=tmp_path, env={**os.environ, "QUEUECTL_CONFIG":
                   str(tmp_path / "config.yaml")}, check=True, capture_output=True, timeout=300)
    queue.store.conn.set_trace_callback(seen.append)
    job_data(queue, one)                                   # the one-job page: its attempts and one's output
    job_data(queue, one, after=1, before=5)
    attempt_output(queue, one, 1)
    queue.store.conn.set_trace_callback(None)
    reads = [sql for sql in seen if sql.lstrip().upper().startswith("SELECT")]
    assert len([sql for sql in reads if " jobs" in sql]) >= 6
    assert len([sql for sql in reads if "length(stdout)" in sql]) == 2          # the attempts, without output
    for sql in reads:
        plan = [row[-1] for row in queue.store.conn.execute("EXPLAIN QUERY PLAN " + sql)]
        walks = [step for step in plan if step.startswith("SCAN ") and step.split()[1] not in SMALL_TABLES]
        sorts = any("TEMP B-TREE" in step for step in plan)
        assert not walks or (re.search(r"\bLIMIT \d+\s*$", sql) and not sorts), f"{sql}: {plan}"
        # a sort of the jobs an index found (all pending jobs of a queue, say) costs as much as a scan;
        # the workers' list sorts its own few rows
        assert not (sorts and re.search(r"FROM jobs\b", sql) and "FROM workers" not in sql), f"{sql}: {plan}"
    queue.close()


# --- the one-job page stays small: a job that ran many times and printed a lot each time ----------

def stored_output(instance, job_id: str, number: int) -> tuple[bytes, bytes]:
    from queuectl import Queue

    with Queue.open(config=str(instance.config_path), env={}) as queue:
        record = queue.attempts(job_id, number)[0]
    return record.stdout, record.stderr


def test_a_job_with_many_large_attempts_keeps_its_page_and_json_small(instance, dashboard, browser):
    """105 attempts of 350 KB stdout and 112 KB stderr each (48 MB in all): the page lists the newest
    ROWS attempts without output and shows one attempt's head and tail, so its HTML and JSON have a
    bound that does not grow with the attempts; an earlier attempt's output, asked for, is exact."""
    from queuectl.builtin.web.jobpage import HEAD, ROWS, TAIL

    attempts = ROWS + 5
    instance.write_config({**instance.config, "backoff-max": 0})        # retries at once
    counter = instance.root / "attempt"
    job = instance.enqueue(f"n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); echo $n > {counter}; "
                           f"seq -f \"a$n-out-%06g\" 1 25000; seq -f \"a$n-err-%06g\" 1 8000 >&2; exit 1",
                           max_retries=attempts - 1)
    instance.start_pool(1)
    instance.wait_for_state(job, "dead", timeout=600)
    out, err = stored_output(instance, job, 7)
    assert len(out) == 350_000 and len(err) == 112_000

    row = 1000                            # an attempt's row (ids, times, worker, sizes) is some 500 bytes
    shown = 2 * (HEAD + TAIL)             # one attempt's two streams, ASCII here
    code, page = dashboard.request(f"/jobs/{job}", headers=dashboard.cookie)
    assert code == 200 and len(page.encode()) < shown + ROWS * row + 16_384, len(page)
    assert page.count("<tr data-attempt=") == ROWS and f'href="?before={attempts - ROWS + 1}"' in page
    assert f"a{attempts}-out-000001" in page and f"a{attempts}-out-025000" in page     # the newest one's ends
    assert "a7-out-" not in page
    code, body = dashboard.request(f"/api/jobs/{job}", headers=dashboard.cookie)
    assert code == 200 and len(body) < ROWS * row + 8192, len(body)
    assert [a["attempt"] for a in json.loads(body)["attempts"]] == list(range(attempts - ROWS + 1, attempts + 1))
    code, body = dashboard.request(f"/api/jobs/{job}?after={attempts}", headers=dashboard.cookie)
    assert code == 200 and json.loads(body)["attempts"] == [] and len(body) < 8192
    code, body = dashboard.request(f"/api/jobs/{job}/attempts/7", headers=dashboard.cookie)
    assert code == 200 and len(body) < shown * 1.1 + 4096, len(body)     # newlines are two bytes in JSON
    code, chosen = dashboard.request(f"/jobs/{job}?attempt=7", headers=dashboard.cookie)    # without the script
    assert code == 200 and len(chosen.encode()) < shown + ROWS * row + 16_384
    assert "<h3>attempt 7: failed</h3>" in chosen and "a7-out-000001" in chosen and "a7-err-008000" in chosen
    code, older = dashboard.request(f"/jobs/{job}?before={attempts - ROWS + 1}", headers=dashboard.cookie)
    assert code == 200 and older.count("<tr data-attempt=") == attempts - ROWS and "a5-out-000001" in older

    # attempt 7 asked for on the page: its first HEAD and last TAIL bytes, exactly, and what lies between
    dashboard.login(browser, f"jobs/{job}")
    wait_until(lambda: browser.execute_script("return document.body.dataset.rendered"), 60, message="the page")
    assert browser.execute_script("return document.querySelectorAll('#attempts-list tbody tr').length") == ROWS
    browser.find_element("css selector", 'a[data-show="7"]').click()
    wait_until(lambda: text_of(browser, "#attempts h3") == "attempt 7: failed", 30, message="attempt 7 shown")
    for name, data in (("stdout", out), ("stderr", err)):
        pre = f'#attempts pre[data-stream="{name}"]'
        assert text_of(browser, pre + " .head") == data[:HEAD].decode()
        assert text_of(browser, pre + " .tail") == data[-TAIL:].decode()
        assert text_of(browser, pre + " .cut") == (f"[... {len(data) - HEAD - TAIL} bytes not shown: "
                                                   f"`queuectl logs {job} --attempt 7` prints it whole ...]")
    whole = instance.run("logs", job, "--attempt", "7", "--stdout").stdout
    assert out.decode() in whole                 # the command the marker names prints it whole


def output_on_page(browser) -> dict:
    """The running attempt's stdout as the page shows it, and as the script has counted it."""
    return browser.execute_script(
        "const pre = document.querySelector('#attempts pre[data-stream=\"stdout\"]');"
        "return {title: document.querySelector('#attempts h3').textContent,"
        " head: pre.querySelector('.head').textContent, cut: pre.querySelector('.cut').textContent,"
        " tail: pre.querySelector('.tail').textContent, end: (view.streams.stdout || {}).end,"
        " rendered: Number(document.body.dataset.rendered || 0)}")


def test_a_running_attempts_output_grows_without_gaps_or_repeats(instance, dashboard, browser):
    """A job prints 8,000 numbered lines at once (past what the page keeps), then a line every 10 ms:
    at each refresh the page holds exactly the start and the end of the sequence printed so far, with
    the right count between, and each refresh fetched only what was added."""
    from queuectl.builtin.web.jobpage import HEAD, TAIL

    release = instance.root / "release"
    job = instance.enqueue(f"seq -f 'line-%g' 1 8000; i=8000; while [ ! -e {release} ]; do i=$((i+1)); "
                           f"echo line-$i; sleep 0.01; done; echo done", max_retries=0)
    instance.start_pool(1)
    instance.wait_for_state(job, "processing")
    full = "".join(f"line-{i}\n" for i in range(1, 200_000))
    dashboard.login(browser, f"jobs/{job}")
    seen, last = [], 0
    while len(seen) < 5:                     # five refreshes of the running attempt, each checked
        shown = wait_until(lambda: (lambda o: o if o["rendered"] > last and o["end"] else None)(
            output_on_page(browser)), 60, message="the page's next refresh")
        last = shown["rendered"]
        if shown["title"] != "attempt 1: running":
            continue
        printed = full[:shown["end"]]        # ASCII: characters are bytes
        assert shown["head"] == printed[:len(shown["head"])] and len(shown["head"]) <= HEAD
        assert shown["tail"] == printed[len(printed) - len(shown["tail"]):] and len(shown["tail"]) <= TAIL
        dropped = shown["end"] - len(shown["head"]) - len(shown["tail"])
        assert shown["cut"].startswith(f"[... {dropped} bytes not shown: `queuectl logs {job} --attempt 1`")
        seen.append(shown["end"])
    assert seen == sorted(seen) and seen[-1] > seen[0] > 8000 * 9           # it grew, without a reload
    # each refresh fetched what was added since the one before, not the whole output again
    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.name.includes('/attempts/1?after='))"
        ".map(e => e.encodedBodySize)")
    assert len(fetched) >= 4 and sum(fetched) < (seen[-1] - seen[0]) + 512 * len(fetched) + TAIL, fetched
    release.touch()
    instance.wait_for_state(job, "completed")
    wait_until(lambda: text_of(browser, '[data-field="state"]') == "completed", 60, message="the job completed")
    out, _ = stored_output(instance, job, 1)
    assert text_of(browser, "#attempts h3") == "attempt 1: succeeded"
    assert text_of(browser, '#attempts pre[data-stream="stdout"] .head') == out[:HEAD].decode()
    assert text_of(browser, '#attempts pre[data-stream="stdout"] .tail') == out[-TAIL:].decode()
    assert out.endswith(b"done\n")


BAD_ATTEMPT_REQUESTS = [
    ("/attempts/0", 400, "attempt must be an integer from 1 to 9223372036854775807, got '0'"),
    ("/attempts/abc", 400, "attempt must be an integer from 1"),
    ("/attempts/%EF%BC%91", 400, "attempt must be an integer from 1"),          # a fullwidth digit
    ("/attempts/99999999999999999999999", 400, "attempt must be an integer from 1"),
    ("/attempts/2", 404, "has no attempt 2"),
    ("/attempts/1?after=x", 400, "the output cursor 'after' must be an integer from 0"),
    ("/attempts/1?stdout=-1", 400, "the stdout position must be an integer from 0"),
    ("?after=1.5", 400, "the attempts cursor 'after' must be an integer from 0"),
    ("?before=0", 400, "the attempts cursor 'before' must be an integer from 1"),
]


def test_bad_attempt_requests_are_a_clear_400_or_404(instance, dashboard):
    job = instance.enqueue("echo once", max_retries=0)
    instance.run("worker", "start", "--burst", timeout=120)
    wrong = []
    for path, status, message in BAD_ATTEMPT_REQUESTS:     # in turn, against one dashboard and one job
        code, body = dashboard.request(f"/api/jobs/{job}{path}", headers=dashboard.cookie)
        if code != status or message not in json.loads(body).get("error", ""):
            wrong.append(f"api {path}: {code} {body[:300]!r}")
        code, body = dashboard.request(f"/jobs/{job}?attempt=" + path.rsplit("/", 1)[-1], headers=dashboard.cookie)
        if path.startswith("/attempts/") and "?" not in path and (      # the page's ?attempt= says the same
                code != status or message not in html.unescape(body)):
            wrong.append(f"page ?attempt= of {path}: {code} {body[:300]!r}")
    assert not wrong, "\n".join(wrong)
    code, body = dashboard.request("/api/jobs/nosuchjob/attempts/1", headers=dashboard.cookie)
    assert code == 404 and "no job with id 'nosuchjob'" in json.loads(body)["error"]
    assert dashboard.request(f"/api/jobs/{job}/attempts/1")[0] == 403                  # a read needs the token
    assert dashboard.request(f"/api/jobs/{job}/attempts/1", headers={**dashboard.cookie,
                                                                     "Host": "evil.example"})[0] == 403
    assert dashboard.request(f"/api/jobs/{job}/attempts/1", headers=dashboard.cookie)[0] == 200
