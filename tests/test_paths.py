"""The path strings queuectl builds without pathlib (whose import is a tenth of a short command's start)
are exactly pathlib's: the store's path, the outbox and spool folders, the read-only URI of the store."""
import os
from pathlib import Path, PurePosixPath

from hypothesis import given, strategies as st

from queuectl.builtin.sqlite_store import file_uri
from queuectl.config import posix_path

PARTS = st.lists(st.sampled_from(["", ".", "..", "a", "b.db", "é", "sp ace", "%41", "?x", "#y", "a+b", "~", "\udcff"]),
                 max_size=6)


@given(PARTS, st.sampled_from(["", "/", "//", "///"]), st.booleans())
def test_posix_path_is_pure_posix_paths_string(parts, root, trailing):
    path = root + "/".join(parts) + ("/" if trailing else "")
    assert posix_path(path) == str(PurePosixPath(path))


@given(PARTS)
def test_file_uri_is_as_uri(parts):
    path = "/" + "/".join(parts)
    assert file_uri(path) == Path(path).as_uri()


def test_the_folders_and_the_config_path_are_what_pathlib_made(tmp_path, monkeypatch):
    from queuectl import Queue
    from queuectl.builtin.notify_outbox import outbox_folder, outbox_folder_name
    from queuectl.builtin.spool_folder import configured_folder, configured_folder_name

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "nothing"))
    (tmp_path / "q").mkdir()
    with Queue.open(db=str(tmp_path) + "//q/./queue.db", env={}) as queue:
        assert queue.config.path is None and queue.config.base_dir == Path(os.getcwd()) == tmp_path
        assert queue.store.path == str(tmp_path / "q" / "queue.db")
        assert outbox_folder_name(queue) == str(tmp_path / "q" / ".queue.db.notify")
        assert outbox_folder(queue) == Path(outbox_folder_name(queue))
        assert configured_folder_name(queue) is None and configured_folder(queue) is None

    (tmp_path / "config.yaml").write_text("db: q/queue.db\nspool: ./drops//\n")
    (tmp_path / "spool").mkdir()
    with Queue.open(env={}) as queue:
        assert queue.config.path == (tmp_path / "config.yaml").resolve() and queue.config.file == str(queue.config.path)
        assert queue.config.base_dir == tmp_path.resolve() and queue.config.base_folder == str(tmp_path.resolve())
        assert queue.store.path == str(tmp_path.resolve() / "q" / "queue.db")
        assert configured_folder(queue) == Path(configured_folder_name(queue)) == tmp_path.resolve() / "drops"
