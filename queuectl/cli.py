"""The command line: thin click commands that parse, call the Queue facade and render.

Data goes to stdout, diagnostics to stderr; every read command has --json; a user's
mistake is one line and exit 2, an operational failure one line and exit 1.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
from typing import Any, Optional

import click

from . import models
from .command import (App, Integer, complete_queues, echo, emit_json, get_queue, job_options, parse_pairs,
                      parse_since, pass_app, read_command, render_jobs, spec_from_options, table)
from .errors import JobValidationError, NotFound, PluginError, QueueError, UsageError
from ._lazy import LazyImport
from .screen import COLOR_MODES, human_duration, set_color_mode, state_text, when, wrap_items

json = LazyImport("json", globals())

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _short_options_first(parser):
    """The parser, made to look a single-dash option (``-c``) up among the short ones without first
    building the "no such option, did you mean" error for it as a long one (click does, importing
    difflib and comparing it with every long option, then drops that error). Every match and every
    error message is the same."""
    long_options, prefixes = getattr(parser, "_long_opt", None), getattr(parser, "_opt_prefixes", None)
    match_long = getattr(parser, "_match_long_opt", None)
    if not isinstance(long_options, dict) or not isinstance(prefixes, set) or match_long is None:
        return parser                   # another click: leave it be

    def match_long_first(opt, explicit_value, state):
        if opt not in long_options and opt[:2] not in prefixes:
            # caught: the short options are tried next (the message, never shown, is not looked up)
            raise click.NoSuchOption(opt, message=opt, ctx=parser.ctx)
        return match_long(opt, explicit_value, state)
    parser._match_long_opt = match_long_first
    return parser


def _help_width(max_width: int) -> int:
    """The width click's help formatter takes from ``shutil.get_terminal_size()`` ($COLUMNS, else the
    terminal of stdout, else 80), found the same way without importing shutil (and bz2 and lzma)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
        columns = columns or 80
    return max(min(columns, max_width) - 2, 50)


HELP_TEXT = "Show this message and exit."           # click's text for its help option


def _show_help(ctx: click.Context, _param, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(ctx.get_help(), color=ctx.color)
        ctx.exit()


def _help_option(command: click.Command, ctx: click.Context) -> Optional[click.Option]:
    """The help option click gives a command (``-h, --help``, eager, last), made here with click's own
    text: click looks its text up in gettext each time it makes one, and the first lookup imports
    ``locale`` (about 4M instructions of a command that never shows the text)."""
    names = command.get_help_option_names(ctx)
    if not names or not command.add_help_option:
        return None
    option = command.__dict__.get("_queuectl_help_option")
    if option is None:
        option = click.Option(names, is_flag=True, expose_value=False, is_eager=True, help=HELP_TEXT,
                              callback=_show_help)
        command._queuectl_help_option = option
    return option


def _show_version(ctx: click.Context, _param, value: bool) -> None:
    """What ``click.version_option(package_name="queuectl")`` prints (which looks two texts up in
    gettext as the module is imported)."""
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import version

    click.echo(f"{ctx.find_root().info_name}, version {version('queuectl')}", color=ctx.color)
    ctx.exit()


# click looks each title of a help page up in gettext ("Usage:", "Options", "Commands"), and the first
# lookup imports `locale`: about 4.3M instructions, 2% of `queuectl --help`. queuectl installs no
# translations, so gettext returns each title as it is; the help pages below use the titles as they are,
# with click's layout unchanged (test_startup_cache checks every page against click's own rendering).


class QueuectlFormatter(click.HelpFormatter):
    def write_usage(self, prog: str, args: str = "", prefix: Optional[str] = None) -> None:
        super().write_usage(prog, args, "Usage: " if prefix is None else prefix)


def _format_options(command: click.Command, ctx: click.Context, formatter: click.HelpFormatter) -> None:
    """click's ``Command.format_options``, titled without gettext."""
    rows = [row for row in (param.get_help_record(ctx) for param in command.get_params(ctx)
                            if not isinstance(param, click.Argument)) if row is not None]
    if rows:
        with formatter.section("Options"):
            formatter.write_dl(rows)


class QueuectlContext(click.Context):
    formatter_class = QueuectlFormatter

    def make_formatter(self):
        if self.terminal_width is None and getattr(click.formatting, "FORCED_WIDTH", None) is None:
            max_width = 80 if self.max_content_width is None else self.max_content_width
            return self.formatter_class(width=_help_width(max_width), max_width=self.max_content_width)
        return super().make_formatter()


class QueuectlCommand(click.Command):
    """The core's commands: see :func:`_short_options_first` and :func:`_help_width`."""

    context_class = QueuectlContext

    def format_options(self, ctx, formatter):
        _format_options(self, ctx, formatter)

    def make_parser(self, ctx):
        return _short_options_first(super().make_parser(ctx))

    def get_help_option(self, ctx):
        return _help_option(self, ctx)


class QueuectlGroup(click.Group):
    """Adds the commands that plugins register through ``queuectl_register_commands``."""

    command_class = QueuectlCommand
    context_class = QueuectlContext

    def make_parser(self, ctx):
        return _short_options_first(super().make_parser(ctx))

    def get_help_option(self, ctx):
        return _help_option(self, ctx)

    def format_options(self, ctx, formatter):
        _format_options(self, ctx, formatter)
        self.format_commands(ctx, formatter)

    def format_commands(self, ctx, formatter):
        """click's ``Group.format_commands``, titled without gettext."""
        commands = [(name, command) for name, command in ((name, self.get_command(ctx, name))
                                                           for name in self.list_commands(ctx))
                    if command is not None and not command.hidden]
        if commands:
            limit = formatter.width - 6 - max(len(name) for name, _ in commands)
            with formatter.section("Commands"):
                formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in commands])

    def _plugin_commands(self, ctx: click.Context) -> dict:
        app = ctx.find_object(App)
        if app is None:    # commands are resolved before the group's callback runs
            app = ctx.obj = App(**{k: ctx.params.get(k) for k in ("config", "db", "plugins_dir")})
        cached = getattr(app, "plugin_commands", None)
        if cached is None:
            cached = app.plugin_commands = self._collect_plugin_commands(app.queue.pm)
        return cached

    def _collect_plugin_commands(self, pm) -> dict:
        """Each plugin's commands; a name that is the core's or another plugin's is one error line
        (click would let the later one silently replace the earlier, or the core hide it)."""
        from .plugins import call_each

        _all_commands()
        group, owners = click.Group("plugins"), {name: "the core" for name in self.commands}
        before: dict = {}
        for plugin, _ in call_each(pm, "queuectl_register_commands", {"cli": group}):
            for name, command in group.commands.items():
                if before.get(name) is command:
                    continue
                if name in owners:
                    raise PluginError(f"command {name!r} is registered twice (by {owners[name]} and plugin "
                                      f"{plugin}); block one with disable-plugins")
                owners[name] = f"plugin {plugin}"
            before = dict(group.commands)
        return dict(group.commands)

    def _worker_options(self, ctx: click.Context) -> None:
        """Add the options plugins give `worker start` (asked only for that command: it imports them)."""
        self._plugin_commands(ctx)
        app = ctx.find_object(App)
        if getattr(app, "worker_options_added", False):
            return
        app.worker_options_added = True
        from .cli_more import worker_start

        from .plugins import call_each

        known = {param.name for param in worker_start.params}
        for plugin, options in call_each(app.queue.pm, "queuectl_worker_options", {}):
            if options is not None and not (isinstance(options, (list, tuple)) and
                                            all(isinstance(o, click.Option) for o in options)):
                raise PluginError(f"plugin {plugin} failed in queuectl_worker_options: returned {options!r}, "
                                  f"not a list of click.Option")
            for option in options or []:
                if option.name not in known:      # the command object outlives one invocation
                    worker_start.params.append(option)
                    known.add(option.name)

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None and name not in QUICK:
            _all_commands()
            command = super().get_command(ctx, name)
        if command is not None:
            return command
        return self._plugin_commands(ctx).get(name)

    def list_commands(self, ctx):
        _all_commands()
        names = set(super().list_commands(ctx))
        try:
            names.update(self._plugin_commands(ctx))
        except QueueError:
            pass
        return sorted(names)


# --- commands ---------------------------------------------------------------------------------


#: The commands defined here; the others are in cli_more.py, imported when one of them is named or
#: all are listed (defining every command cost most of this module's import on every run).
QUICK = ("init", "enqueue", "status", "list")


def _all_commands() -> None:
    from . import cli_more  # noqa: F401 - registers its commands on `cli`


class ArgvCommand(QueuectlCommand):
    """A command where what follows ``--`` is a job's argv, run without a shell (`enqueue -- CMD ARG...`)."""

    def parse_args(self, ctx, args):
        if "--" in args:
            at = args.index("--")
            ctx.meta["queuectl.argv"] = args[at + 1:]
            args = args[:at]
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx):
        return super().collect_usage_pieces(ctx) + ["[-- PROGRAM ARG...]"]


def given_argv() -> Optional[list]:
    return click.get_current_context().meta.get("queuectl.argv")


@click.group(cls=QueuectlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", metavar="PATH", help="config.yaml to use (else $QUEUECTL_CONFIG, ./config.yaml, "
              "the user's config).")
@click.option("--db", metavar="PATH|URL", help="Store location (overrides the config; also $QUEUECTL_DB).")
@click.option("--plugins-dir", metavar="DIR", help="Load every *.py in DIR as a plugin.")
@click.option("--color", type=click.Choice(COLOR_MODES, case_sensitive=False), envvar="QUEUECTL_COLOR",
              help="Colors on a terminal: auto (the default: unless NO_COLOR is set), always (pipes too), never. "
              "Also $QUEUECTL_COLOR.")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_show_version,
              help="Show the version and exit.")
@click.pass_context
def cli(ctx, config, db, plugins_dir, color):
    """queuectl: run shell commands as background jobs, with retries and a dead letter queue.

    \b
    Examples:
      queuectl enqueue "make report"          # by the shell
      queuectl enqueue -- rsync -a src/ dst/  # without a shell
      queuectl worker start --count 2
      queuectl list --last 10
    """
    set_color_mode(color and color.lower())
    if ctx.obj is None:
        ctx.obj = App(config, db, plugins_dir)


@cli.command()
@pass_app
def init(app):
    """Create the store (idempotent; also done on first use).

    \b
    Example:
      queuectl --db /srv/queue.db init
    """
    store = app.queue.store
    click.echo(f"store ready: {store.describe()['location']}")


# A --file batch is read whole before any of it is stored: 256 MiB is about two million small jobs.
MAX_JOBS_FILE_BYTES = 256 << 20


def _read_jobs(source) -> tuple[list, list, str]:
    """JSON lines, or one JSON array, from a file or stdin (read as bytes: errors name the line);
    returns the jobs, the number of each (its line, or its place in the array) and how to name one
    ("line {}", "job {} of the array").

    At most MAX_JOBS_FILE_BYTES are read: a batch is stored all or nothing, so it is held whole in
    memory first, and an endless input (``--file /dev/zero``, ``yes ... |``) would read until memory
    ran out."""
    data = source.read(MAX_JOBS_FILE_BYTES + 1)
    if len(data) > MAX_JOBS_FILE_BYTES:
        raise UsageError(f"the jobs file is larger than {MAX_JOBS_FILE_BYTES >> 20} MiB: split it into "
                         f"batches (each is stored all or nothing, so it is read whole first)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # valid as a whole exactly when every line is (lines end at ASCII bytes): find the first that is not
        for number, line in enumerate(data.splitlines(), 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UsageError(f"line {number}: not UTF-8 text (byte {exc.start + 1} of the line)") from None
        raise
    if text.lstrip().startswith("["):
        jobs = strict_json(text, "malformed JSON")       # starts with "[": a list once parsed
        return jobs, range(1, len(jobs) + 1), "job {} of the array"
    scan = models.strict_decoder().scan_once
    jobs, numbers = [], []
    for number, line in enumerate(text.splitlines(), 1):
        # The decoder's scanner alone, when the line is one JSON value and nothing else (what
        # strict_json returns then); anything else (blank, spaces around, not JSON) goes through
        # strict_json, which skips a blank line and names the error as it always has.
        try:
            job, end = scan(line, 0)
        except Exception:
            end = -1
        if end != len(line):
            if not line.strip():
                continue
            job = strict_json(line, f"line {number}: malformed JSON")
        jobs.append(job)
        numbers.append(number)
    return jobs, numbers, "line {}"


_PROGRAM: list = []     # [True] once main() runs as the program (see main)


def _enqueue_file(queue, specs: list, numbers: list, place: str) -> list:
    """Enqueue a file's jobs; a refused one is named by its line (``place`` formatted with its number).

    Run as the program, the cyclic garbage collector is paused meanwhile: every Job and row made
    lives until the batch is stored, so its full collections, ever longer as the batch grows, find
    nothing (a tenth of the CPU time of 100,000 jobs). Garbage is still freed by reference counting,
    and a cycle made meanwhile at the next collection after."""
    import gc

    paused = bool(_PROGRAM) and gc.isenabled()
    if paused:
        gc.disable()
    try:
        return queue.enqueue_many(specs, source="file")
    except JobValidationError:
        for spec, number in zip(specs, numbers):
            try:
                queue.build_job(spec)
            except JobValidationError as error:
                raise JobValidationError(f"{place.format(number)}: {error}") from None
        raise
    finally:
        if paused:
            gc.enable()


def strict_json(text: str, what: str) -> Any:
    """json.loads without NaN/Infinity, with one UsageError for every way a text can fail to be JSON."""
    try:
        return models.strict_loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what}: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:            # NaN/Infinity, or an integer of thousands of digits
        raise UsageError(f"{what}: {exc}") from None
    except RecursionError:
        raise UsageError(f"{what}: nested too deeply") from None


def _positional_job(text: str) -> dict:
    """A JSON object is a job; anything else is a shell command (`queuectl enqueue "echo hi"`).

    Text that opens like a JSON object but does not parse is malformed JSON, not a command: a typo
    in a JSON job must not be run by the shell. Only ``{`` then a blank and no ``"`` is a command
    (the shell's ``{ cmd; }`` group).
    """
    try:
        spec = models.strict_loads(text)
    except json.JSONDecodeError as exc:
        if re.match(r'\s*\{(\S|\s*("|\}|$))', text):
            raise UsageError(f"malformed JSON job: {exc.msg} at column {exc.colno}") from None
        return {"command": text}
    except (ValueError, RecursionError):     # NaN, a number of thousands of digits, deep nesting
        return strict_json(text, "malformed JSON job")
    if isinstance(spec, dict):
        return spec
    if isinstance(spec, list):
        raise UsageError("the JSON job must be an object, like '{\"command\": \"echo hi\"}'")
    return {"command": text}


def _enqueue_specs(words: tuple, jobs_file, argv: Optional[list], flags: dict) -> tuple[list, str, Optional[tuple]]:
    """The jobs to enqueue, their source, and for --file where each one is (its numbers and how to name one)."""
    given = [name for name, present in (("a job", bool(words)), ("--file", jobs_file is not None),
                                         ("-- CMD ARG...", argv is not None)) if present]
    if len(given) > 1:
        raise UsageError(f"give one of a JSON job or command, --file, or -- CMD ARG..., not {' and '.join(given)}")
    if len(words) > 1:
        raise UsageError("give the command as one argument (queuectl enqueue 'echo hi'), or run a program "
                         "without a shell: queuectl enqueue -- echo hi")
    if argv is not None:
        if not argv:
            raise UsageError("nothing after --: give the program to run and its arguments")
        if "command" in flags:
            raise UsageError("give either --command (run by the shell) or -- CMD ARG... (run without one)")
        return [dict(flags, argv=argv)], "cli", None
    if jobs_file is not None:
        specs, numbers, place = _read_jobs(jobs_file)
        if flags:
            specs = [dict(spec, **flags) if isinstance(spec, dict) else spec for spec in specs]
        return specs, "file", (numbers, place)
    if words:
        spec = _positional_job(words[0])
        if "command" in spec and "command" in flags and set(spec) == {"command"}:
            raise UsageError("the command is given twice: as an argument and with --command")
        return [dict(spec, **flags)], "cli", None
    if "command" not in flags:
        raise UsageError("nothing to enqueue: give a command, -- CMD ARG..., a JSON job or --file")
    return [flags], "cli", None


def _dependency(queue, ref: str) -> str:
    """An --after id given as a prefix; one that matches nothing is left for the store to name."""
    try:
        return queue.resolve(ref)
    except NotFound:
        return ref


@cli.command(cls=ArgvCommand)
@click.argument("job", nargs=-1, metavar="[JSON|COMMAND]")
@click.option("-f", "--file", "jobs_file", type=click.File("rb"), help="Read many jobs, JSON lines or a JSON array "
              "('-' for stdin); all are enqueued or none.")
@job_options
def enqueue(job, jobs_file, **options):
    """Enqueue a job; prints its id.

    A JSON object is a job; other text is a command run by /bin/sh. After `--`, a program and
    its arguments run without a shell, so `$(...)` or `*` in them stay literal.

    \b
    Examples:
      queuectl enqueue "echo hi"
      queuectl enqueue -- convert "$IN" -resize 50% out.png
      queuectl enqueue '{"id": "job1", "command": "sleep 2"}'
      queuectl enqueue --command "make report" --delay 10m --after build1 --label team=ops
      queuectl enqueue --env-from-caller -- ./deploy.sh staging
      queuectl enqueue --file jobs.jsonl
    """
    flags = spec_from_options(options)
    queue = get_queue()
    specs, source, where = _enqueue_specs(job, jobs_file, given_argv(), flags)
    if "after" in flags:
        # A prefix is resolved against the store, except an id that a job of the same --file takes.
        named = {spec.get("id") for spec in specs if isinstance(spec, dict)}
        after = [ref if ref in named else _dependency(queue, ref) for ref in flags["after"]]
        for spec in specs:
            if isinstance(spec, dict):
                spec["after"] = after
    ids = _enqueue_file(queue, specs, *where) if where is not None else queue.enqueue_many(specs, source=source)
    click.echo("\n".join(ids))          # one write: a bulk enqueue prints 100,000 ids


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(as_json):
    """The config and store in use, jobs per state, workers and the jobs they run.

    \b
    Example:
      queuectl status
    """
    data = get_queue().status()
    if as_json:
        emit_json(data)
        return
    store = data["store"]
    click.echo(f"config:  {data['config_file'] or '(none: built-in defaults)'}")
    if data.get("ignored_config"):
        click.echo(f"         ({data['ignored_config']} is not queuectl's: it names no queuectl setting)")
    click.echo(f"store:   {store['backend']} {store['location']} (schema {store['schema_version']})")
    echo(wrap_items("jobs:    ", [f"{state_text(state)} {n}" for state, n in data["counts"].items()]))
    for section, values in data["plugins"].items():
        click.echo(f"{section + ':':9}" + "  ".join(f"{k} {v}" for k, v in values.items()))
    workers = [w for w in data["workers"] if w["kind"] == "worker"]
    running = {r["worker"]: r for r in data["running"]}
    busy = sum(1 for w in workers if w["id"] in running)
    click.echo(f"workers: {len(workers)} ({busy} busy)")
    if workers:
        table(({"pid": w["pid"], "host": w["host"], "started": when(_epoch(w["started_at"])),
                "job": running.get(w["id"], {}).get("id") or "(idle)",
                "elapsed": human_duration(running[w["id"]]["elapsed"]) if w["id"] in running else "",
                "command": running.get(w["id"], {}).get("command")} for w in workers),
              ["pid", "host", "started", "job", "elapsed", "command"])


def _epoch(text: Optional[str]) -> Optional[float]:
    return models.parse_time(text) if text else None


@cli.command("list")
@click.option("--state", type=click.Choice(models.STATES), help="Only jobs in this state.")
@click.option("--queue", metavar="NAME", shell_complete=complete_queues, help="Only jobs of this queue.")
@click.option("--label", "labels", multiple=True, metavar="KEY[=VALUE]",
              help="Only jobs with this label (KEY alone: with any value); repeatable, all must match.")
@click.option("--grep", metavar="TEXT", help="Only jobs whose command contains TEXT (case-insensitive).")
@click.option("--since", metavar="DURATION|TIME", help="Only jobs enqueued since: 10m, 2h, 1d or an ISO-8601 time.")
@click.option("--last", type=Integer(models.RANGES["last"]), help="Only the newest N jobs (still oldest first).")
@click.option("--limit", type=Integer(), help="At most this many jobs, from the oldest.")
@click.option("--offset", type=Integer(), default=0, help="Skip this many jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of jobs.")
def list_jobs(state, queue, labels, grep, since, last, limit, offset, as_json):
    """List jobs in enqueue order.

    \b
    Examples:
      queuectl list --last 20
      queuectl list --state dead --since 1d
      queuectl list --label team=ops --grep backup --json
    """
    jobs = get_queue().list(state, limit, offset, queue=queue, labels=parse_pairs("--label", labels, False),
                            grep=grep, since=parse_since(since), last=last)
    render_jobs(jobs, as_json)


# Commands that only read never create a store: `--db tyop.db list` is an error, not a new empty queue.
for _read in (status, list_jobs):
    read_command(_read)


def main(argv: Optional[list] = None) -> None:
    """Entry point: one line on stderr and exit 1 or 2 for every error a user can cause.

    Run as the program (no ``argv``: the console script, ``python -m queuectl``), the objects
    that exist by now (the modules imported: click's and ours) are moved out of the garbage
    collector's sight with ``gc.freeze()``: they live until the process ends, and the collection
    at exit would otherwise walk all of them, a good part of a short command's cost. What the
    command creates from here on is collected (and finalized) as before, except that a bulk
    enqueue pauses the collector while it builds and stores its jobs (``_enqueue_file``).
    """
    if argv is None:
        import gc

        gc.freeze()
        _PROGRAM.append(True)
        _open_closed_standard_streams()
    try:
        code = cli.main(args=argv, prog_name="queuectl", standalone_mode=False)
        if isinstance(code, int) and not isinstance(code, bool):
            sys.exit(code)            # ctx.exit(N) / click Exit(N): click returns N outside standalone mode
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help())        # a bare group (`queuectl`, `queuectl dlq`) is a request for help
        sys.exit(EXIT_OK)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("queuectl: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"queuectl: error: {exc.format_message()}", err=True)
        sys.exit(EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
    except QueueError as exc:
        click.echo(f"queuectl: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(EXIT_FAILURE)
    except OSError as exc:
        if exc.filename is not None or exc.errno not in _WRITE_ERRORS:
            raise
        # A write to a stream (stdout on a full disk, a terminal gone): what was done is done, and
        # saying so is all that is left. The line may not reach a stderr that fails too.
        with contextlib.suppress(OSError, ValueError):
            click.echo(f"queuectl: error: cannot write the output: {exc.strerror}", err=True)
        sys.exit(EXIT_FAILURE)
    sys.exit(EXIT_OK)


_WRITE_ERRORS = frozenset((errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG, errno.EBADF, errno.ENXIO))


def _open_closed_standard_streams() -> None:
    """A standard stream the caller closed (`<&-`, `>&-`) is /dev/null from here on, as a daemon's are:
    a read of it is an empty input, a write to it goes nowhere (as Python treats a closed stdout), and
    nothing opened later (the store, a spool file) can take descriptor 0, 1 or 2, where a stray write
    meant for the stream would land in it."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)   # the lowest free: ``fd``
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))
