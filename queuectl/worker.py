"""Workers and the pool that supervises them: claim -> execute -> record -> retry or dead -> report.

A worker holds a lease on the job it runs and renews it by heartbeat. A pool forks N
workers, replaces one that dies, and regularly recovers jobs whose worker was lost:
at once when the worker was on this host and its pid is gone, else when the lease
expires by the store's clock.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import time
import traceback
import uuid
from typing import Optional

from . import models, watchdog
from .errors import QueueError, StoreReplaced
from .executor import RunContext
from .output import expire_live_output, live_output_sink
from .plugins import call_each, hook_failure
from .process import PR_SET_CHILD_SUBREAPER, PR_SET_PDEATHSIG, host_id, pid_alive, pid_start_time, prctl
from .models import Attempt, ExecResult, Job
from .store import Transition, WorkerInfo
from .term import for_terminal

WATCH_TICK = 0.25      # how often a running job checks for signals, heartbeats and its timeout
CANCEL_CHECK = 0.5     # how often a running job asks the store whether it was cancelled
# Self-fencing. A lease taken at monotonic time T is good by the store's clock until at least
# T + lease-timeout (the store computes the expiry after T). A renewal waits out a locked
# store only until T + RENEW_BY * lease-timeout (one store call may overrun that by its own
# busy wait, about a second for SQLite); at T + FENCE_AT * lease-timeout a worker that could
# not renew kills its command with SIGKILL, so the command is gone before anyone else can
# take the lease over, on any host.
RENEW_BY = 0.6
FENCE_AT = 0.8
RENEW_WAIT_MAX = 2.0   # one renewal's wait for a locked store, so signals and timeouts are still seen
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
BURST_TRIES = 5        # store errors in a row after which a --burst worker stops looking for work (15 poll-intervals)


def log(message: str) -> None:
    from .screen import log as diagnostic     # timestamped (stdlib logging) under `worker start -v`

    # Messages carry job text (ids, errors): escaped on a terminal.
    diagnostic(for_terminal(message, sys.stderr))


def new_info(queue, kind: str, pool_id: Optional[str] = None) -> WorkerInfo:
    pid = os.getpid()
    return WorkerInfo(id=f"{kind[0]}-{uuid.uuid4().hex[:12]}", host=host_id(queue), pid=pid,
                      pid_start=pid_start_time(pid), kind=kind, pool_id=pool_id)


# --- what happens after an attempt ---------------------------------------------------------


def decide(queue, job: Job, attempt: Attempt) -> Transition:
    """Completed, retried after a delay (the retry-policy hook), or dead."""
    now = models.now()
    if attempt.ok:
        return Transition(models.COMPLETED, now)
    if attempt.outcome == models.INTERRUPTED:
        return Transition(models.FAILED, now, attempt.error, count_try=False)
    if attempt.outcome == models.STOPPED:
        return Transition(models.CANCELLED, now, attempt.error)
    decision = retry_decision(queue, job, attempt)
    if decision is not None and decision.retry:
        return Transition(models.FAILED, now + max(0.0, decision.delay), attempt.error)
    reason = decision.reason if decision is not None else None
    return Transition(models.DEAD, now, reason or attempt.error)


def retry_decision(queue, job: Job, attempt: Attempt) -> Optional[models.RetryDecision]:
    """The first retry policy's answer (``firstresult``). A policy that raises or answers something
    that is not a RetryDecision is logged and passed over, so the next one (in the end the built-in
    backoff) decides: a broken policy plugin never leaves a job unrecorded."""
    def failed(plugin: str, exc: Exception) -> None:
        log(hook_failure(plugin, "queuectl_retry_decision", exc) + "; asking the next retry policy")
    for plugin, answer in call_each(queue.pm, "queuectl_retry_decision", {"job": job, "attempt": attempt,
                                                                          "queue": queue}, on_error=failed):
        if answer is None:
            continue
        if isinstance(answer, models.RetryDecision) and isinstance(answer.retry, bool) and \
                models.finite(answer.delay) is not None and not isinstance(answer.delay, bool):
            return answer
        failed(plugin, TypeError(f"returned {answer!r}, not a RetryDecision with a finite delay"))
    return None


def record(queue, job: Job, attempt: Attempt, claim_next: Optional[WorkerInfo] = None,
           lease_timeout: float = 30.0, quiet: bool = False) -> tuple[Optional[Job], Optional[Job]]:
    """Store the attempt under the job's lease and report it; a stale lease changes nothing."""
    stored, following = queue.store.finish(job.id, job.lease.token, attempt, decide(queue, job, attempt),
                                           claim_next=claim_next, lease_timeout=lease_timeout)
    if stored is None:
        if not quiet:
            log(f"job {job.id}: lease was taken over; result of attempt {attempt.attempt} "
                f"({attempt.outcome}) refused as stale")
        return None, following
    queue.report("queuectl_attempt_finished", job=stored, attempt=attempt, queue=queue)
    if stored.state == models.DEAD:
        queue.report("queuectl_job_dead", job=stored, attempt=attempt, queue=queue)
    return stored, following


def prune_workers(queue, host: str) -> int:
    """Forget the rows of workers and pools on this host whose process is gone (see Queue)."""
    return queue.forget_dead_workers(host)


def recover(queue, host: str, lost_owner: Optional[str] = None) -> int:
    """Make jobs of lost workers runnable again, as a failed "worker lost" attempt.

    Orphaned processes of such a job on this host are killed first, so two copies of a
    command never run at the same time here.
    """
    recovered = 0
    for job in queue.store.leases():
        lease = job.lease
        if lease is None:
            continue
        local = lease.host == host
        if lease.owner == lost_owner or (local and not pid_alive(lease.pid, lease.pid_start)):
            reason = "worker lost (its process is gone)"
        elif lease.expired:
            reason = "worker lost (lease expired)"
        else:
            continue
        if local:
            try:
                killed = queue.executor(job.executor).reap(job, lease)
            except Exception as exc:
                log(f"job {job.id}: could not reap orphans: {exc}")
                continue
            if killed:
                log(f"job {job.id}: killed {killed} orphaned process(es) of attempt {job.attempts}")
        attempt = Attempt(job.id, job.attempts, models.WORKER_LOST, started_at=lease.started_at or models.now(),
                          finished_at=models.now(), error=reason, worker=lease.owner, host=lease.host, pid=lease.pid)
        stored, _ = record(queue, job, attempt, quiet=True)     # None: another pool recovered it first
        if stored is not None:
            recovered += 1
            log(f"job {job.id}: {reason}; now {stored.state}")
    return recovered


# --- the worker -------------------------------------------------------------------------------


class Priority:
    """While a command runs, its worker runs at a real-time priority where allowed (root,
    RLIMIT_RTPRIO) and wanted (worker-priority), so that a SIGKILLed worker gets a CPU to die on
    at once even on a busy machine: its watchdog acts only once the worker is gone, and a command
    in its last milliseconds meanwhile would finish, unrecorded, and run again. Only while the
    command runs (the worker is blocked then, so it takes nothing from anyone): between commands
    the worker's own work runs at the normal policy, as a real-time worker's work cost a drain of
    short jobs 15%. SCHED_RESET_ON_FORK starts every command at the normal policy."""

    def __init__(self, config=None):
        # (None: not yet; read in the worker's own process, since reading a setting may open the store)
        self.wanted = config is not None and config.get("worker-priority") == "realtime"

    def _set(self, policy: int, level: int) -> None:
        try:
            os.sched_setscheduler(0, policy | os.SCHED_RESET_ON_FORK, os.sched_param(level))
        except (AttributeError, OSError):
            self.wanted = False          # not allowed here: stay at the normal policy from now on

    def raised(self) -> None:
        if self.wanted:
            self._set(os.SCHED_RR, 1)

    def normal(self) -> None:
        if self.wanted:
            self._set(os.SCHED_OTHER, 0)


def _start_failure(job: Job, exc: Exception) -> str:
    """Why a command did not start, naming what was missing or refused: the job's folder or the program
    (an OSError's file; "No such file or directory" alone did not say which)."""
    if not (isinstance(exc, OSError) and exc.strerror):
        return str(exc)
    if exc.filename is None:
        return exc.strerror
    where = os.fsdecode(exc.filename)
    return f"its folder {where}: {exc.strerror}" if where == job.cwd else f"{where}: {exc.strerror}"


def _unused_signal(signum, frame) -> None:
    """The handler, in a worker or the sources process, of the signals their pool handles for them."""


class Worker:
    def __init__(self, queue, pool_id: Optional[str] = None, burst: bool = False, verbose: bool = False,
                 parent_pid: Optional[int] = None, queues: Optional[list] = None):
        self.queue = queue
        self.config = queue.config
        self.burst = burst
        self.verbose = verbose
        self.parent_pid = parent_pid
        self.info = new_info(queue, "worker", pool_id)
        self.info.queues = queues or None
        self.stopping = False       # first signal: finish the running job, then exit
        self.killing = False        # second signal: stop the running command too
        self._wake_r, self._wake_w = os.pipe()
        self._next_beat = 0.0
        self._next_refresh = 0.0
        self._claimed_at = time.monotonic()
        self._watchdog: Optional[watchdog.Board] = None
        self.priority = Priority()

    def _on_signal(self, signum, frame) -> None:
        if self.stopping:
            self.killing = True
        self.stopping = True
        try:
            os.write(self._wake_w, b"!")
        except OSError:
            pass

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        # A terminal's Ctrl-C and its hangup reach the whole pool; the pool forwards them as SIGTERM.
        # Caught and dropped here, not ignored: an ignored signal stays ignored across exec, in every
        # command the worker starts, while a handler is reset to the default there.
        signal.signal(signal.SIGINT, _unused_signal)
        signal.signal(signal.SIGHUP, _unused_signal)
        os.set_blocking(self._wake_w, False)

    @property
    def lease_timeout(self) -> float:
        return self.config.get("lease-timeout")

    def run(self) -> int:
        # Before becoming a subreaper: the watchdog must not be one of our children.
        self._watchdog = watchdog.start(self.queue)
        self.priority = Priority(self.config)
        # Orphans of our commands (double forks, setsid children) become our children, not
        # init's, so a leftover is seen and killed when its attempt ends.
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        self.queue.patient = True          # a worker waits out a locked store, however long
        store = self.queue.store
        store.lock_timeout = None
        store.register_worker(self.info)
        listener = store.listener(self.info.id)
        job: Optional[Job] = None
        failures = 0                       # store errors in a row while looking for work
        try:
            while True:
                try:
                    if job is None:
                        if self.stopping:
                            break
                        if self.parent_pid is not None and os.getppid() != self.parent_pid:
                            break              # the pool died: claim nothing new
                        self._claimed_at = time.monotonic()
                        job = store.claim(self.info, self.lease_timeout)
                    if job is None:
                        if self.burst and not store.has_outstanding(self.info.queues):
                            break
                        self._idle(listener)
                        failures = 0
                        continue
                except StoreReplaced:
                    raise                          # the pool says so and stops
                except Exception as exc:           # a store that fails: never a traceback, never a busy loop
                    failures += 1
                    if not self._store_trouble(exc, failures):
                        return 1                   # a burst worker gives up: its pool reports the work left
                    continue
                failures = 0
                # A job claimed is run, even if a stop signal came meanwhile: leaving it
                # claimed would cost it a retry as "worker lost".
                job = self.process(job)
        finally:
            if listener is not None:
                listener.close()
            store.remove_worker(self.info.id)
            if self._watchdog is not None:
                self._watchdog.close()
                self._watchdog = None
        return 0

    def _store_trouble(self, exc: Exception, failures: int) -> bool:
        """One line for a store error met while looking for work (the first of a streak and then every
        tenth), then a wait that doubles from poll-interval up to 30 s. A patient worker retries for as
        long as it takes; a --burst worker gives up after BURST_TRIES errors in a row. Returns whether to
        go on."""
        what = str(exc) if isinstance(exc, QueueError) else f"{type(exc).__name__}: {exc}"
        give_up = self.burst and failures >= BURST_TRIES
        if failures == 1 or failures % 10 == 0 or give_up:
            log(f"worker {os.getpid()}: cannot claim a job: {what.splitlines()[0] if what else '?'}"
                + ("; giving up" if give_up else f"; retrying (error {failures} in a row)"))
        if give_up:
            return False
        try:
            first = self.config.get("poll-interval")    # how often an idle worker looks: the first wait too
        except Exception:                               # its stored value unreadable from the failing store
            first = 1.0
        select.select([self._wake_r], [], [], min(30.0, first * 2 ** min(failures - 1, 6)))
        return not self.stopping

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._next_refresh:
            self.config.refresh()          # see `config set` without a restart
            self._next_refresh = now + 1.0
        if now >= self._next_beat:
            self.queue.store.heartbeat_worker(self.info.id)
            self._next_beat = now + self.config.heartbeat_interval

    def _idle(self, listener) -> None:
        self._housekeeping()
        timeout = self.config.get("poll-interval")
        next_run = self.queue.store.next_run_at()
        if next_run is not None:
            timeout = min(timeout, max(0.0, next_run - time.time()) + 0.001)
        fds = [self._wake_r] + ([listener] if listener is not None else [])
        ready, _, _ = select.select(fds, [], [], timeout)
        if listener is not None and listener in ready:
            listener.drain()

    def process(self, job: Job) -> Optional[Job]:
        """Run one claimed job, record it, and return the next claimed job (if any)."""
        attempt_no = job.attempts
        if not self._still_ours(job):
            log(f"job {job.id}: lease of attempt {attempt_no} lost before its command started; not run")
            return None
        started = models.now()
        self.queue.report("queuectl_attempt_started", job=job, attempt=attempt_no, queue=self.queue)
        self.priority.raised()
        try:
            result = self._execute(job, attempt_no, self._claimed_at)
        finally:
            self.priority.normal()
        attempt = Attempt(job.id, attempt_no, result.outcome, started, models.now(), exit_code=result.exit_code,
                          signal=result.signal, error=result.error, stdout=result.stdout, stderr=result.stderr,
                          worker=self.info.id, host=self.info.host, pid=self.info.pid)
        claim_next = None if self.stopping else self.info
        self._claimed_at = time.monotonic()
        stored, following = record(self.queue, job, attempt, claim_next, self.lease_timeout)
        if self.verbose and stored is not None:
            from .screen import human_duration

            how = (f" (signal {attempt.signal})" if attempt.signal is not None else
                   f" (exit {attempt.exit_code})" if attempt.exit_code is not None else "")    # never started
            dead = f": {stored.last_error}" if stored.state == models.DEAD else ""    # the one dead-job line
            wait = stored.run_at - models.now()
            due = "" if stored.state != models.FAILED else f", retry in {human_duration(wait)}" if wait > 0 else ", retry now"
            log(f"job {job.id} attempt {attempt_no}: {attempt.outcome}{how} in "
                f"{human_duration(attempt.duration)} -> {stored.state}{dead}{due}")
        elif stored is not None and stored.state == models.DEAD:
            log(f"job {job.id} is dead after {stored.attempts} attempt(s): {stored.last_error}")
        if following is None and self.burst:
            self.queue.store.notify()      # idle burst peers re-check at once whether anything is left
        return following

    def _still_ours(self, job: Job) -> bool:
        """Before starting a command late (a locked store delayed the claim's commit), check the lease.

        Nothing runs yet, so the renewal may wait for the store as long as it takes: success
        means nobody took the job over meanwhile.
        """
        if time.monotonic() - self._claimed_at < self.lease_timeout * RENEW_BY:
            return True
        store, now = self.queue.store, time.monotonic()
        try:
            held = store.renew(job.id, job.lease.token, self.lease_timeout)
        except QueueError as exc:
            log(f"job {job.id}: could not check its lease: {exc}")
            return False
        if held:
            self._claimed_at = now
        return held

    def _renew(self, job: Job, pgid: Optional[int], renewed_at: float, lease_timeout: float) -> Optional[bool]:
        """Extend the lease: True, False when another took it over, None when the store could not be reached."""
        store = self.queue.store
        wait = lease_timeout * RENEW_BY - (time.monotonic() - renewed_at)
        if wait <= 0:
            return None     # too late: one more store call could overrun the fence by its own busy wait
        store.lock_timeout = min(wait, RENEW_WAIT_MAX)
        try:
            return store.renew(job.id, job.lease.token, lease_timeout, pgid=pgid)
        except QueueError as exc:
            if self.verbose:
                log(f"job {job.id}: lease not renewed: {exc}")
            return None
        finally:
            store.lock_timeout = None

    def _cancel_requested(self, job: Job) -> bool:
        """Ask the store, briefly: a locked store must not hold up heartbeats and self-fencing."""
        store = self.queue.store
        store.lock_timeout = WATCH_TICK
        try:
            return store.cancel_requested(job.id, job.lease.token)
        except QueueError:
            return False
        finally:
            store.lock_timeout = None

    def _execute(self, job: Job, attempt_no: int, claimed_at: float) -> ExecResult:
        env = {"QUEUECTL_JOB_ID": job.id, "QUEUECTL_ATTEMPT": str(attempt_no), "QUEUECTL_RUN_ID": job.lease.run_id}
        try:
            executor = self.queue.executor(job.executor)
            if self._watchdog is not None:
                self._watchdog.watch(job)
            run = executor.start(job, RunContext(attempt_no, job.lease.run_id, env, self.config,
                                                 output=live_output_sink(self.queue.store, job.id, attempt_no)))
        except (OSError, ValueError, QueueError) as exc:
            return ExecResult(models.START_ERROR, error=f"could not start: {_start_failure(job, exc)}")
        except Exception as exc:        # an executor plugin's bug: a failed attempt, retried like any other
            return ExecResult(models.START_ERROR, error=f"could not start: executor {job.executor!r} failed: "
                                                        f"{type(exc).__name__}: {exc}")
        if getattr(run, "pgid", None) and self._watchdog is not None:
            self._watchdog.watch_group(run.pgid)     # now the group too, for a kill in one call
        try:
            result = self._watch(job, run, claimed_at)
            if not isinstance(result, ExecResult):
                raise TypeError(f"its run returned {type(result).__name__}, not an ExecResult")
            return result
        except Exception as exc:        # the run's wait() or stop() raised, or answered nonsense
            error = f"executor {job.executor!r} failed: {type(exc).__name__}: {exc}"
            log(f"job {job.id}: {error}")
            self._kill_run(run)
            return ExecResult(models.EXITED, error=error)

    def _watch(self, job: Job, run, claimed_at: float) -> ExecResult:
        """Wait for the run while renewing the lease, enforcing the timeout and honouring signals.

        The first renewal comes at once and records the command's process group in the
        lease. A worker that cannot renew stops its command at FENCE_AT of the lease
        (self-fencing), before the lease can expire and be taken over.
        """
        lease_timeout = self.lease_timeout
        beat = min(self.config.heartbeat_interval, lease_timeout / 2)
        limit = job.timeout or self.config.get("timeout") or None
        grace = self.config.get("kill-grace")
        began = time.monotonic()
        renewed_at = claimed_at          # the lease holds until at least renewed_at + lease_timeout
        # The first renewal (which also records the process group) waits one tick: most jobs are
        # over by then, and a write per job is a fifth of the worker's cost.
        next_beat, pgid_saved = began + min(WATCH_TICK, beat), False
        next_cancel_check = began + CANCEL_CHECK
        while True:
            now = time.monotonic()
            if now >= next_beat:
                held = self._renew(job, None if pgid_saved else run.pgid, renewed_at, lease_timeout)
                if held is False:
                    return run.stop(0, models.WORKER_LOST, "lease lost: another worker took the job over")
                if held:
                    renewed_at, pgid_saved = now, True
                    next_beat = now + beat
                else:
                    next_beat = time.monotonic() + WATCH_TICK     # the store is locked: try again soon
            fence_in = renewed_at + lease_timeout * FENCE_AT - time.monotonic()
            if fence_in <= 0:
                log(f"job {job.id}: lease not renewed for {time.monotonic() - renewed_at:.1f}s; "
                    f"stopping its command before the lease can expire (self-fencing)")
                return run.stop(0, models.WORKER_LOST, "lease could not be renewed in time; command stopped")
            result = run.wait(min(WATCH_TICK, fence_in))
            if result is not None:
                return result
            if self.killing:
                return self._stop(job, run, grace, models.INTERRUPTED, "interrupted by worker shutdown",
                                  renewed_at, lease_timeout)
            if time.monotonic() >= next_cancel_check:
                next_cancel_check = time.monotonic() + CANCEL_CHECK
                if self._cancel_requested(job):
                    return self._stop(job, run, grace, models.STOPPED, "cancelled by user", renewed_at,
                                      lease_timeout)
            if limit and time.monotonic() - began >= limit:
                return self._stop(job, run, grace, models.TIMED_OUT, f"timed out after {limit:g} s",
                                  renewed_at, lease_timeout)

    @staticmethod
    def _kill_run(run) -> None:
        """What is left of a run whose executor failed: its stop() if it works, else its group killed."""
        try:
            run.stop(0, models.EXITED, "executor failed")
        except Exception:
            pgid = getattr(run, "pgid", None)
            if isinstance(pgid, int) and pgid > 1:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except OSError:
                    pass

    def _stop(self, job: Job, run, grace: float, outcome: str, reason: str, renewed_at: float,
              lease_timeout: float) -> ExecResult:
        """Stop the command with SIGTERM and SIGKILL after ``grace``, all within the lease.

        No heartbeat is sent while the executor stops a run, so the lease is renewed first
        and the grace cut to what the renewed lease allows (self-fencing again).
        """
        if grace > 0:
            now = time.monotonic()
            held = self._renew(job, None, renewed_at, lease_timeout)
            if held:
                renewed_at = now
            allowed = 0.0 if held is False else renewed_at + lease_timeout * FENCE_AT - time.monotonic()
            if grace > allowed:
                log(f"job {job.id}: kill-grace cut from {grace:g}s to {max(0.0, allowed):.1f}s "
                    f"to stay within its lease")
                grace = max(0.0, allowed)
        return run.stop(grace, outcome, reason)


# --- the pool ---------------------------------------------------------------------------------


class Pool:
    """Supervises N worker processes: forks them, replaces the dead, recovers lost jobs."""

    def __init__(self, queue, count: int, burst: bool = False, verbose: bool = False,
                 options: Optional[dict] = None, queues: Optional[list] = None):
        self.queue = queue
        self.count = count
        self.burst = burst
        self.verbose = verbose
        self.options = options or {}
        self.queues = queues
        self.info = new_info(queue, "pool")
        self.children: dict[int, dict] = {}     # pid -> {"kind": "worker"|"sources", "started": t}
        self.signals = 0
        self.stopping = False
        self._respawn_delay = 0.0
        self._respawn_at = 0.0

    def _on_signal(self, signum, frame) -> None:
        self.signals += 1

    def run(self) -> int:
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        queue = self.queue
        queue.patient = True              # also for the store reopened after each fork
        queue.store.lock_timeout = None
        # The handlers come first: a SIGTERM from the moment the pool is registered (and so visible
        # to `worker stop` and to scripts) is a clean stop, never the default death.
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        os.set_blocking(wake_r, False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, self._on_signal if sig != signal.SIGCHLD else lambda s, f: None)
        # The terminal closed (SIGHUP to its foreground group): a stop like SIGTERM's, the running jobs
        # finish and are recorded. Unless the pool was started with SIGHUP ignored (nohup): it runs on.
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
            signal.signal(signal.SIGHUP, self._on_signal)
        signal.set_wakeup_fd(wake_w)
        self._wake_fds = (wake_r, wake_w)
        queue.store.register_worker(self.info)
        host = self.info.host
        from .screen import setup_logging

        setup_logging(self.verbose)
        log(self.banner())
        recover(queue, host)
        try:
            return self._supervise(queue, host, wake_r)
        except StoreReplaced as exc:
            log(f"error: {exc}")
            self._begin_stop(force=False)
            return 1
        finally:
            signal.set_wakeup_fd(-1)
            for pid, child in list(self.children.items()):
                if child["kind"] == "sources":
                    _kill(pid, signal.SIGTERM)
            self._wait_all()
            try:
                queue.store.remove_worker(self.info.id)
            except StoreReplaced:
                pass

    def _supervise(self, queue, host: str, wake_r: int) -> int:
        if queue.pm.hook.queuectl_job_sources.get_hookimpls():
            self._spawn("sources")
        for _ in range(self.count):
            self._spawn("worker")
        handled = 0
        tick = self.config_tick()
        next_tick = time.monotonic() + tick
        while True:
            select.select([wake_r], [], [], max(0.0, min(next_tick, self._respawn_at or next_tick)
                                                - time.monotonic()))
            try:
                while os.read(wake_r, 512):
                    pass
            except OSError:
                pass
            while handled < self.signals:
                handled += 1
                self._begin_stop(force=handled > 1)
            self._reap(host)
            if not self._workers() and (self.stopping or self.burst):
                if self.burst and not self.stopping:
                    return self._burst_result(queue)
                break
            if time.monotonic() >= next_tick:
                if not queue.store.heartbeat_worker(self.info.id) and not self.stopping:
                    self._begin_stop(force=False, why="stop requested through the store")
                recover(queue, host)
                prune_workers(queue, host)
                expire_live_output(queue.store)
                tick = self.config_tick()
                next_tick = time.monotonic() + tick
            self._replace()
        return 0

    def _burst_result(self, queue) -> int:
        """A --burst pool's exit code once its workers are gone: 0 only when no work is left (workers that
        gave up on a failing store leave it), else 1 with one line."""
        try:
            left = queue.store.has_outstanding(self.queues)
        except QueueError as exc:
            log(f"error: burst: cannot tell whether work is left: {exc}")
            return 1
        if left:
            log("error: burst: the workers stopped with work left (see the errors above)")
            return 1
        return 0

    def config_tick(self) -> float:
        self.queue.config.refresh()
        return self.queue.config.get("recovery-interval")

    def _workers(self) -> list[int]:
        return [pid for pid, c in self.children.items() if c["kind"] == "worker"]

    def banner(self) -> str:
        """One line: the pool's pid, its workers, its store and what else feeds it (the spool)."""
        store = self.queue.store.describe()
        parts = [f"pool {os.getpid()} started: {self.count} worker(s)", f"store {store['backend']} {store['location']}"]
        if self.queues:
            parts.append(f"queues {','.join(self.queues)}")
        for name, values in self.queue.plugin_status().items():
            # a section's folder, unless the section's own worker option overrides it (--spool DIR, --no-spool)
            if self.options.get(f"no_{name}"):
                continue
            folder = self.options.get(name) or (values or {}).get("folder")
            if folder:
                parts.append(f"{name} {os.path.abspath(os.path.expanduser(folder))}")
        return ", ".join(parts)

    def running_jobs(self) -> int:
        """Jobs that this pool's workers hold now."""
        try:
            mine = {w["id"] for w in self.queue.store.workers() if w.get("pool_id") == self.info.id}
            return sum(1 for job in self.queue.store.leases() if job.lease and job.lease.owner in mine)
        except QueueError:
            return 0

    def _begin_stop(self, force: bool, why: str = "stopping") -> None:
        first = not self.stopping
        self.stopping = True
        running = self.running_jobs() if first or force else 0
        for pid in self.children:
            _kill(pid, signal.SIGTERM)
        if force:
            log(f"second signal: stopping {running} running job(s); they will be retried")
        elif first:
            log(f"{why}: finishing {running} running job(s); press Ctrl-C again to stop them")

    def _reap(self, host: str) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue                      # an orphan of a job, reparented to us: just collected
            clean = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
            if child["kind"] == "worker":
                if not clean:
                    how = (f"signal {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status)
                           else f"exit code {os.WEXITSTATUS(status)}")
                    log(f"worker {pid} died ({how})")
                    recover(self.queue, host, lost_owner=child["id"])
                    self.queue.store.remove_worker(child["id"])
                    quick = time.monotonic() - child["started"] < 1.0
                    self._respawn_delay = min(max(self._respawn_delay * 2, 0.5), 30.0) if quick else 0.0
                    self._respawn_at = time.monotonic() + self._respawn_delay
                if not (self.stopping or (self.burst and clean)):
                    self._missing = getattr(self, "_missing", 0) + 1
            elif child["kind"] == "sources" and not self.stopping:
                log(f"job source process {pid} died; starting another")
                self._sources_due = time.monotonic() + 1.0     # one that dies at once must not spin

    def _replace(self) -> None:
        # A lost sources process is started again: the spool, schedules and notification deliveries live there.
        sources_due = getattr(self, "_sources_due", None)
        if sources_due is not None and not self.stopping and time.monotonic() >= sources_due:
            self._sources_due = None
            self._spawn("sources")
        missing = getattr(self, "_missing", 0)
        if self.stopping or not missing or time.monotonic() < self._respawn_at:
            return
        for _ in range(missing):
            self._spawn("worker")
        self._missing = 0
        self._respawn_at = 0.0

    def _spawn(self, kind: str) -> None:
        self.queue.close()                # never carry a store connection across fork
        info_id = None
        if kind == "worker":
            worker = Worker(self.queue, self.info.id, self.burst, self.verbose, parent_pid=os.getpid(),
                            queues=self.queues)
            info_id = worker.info.id
        sys.stdout.flush()
        sys.stderr.flush()
        # The stop signals stay blocked across the fork until the child has its own handlers: one sent to
        # the child before that would run the pool's handler, copied into the child, and be lost there.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._child(kind, worker if kind == "worker" else None)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        if kind == "worker":
            os.close(worker._wake_r)
            os.close(worker._wake_w)
        self.children[pid] = {"kind": kind, "started": time.monotonic(), "id": info_id}

    def _child(self, kind: str, worker: Optional[Worker]) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for fd in self._wake_fds:
                os.close(fd)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if kind == "worker":
                worker.install_signals()
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
                worker.info.pid = os.getpid()
                worker.info.pid_start = pid_start_time(worker.info.pid)
                if os.getppid() != worker.parent_pid:
                    os._exit(0)
                code = worker.run()
            else:
                code = run_sources(self.queue, self.options)
        except StoreReplaced:
            pass                          # the pool says so, once
        except QueueError as exc:         # a damaged or unusable store: one line, and the pool decides
            log(f"error: {kind} {os.getpid()}: {exc}")
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _wait_all(self) -> None:
        while self.children:
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self.children.pop(pid, None)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def run_sources(queue, options: dict) -> int:
    """The sources process of a pool: starts every job source and runs until SIGTERM."""
    stop = {"now": False}
    wake_r, wake_w = os.pipe()              # the handler wakes the wait below at once
    os.set_blocking(wake_w, False)

    def on_term(signum, frame) -> None:
        stop["now"] = True
        try:
            os.write(wake_w, b"!")
        except OSError:
            pass
    # The pool decides on a Ctrl-C or a hangup; caught, not ignored, as in a worker (the notify callbacks
    # this process starts would inherit an ignored signal).
    signal.signal(signal.SIGINT, _unused_signal)
    signal.signal(signal.SIGHUP, _unused_signal)
    signal.signal(signal.SIGTERM, on_term)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)    # blocked by the pool across the fork
    sources = []

    def failed(plugin: str, exc: Exception) -> None:
        log(hook_failure(plugin, "queuectl_job_sources", exc) + "; its sources do not run")
    for plugin, result in call_each(queue.pm, "queuectl_job_sources", {"queue": queue, "options": options},
                                    on_error=failed):
        if result is not None and not (isinstance(result, (list, tuple)) and
                                       all(callable(getattr(s, "start", None)) and callable(getattr(s, "stop", None))
                                           for s in result)):
            failed(plugin, TypeError(f"returned {result!r}, not a list of sources with start() and stop()"))
            continue
        for source in result or []:
            try:
                source.start()
            except Exception as exc:
                failed(plugin, exc)
                continue
            sources.append(source)
    try:
        while not stop["now"]:
            select.select([wake_r], [], [], 0.2)
    finally:
        for source in sources:
            try:
                source.stop()
            except StoreReplaced:
                pass                    # the pool says so, once
            except Exception as exc:
                log(f"a job source failed to stop: {type(exc).__name__}: {exc}")
    return 0
