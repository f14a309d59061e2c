"""The run directory: the record of one training run, enough to resume, sample and evaluate it.

Everything about the folder lives here: its file names (``RunPaths``), its CSV logs (append, trim
back to a checkpoint on resume, read), its lock while a process trains in it (``RunLock``), the
claim of a new run's folder (``RunDirClaim``) and the lock of a resumed one (``lock_for_resume``),
the temporaries a killed run leaves, and what to say when the file system fails.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError, option
from .files import describe_os_error, temporary_target, write_bytes_atomically, write_text_atomically

try:
    import fcntl
except ImportError:  # Windows: run folders are not locked
    fcntl = None


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:  # the resolved config, TOML
        return self.root / "config.toml"

    @property
    def samples(self) -> Path:  # image_at_epoch_NNNN.png: the fixed-noise grids
        return self.root / "samples"

    @property
    def losses(self) -> Path:  # step, epoch, d_loss, g_loss, d_real, d_fake
        return self.root / "losses.csv"

    @property
    def loss_curves(self) -> Path:
        return self.root / "loss_curves.png"

    @property
    def progress_gif(self) -> Path:
        return self.root / "progress.gif"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best_checkpoint(self) -> Path:  # the best evaluation during training: lowest FD (Stacked MNIST: reverse KL)
        return self.checkpoints / "best.pt"

    @property
    def generator(self) -> Path:  # final generator weights, safetensors
        return self.root / "generator.safetensors"

    @property
    def metrics_csv(self) -> Path:  # evaluation during training, one row per evaluated epoch
        return self.root / "metrics.csv"

    @property
    def metric_curves(self) -> Path:
        return self.root / "metric_curves.png"

    def recorded(self, path: Path) -> str:
        """``path`` as the run's records name it: relative to the run folder when it lies inside it, so
        the record still names the right file after the folder is moved; otherwise absolute."""
        path = Path(path).resolve()
        try:
            return str(path.relative_to(self.root.resolve()))
        except ValueError:
            return str(path)

    def resolve_recorded(self, recorded: str) -> Path:
        """The file a record's path names (``recorded``'s inverse)."""
        return self.root / recorded

    @property
    def metrics_json(self) -> Path:  # the final generator's quality: training's last evaluation, or `mnistgan evaluate`'s
        return self.root / "metrics.json"

    @property
    def tensorboard(self) -> Path:  # event files for TensorBoard (train.tensorboard)
        return self.root / "tensorboard"

    @property
    def report(self) -> Path:  # one self-contained HTML page of all the above
        return self.root / "report.html"

    def sample_image(self, epoch: int) -> Path:
        return self.samples / f"image_at_epoch_{epoch:04d}.png"

    @staticmethod
    def is_sample_image(name: str) -> bool:
        return re.fullmatch(r"image_at_epoch_\d+\.png", name) is not None

    def sample_images(self) -> list[Path]:
        return sorted(self.samples.glob("image_at_epoch_*.png"))

    def remove_stale_temporaries(self) -> None:
        """Temporaries of training's own writes that a killed run left behind; another command's (say, an
        ``evaluate`` writing metrics.json beside a resuming run) are left to it."""
        own = {path.name for path in (self.config, self.loss_curves, self.metric_curves, self.progress_gif, self.generator,
                                      self.report, self.last_checkpoint, self.best_checkpoint)}
        for folder in (self.root, self.samples, self.checkpoints):
            for temporary in folder.glob(".*.tmp") if folder.is_dir() else ():
                target = temporary_target(temporary.name)
                if target is not None and (target in own or (folder == self.samples and self.is_sample_image(target))):
                    temporary.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# metrics.json: the final generator's quality (training's final evaluation, or `mnistgan evaluate`'s)


def read_metrics(paths: RunPaths) -> dict | None:
    """metrics.json's record; None where the run has none. A file that is not a JSON record (cut
    short by a full disk, edited by hand) raises UserError naming the command that writes it again."""
    try:
        record = json.loads(paths.metrics_json.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except OSError as error:
        raise UserError(f"cannot read the run's metrics.json: {describe_os_error(error)}; fix that file's permissions, "
                        f"or remove it and run `mnistgan evaluate --run {paths.root}`") from None
    except ValueError:  # not JSON, or not UTF-8
        record = None
    if not isinstance(record, dict):
        raise UserError(f"{paths.metrics_json} is damaged (not a JSON record); "
                        f"`mnistgan evaluate --run {paths.root}` writes it again")
    return record


def write_metrics(paths: RunPaths, record: dict) -> None:
    write_text_atomically(paths.metrics_json, json.dumps(record, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------
# The CSV logs: losses.csv (one row per train.log_every steps) and metrics.csv (one per evaluation)


def append_csv(path: Path, columns: tuple[str, ...], rows: list[list]) -> None:
    """Append ``rows`` to a CSV log, writing the header first if the file is new. A log begun with
    other columns (a run resumed by a version that tracks more or fewer numbers) keeps its header:
    each row gives the values of the columns it names, and nan for the rest."""
    header = _header(path)
    if header is not None and tuple(header) != tuple(columns):
        rows = [[dict(zip(columns, row)).get(name, "nan") for name in header] for row in rows]
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if header is None:
            writer.writerow(columns)
        writer.writerows(rows)


def _header(path: Path) -> list[str] | None:
    """The first row of a CSV log, or None if there is no file (or nothing in it yet)."""
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as handle:
            return next(csv.reader(handle), None)
    except FileNotFoundError:
        return None


def truncate_csv(path: Path, completed_epochs: int) -> None:
    """Drop rows written after the checkpoint being resumed (a crash between checkpoints)."""
    if not path.is_file():
        return
    text = path.read_bytes().decode("utf-8", errors="replace")  # damaged bytes make rows that are dropped below
    if not text.endswith("\n"):  # the last row was cut short (a full disk, a kill mid-write)
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.reader(text.splitlines()))
    if not rows or "epoch" not in rows[0]:  # not even a whole header: start the file again
        path.unlink()
        return
    epoch_column = rows[0].index("epoch")
    kept = [rows[0]] + [row for row in rows[1:] if len(row) == len(rows[0]) and _numbers(row)
                        and float(row[epoch_column]) <= completed_epochs]
    lines = io.StringIO(newline="")
    csv.writer(lines).writerows(kept)
    write_bytes_atomically(path, lines.getvalue().encode())  # bytes: the csv module already ended each row


def read_csv_columns(path: Path) -> dict[str, np.ndarray]:
    """A CSV log of numbers as ``{column: array}``; rows that are not all numbers (an edited or damaged
    file) are left out."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        return {}
    header, body = rows[0], [row for row in rows[1:] if len(row) == len(rows[0]) and _numbers(row)]
    if not body:
        return {}
    return {key: np.array([float(row[index]) for row in body]) for index, key in enumerate(header)}


def _numbers(row: list[str]) -> bool:
    try:
        [float(value) for value in row]
    except ValueError:
        return False
    return True


def start_run(paths: RunPaths) -> None:
    """Mark a claimed folder as a started run: ``samples/`` exists (a claim given back keeps it then)."""
    try:
        paths.samples.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(unwritable_folder_message(paths.root, error)) from None


def prepare_resume(paths: RunPaths, completed_epochs: int, config_text: str) -> None:
    """Bring a folder back to its checkpoint: logs trimmed, stale temporaries gone, the config's new
    epochs (or device) recorded."""
    truncate_csv(paths.losses, completed_epochs)
    truncate_csv(paths.metrics_csv, completed_epochs)
    paths.remove_stale_temporaries()
    write_text_atomically(paths.config, config_text)


def new_run_dir(base: Path, name: str) -> Path:
    """``base/NNN-name`` with NNN one more than the highest number already there."""
    base = Path(base)
    numbers = [int(m.group(1)) for p in base.glob("*") if (m := re.match(r"(\d+)-", p.name))] if base.is_dir() else []
    return base / f"{max(numbers, default=0) + 1:03d}-{name}"


class RunLock:
    """Marks a run folder as being trained: an advisory lock on its hidden ``LOCK_FILE``, held by the
    process that trains there. The kernel drops it when that process ends, however it ends (a crash,
    SIGKILL, the OOM killer), so a held lock always means a live run. It keeps a second process from
    training in a live run's folder, and tells a folder that a killed run left from one still training.

    Where locks are not available (Windows, file systems without them) ``supported`` is False and
    ``acquire`` succeeds without locking.
    """

    ATTEMPTS = 20  # 10 ms apart: a probe (``training_now``) holds the lock for a moment
    LOCK_FILE = ".mnistgan.lock"

    def __init__(self, folder: Path):
        self.path = Path(folder) / self.LOCK_FILE
        self.supported = fcntl is not None
        self.created = False  # the lock file was made here (and may be removed again when given back)
        self._descriptor: int | None = None

    @property
    def held(self) -> bool:
        return self._descriptor is not None

    def acquire(self) -> bool:
        """Take the lock; False if another process (or another ``RunLock`` here) holds it."""
        if not self.supported or self.held:
            return True
        for _ in range(self.ATTEMPTS):
            try:  # open for writing: network file systems lock files only that way
                descriptor, self.created = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), True
            except FileExistsError:
                try:
                    descriptor, self.created = os.open(self.path, os.O_RDWR), False
                except FileNotFoundError:  # removed in between: make it again
                    continue
                except OSError:
                    self.supported = False
                    return True
            except OSError:
                self.supported = False
                return True
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                time.sleep(0.01)
                continue
            except OSError:  # the file system has no locks
                os.close(descriptor)
                self.supported = False
                return True
            if _is_same_file(descriptor, self.path):
                self._descriptor = descriptor
                return True
            os.close(descriptor)  # a claim given back removed the file we locked: lock the one there now
        return False

    def release(self, remove: bool = False) -> None:
        """Drop the lock; ``remove`` first deletes the lock file if it was made here (a folder given back)."""
        if self._descriptor is not None:
            if remove and self.created:
                self.path.unlink(missing_ok=True)
            os.close(self._descriptor)  # closing drops the lock
            self._descriptor = None

    @staticmethod
    def training_now(folder: Path) -> bool | None:
        """Is a process training in ``folder`` right now? None where that cannot be known."""
        if fcntl is None:
            return None
        try:
            descriptor = os.open(Path(folder) / RunLock.LOCK_FILE, os.O_RDONLY)
        except FileNotFoundError:  # every training process makes it
            return False
        except OSError:
            return None
        try:  # shared: probes never block one another
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return None
        finally:
            os.close(descriptor)
        return False


def _is_same_file(descriptor: int, path: Path) -> bool:
    try:
        named = path.stat()
    except OSError:
        return False
    opened = os.fstat(descriptor)
    return (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino)


class RunDirClaim:
    """A new run's folder, taken by one process before the run starts: made if missing, locked
    (``RunLock``) and its ``config.toml`` created exclusively, so that two runs started together never
    share a folder.

    ``close()`` drops the lock once the run is over. If the run never starts (bad data, Ctrl-C during
    set-up), ``release()`` takes back what the claim made: the config and the folders, deepest first,
    when they are still empty.
    """

    def __init__(self, out: str | Path | None, base: Path, name: str, config_text: str):
        self.made: list[Path] = []  # folders made here, outermost first
        self.lock: RunLock | None = None
        self.config_made: Path | None = None
        try:
            self.path = self._take_numbered(Path(base), name, config_text) if out is None else self._take(out, config_text)
        except BaseException:
            self._give_back()  # a claim that failed half-way (a full disk, say) leaves nothing behind
            raise

    def _take_numbered(self, base: Path, name: str, config_text: str) -> Path:
        self._make_folders(base)
        self.made.clear()  # runs/ itself stays: another run may be making its folder in it right now
        for _ in range(1000):  # another run may take a number between the look and the making
            path = new_run_dir(base, name)
            try:
                path.mkdir()
            except FileExistsError:
                continue
            except OSError as error:
                raise UserError(f"cannot make the run folder {path} ({error.strerror}); choose one with --out") from None
            self.made.append(path)
            self._lock(path)
            self._create_config(path, config_text)
            return path
        raise UserError(f"found no free run folder under {base} (can it be listed?); choose one with --out")

    def _take(self, out: str | Path, config_text: str) -> Path:
        if not str(out).strip():
            raise UserError("--out is empty; give the folder for the run (or leave it out for a new one under runs/)")
        path = Path(out)
        if RunPaths(path).config.exists():
            training = RunLock.training_now(path)
            if training:
                raise UserError(f"{path} holds a run that is training right now; choose another --out")
            if not RunPaths(path).last_checkpoint.is_file():
                raise UserError(no_checkpoint_message(path, training, "to train there again, or choose another --out"))
            raise UserError(f"{path} already holds a run; continue it with --resume {path} or choose another --out")
        self._make_folders(path)
        self._lock(path)
        try:
            visible = [entry.name for entry in path.iterdir() if not entry.name.startswith(".")]
        except OSError as error:
            raise UserError(f"cannot read the output directory {path} ({error.strerror}); choose another with --out") from None
        if visible:  # a run's files would mix with someone else's
            raise UserError(f"{path} already has files ({', '.join(sorted(visible)[:3])}) and holds no run; "
                            "give an empty or new folder as --out")
        self._create_config(path, config_text)
        return path

    def _make_folders(self, path: Path) -> None:
        missing = []
        for folder in (path, *path.parents):
            if folder.is_dir():
                break
            missing.append(folder)
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                if folder.is_dir():  # made by someone else just now: fine, but not ours to remove
                    continue
                kind = "a symbolic link to nothing" if folder.is_symlink() else "a file"
                raise UserError(f"cannot make {path}: {folder} is {kind}; choose another --out") from None
            except OSError as error:
                raise UserError(unwritable_folder_message(path, error)) from None
            self.made.append(folder)

    def _lock(self, path: Path) -> None:
        self.lock = RunLock(path)
        if not self.lock.acquire():
            self.lock = None
            raise UserError(f"another run is starting in {path}; choose another --out")

    def _create_config(self, path: Path, config_text: str) -> None:
        config = RunPaths(path).config
        try:
            handle = open(config, "x")  # "x": fails if another run created it first
        except FileExistsError:
            raise UserError(f"another run is starting in {path}; choose another --out") from None
        except OSError as error:
            raise UserError(unwritable_folder_message(path, error)) from None
        self.config_made = config
        try:
            with handle:
                handle.write(config_text)
        except OSError as error:
            raise UserError(unwritable_folder_message(path, error)) from None

    def close(self) -> None:
        """Drop the folder's lock: the run is over."""
        if self.lock is not None:
            self.lock.release()

    def release(self) -> None:
        """Undo the claim of a run that never started (training makes ``samples/`` when it starts)."""
        if RunPaths(self.path).samples.exists():
            self.close()
        else:
            self._give_back()

    def _give_back(self) -> None:
        """Remove what this claim made (config, lock file, folders, deepest first) and drop the lock."""
        if self.config_made is not None:
            self.config_made.unlink(missing_ok=True)
        if self.lock is not None:
            self.lock.release(remove=True)
        for folder in reversed(self.made):
            try:
                folder.rmdir()
            except OSError:  # not empty: someone else's files are there now
                break


def unwritable_folder_message(path: Path, error: OSError) -> str:
    """Why a run folder cannot be written, and what to do (a full disk has its own remedy)."""
    remedy = "free some space or choose another --out" if error.errno in (errno.ENOSPC, errno.EDQUOT) else "choose another with --out"
    return f"cannot write to the output directory {path} ({error.strerror}); {remedy}"


def no_checkpoint_message(path: Path, training: bool | None, then: str) -> str:
    """Why a run folder without a checkpoint cannot be trained in, and what to do."""
    if training is False:
        return (f"{path} holds a run that stopped before its first checkpoint (no process on this machine trains it); "
                f"delete the folder {then}")
    return (f"{path} holds a run with no checkpoint yet (still in its first epochs, or stopped before its first "
            f"checkpoint); if it is not running, delete the folder {then}")


def file_system_failure(error: OSError, paths: RunPaths) -> str:
    """Why training stopped on a file system error, what to do about it, and how to go on."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        remedy = "free some space"
    elif error.errno == errno.EROFS:
        remedy = f"make {paths.root} writable"
    elif error.errno in (errno.EACCES, errno.EPERM):
        remedy = f"fix the permissions of {error.filename or paths.root}"
    else:
        remedy = "fix the cause"
    if paths.last_checkpoint.is_file():
        then = f"continue with: mnistgan train --resume {paths.root}"
    elif paths.samples.is_dir():  # the run started: its folder stays
        then = f"delete {paths.root} and train again"
    else:  # it never started, and gives its folder back
        then = "train again"
    return f"training stopped: {describe_os_error(error)}; {remedy}, then {then}"


def lock_for_resume(path: Path, main_process: bool = True) -> tuple[RunPaths, RunLock]:
    """A run to continue, locked against a second process training in it; checked to have a checkpoint.

    Under torchrun the first process alone locks and refuses; torchrun then ends the others. The
    caller releases the lock when training ends.
    """
    paths = require_run_dir(Path(path))
    lock = RunLock(paths.root)
    if main_process and not lock.acquire():
        raise UserError(f"{paths.root} is training right now in another process; wait for it to end, or stop it first")
    if not paths.last_checkpoint.is_file():
        known_stopped = False if lock.held else None  # only a lock held here proves no process trains there
        lock.release()
        raise UserError(no_checkpoint_message(paths.root, known_stopped, f"and train again, or train into another {option('out')}"))
    return paths, lock


def require_run_dir(path: Path) -> RunPaths:
    """The paths of an existing run, or a clear error if ``path`` is not one."""
    paths = RunPaths(Path(path))
    if not paths.root.is_dir():
        raise UserError(f"{path} is not a directory; give a run directory made by `mnistgan train` (e.g. runs/001-...)")
    if not paths.config.is_file():
        raise UserError(f"{path} is not a run directory (no config.toml); give a directory made by `mnistgan train`")
    return paths
