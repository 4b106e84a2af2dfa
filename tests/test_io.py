import json
import os

import pytest

from hwbench.io import atomic_write_json, atomic_write_text


def test_atomic_write_replaces_whole_files_and_cleans_up(tmp_path):
    path = tmp_path / "sub" / "f.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.json"]
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_bad_output_paths_fail_before_any_work(tmp_path):
    from tests.conftest import one_line_error, run_cli

    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli("profile", "--out", blocker / "p.json", "--max-time", "0.1")
    assert "is a file, not a folder" in one_line_error(r)
    r = run_cli("profile", "--out", tmp_path, "--max-time", "0.1")
    assert "is a directory" in one_line_error(r)  # click says so first
    r = run_cli("train", "--dataset", "synthetic", "--out", blocker, "--epochs", "1")
    assert "is not a folder" in one_line_error(r)
    r = run_cli("report", str(tmp_path), "--out", blocker / "sub")
    assert "is a file, not a folder" in one_line_error(r)
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if not os.access(ro, os.W_OK):  # root can write anywhere: nothing to test then
            assert "not writable" in one_line_error(run_cli("profile", "--out", ro / "p.json"))
    finally:
        os.chmod(ro, 0o700)
