"""The dashboard: a Starlette application over one Queue, served by uvicorn.

Safety: every page and API needs the token (from ``?token=``, which sets an HttpOnly cookie, as
Jupyter does); an action also needs the token in the ``X-Queuectl-Token`` header (a cross-site
page can neither read it nor send custom headers without a preflight this server refuses), a
JSON body, and an Origin, when sent, equal to this server. /metrics needs no token (read-only).
A server on a loopback address answers only requests whose Host is a loopback name (DNS
rebinding: a page whose name was made to point at 127.0.0.1 sends its own Host). Job text
reaches the browser only through autoescaped templates and ``textContent``.
"""
from __future__ import annotations

import hmac
import ipaddress
import sys
from pathlib import Path
from typing import Optional
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from queuectl import models
from queuectl.builtin._rows import SCAN_BUDGET
from queuectl.builtin.dlq import dead_matching
from queuectl.builtin.schedule import schedule_rows
from queuectl.command import parse_since
from queuectl.errors import Conflict, NotFound, QueueError, StoreReplaced, UsageError
from queuectl.builtin.web.jobpage import HEAD, ROWS, TAIL, attempt_output, job_data, whole_number
from queuectl.builtin.web.metrics import render as render_metrics
from queuectl.output import STREAMS

HERE = Path(__file__).parent
PAGE_SIZE = 50
OPEN_PATHS = ("/metrics", "/static/")


def is_loopback(host: str) -> bool:
    """Is ``host`` (an address or a name, without port) this machine's loopback?"""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower().rstrip(".") == "localhost"


def host_name(header: str) -> str:
    """The name in a Host header: ``[::1]:8754`` -> ``::1``, ``localhost:8754`` -> ``localhost``."""
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def create_app(queue, token: str, local: bool = True, on_fatal=None) -> Starlette:
    """The application. ``local``: it listens on loopback, so only loopback Host names are answered;
    ``on_fatal(exc)``: called when the store was deleted or replaced (the server should stop)."""
    templates = Environment(loader=FileSystemLoader(str(HERE / "templates")),
                            autoescape=select_autoescape(default=True, default_for_string=True))
    templates.filters["iso"] = models.iso

    def allowed(request: Request) -> bool:
        given = request.cookies.get(cookie_name(request)) or request.headers.get("x-queuectl-token") or ""
        return hmac.compare_digest(given.encode(), token.encode())

    def page(name: str, request: Request, status: int = 200, trusted: bool = True, **context) -> HTMLResponse:
        """A rendered page; only one shown to a holder of the token carries it (for the script's actions)."""
        html = templates.get_template(name).render(token=token if trusted else "", path=request.url.path, **context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    async def guard(request: Request, call_next):
        response = await checked(request, call_next)
        for name, value in EVERY_RESPONSE.items():    # JSON, redirects and refusals too, not only pages
            response.headers.setdefault(name, value)
        return response

    async def checked(request: Request, call_next):
        if local and not is_loopback(host_name(request.headers.get("host", ""))):
            return refused(request, f"Host {models.shown(request.headers.get('host', ''))} refused: this "
                                    f"dashboard listens on loopback and answers only localhost names")
        problem = None if request.url.path.startswith(OPEN_PATHS) else entry_problem(request)
        if isinstance(problem, Response):
            return problem
        if problem:
            return refused(request, problem)
        try:
            response = await call_next(request)
        except Exception as exc:         # a bug, not a bad request: one line for the operator, no traceback
            log.say(f"{request.method} {request.url.path} failed: {type(exc).__name__}: {exc}")
            return refused(request, f"internal error ({type(exc).__name__}); the dashboard's terminal has "
                                    f"the details", status=500)
        if response.status_code < 500:
            log.forget()
        return response

    def entry_problem(request: Request):
        """Why a request to a guarded path is refused, a redirect that stores the token, or None."""
        given = request.query_params.get("token")
        if given is not None and request.method == "GET":
            if not hmac.compare_digest(given.encode(), token.encode()):
                return "wrong token"
            # the token leaves the address bar (and history) for the cookie; "//x" would be another host
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response = RedirectResponse("/" + request.url.path.lstrip("/") + ("?" + rest if rest else ""),
                                        status_code=303, headers={"Cache-Control": "no-store"})
            response.set_cookie(cookie_name(request), token, httponly=True, samesite="strict", path="/")
            return response
        if not allowed(request):
            return "this dashboard needs its token: open the URL printed by `queuectl dashboard`"
        if request.method != "GET":
            return action_problem(request, token)
        return None

    def refused(request: Request, why: str, status: int = 403) -> Response:
        if request.method == "GET" and not request.url.path.startswith(("/api/", "/metrics")):
            return page("refused.html", request, status=status, trusted=False, why=why,
                        heading=HEADINGS.get(status, "Refused"))
        return JSONResponse({"error": why}, status_code=status)

    # --- pages ------------------------------------------------------------------------------

    async def overview(request: Request):
        return page("overview.html", request, data=overview_data(queue, charts=False))   # the script draws them

    async def jobs(request: Request):
        state = request.query_params.get("state") or None
        name = request.query_params.get("queue") or None
        text = request.query_params.get("q") or None
        result = queue.page(state=state, queue=name, text=text, before=cursor(request), limit=PAGE_SIZE)
        filters = urlencode([(k, v) for k, v in (("state", state), ("queue", name), ("q", text)) if v])
        return page("jobs.html", request, jobs=result["jobs"], filters=filters, next=result["next"], state=state,
                    queue=name, text=text, total=filtered_total(queue, state, name, text), states=models.STATES,
                    queues=sorted(queue.queue_counts()), dlq=False, scanned=SCAN_BUDGET)

    async def dlq(request: Request):
        result = queue.page(state=models.DEAD, before=cursor(request), limit=PAGE_SIZE)
        return page("jobs.html", request, jobs=result["jobs"], filters="", next=result["next"], state=models.DEAD,
                    queue=None, text=None, total=queue.counts()[models.DEAD], states=models.STATES,
                    queues=[], dlq=True)

    async def job(request: Request):
        job_id, query = request.path_params["job_id"], request.query_params
        before = whole_number(query.get("before"), "the attempts cursor 'before'")
        data = job_data(queue, job_id, before=before)
        chosen = whole_number(query.get("attempt"), "attempt")
        shown = chosen or (data["attempts"][-1]["attempt"] if data["attempts"] else None)
        return page("job.html", request, **data, chosen=chosen, request_before=before, head=HEAD, tail=TAIL, rows=ROWS,
                    logs=f"queuectl logs {data['job']['id']}",
                    output=attempt_output(queue, job_id, shown) if shown else None)

    async def schedules(request: Request):
        return page("schedules.html", request, schedules=schedule_rows(queue))

    # --- JSON for the pages' refresh --------------------------------------------------------

    async def api_overview(request: Request):
        return JSONResponse(overview_data(queue))

    async def api_job(request: Request):
        query = request.query_params
        return JSONResponse(job_data(queue, request.path_params["job_id"],
                                     after=whole_number(query.get("after"), "the attempts cursor 'after'", 0) or 0,
                                     before=whole_number(query.get("before"), "the attempts cursor 'before'")))

    async def api_attempt(request: Request):
        """One attempt's output (clipped); running, with ``?after=CURSOR&stdout=BYTES&stderr=BYTES`` only
        what was stored since the page's last look."""
        query = request.query_params
        number = whole_number(request.path_params["number"], "attempt")
        ends = {name: whole_number(query.get(name), f"the {name} position", 0) or 0 for name in STREAMS}
        return JSONResponse(attempt_output(queue, request.path_params["job_id"], number,
                                           whole_number(query.get("after"), "the output cursor 'after'", 0), ends))

    # --- actions ----------------------------------------------------------------------------

    async def act(request: Request):
        # Read as every JSON text from outside is (models.strict_loads): a key given twice, NaN or text
        # that is not UTF-8 is refused, not guessed at (json.loads would keep a duplicate's last value).
        try:
            body = models.strict_loads((await request.body()).decode("utf-8"))
        except ValueError as exc:
            return JSONResponse({"error": f"expected a JSON object: {exc}"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "expected a JSON object"}, status_code=400)
        return JSONResponse(perform(queue, request.path_params["action"], body))

    async def metrics(request: Request):
        return Response(render_metrics(queue), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def queue_error(request: Request, exc: QueueError):
        """A refusal in the words of the Queue: a bad value (400), an unknown id (404), a job in the wrong
        state (409); a store that went away or stayed locked (503: one line for the operator, once)."""
        if isinstance(exc, UsageError):
            return refused(request, str(exc), status=400)
        if isinstance(exc, NotFound):
            return refused(request, str(exc), status=404)
        if isinstance(exc, StoreReplaced):
            if on_fatal is not None:
                on_fatal(exc)            # it names itself when the server has stopped
            return refused(request, str(exc), status=503)
        if isinstance(exc, Conflict):
            return refused(request, str(exc), status=409)
        log.say(str(exc))
        return refused(request, str(exc), status=503)

    log = OnceLog()
    return Starlette(middleware=[Middleware(BaseHTTPMiddleware, dispatch=guard)],
                     exception_handlers={QueueError: queue_error}, routes=[
        Route("/", overview), Route("/jobs", jobs), Route("/jobs/{job_id}", job), Route("/dlq", dlq),
        Route("/schedules", schedules), Route("/api/overview", api_overview),
        Route("/api/jobs/{job_id}", api_job), Route("/api/jobs/{job_id}/attempts/{number}", api_attempt),
        Route("/api/{action}", act, methods=["POST"]),
        Route("/metrics", metrics), Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ])


def cookie_name(request: Request) -> str:
    """Cookies are not kept apart by port: each dashboard on a host names its own."""
    return f"queuectl_token_{request.url.port or 80}"


EVERY_RESPONSE = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                  "X-Frame-Options": "DENY"}
HEADINGS = {400: "Bad request", 403: "Not allowed", 404: "Not found", 409: "Not now", 500: "Internal error",
            503: "Store unavailable"}


class OnceLog:
    """Store failures for the operator's terminal: one line each, not one per refresh of every open page
    (a page polls every second or two); a success in between lets the same line be said again."""

    def __init__(self):
        self.last: Optional[str] = None

    def say(self, line: str) -> None:
        if line != self.last:
            print(f"queuectl: error: {line}", file=sys.stderr, flush=True)
            self.last = line

    def forget(self) -> None:
        self.last = None


def cursor(request: Request) -> Optional[int]:
    """A job page's ``before`` (a seq); its range is the Queue's to check."""
    return whole_number(request.query_params.get("before"), "the page cursor")


SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
}


def action_problem(request: Request, token: str) -> Optional[str]:
    """Why a state-changing request is refused, or None: it must carry the token in a header (which
    a cross-site page cannot set), as JSON, from this very origin."""
    header = request.headers.get("x-queuectl-token", "")
    if not hmac.compare_digest(header.encode(), token.encode()):
        return "actions need the X-Queuectl-Token header"
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host')}":
        return f"cross-site request from {origin} refused"
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return "actions are sent as application/json"
    return None


def perform(queue, action: str, body: dict) -> dict:
    """One action of the dashboard; never an enqueue of a new command."""
    def text(key: str) -> str:
        value = body.get(key)
        if not isinstance(value, str) or not value:
            raise UsageError(f"{action} needs {key!r} (a string)")
        return value

    if action == "retry":
        return {"job": queue.retry(text("job_id"), models.FINISHED_STATES).to_dict()}
    if action == "cancel":
        return {"state": queue.cancel(text("job_id"))}
    if action == "dlq-retry":
        after = parse_since(text("since")) if body.get("since") not in (None, "") else None
        return {"retried": [queue.retry(j.id).id for j in dead_matching(queue, exit_code_of(body), after)]}
    if action in ("pause", "resume"):
        return {"queue": queue.set_queue(text("queue"), paused=action == "pause")}
    raise NotFound(f"no action {action!r}")


def exit_code_of(body: dict) -> Optional[int]:
    """The DLQ form's exit code: absent or empty (any), else 0-255 as a number or its digits. Anything
    else is refused: read as "any", a typo would retry every dead job."""
    value = body.get("exit_code")
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value) < 10:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"exit_code must be an integer from 0 to 255, got {models.shown(value)}")
    try:
        return models.RANGES["exit_code"].check(value, "exit_code")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def overview_data(queue, charts: bool = True) -> dict:
    settings = {q["name"]: q for q in queue.queue_settings()}
    per_queue = queue.queue_counts()
    names = sorted(set(per_queue) | set(settings))
    return {
        "counts": queue.counts(),
        "queues": [{"name": n, "counts": {s: per_queue.get(n, {}).get(s, 0) for s in models.STATES},
                    "paused": settings.get(n, {}).get("paused", False),
                    "concurrency": settings.get(n, {}).get("concurrency")} for n in names],
        "hour": queue.series(3600, 60) if charts else [],
        "day": queue.series(86400, 900) if charts else [],
        "workers": [dict({k: w[k] for k in ("id", "kind", "host", "pid", "job_id")},
                         started_at=models.iso(w["started_at"])) for w in queue.live_workers()],
        "oldest_pending": queue.oldest_pending(),
    }


def filtered_total(queue, state, name, text) -> Optional[int]:
    """How many jobs match, from the counters; None with a text filter (that would be a scan)."""
    if text:
        return None
    if name:
        states = queue.queue_counts().get(name, {})
        return states.get(state, 0) if state else sum(states.values())
    counts = queue.counts()
    return counts.get(state, 0) if state else sum(counts.values())


def serve(queue, host: str, port: int, token: str, announce) -> None:
    """Bind, announce the URL (with the real port), serve until interrupted, or until the store file
    is found deleted or replaced (then that is raised: one error line, exit 1, as a pool does)."""
    import socket

    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise QueueError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    bound = sock.getsockname()[1]
    announce(f"http://{'[' + host + ']' if ':' in host else host}:{bound}/", token)
    fatal: list = []

    def stop(exc: QueueError) -> None:
        fatal.append(exc)
        server.should_exit = True

    config = uvicorn.Config(create_app(queue, token, local=is_loopback(host), on_fatal=stop),
                            log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if fatal:
        raise fatal[0]
