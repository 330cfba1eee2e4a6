"""Atomic writes: all or nothing, and the permissions a normally written file would get."""
import os

import pytest

from inp_former.io import atomic_torch_save, atomic_write_text


def test_atomic_text_replaces_whole_file_with_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        target = tmp_path / "metrics.json"
        target.write_text("old")
        atomic_write_text(target, "new")
        assert target.read_text() == "new"
        assert target.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "checkpoint.pt"
    target.write_text("previous")

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"x": Unpicklable()}, target)
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
