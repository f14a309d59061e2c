"""A new run's folder: taken by one run only, and given back whole when the run never starts."""

import subprocess
import sys
from pathlib import Path

import pytest

import mnistgan.rundir
from mnistgan.errors import UserError
from mnistgan.rundir import RunDirClaim, RunLock, RunPaths, read_metrics, write_metrics


def assert_names(error: Exception, *words: str) -> None:
    """The message names what it is about and says what is wrong / what to do: each of ``words`` is in it."""
    message = str(error)
    for word in words:
        assert word in message, (word, message)


def test_records_name_files_inside_the_run_relative_to_it(tmp_path):
    paths = RunPaths(tmp_path / "run")
    inside, outside = paths.recorded(paths.last_checkpoint), paths.recorded(tmp_path / "elsewhere.pt")
    assert inside == str(Path("checkpoints") / "last.pt") and outside == str(tmp_path.resolve() / "elsewhere.pt")
    moved = RunPaths(tmp_path / "moved")
    assert moved.resolve_recorded(inside) == moved.last_checkpoint and moved.resolve_recorded(outside) == Path(outside)


@pytest.mark.parametrize("damaged", [b'{"fd": 1.5, "n": 10', b"\xff\xfe\x00", b"[1.5, 10000]", b""],
                         ids=["cut-short", "not-utf8", "not-a-record", "empty"])
def test_metrics_json_reads_back_what_was_written_and_a_damaged_one_says_how_to_mend_it(tmp_path, damaged):
    paths = RunPaths(tmp_path)
    assert read_metrics(paths) is None  # not evaluated yet
    write_metrics(paths, {"fd": 1.5, "n": 10000})
    assert read_metrics(paths) == {"fd": 1.5, "n": 10000}
    paths.metrics_json.write_bytes(damaged)
    with pytest.raises(UserError) as error:
        read_metrics(paths)
    assert_names(error.value, str(paths.metrics_json), "damaged", f"mnistgan evaluate --run {tmp_path}")


def test_an_unreadable_metrics_json_names_the_file_once_and_the_way_out(tmp_path):
    paths = RunPaths(tmp_path)
    paths.metrics_json.mkdir()  # a folder where the file should be: reading it fails
    with pytest.raises(UserError) as error:
        read_metrics(paths)
    assert str(error.value).count(str(paths.metrics_json)) == 1
    assert_names(error.value, "cannot read", "permissions", f"mnistgan evaluate --run {tmp_path}")


def test_an_empty_folder_is_taken_once(tmp_path):
    (tmp_path / ".gitkeep").write_text("")  # hidden files do not make a folder taken
    claim = RunDirClaim(tmp_path, tmp_path / "runs", "x", "a = 1\n")
    assert (tmp_path / "config.toml").read_text() == "a = 1\n"
    with pytest.raises(UserError) as refused:
        RunDirClaim(tmp_path, tmp_path / "runs", "x", "a = 2\n")
    assert_names(refused.value, str(tmp_path), "training right now", "choose another --out")
    claim.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gitkeep"]  # the folder was there before: it stays


def test_a_run_that_died_before_its_first_checkpoint_is_told_apart(tmp_path):
    RunDirClaim(tmp_path, tmp_path / "runs", "x", "a = 1\n").close()  # as if killed before its first checkpoint
    with pytest.raises(UserError) as refused:
        RunDirClaim(tmp_path, tmp_path / "runs", "x", "a = 2\n")
    assert_names(refused.value, str(tmp_path), "stopped before its first checkpoint", "delete the folder")


def test_two_claims_racing_for_one_folder_without_locks(tmp_path, monkeypatch):
    # Where locks are unavailable (Windows, file systems without flock), config.toml's exclusive
    # create ("x") is all that keeps two runs out of one folder: no lock may refuse the claim first.
    monkeypatch.setattr(mnistgan.rundir, "fcntl", None)
    first = RunDirClaim(tmp_path / "run", tmp_path / "runs", "x", "a = 1\n")
    assert first.lock is not None and not first.lock.supported  # nothing is locked
    # The second claim looked before the first wrote its config (the race: it saw an empty folder),
    # then tries to create the config itself.
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda self: self.name != "config.toml" and real_exists(self))
    monkeypatch.setattr(Path, "iterdir", lambda self: iter(()))
    with pytest.raises(UserError) as refused:
        RunDirClaim(tmp_path / "run", tmp_path / "runs", "x", "a = 2\n")
    assert_names(refused.value, str(tmp_path / "run"), "another run is starting", "choose another --out")
    monkeypatch.undo()
    assert (first.path / "config.toml").read_text() == "a = 1\n"  # the first run's config, neither overwritten nor removed


def test_two_claims_racing_for_one_folder_with_locks(tmp_path, monkeypatch):
    # With locks the second claim is refused by the first one's lock, before it touches the config.
    first = RunDirClaim(tmp_path / "run", tmp_path / "runs", "x", "a = 1\n")
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda self: self.name != "config.toml" and real_exists(self))
    monkeypatch.setattr(Path, "iterdir", lambda self: iter(()))
    opened = []

    def recording_open(path, *args, **kwargs):
        opened.append(path)
        return open(path, *args, **kwargs)

    monkeypatch.setattr(mnistgan.rundir, "open", recording_open, raising=False)
    with pytest.raises(UserError) as refused:
        RunDirClaim(tmp_path / "run", tmp_path / "runs", "x", "a = 2\n")
    assert_names(refused.value, str(tmp_path / "run"), "another run is starting")
    assert opened == []  # the lock refused it: config.toml was never opened
    monkeypatch.undo()
    assert (first.path / "config.toml").read_text() == "a = 1\n"


def test_release_removes_only_what_the_claim_made(tmp_path):
    (tmp_path / "mine").mkdir()
    claim = RunDirClaim(tmp_path / "mine" / "a" / "b", tmp_path / "runs", "x", "")
    claim.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"] and not any((tmp_path / "mine").iterdir())


def test_release_keeps_a_run_that_started(tmp_path):
    claim = RunDirClaim(None, tmp_path / "runs", "x", "")
    assert claim.path == tmp_path / "runs" / "001-x"
    (claim.path / "samples").mkdir()  # training makes it when the run starts
    claim.release()
    assert (claim.path / "config.toml").is_file()


def test_a_numbered_claim_gives_back_its_folder_but_not_runs(tmp_path):
    claim = RunDirClaim(None, tmp_path / "runs", "x", "")
    claim.release()
    assert (tmp_path / "runs").is_dir() and not any((tmp_path / "runs").iterdir())


def test_numbered_folders_count_on(tmp_path):
    paths = [RunDirClaim(None, tmp_path / "runs", "x", "").path.name for _ in range(3)]
    assert paths == ["001-x", "002-x", "003-x"]


@pytest.mark.parametrize("make, message", [
    (lambda base: base.symlink_to(base.parent / "nowhere"), "is a symbolic link to nothing"),
    (lambda base: base.write_text(""), "is a file"),
])
def test_a_runs_folder_that_is_not_one_is_a_clear_error(tmp_path, make, message):
    make(tmp_path / "runs")
    with pytest.raises(UserError) as refused:
        RunDirClaim(None, tmp_path / "runs", "x", "")
    assert_names(refused.value, str(tmp_path / "runs"), message, "choose another --out")


def test_a_run_lock_is_held_by_one_holder_at_a_time(tmp_path):
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    assert first.acquire() and first.supported
    assert not second.acquire()
    assert RunLock.training_now(tmp_path) is True
    first.release()
    assert second.acquire()
    second.release()
    assert RunLock.training_now(tmp_path) is False


def test_a_run_lock_ends_with_its_process_however_it_ends(tmp_path):
    # The holder is killed outright (no handler, no cleanup): the kernel drops the lock with it.
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from mnistgan.rundir import RunLock; "
                               f"assert RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert RunLock.training_now(tmp_path) is True
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert RunLock.training_now(tmp_path) is False


def test_a_claim_locks_its_folder_until_closed(tmp_path):
    claim = RunDirClaim(None, tmp_path / "runs", "x", "")
    assert RunLock.training_now(claim.path) is True
    claim.close()
    assert RunLock.training_now(claim.path) is False


def test_where_locks_are_unavailable_the_message_hedges(tmp_path, monkeypatch):
    import mnistgan.rundir

    monkeypatch.setattr(mnistgan.rundir, "fcntl", None)
    RunDirClaim(tmp_path, tmp_path / "runs", "x", "").close()
    assert RunLock.training_now(tmp_path) is None
    with pytest.raises(UserError) as refused:
        RunDirClaim(tmp_path, tmp_path / "runs", "x", "")
    assert_names(refused.value, str(tmp_path), "no checkpoint yet", "if it is not running", "delete the folder")


def test_probes_do_not_look_like_a_live_run(tmp_path):
    import fcntl
    import os
    import threading

    (tmp_path / RunLock.LOCK_FILE).touch()
    probe = os.open(tmp_path / RunLock.LOCK_FILE, os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_SH)  # another command's training_now, caught in the act
    assert RunLock.training_now(tmp_path) is False  # probes share
    threading.Timer(0.05, os.close, [probe]).start()
    lock = RunLock(tmp_path)
    assert lock.acquire()  # waits out the probe instead of refusing
    lock.release()


def test_a_refused_claim_keeps_a_lock_file_it_did_not_make(tmp_path):
    (tmp_path / RunLock.LOCK_FILE).write_text("")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError) as refused:
        RunDirClaim(tmp_path, tmp_path / "runs", "x", "")
    assert_names(refused.value, str(tmp_path), "already has files", "notes.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [RunLock.LOCK_FILE, "notes.txt"]


def test_a_claim_that_fails_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    import errno

    import mnistgan.rundir

    class FullDisk:
        def __init__(self, path, mode):
            open(path, mode).close()  # the file is made; its bytes do not fit

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mnistgan.rundir, "open", FullDisk, raising=False)
    with pytest.raises(UserError) as refused:
        RunDirClaim(None, tmp_path / "runs", "x", "a = 1\n")
    assert_names(refused.value, str(tmp_path / "runs"), "No space left on device", "free some space")
    assert list((tmp_path / "runs").iterdir()) == []  # no half-made run folder for later commands to trip on


def test_a_csv_log_begun_with_other_columns_keeps_its_header(tmp_path):
    # A run resumed by a version that tracks one number more (or fewer) must not shift its columns.
    path = tmp_path / "metrics.csv"
    mnistgan.rundir.append_csv(path, ("epoch", "fd"), [[1, 2.5]])
    mnistgan.rundir.append_csv(path, ("epoch", "fd", "fd_train"), [[2, 2.0, 1.9]])
    mnistgan.rundir.append_csv(path, ("epoch",), [[3]])
    assert path.read_text().splitlines() == ["epoch,fd", "1,2.5", "2,2.0", "3,nan"]
    columns = mnistgan.rundir.read_csv_columns(path)
    assert list(columns["epoch"]) == [1, 2, 3]
