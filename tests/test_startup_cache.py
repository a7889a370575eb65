"""Start-up caches (queuectl/_cache.py): a cached result is used only while its sources are unchanged."""
from __future__ import annotations

import importlib
import json
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
    return sorted(p.name for p in folder.glob(f"{kind}-*.json")) if folder.is_dir() else []


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
    (entry,) = private_cache.glob("config-*.json")
    entry.write_text("{not json")
    assert config_module.read_config_file(path) == {"max-retries": 5}
    data = json.loads(entry.read_text())
    data["value"] = {"max-retries": 99}
    entry.write_text(json.dumps(data))
    os.chmod(entry, 0o666)                      # others can write it: not trusted
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
