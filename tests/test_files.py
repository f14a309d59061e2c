import os
import stat

import pytest

from mnistgan.files import temporary_target, write_atomically, write_text_atomically


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


def test_a_writer_that_replaces_the_file_does_not_change_its_permissions(tmp_path):
    # safetensors' save_file, for one, creates a fresh file with mode 0600 where it is told to write.
    def replace_with_private_file(temp_path):
        os.unlink(temp_path)
        os.close(os.open(temp_path, os.O_WRONLY | os.O_CREAT, 0o600))

    previous = os.umask(0o022)
    try:
        write_atomically(tmp_path / "a.bin", replace_with_private_file)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644


def test_write_text_atomically(tmp_path):
    write_text_atomically(tmp_path / "config.toml", "a = 1\n")
    assert (tmp_path / "config.toml").read_text() == "a = 1\n"
    assert os.listdir(tmp_path) == ["config.toml"]


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


def test_a_temporary_names_the_file_it_was_to_become(tmp_path):
    seen = []
    write_atomically(tmp_path / "last.pt", lambda temp_path: seen.append(os.path.basename(temp_path)) or write_text("x")(temp_path))
    assert temporary_target(seen[0]) == "last.pt"
    assert temporary_target("last.pt") is None and temporary_target(".last.pt.tmp") is None


def test_a_failed_write_names_the_file_asked_for_and_leaves_no_temporary(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"old")

    def no_space(temp_path):
        with open(temp_path, "wb") as handle:
            handle.write(b"half")
        raise OSError(28, "No space left on device")  # a write() error carries no file name

    with pytest.raises(OSError) as raised:
        write_atomically(tmp_path / "a.bin", no_space)
    assert raised.value.filename == str(tmp_path / "a.bin") and raised.value.errno == 28
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"] and (tmp_path / "a.bin").read_bytes() == b"old"
