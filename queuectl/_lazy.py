"""Built-in plugins imported only when one of their hooks is needed.

Every command opens a Queue, and a Queue calls every plugin's registration hooks (storage,
executors, job fields, settings) and, for the command line, ``queuectl_register_commands``.
Importing every built-in for that was most of the cost of one ``queuectl enqueue``. So what
those hooks register is recorded once, in a manifest cached by ``_cache`` under the exact
fingerprint of every file of the queuectl package (an edited, added or removed file is a
miss), and later runs register a stand-in module per built-in instead:

- its hooks are the built-in's own hooks, with the same names, arguments and hookimpl
  options, so pluggy calls them in the same order and ``queuectl plugins`` lists the same;
- a registration hook replays the recorded registration: names, defaults, help, schemes
  and URLs exactly as recorded, and in place of each callable (a store factory, a
  setting's parser, an executor, a job field's check) a stand-in that imports the module
  on first use and forwards to the real one;
- a command is known by its recorded name and help; running it (or its ``--help``)
  imports the module and parses the arguments with the real command;
- any other hook imports, at its first call, the module that defines its function, and
  forwards to it: the built-in's module, or a smaller one it took the function from (spool's
  and notify's status sections are in their own modules, so `status` does not import the
  spool watcher and the deliverer to show two counts).

Entry-point plugins and the plugins folder are always imported (see plugins.py). A value
the manifest cannot hold exactly, or ``QUEUECTL_NO_CACHE=1``, means the eager path: the
modules are imported and registered as themselves.
"""
from __future__ import annotations

import importlib
import os
import sys
from types import CellType, CodeType, FunctionType, ModuleType
from typing import Any, Callable, Optional

from . import _cache

VERSION = 2
REGISTRATIONS = ("queuectl_register_storage", "queuectl_register_executors", "queuectl_register_job_fields",
                 "queuectl_register_settings")
COMMANDS = "queuectl_register_commands"
COMMAND_FIELDS = ("help", "short_help", "hidden", "deprecated")


class NotCacheable(Exception):
    """A registration holds a value the manifest cannot record exactly."""


class LazyImport:
    """A module name bound at import, imported at its first use: ``json = LazyImport("json", globals())``.

    The first attribute looked up imports the module and puts it in place of this stand-in, so
    from then on the name is the module itself; a command that never uses it never imports it.
    """

    def __init__(self, name: str, namespace: dict, alias: Optional[str] = None):
        self._name, self._namespace, self._alias = name, namespace, alias or name.rpartition(".")[2]

    def __getattr__(self, attr: str):
        if attr.startswith("_"):
            raise AttributeError(attr)
        module = importlib.import_module(self._name)
        if self._namespace.get(self._alias) is self:
            self._namespace[self._alias] = module
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<{self._name}, imported on first use>"


class LazyPattern:
    """A regular expression compiled at its first use: ``NAME = LazyPattern(r"...")`` at module level.

    Compiling a pattern costs far more than most matches (a character class over wide Unicode
    ranges, an alternation of units), and a module-level ``re.compile`` pays it on every command
    that imports the module, used or not. The first method looked up compiles it and keeps the
    compiled pattern's methods on this object, so later calls go straight to them.
    """

    _METHODS = ("match", "fullmatch", "search", "sub", "subn", "split", "findall", "finditer")

    def __init__(self, pattern: str, flags: int = 0):
        self.pattern, self.flags = pattern, flags

    def __getattr__(self, name: str):
        # only reached for what is not on the object yet: the first method, or another attribute
        if name.startswith("_"):
            raise AttributeError(name)
        import re

        compiled = re.compile(self.pattern, self.flags)      # (re keeps it: a second lookup is a hit)
        self.__dict__.update((method, getattr(compiled, method)) for method in self._METHODS)
        return getattr(compiled, name)

    def __repr__(self) -> str:
        return f"LazyPattern({self.pattern!r})"


# --- the manifest: what each built-in registers ---------------------------------------------------


def package_folders() -> tuple:
    """The folders whose .py files the manifest's key fingerprints: the core's and the built-ins'."""
    root = os.path.dirname(os.path.abspath(__file__))
    return root, os.path.join(root, "builtin")


def package_fingerprint() -> list:
    """Every .py file of the queuectl package, by exact stat: a built-in's registrations depend on them."""
    prints = []
    for folder in package_folders():
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith(".py"))
        except OSError:
            return []
        prefix = os.path.join(folder, "")        # what os.path.join(folder, name) starts with
        prints.extend([prefix + n, _cache.fingerprint(prefix + n)] for n in names)
    return prints


def manifest_for(builtins) -> dict:
    """Import each built-in and record its hooks and registrations (raises NotCacheable)."""
    from .plugins import PluginManager
    from .hookspecs import PROJECT

    scanner = PluginManager(PROJECT)
    out = {}
    for _name, module_name in builtins:
        module = importlib.import_module(module_name)
        hooks = {}
        for attr in dir(module):
            opts = scanner.parse_hookimpl_opts(module, attr)
            if opts is None:
                continue
            if opts.get("hookwrapper") or opts.get("wrapper") or opts.get("specname"):
                raise NotCacheable(f"{module_name}.{attr}")
            from pluggy._hooks import varnames

            function = getattr(module, attr)
            hooks[attr] = {"opts": {k: v for k, v in opts.items() if v}, "args": list(varnames(function)[0])}
            home = _home(function, module_name)
            if home is not None:
                hooks[attr]["from"] = home
        entry = {"hooks": hooks}
        for hook in REGISTRATIONS:
            if hook in hooks:
                entry[hook] = [[_encode(list(args)), _encode(kwargs)] for args, kwargs in _record(module, hook)]
        if COMMANDS in hooks:
            entry[COMMANDS] = [[name, {f: getattr(cmd, f) for f in COMMAND_FIELDS}]
                               for name, cmd in _commands(module).items()]
            if not _cache.plain_json(entry[COMMANDS]):
                raise NotCacheable(f"{module_name} commands")
        out[module_name] = entry
    return out


def _home(function: Any, module_name: str) -> Optional[list]:
    """[module, name] of a hook function a built-in imported from another module of the package, where
    it is found again by that name (a forwarder then imports only that module); None otherwise."""
    home, name = getattr(function, "__module__", None), getattr(function, "__qualname__", "")
    module = sys.modules.get(home) if isinstance(home, str) and home != module_name else None
    if module is None or "." in name or getattr(module, name, None) is not function:
        return None
    path = getattr(module, "__file__", None)
    # Only a module whose file the manifest's key fingerprints, so that editing it is a miss.
    return [home, name] if path and os.path.dirname(os.path.abspath(path)) in package_folders() else None


def _record(module: ModuleType, hook: str) -> list:
    calls = []
    getattr(module, hook)(register=lambda *args, **kwargs: calls.append((args, kwargs)))
    return calls


def _commands(module: ModuleType) -> dict:
    import click

    group = click.Group("plugins")
    module.queuectl_register_commands(cli=group)
    return dict(group.commands)


def _encode(value: Any) -> Any:
    """A registered value as JSON: a plain value as it is; {"t": tuple}, {"l": list}, {"m": mapping},
    {"s": Setting fields}, or {"d": 1} for a callable or object that stays in the module."""
    from .config import Setting

    if value is None or isinstance(value, (str, bool, int, float)):
        if not _cache.plain_json(value):
            raise NotCacheable(repr(value))
        return value
    if type(value) is tuple:
        return {"t": [_encode(v) for v in value]}
    if type(value) is list:
        return {"l": [_encode(v) for v in value]}
    if type(value) is dict and all(isinstance(k, str) for k in value):
        return {"m": {k: _encode(v) for k, v in value.items()}}
    if type(value) is Setting:
        import dataclasses

        return {"s": {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(Setting)}}
    if callable(value) or hasattr(value, "__dict__"):
        return {"d": 1}
    raise NotCacheable(repr(value))


# --- the stand-ins ---------------------------------------------------------------------------------


class Loader:
    """Imports one built-in on first need and finds the real values behind the stand-ins."""

    def __init__(self, module_name: str):
        self.module_name = module_name
        self._module: Optional[ModuleType] = None
        self._calls: dict[str, list] = {}
        self._commands: Optional[dict] = None

    @property
    def module(self) -> ModuleType:
        if self._module is None:
            self._module = importlib.import_module(self.module_name)
        return self._module

    def value(self, hook: str, path: tuple) -> Any:
        """The real value at ``path`` (call index, "a"/"k", position or key, ...) of a recorded registration."""
        if hook not in self._calls:
            self._calls[hook] = _record(self.module, hook)
        args, kwargs = self._calls[hook][path[0]]
        value: Any = args if path[1] == "a" else kwargs
        for step in path[2:]:
            value = getattr(value, step) if isinstance(step, str) and not isinstance(value, (dict, list, tuple)) \
                else value[step]
        return value

    def function(self, hook: str, home: Optional[list]):
        """The real function of a forwarded hook: from the module that defines it (see _home)."""
        if home is None:
            return getattr(self.module, hook)
        return getattr(importlib.import_module(home[0]), home[1])

    def command(self, name: str):
        if self._commands is None:
            self._commands = _commands(self.module)
        return self._commands[name]


class Deferred:
    """Stands for a callable or object a built-in registered: imports it at first use."""

    __slots__ = ("_loader", "_hook", "_path", "_real")

    def __init__(self, loader: Loader, hook: str, path: tuple):
        self._loader, self._hook, self._path, self._real = loader, hook, path, None

    def _resolve(self):
        if self._real is None:
            self._real = self._loader.value(self._hook, self._path)
        return self._real

    def __call__(self, *args, **kwargs):
        return self._resolve()(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._resolve(), name)

    def __repr__(self) -> str:
        return f"<deferred {self._loader.module_name} {self._hook}{list(self._path)}>"


def _decode(data: Any, loader: Loader, hook: str, path: tuple) -> Any:
    # (a plain value, the most common, is decoded in place by the callers: no call for it)
    if type(data) is not dict:
        return data
    if "t" in data:
        return tuple(_decode_items(enumerate(data["t"]), loader, hook, path).values())
    if "l" in data:
        return list(_decode_items(enumerate(data["l"]), loader, hook, path).values())
    if "m" in data:
        return _decode_items(data["m"].items(), loader, hook, path)
    if "s" in data:
        from .config import Setting

        return Setting(**_decode_items(data["s"].items(), loader, hook, path))
    return Deferred(loader, hook, path)


def _decode_items(items, loader: Loader, hook: str, path: tuple) -> dict:
    return {k: _decode(v, loader, hook, path + (k,)) if type(v) is dict else v for k, v in items}


def _replay(loader: Loader, hook: str, calls: list) -> Callable:
    def replay(register):
        for index, (args, kwargs) in enumerate(calls):
            register(*_decode(args, loader, hook, (index, "a")), **_decode(kwargs, loader, hook, (index, "k")))
    return replay


def _command_replay(loader: Loader, commands: list) -> Callable:
    def replay(cli):
        for name, fields in commands:
            cli.add_command(lazy_command(loader, name, fields))
    return replay


def lazy_command(loader: Loader, name: str, fields: dict):
    import click

    class LazyCommand(click.Command):
        """Listed by its recorded name and help; parsing and running go to the real command."""

        def make_context(self, info_name, args, parent=None, **extra):
            return loader.command(name).make_context(info_name, args, parent=parent, **extra)

        def invoke(self, ctx):
            return loader.command(name).invoke(ctx)

    return LazyCommand(name, **fields)


def _forwarder(loader: Loader, hook: str, args: list, home: Optional[list] = None) -> Callable:
    """A function with the hook's own argument names that imports the hook's module and calls it.

    pluggy passes the arguments in that order; after the first call the real function is called
    directly (a validator runs once per job of a bulk enqueue).
    """
    def first_call(*values):
        real[0] = loader.function(hook, home)
        return real[0](*values)

    real = [first_call]
    code = _forwarding_code(len(args)).replace(co_varnames=tuple(args), co_name=hook, co_qualname=hook)
    return FunctionType(code, globals(), hook, None, (CellType(real),))


def _forwarding_code(arity: int) -> CodeType:
    """The code of ``def f(a0, ..., aN): return _real[0](a0, ..., aN)``, ``_real`` a free variable.

    Each forwarder is this code with the hook's argument names put in (pluggy reads them from
    ``co_varnames``): compiling a function per hook cost 200,000 instructions each, on every run.
    """
    code = _FORWARDING.get(arity)
    if code is None:            # more arguments than any hook has today
        params = ", ".join(f"a{i}" for i in range(arity))
        scope: dict = {}
        exec(f"def outer(_real):\n    def f({params}):\n        return _real[0]({params})\n    return f\n", scope)  # noqa: S102
        code = _FORWARDING[arity] = scope["outer"]([None]).__code__
    return code


def _forwarding_templates(_real):
    def f0():
        return _real[0]()

    def f1(a0):
        return _real[0](a0)

    def f2(a0, a1):
        return _real[0](a0, a1)

    def f3(a0, a1, a2):
        return _real[0](a0, a1, a2)

    def f4(a0, a1, a2, a3):
        return _real[0](a0, a1, a2, a3)
    return f0, f1, f2, f3, f4


_FORWARDING = {arity: f.__code__ for arity, f in enumerate(_forwarding_templates(None))}


def stand_in(module_name: str, entry: dict) -> ModuleType:
    """A module object whose hooks stand for the built-in's (see the module docstring)."""
    from .hookspecs import hookimpl

    loader = Loader(module_name)
    plugin = ModuleType(module_name, f"stand-in for {module_name}, imported on first use")
    plugin.__queuectl_loader__ = loader
    for hook, info in entry["hooks"].items():
        if hook in REGISTRATIONS:
            function = _replay(loader, hook, entry.get(hook, []))
        elif hook == COMMANDS:
            function = _command_replay(loader, entry.get(hook, []))
        else:
            function = _forwarder(loader, hook, info["args"], info.get("from"))
        function.__name__ = function.__qualname__ = hook
        setattr(plugin, hook, hookimpl(**info["opts"])(function))
    return plugin


# --- entry point -----------------------------------------------------------------------------------


def builtin_plugins(builtins, blocked: Callable[[str], bool]) -> list[tuple[str, Any]]:
    """(name, plugin) for each built-in not blocked: stand-ins when the manifest is cached, else the modules.

    The manifest covers every built-in, blocked or not, so that one entry serves every config.
    """
    builtins = [list(b) for b in builtins]
    chosen = [(name, module_name) for name, module_name in builtins if not blocked(name)]
    key = _key(builtins) if _cache.enabled() else None
    cache_name = os.path.dirname(os.path.abspath(__file__))
    manifest = _cache.load("builtins", cache_name, key) if key is not None else None
    if isinstance(manifest, dict):
        try:
            return [(name, stand_in(module_name, manifest[module_name])) for name, module_name in chosen]
        except (KeyError, TypeError, ValueError, AttributeError):
            pass                         # a manifest of another shape: rebuild it
    plugins = [(name, importlib.import_module(module_name)) for name, module_name in chosen]
    if key is not None and _cache.settled([p for _path, p in key[3]]):
        try:
            manifest = manifest_for(builtins)
        except NotCacheable:
            return plugins
        if key == _key(builtins):        # nothing changed while we looked
            _cache.store("builtins", cache_name, key, manifest)
    return plugins


def _key(builtins: list) -> Optional[list]:
    prints = package_fingerprint()
    return [VERSION, sys.version, builtins, prints] if prints else None
