"""A run's report: one self-contained HTML page of what training and evaluation wrote.

The pictures are embedded (base64), so the page opens anywhere on its own: mailed, copied off a
cluster, or next to other runs' reports. Training writes it with its final outputs, and
``mnistgan evaluate --run`` refreshes it with the quality numbers.
"""

from __future__ import annotations

import base64
import html
import json
import warnings
from pathlib import Path

import numpy as np

from .config import Config, load_toml
from .files import write_text_atomically
from .losses import breakdown
from .metrics import METRIC_KEYS
from .rundir import RunPaths, read_csv_columns, require_run_dir

STYLE = """body { font-family: system-ui, sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em; color: #222 }
table { border-collapse: collapse } td, th { padding: 0.2em 0.8em; text-align: left; border-bottom: 1px solid #ddd }
td.number { text-align: right; font-variant-numeric: tabular-nums } img { max-width: 100%; image-rendering: pixelated }
figure { display: inline-block; margin: 0 1em 1em 0; vertical-align: top } pre { background: #f6f6f6; padding: 1em }"""


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of the run in ``run_dir`` (default: its ``report.html``); return the path."""
    paths = require_run_dir(Path(run_dir))
    out = Path(out) if out is not None else paths.report
    write_text_atomically(out, render_report(paths))
    return out


def refresh_report(run_dir: Path) -> None:
    """``write_report`` for training and evaluation: the report is only a view of the run, so failing
    to write it warns instead of ending them."""
    try:
        write_report(run_dir)
    except Exception as error:  # a full disk, a damaged file: the run itself is whole
        warnings.warn(f"could not write {Path(run_dir) / 'report.html'} ({error}); `mnistgan report --run` tries again")


def render_report(paths: RunPaths) -> str:
    config = load_toml(paths.config, stored=True)
    losses = _read_losses(paths.losses)
    title = f"{config.preset or 'custom config'}: {paths.root.name}"
    parts = [f"<h1>{_text(title)}</h1>"]
    if config.description:
        parts.append(f"<p>{_text(config.description)}</p>")
    parts.append(_table(_summary(config, losses)))

    grids = paths.sample_images()
    figures = []
    if grids:
        figures.append(_figure(grids[-1], f"fixed noise after epoch {int(grids[-1].stem.rsplit('_', 1)[1])}"))
    for path, caption in ((paths.progress_gif, "the grids over training"), (paths.loss_curves, "losses and D's outputs"),
                          (paths.metric_curves, "quality during training")):
        if path.is_file():
            figures.append(_figure(path, caption))
    parts += ["<h2>Samples and curves</h2>", "".join(figures) or "<p>No pictures yet: the run has not reached its first sample epoch.</p>"]

    parts.append("<h2>Quality</h2>")
    command = f"<code>mnistgan evaluate --run {_text(str(paths.root))}</code>"
    try:
        result = json.loads(paths.metrics_json.read_text()) if paths.metrics_json.is_file() else None
    except ValueError:
        result = None
        parts.append(f"<p>metrics.json cannot be read; {command} writes it again.</p>")
    if isinstance(result, dict):
        parts.append(_quality(result, paths, command))
    elif paths.metrics_json.is_file():
        pass  # damaged: said above
    elif paths.metrics_csv.is_file():
        parts.append(f"<p>Measured during training only (the curve above, on {config.train.eval_samples} samples); "
                     f"{command} measures the final generator on 10,000 and adds the numbers here.</p>")
    else:
        parts.append(f"<p>Not evaluated yet: {command} measures it and adds the numbers here.</p>")
    parts += ["<h2>Config</h2>", f"<pre>{_text(paths.config.read_text())}</pre>"]
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_text(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n")


def _summary(config: Config, losses: dict) -> list[tuple[str, str]]:
    model, loss, optim, train = config.model, config.loss, config.optim, config.train
    epochs_done = int(losses["epoch"].max()) if "epoch" in losses else 0
    rows = [
        ("dataset", config.data.dataset),
        ("epochs", f"{epochs_done} of {train.epochs}"),
        ("networks", f"{model.architecture}, G widths {model.generator_widths}, D widths {model.discriminator_widths}, "
                     f"{model.latent_dim}-d {model.latent_distribution} noise" + (", class-conditional" if model.conditional else "")),
        ("loss", loss.adversarial + "".join(f", {name} {value:g}" for name, value in (
            ("label smoothing", loss.label_smoothing), ("R1 gamma", loss.r1_gamma)) if value)
         + (f", gradient penalty {loss.gp_lambda:g}" if loss.adversarial == "wasserstein-gp" else "")),
        ("optimiser", f"{optim.optimizer}, lr G {optim.generator_lr:g} / D {optim.discriminator_lr:g}, batch {train.batch_size}"
                      + (f", {train.d_steps} D steps per G step" if train.d_steps > 1 else "")
                      + (f", EMA of G {train.ema_decay:g}" if train.ema_decay else "")),
    ]
    if epochs_done:
        last = losses["epoch"] == epochs_done
        rows.append((f"epoch {epochs_done} means", "d_loss {:.4f}, g_loss {:.4f}, D(x) {:.3f}, D(G(z)) {:.3f}".format(
            *(losses[key][last].mean() for key in STAT_KEYS))))
    broken = _first_breakdown(loss.adversarial, losses)
    if broken:
        rows.append(("warning", f"training broke down at {broken}"))
    return rows


STAT_KEYS = ("d_loss", "g_loss", "d_real", "d_fake")


def _first_breakdown(kind: str, losses: dict) -> str | None:
    """The first epoch whose mean statistics in losses.csv show a broken GAN (``losses.breakdown``)."""
    if not all(key in losses for key in ("epoch", *STAT_KEYS)):
        return None
    for epoch in np.unique(losses["epoch"]):
        rows = losses["epoch"] == epoch
        reason = breakdown(kind, *(float(losses[key][rows].mean()) for key in STAT_KEYS))
        if reason:
            return f"epoch {int(epoch)}: {reason}"
    return None


def _quality(result: dict, paths: RunPaths, command: str) -> str:
    rows = [(key_info.label, _number(result[key]), f"{key_info.better} is better")
            for key, key_info in METRIC_KEYS.items() if key_info.label and key in result]
    weights = Path(str(result.get("weights", "")))
    where = (f"<p>{_text(str(result.get('n', '?')))} samples against the {_text(str(result.get('reference', 'test')))} set, "
             f"weights from {_text(str(weights))}.</p>")
    if weights.is_file() and weights.stat().st_mtime > paths.metrics_json.stat().st_mtime:
        where += f"<p><strong>Stale:</strong> the run trained on after this evaluation; {command} measures it again.</p>"
    histogram = result.get("class_histogram")
    digits = ("<p>Share of each digit 0–9: " + " ".join(_number(share, ".3f") for share in histogram) + "</p>"
              if isinstance(histogram, list) else "")
    return where + _table(rows, numeric_column=1) + digits


def _read_losses(path: Path) -> dict:
    """losses.csv's columns, or none if it is missing or damaged (a row cut short, say: resume trims it)."""
    try:
        return read_csv_columns(path) if path.is_file() else {}
    except (ValueError, TypeError, KeyError):
        return {}


def _number(value, spec: str = ".4g") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else _text(str(value))


def _table(rows: list[tuple[str, ...]], numeric_column: int | None = None) -> str:
    cells = "".join("<tr>" + "".join(f"<td class=\"number\">{_text(cell)}</td>" if index == numeric_column else
                                     (f"<th>{_text(cell)}</th>" if index == 0 else f"<td>{_text(cell)}</td>")
                                     for index, cell in enumerate(row)) + "</tr>" for row in rows)
    return f"<table>{cells}</table>"


def _figure(path: Path, caption: str) -> str:
    kind = "gif" if path.suffix == ".gif" else "png"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<figure><img src=\"data:image/{kind};base64,{data}\" alt=\"{_text(caption)}\">"
            f"<figcaption>{_text(caption)}</figcaption></figure>")


def _text(value: str) -> str:
    return html.escape(value, quote=True)
