"""Start-up caches (queuectl/_cache.py): a cached result is used only while its sources are unchanged."""
from __future__ import annotations

import importlib
import json
import marshal
import subprocess
import os
import sys
import time

import pluggy
import pytest

from queuectl import _cache, hookspecs
from queuectl import config as config_module
from queuectl import plugins


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("QUEUECTL_NO_CACHE", raising=False)
    return tmp_path / "cache" / "queuectl"


def cache_files(folder, kind):
    return sorted(p.name for p in folder.glob(f"{kind}-*{_cache.SUFFIX}")) if folder.is_dir() else []


def make_old(path, seconds=60):
    """Back-date a file: the caches take only sources that have settled (ctime is back-dated by SETTLE=0)."""
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


# --- config.yaml -----------------------------------------------------------------------------


def test_config_parse_is_cached_and_a_change_is_seen(tmp_path, monkeypatch, private_cache):
    monkeypatch.setattr(_cache, "SETTLE", 0.0)
    path = tmp_path / "config.yaml"
    path.write_text("max-retries: 5\n")
    make_old(path)
    assert config_module.read_config_file(path) == {"max-retries": 5}
    assert len(cache_files(private_cache, "config")) == 1
    with monkeypatch.context() as patch:       # a hit does not parse YAML again
        patch.setattr(config_module, "_parse_config_file", lambda p: pytest.fail("parsed despite the cache"))
        assert config_module.read_config_file(path) == {"max-retries": 5}
    path.write_text("max-retries: 7\n")       # same size, rewritten in place
    make_old(path)
    assert config_module.read_config_file(path) == {"max-retries": 7}


def test_a_freshly_written_config_is_not_cached(tmp_path, private_cache):
    path = tmp_path / "config.yaml"
    path.write_text("max-retries: 5\n")
    assert config_module.read_config_file(path) == {"max-retries": 5}
    assert cache_files(private_cache, "config") == []      # changed less than SETTLE seconds ago


def test_config_values_json_cannot_hold_exactly_are_not_cached(tmp_path, monkeypatch, private_cache):
    monkeypatch.setattr(_cache, "SETTLE", 0.0)
    path = tmp_path / "config.yaml"
    path.write_text("when: 2024-01-01\nnested: {1: one}\n")
    make_old(path)
    first = config_module.read_config_file(path)
    assert cache_files(private_cache, "config") == []
    assert config_module.read_config_file(path) == first


def test_corrupt_or_foreign_cache_is_a_miss(tmp_path, monkeypatch, private_cache):
    monkeypatch.setattr(_cache, "SETTLE", 0.0)
    path = tmp_path / "config.yaml"
    path.write_text("max-retries: 5\n")
    make_old(path)
    config_module.read_config_file(path)
    (entry,) = private_cache.glob(f"config-*{_cache.SUFFIX}")
    good = entry.read_bytes()
    for garbage in (b"{not marshal", good[: len(good) // 2], marshal.dumps({"a": 1}), b""):
        entry.write_bytes(garbage)
        assert config_module.read_config_file(path) == {"max-retries": 5}
    header, name, key, _value = marshal.loads(good)
    for changed in ((header, name, key, {"max-retries": 99}),):
        entry.write_bytes(marshal.dumps(changed))
        assert config_module.read_config_file(path) == {"max-retries": 99}   # the entry is what is read...
        os.chmod(entry, 0o666)                  # ...but others can write it: not trusted
        assert config_module.read_config_file(path) == {"max-retries": 5}
        os.chmod(entry, 0o600)
    older = (header[0] - 1,) + header[1:]       # another format or another Python: a miss
    for stale in ((older, name, key, {"max-retries": 99}), ((header[0], header[1], "2.7"), name, key, {"x": 1}),
                  (header, name + "x", key, {"max-retries": 99})):
        entry.write_bytes(marshal.dumps(stale))
        assert config_module.read_config_file(path) == {"max-retries": 5}


def test_no_cache_switch(tmp_path, monkeypatch, private_cache):
    monkeypatch.setattr(_cache, "SETTLE", 0.0)
    monkeypatch.setenv("QUEUECTL_NO_CACHE", "1")
    path = tmp_path / "config.yaml"
    path.write_text("max-retries: 5\n")
    make_old(path)
    assert config_module.read_config_file(path) == {"max-retries": 5}
    assert not private_cache.exists()


# --- entry points ----------------------------------------------------------------------------------


def add_distribution(site, dist, module, group_lines):
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[queuectl]\n" + "".join(line + "\n" for line in group_lines))
    (site / f"{module}.py").write_text(
        "from queuectl import hookimpl\n\n"
        "@hookimpl\n"
        "def queuectl_status_info(queue):\n"
        f"    return {{'{module}': {{'ok': 1}}}}\n")
    for path in (info / "METADATA", info / "entry_points.txt", info):
        make_old(path)
    return info


def names(specs):
    return sorted(name for name, _value, _load in specs)


def test_entry_point_scan_is_cached_and_sees_every_change(tmp_path, monkeypatch, private_cache):
    monkeypatch.setattr(_cache, "SETTLE", 0.0)
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    add_distribution(site, "plugone", "qc_plugone", ["one = qc_plugone"])
    assert "one" in names(plugins.entry_point_specs())
    assert len(cache_files(private_cache, "entry-points")) == 1

    import importlib.metadata as metadata

    with monkeypatch.context() as patch:       # a hit does not scan the installed distributions
        patch.setattr(metadata, "entry_points", lambda **kw: pytest.fail("scanned despite the cache"))
        specs = plugins.entry_point_specs()
        assert "one" in names(specs)
        loaded = dict((n, load) for n, _v, load in specs)["one"]()
        assert loaded is importlib.import_module("qc_plugone")

    # a new distribution is seen
    add_distribution(site, "plugtwo", "qc_plugtwo", ["two = qc_plugtwo"])
    assert {"one", "two"} <= set(names(plugins.entry_point_specs()))

    # an edited entry_points.txt is seen
    ep_file = site / "plugone-1.0.dist-info" / "entry_points.txt"
    ep_file.write_text("[queuectl]\nuno = qc_plugone\n")
    make_old(ep_file)
    found = set(names(plugins.entry_point_specs()))
    assert "uno" in found and "one" not in found

    # a removed distribution is gone
    for path in sorted((site / "plugtwo-1.0.dist-info").iterdir()):
        path.unlink()
    (site / "plugtwo-1.0.dist-info").rmdir()
    assert "two" not in names(plugins.entry_point_specs())


def test_cached_entry_points_still_load_and_register(tmp_path, monkeypatch, private_cache):
    monkeypatch.setattr(_cache, "SETTLE", 0.0)
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    add_distribution(site, "plugthree", "qc_plugthree", ["three = qc_plugthree"])
    for _ in range(2):                      # a miss, then a hit: the plugin is registered both times
        pm = plugins.get_plugin_manager()
        assert pm.get_plugin("three") is importlib.import_module("qc_plugthree")
    assert cache_files(private_cache, "entry-points")


def test_plugins_folder_is_never_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(_cache, "SETTLE", 0.0)
    folder = tmp_path / "plugins"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    (folder / "first.py").write_text("from queuectl import hookimpl\n\n@hookimpl\ndef queuectl_status_info(queue):\n"
                                      "    return None\n")
    assert plugins.get_plugin_manager(str(folder)).get_plugin("first") is not None
    (folder / "second.py").write_text("from queuectl import hookimpl\n\n@hookimpl\ndef queuectl_status_info(queue):\n"
                                       "    return None\n")
    pm = plugins.get_plugin_manager(str(folder))
    assert pm.get_plugin("first") is not None and pm.get_plugin("second") is not None


# --- the quicker plugin scan finds what pluggy finds ------------------------------------------------


def test_plugin_manager_scan_matches_pluggy():
    modules = [importlib.import_module(m) for _name, m in plugins.BUILTINS] + [hookspecs, plugins, config_module]
    ours, theirs = plugins.PluginManager(hookspecs.PROJECT), pluggy.PluginManager(hookspecs.PROJECT)
    for module in modules:
        for name in dir(module):
            assert ours.parse_hookimpl_opts(module, name) == theirs.parse_hookimpl_opts(module, name), name
            assert ours.parse_hookspec_opts(module, name) == theirs.parse_hookspec_opts(module, name), name

    class Plugin:               # classes and instances go through pluggy unchanged
        @hookspecs.hookimpl
        def queuectl_status_info(self, queue):
            return None
    for plugin in (Plugin, Plugin()):
        assert ours.parse_hookimpl_opts(plugin, "queuectl_status_info") == \
            theirs.parse_hookimpl_opts(plugin, "queuectl_status_info")


def test_package_exports_load_on_first_use():
    import queuectl

    assert queuectl.Queue is importlib.import_module("queuectl.queue").Queue
    assert queuectl.hookimpl is hookspecs.hookimpl
    assert "Job" in dir(queuectl)
    with pytest.raises(AttributeError):
        queuectl.no_such_name  # noqa: B018
    assert sys.modules["queuectl"].__version__


# --- built-ins imported only when their hooks are needed (queuectl/_lazy.py) --------------------------

from queuectl import _lazy  # noqa: E402

LOADED = ("import sys\nfrom queuectl.cli import main\nsys.argv = ['queuectl'] + sys.argv[1:]\n"
          "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
          "print(sorted(m for m in sys.modules if m.startswith('queuectl.builtin.') and m != 'queuectl.builtin._rows'),"
          " code, file=sys.stderr)\n")


def run_cli(tmp_path, *args, env=None):
    """`queuectl ARGS` in a fresh interpreter: stdout, and the built-in modules it imported."""
    (tmp_path / "config.yaml").write_text("db: queue.db\n")
    full = {**os.environ, "QUEUECTL_CONFIG": str(tmp_path / "config.yaml"), **(env or {})}
    proc = subprocess.run([sys.executable, "-c", LOADED, *args], cwd=tmp_path, env=full, capture_output=True,
                          text=True, timeout=120)
    modules, code = proc.stderr.strip().splitlines()[-1].rsplit(" ", 1)
    assert code in ("0", "None"), proc.stderr
    return proc.stdout, set(json.loads(modules.replace("'", '"')))


def wait_for_settled_package():
    """The manifest is cached only once the package's files are SETTLE seconds old (just edited: wait)."""
    newest = max(max(p[0], p[1]) for _path, p in _lazy.package_fingerprint()) / 1e9
    time.sleep(max(0.0, newest + _cache.SETTLE + 0.1 - time.time()))


def test_commands_import_only_the_built_ins_they_use(tmp_path, private_cache):
    wait_for_settled_package()
    _out, first = run_cli(tmp_path, "enqueue", "-c", "true")      # empty cache: every built-in, as before
    assert {m for _n, m in plugins.BUILTINS} <= first
    assert cache_files(private_cache, "builtins")
    _out, loaded = run_cli(tmp_path, "enqueue", "-c", "true")
    assert loaded == {"queuectl.builtin.validate", "queuectl.builtin.sqlite_store"}
    out, loaded = run_cli(tmp_path, "list")
    assert loaded == {"queuectl.builtin.sqlite_store"} and out.count("true") == 2
    out, loaded = run_cli(tmp_path, "--help")
    assert loaded == set() and all(f"\n  {name} " in out for name in ("dlq", "schedule", "spool"))
    out, loaded = run_cli(tmp_path, "dlq", "list", "--json")        # a stand-in command runs the real one
    assert json.loads(out) == [] and "queuectl.builtin.dlq" in loaded
    out, _ = run_cli(tmp_path, "worker", "start", "--help")         # plugin options of `worker start`
    assert "--spool DIR" in out
    _out, loaded = run_cli(tmp_path, "enqueue", "-c", "true", env={"QUEUECTL_NO_CACHE": "1"})
    assert {m for _n, m in plugins.BUILTINS} <= loaded


def test_status_imports_only_the_modules_of_the_sections_it_shows(tmp_path, private_cache):
    """spool's and notify's status sections are functions those plugins take from smaller modules:
    `status` with warm caches imports those, not the watcher and the deliverer, and prints the same."""
    wait_for_settled_package()
    outbox = ".queue.db.notify"                                     # the default: beside the store
    for folder in ("spool/work", "spool/rejected", f"{outbox}/failed"):
        (tmp_path / folder).mkdir(parents=True)
    for name in ("spool/a.json", "spool/.b.json.tmp", "spool/work/c", "spool/rejected/d.json",
                 "spool/rejected/d.json.error", f"{outbox}/1-evt_a.webhook.json", f"{outbox}/failed/2-evt_b.webhook.json"):
        (tmp_path / name).write_text("{}")
    run_cli(tmp_path, "init")                                       # empty cache: the manifest is written
    eager, loaded = run_cli(tmp_path, "status", env={"QUEUECTL_NO_CACHE": "1"})
    assert {"queuectl.builtin.spool", "queuectl.builtin.notify"} <= loaded
    out, loaded = run_cli(tmp_path, "status")
    assert loaded == {"queuectl.builtin.sqlite_store", "queuectl.builtin.spool_folder",
                      "queuectl.builtin.notify_outbox"}
    assert out == eager and "pending 1  failed 1" in out and "waiting 2  rejected 1" in out


def registrations(queue):
    settings = {n: (s.default, s.help, s.file_only, s.path, s.plugin) for n, s in queue.config.settings.items()}
    return ({n: (e[1], e[2]) for n, e in queue.storages.items()}, {n: e[1:] for n, e in queue.executors.items()},
            {n: e[1:] for n, e in queue.job_fields.items()}, settings)


def commands(pm):
    import click

    group = click.Group("x")
    pm.hook.queuectl_register_commands(cli=group)
    return {n: (c.get_short_help_str(), c.hidden) for n, c in group.commands.items()}


def test_stand_ins_register_exactly_what_the_modules_do(tmp_path, monkeypatch):
    from queuectl.queue import Queue

    (tmp_path / "config.yaml").write_text("db: queue.db\n")
    opened = {}
    for mode in ("eager", "lazy"):
        monkeypatch.setattr(_cache, "SETTLE", 0.0)
        if mode == "eager":
            monkeypatch.setenv("QUEUECTL_NO_CACHE", "1")
        else:
            monkeypatch.delenv("QUEUECTL_NO_CACHE")
            plugins.get_plugin_manager(entry_points=False)           # a miss: records the manifest
        queue = Queue.open(config=str(tmp_path / "config.yaml"), env={})
        opened[mode] = queue
    eager, lazy = opened["eager"], opened["lazy"]
    assert isinstance(eager.pm.get_plugin("spool"), type(plugins)) and eager.pm.get_plugin("spool").__name__ \
        == "queuectl.builtin.spool"
    assert hasattr(lazy.pm.get_plugin("spool"), "__queuectl_loader__"), "the stand-in, not the module"
    assert registrations(lazy) == registrations(eager)
    assert plugins.describe(lazy.pm) == plugins.describe(eager.pm)
    assert commands(lazy.pm) == commands(eager.pm)
    for queue in (eager, lazy):                # deferred parsers and checks refuse the same way
        with pytest.raises(Exception) as refused:
            queue.config.parse("spool-observer", "bogus")
        assert "expected one of native, polling, off" in str(refused.value)
        assert queue.config.parse("backoff-jitter", "0.5") == 0.5
        assert queue.job_fields["retry_on"][0]("75,69") == eager.job_fields["retry_on"][0]("75,69")
        assert type(queue.executor("shell").start).__name__ == "method"
        queue.close()


def test_a_changed_package_is_a_miss(tmp_path, monkeypatch, private_cache):
    monkeypatch.setattr(_cache, "SETTLE", 0.0)
    plugins.get_plugin_manager(entry_points=False)
    assert hasattr(plugins.get_plugin_manager(entry_points=False).get_plugin("dlq"), "__queuectl_loader__")
    real = _lazy.package_fingerprint
    edited = lambda: [[path, [p[0] + 1, *p[1:]] if path.endswith("dlq.py") else p] for path, p in real()]
    monkeypatch.setattr(_lazy, "package_fingerprint", edited)       # as if dlq.py had just been edited
    assert plugins.get_plugin_manager(entry_points=False).get_plugin("dlq") is importlib.import_module(
        "queuectl.builtin.dlq")
    assert any(path.endswith(os.path.join("builtin", "dlq.py")) for path, _ in real())


def test_a_plugin_added_or_changed_after_the_caches_are_warm_is_used_at_once(tmp_path, private_cache):
    """The caches never skip a plugin: one dropped into the plugins folder, or edited, after every
    cache is written is loaded and called by the very next command."""
    wait_for_settled_package()
    folder = tmp_path / "plugins"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    (tmp_path / "config.yaml").write_text("db: queue.db\nplugins-dir: plugins\n")
    time.sleep(_cache.SETTLE + 0.1)             # the config is cached once it has settled (its ctime too)
    env = {**os.environ, "QUEUECTL_CONFIG": str(tmp_path / "config.yaml")}

    def enqueue(word):
        return subprocess.run([sys.executable, "-m", "queuectl", "enqueue", "-c", f"echo {word}"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)

    for _ in range(2):                          # the second run reads every cache the first wrote
        assert enqueue("LATE").returncode == 0
    assert cache_files(private_cache, "builtins") and cache_files(private_cache, "config")
    validator = ("from queuectl import hookimpl, JobValidationError\n\n@hookimpl\n"
                 "def queuectl_validate_job(job, queue):\n    if {word!r} in job['command']:\n"
                 "        raise JobValidationError('refused {word}')\n")
    path = folder / "late.py"
    path.write_text(validator.format(word="LATE"))
    os.chmod(path, 0o644)
    proc = enqueue("LATE")
    assert proc.returncode == 2 and proc.stderr.strip() == "queuectl: error: refused LATE"
    path.write_text(validator.format(word="EDIT"))      # same size, rewritten in place at once
    assert enqueue("LATE").returncode == 0
    proc = enqueue("EDIT")
    assert proc.returncode == 2 and proc.stderr.strip() == "queuectl: error: refused EDIT"


def run_noting_import(tmp_path, module: str, *args) -> tuple[str, str, bool]:
    """(stdout, stderr, whether ``module`` was imported) of one CLI run in a fresh interpreter."""
    check = ("import sys\nfrom queuectl.cli import main\nsys.argv = ['queuectl'] + sys.argv[1:]\n"
             f"try:\n    main()\nexcept SystemExit:\n    pass\nprint('imported', {module!r} in sys.modules, "
             "file=sys.stderr)\n")
    (tmp_path / "config.yaml").write_text("db: queue.db\n")
    env = {**os.environ, "QUEUECTL_CONFIG": str(tmp_path / "config.yaml")}
    proc = subprocess.run([sys.executable, "-c", check, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    return proc.stdout, proc.stderr, proc.stderr.strip().splitlines()[-1] == "imported True"


def test_quick_commands_leave_the_other_core_commands_unimported(tmp_path, private_cache):
    def imports_more(*args):
        out, _, imported = run_noting_import(tmp_path, "queuectl.cli_more", *args)
        return out, imported

    assert imports_more("enqueue", "-c", "true")[1] is False
    assert imports_more("list", "--limit", "5")[1] is False
    assert imports_more("status")[1] is False
    out, more = imports_more("show", "--help")
    assert more and "Usage: queuectl show" in out
    out, more = imports_more("--help")
    listed = {line.split()[0] for line in out.split("Commands:")[1].splitlines() if line.startswith("  ")}
    assert more and {"cancel", "edit", "retry", "purge", "queue", "worker", "show", "logs", "stats", "config",
                     "plugins", "completion", "init", "enqueue", "status", "list", "dlq"} <= listed


def test_short_commands_do_not_import_locale_and_help_and_version_read_as_clicks(tmp_path, private_cache):
    """The core's help and version options are made without click's gettext lookups (the first imports
    locale): a short command never imports it, and the options read, parse and print as click's do."""
    import click
    from importlib.metadata import version

    def run(*args):
        return run_noting_import(tmp_path, "locale", *args)

    wait_for_settled_package()
    assert run("enqueue", "-c", "true")[2] is True         # empty caches: every built-in is imported, and click
    for args in (("enqueue", "-c", "true"), ("status",), ("list", "--limit", "5")):
        assert run(*args)[2] is False, args
    out, _, _ = run("--version")
    assert out == f"queuectl, version {version('queuectl')}\n"
    reference = click.Command("x")
    with click.Context(reference, help_option_names=["-h", "--help"]) as ctx:    # click's own help option
        expected = [" ".join(line.split()) for line in reference.get_help(ctx).splitlines() if "--help" in line]
    for args in (("-h",), ("--help",), ("status", "-h"), ("list", "--help")):
        out, _, imported = run(*args)
        assert out.startswith("Usage: queuectl") and expected == [" ".join(line.split()) for line in out.splitlines()
                                                                   if "--help" in line], args
        assert imported is False, args                       # the pages' titles are not looked up either
    _, err, _ = run("list", "--no-such")
    assert err.splitlines()[0] == "queuectl: error: No such option '--no-such'."


def _clicks_own_page(command, ctx) -> str:
    """The help page of ``command`` as click's own ``format_help`` writes it: click's formatter and its
    ``format_options`` and ``format_commands`` (which queuectl's classes replace), the rest the command's."""
    import click

    shown = ctx.make_formatter()
    formatter = click.HelpFormatter(width=shown.width, max_width=ctx.max_content_width)
    command.format_usage(ctx, formatter)
    command.format_help_text(ctx, formatter)
    if hasattr(command, "format_arguments"):             # click >= 8.2
        command.format_arguments(ctx, formatter)
    click.Command.format_options(command, ctx, formatter)
    if isinstance(command, click.Group):
        click.Group.format_commands(command, ctx, formatter)
    command.format_epilog(ctx, formatter)
    return formatter.getvalue().rstrip("\n")


PLUGIN_COMMAND = """
import click
from queuectl import hookimpl


@hookimpl
def queuectl_register_commands(cli):
    @cli.command(help="Greet NAME, a command from a plugin.")
    @click.argument("name")
    @click.option("--loud", is_flag=True, help="Shout.")
    def greet(name, loud):
        click.echo(name)
"""


@pytest.mark.parametrize("width", ["50", "80", "200"])
def test_every_help_page_is_clicks_own_rendering(tmp_path, private_cache, monkeypatch, width):
    """queuectl's help pages skip click's gettext lookups of their titles; each page, every command and
    group of the core and a plugin's command, reads exactly as click itself would write it."""
    import click

    from queuectl import cli as cli_module
    from queuectl.cli import cli

    (tmp_path / "plugins").mkdir(mode=0o755)
    (tmp_path / "plugins" / "extra.py").write_text(PLUGIN_COMMAND)
    (tmp_path / "plugins" / "extra.py").chmod(0o644)
    (tmp_path / "config.yaml").write_text("db: queue.db\nplugins-dir: plugins\n")
    monkeypatch.setenv("QUEUECTL_CONFIG", str(tmp_path / "config.yaml"))
    monkeypatch.setenv("COLUMNS", width)
    cli_module._all_commands()
    seen = []

    def check(command, ctx):
        assert command.get_help(ctx) == _clicks_own_page(command, ctx), ctx.command_path
        seen.append(ctx.command_path)
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                with sub.context_class(sub, info_name=name, parent=ctx) as sub_ctx:
                    check(sub, sub_ctx)

    with cli.context_class(cli, info_name="queuectl", help_option_names=["-h", "--help"]) as ctx:
        check(cli, ctx)
    assert {"queuectl", "queuectl enqueue", "queuectl worker start", "queuectl greet"} <= set(seen), seen
    assert len(seen) > 30


def test_short_commands_do_not_run_dataclass_and_the_records_still_are_dataclasses(tmp_path, private_cache):
    """@dataclass runs on a record when its fields are first asked for (see models.deferred_dataclass),
    so a short command with warm caches never imports dataclasses; a record is one all the same."""
    wait_for_settled_package()
    run_noting_import(tmp_path, "dataclasses", "enqueue", "-c", "true")           # fills the caches
    for args in (("enqueue", "-c", "true"), ("status",), ("list", "--limit", "5")):
        assert run_noting_import(tmp_path, "dataclasses", *args)[2] is False, args
    check = ("import dataclasses, sys\nfrom queuectl.models import Job\nfrom queuectl.store import WorkerInfo\n"
             "job = Job('a', 'true')\nassert dataclasses.is_dataclass(job) and dataclasses.is_dataclass(WorkerInfo)\n"
             "names = [f.name for f in dataclasses.fields(job)]\n"
             "assert names[:3] == ['id', 'command', 'state'] and 'env' in names and 'labels' in names\n"
             "env = next(f for f in dataclasses.fields(Job) if f.name == 'env')\n"
             "assert env.default_factory is dict and env.default is dataclasses.MISSING\n"
             "assert dataclasses.replace(job, command='false').command == 'false'\n"
             "assert dataclasses.asdict(job)['env'] == {} and Job.__match_args__[:2] == ('id', 'command')\n"
             "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert proc.stdout == "ok\n", proc.stderr
