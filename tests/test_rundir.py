"""A new run's folder: taken by one run only, and given back whole when the run never starts."""

from pathlib import Path

import pytest

from mnistgan.errors import UserError
from mnistgan.rundir import RunDirClaim


def test_an_empty_folder_is_taken_once(tmp_path):
    (tmp_path / ".gitkeep").write_text("")  # hidden files do not make a folder taken
    claim = RunDirClaim(tmp_path, tmp_path / "runs", "x", "a = 1\n")
    assert (tmp_path / "config.toml").read_text() == "a = 1\n"
    with pytest.raises(UserError, match="holds a run with no checkpoint yet"):
        RunDirClaim(tmp_path, tmp_path / "runs", "x", "a = 2\n")
    claim.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gitkeep"]  # the folder was there before: it stays


def test_two_claims_racing_for_one_folder(tmp_path, monkeypatch):
    first = RunDirClaim(tmp_path / "run", tmp_path / "runs", "x", "a = 1\n")
    # The second claim looked before the first wrote its config (the race: it saw an empty folder),
    # then tries to create the config itself.
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda self: self.name != "config.toml" and real_exists(self))
    monkeypatch.setattr(Path, "iterdir", lambda self: iter(()))
    with pytest.raises(UserError, match="another run is starting in"):
        RunDirClaim(tmp_path / "run", tmp_path / "runs", "x", "a = 2\n")
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
    with pytest.raises(UserError, match=message):
        RunDirClaim(None, tmp_path / "runs", "x", "")
