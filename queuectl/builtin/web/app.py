"""The dashboard: a Starlette application over one Queue, served by uvicorn.

Safety: every page and API needs the token (from ``?token=``, which sets an HttpOnly cookie, as
Jupyter does); an action also needs the token in the ``X-Queuectl-Token`` header (a cross-site
page can neither read it nor send custom headers without a preflight this server refuses), a
JSON body, and an Origin, when sent, equal to this server. /metrics needs no token (read-only).
Job text reaches the browser only through autoescaped templates and ``textContent``.
"""
from __future__ import annotations

import hmac
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
from queuectl.builtin.dlq import dead_matching
from queuectl.builtin.schedule import schedule_rows
from queuectl.errors import NotFound, QueueError, UsageError
from queuectl.builtin.web.metrics import render as render_metrics

HERE = Path(__file__).parent
PAGE_SIZE = 50
OPEN_PATHS = ("/metrics", "/static/")


def create_app(queue, token: str) -> Starlette:
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
        path = request.url.path
        if path.startswith(OPEN_PATHS):
            return await call_next(request)
        given = request.query_params.get("token")
        if given is not None and request.method == "GET":
            if not hmac.compare_digest(given.encode(), token.encode()):
                return refused(request, "wrong token")
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response = RedirectResponse(path + ("?" + rest if rest else ""), status_code=303)
            response.set_cookie(cookie_name(request), token, httponly=True, samesite="strict", path="/")
            return response
        if not allowed(request):
            return refused(request, "this dashboard needs its token: open the URL printed by `queuectl dashboard`")
        if request.method != "GET":
            problem = action_problem(request, token)
            if problem:
                return refused(request, problem)
        return await call_next(request)

    def refused(request: Request, why: str, status: int = 403) -> Response:
        if request.method == "GET" and not request.url.path.startswith("/api/"):
            return page("refused.html", request, status=status, trusted=False, why=why)
        return JSONResponse({"error": why}, status_code=status)

    # --- pages ------------------------------------------------------------------------------

    async def overview(request: Request):
        return page("overview.html", request, data=overview_data(queue, charts=False))   # the script draws them

    async def jobs(request: Request):
        state = request.query_params.get("state") or None
        name = request.query_params.get("queue") or None
        text = request.query_params.get("q") or None
        before = request.query_params.get("before")
        try:
            result = queue.page(state=state, queue=name, text=text,
                                before=int(before) if before else None, limit=PAGE_SIZE)
        except (QueueError, ValueError) as exc:
            return page("refused.html", request, status=400, why=str(exc))
        filters = urlencode([(k, v) for k, v in (("state", state), ("queue", name), ("q", text)) if v])
        return page("jobs.html", request, jobs=result["jobs"], filters=filters, next=result["next"], state=state,
                    queue=name, text=text, total=filtered_total(queue, state, name, text), states=models.STATES,
                    queues=sorted(queue.queue_counts()), dlq=False)

    async def dlq(request: Request):
        before = request.query_params.get("before")
        result = queue.page(state=models.DEAD, before=int(before) if before and before.isdigit() else None,
                            limit=PAGE_SIZE)
        return page("jobs.html", request, jobs=result["jobs"], filters="", next=result["next"], state=models.DEAD,
                    queue=None, text=None, total=queue.counts()[models.DEAD], states=models.STATES,
                    queues=[], dlq=True)

    async def job(request: Request):
        try:
            data = job_data(queue, request.path_params["job_id"])
        except QueueError as exc:
            return page("refused.html", request, status=404, why=str(exc))
        return page("job.html", request, job=data["job"], attempts=data["attempts"])

    async def schedules(request: Request):
        return page("schedules.html", request, schedules=schedule_rows(queue))

    # --- JSON for the pages' refresh --------------------------------------------------------

    async def api_overview(request: Request):
        return JSONResponse(overview_data(queue))

    async def api_job(request: Request):
        try:
            return JSONResponse(job_data(queue, request.path_params["job_id"]))
        except QueueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)

    # --- actions ----------------------------------------------------------------------------

    async def act(request: Request):
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return JSONResponse({"error": "expected a JSON object"}, status_code=400)
        try:
            return JSONResponse(perform(queue, request.path_params["action"], body))
        except QueueError as exc:
            code = 404 if isinstance(exc, NotFound) else 409 if exc.exit_code == 1 else 400
            return JSONResponse({"error": str(exc)}, status_code=code)

    async def metrics(request: Request):
        return Response(render_metrics(queue), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def store_failed(request: Request, exc: QueueError):
        # the store went away or stayed locked: one line for the operator, the reason for the page
        print(f"queuectl: error: {exc}", file=sys.stderr, flush=True)
        return refused(request, str(exc), status=503)

    return Starlette(middleware=[Middleware(BaseHTTPMiddleware, dispatch=guard)],
                     exception_handlers={QueueError: store_failed}, routes=[
        Route("/", overview), Route("/jobs", jobs), Route("/jobs/{job_id}", job), Route("/dlq", dlq),
        Route("/schedules", schedules), Route("/api/overview", api_overview),
        Route("/api/jobs/{job_id}", api_job), Route("/api/{action}", act, methods=["POST"]),
        Route("/metrics", metrics), Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ])


def cookie_name(request: Request) -> str:
    """Cookies are not kept apart by port: each dashboard on a host names its own."""
    return f"queuectl_token_{request.url.port or 80}"


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
            raise QueueError(f"{action} needs {key!r}")
        return value

    if action == "retry":
        return {"job": queue.retry(text("job_id"), models.FINISHED_STATES).to_dict()}
    if action == "cancel":
        return {"state": queue.cancel(text("job_id"))}
    if action == "dlq-retry":
        exit_code = body.get("exit_code")
        if exit_code is not None and (not isinstance(exit_code, int) or isinstance(exit_code, bool)):
            raise QueueError("exit_code must be an integer")
        try:
            after = models.parse_time(text("since")) if body.get("since") else None
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return {"retried": [queue.retry(j.id).id for j in dead_matching(queue, exit_code, after)]}
    if action in ("pause", "resume"):
        return {"queue": queue.set_queue(text("queue"), paused=action == "pause")}
    raise NotFound(f"no action {action!r}")


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


def job_data(queue, job_id: str) -> dict:
    return {"job": queue.get(job_id).to_dict(), "attempts": queue.logs(job_id)}


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
    """Bind, announce the URL (with the real port), serve until interrupted."""
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
    config = uvicorn.Config(create_app(queue, token), log_level="warning", lifespan="off", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
