"""Every hook is documented in docs/hooks.md under a heading with its exact signature."""
import inspect
import re
from pathlib import Path

from queuectl import hookspecs

DOC = Path(__file__).resolve().parent.parent / "docs" / "hooks.md"
HEADING = re.compile(r"^### `(queuectl_\w+)\(([^)]*)\)`$", re.M)


def documented():
    return {name: [a.strip() for a in args.split(",") if a.strip()] for name, args in HEADING.findall(DOC.read_text())}


def specs():
    return {name: list(inspect.signature(getattr(hookspecs, name)).parameters)
            for name in dir(hookspecs) if name.startswith("queuectl_")}


def test_every_hook_is_documented_with_its_signature():
    docs, spec = documented(), specs()
    assert set(spec) <= set(docs), f"undocumented hooks: {sorted(set(spec) - set(docs))}"
    for name, params in spec.items():
        assert docs[name] == params, f"{name}: documented ({', '.join(docs[name])}) but spec is ({', '.join(params)})"


def test_no_documented_hook_is_missing_from_the_spec():
    assert set(documented()) <= set(specs())


def test_every_hook_is_exported_and_has_a_docstring():
    for name in specs():
        assert name in hookspecs.__all__
        assert inspect.getdoc(getattr(hookspecs, name)), name


def test_firstresult_hooks_say_so():
    text = DOC.read_text()
    sections = dict(zip([m.group(1) for m in HEADING.finditer(text)], HEADING.split(text)[3::3]))
    for name in specs():
        opts = getattr(hookspecs, name).queuectl_spec
        if opts.get("firstresult"):
            assert "firstresult" in sections[name], f"{name} is firstresult but its section does not say so"


def test_every_name_of_the_plugin_surface_is_documented():
    import queuectl
    import queuectl.command
    import queuectl.process
    import queuectl.term

    section = DOC.read_text().split("## The plugin surface", 1)[1].split("\n## ", 1)[0]
    for module in (queuectl, queuectl.command, queuectl.process, queuectl.term):
        missing = [name for name in module.__all__ if f"`{name}`" not in section]
        assert missing == [], f"{module.__name__}: not in docs/hooks.md's plugin surface: {missing}"
