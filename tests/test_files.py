import os
import stat

import pytest

from mnistgan.files import write_atomically


def write_text(text):
    def write(temp_path):
        with open(temp_path, "w") as handle:
            handle.write(text)
    return write


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_written_file_has_the_permissions_open_would_give(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_atomically(tmp_path / "a.txt", write_text("new"), durable=True)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == mode
    assert (tmp_path / "a.txt").read_text() == "new"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "nested" / "a.txt"
    write_atomically(target, write_text("old"))

    def half_then_crash(temp_path):
        write_text("half")(temp_path)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomically(target, half_then_crash)
    assert target.read_text() == "old"
    assert os.listdir(target.parent) == ["a.txt"]
