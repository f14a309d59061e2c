"""A run's report: one self-contained HTML page of what training and evaluation wrote.

The pictures are embedded (base64), so the page opens anywhere on its own: mailed, copied off a
cluster, or next to other runs' reports. Training writes it with its final outputs, and
``mnistgan evaluate --run`` refreshes it with the quality numbers.
"""

from __future__ import annotations

import base64
import html
import re
import warnings
from pathlib import Path

import numpy as np

from .checkpoint import load_checkpoint
from .config import Config, load_toml
from .errors import UserError
from .files import write_text_atomically
from .losses import breakdown
from .metrics import METRIC_KEYS
from .metrics.generators import default_samples
from .metrics.spread import VERDICT as COLLAPSE_VERDICT
from .rundir import RunPaths, read_csv_columns, read_metrics, require_run_dir
from .step import STAT_COLUMNS

# Laid out for a laptop (64em: room for two 488-pixel sample grids side by side; the config in columns)
# and shrinking to a phone's width: long lines wrap, pictures scale down, nothing scrolls sideways.
STYLE = """
body { font-family: system-ui, sans-serif; line-height: 1.4; overflow-wrap: break-word; max-width: 64em; margin: 2em auto;
       padding: 0 1em; color: #222 }
table { border-collapse: collapse }
td, th { padding: 0.2em 0.8em; text-align: left; vertical-align: top; border-bottom: 1px solid #ddd }
td.number { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap }
@media (max-width: 30em) { td, th { padding: 0.2em 0.4em } }
.figures { display: flex; flex-wrap: wrap; gap: 0 1em; align-items: flex-start }
figure { margin: 0 0 1em; min-width: 0 }
img { display: block; max-width: 100%; height: auto }
figure.pixels img { image-rendering: pixelated }
.config { columns: 3 18em; column-gap: 1em }
pre, code { font-family: ui-monospace, monospace; font-size: 0.875em }
pre { background: #f6f6f6; padding: 0.6em 0.8em; margin: 0 0 1em; white-space: pre-wrap; break-inside: avoid }
"""


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
    state = _last_state(paths)
    parts.append(_table(_summary(config, losses, _trained_precision(config, state), state)))

    grids = paths.sample_images()
    pictures = [(paths.progress_gif, "the grids over training", True), (paths.loss_curves, "losses and D's outputs", False),
                (paths.metric_curves, "quality during training", False)]
    if grids:
        pictures.insert(0, (grids[-1], f"fixed noise after epoch {int(grids[-1].stem.rsplit('_', 1)[1])}", True))
    figures = "".join(_figure(*picture) for picture in pictures if picture[0].is_file())
    parts += ["<h2>Samples and curves</h2>", f"<div class=\"figures\">{figures}</div>" if figures else
              "<p>No pictures yet: the run has not reached its first sample epoch.</p>"]

    parts.append("<h2>Quality</h2>")
    command = f"<code>mnistgan evaluate --run {_text(str(paths.root))}</code>"
    try:
        result = read_metrics(paths)
    except UserError:  # damaged
        parts.append(f"<p>metrics.json cannot be read; {command} writes it again.</p>")
    else:
        if result is not None:
            parts.append(_quality(result, paths, command))
        elif paths.metrics_csv.is_file():
            parts.append(f"<p>Measured during training only (the curve above, on {config.train.eval_samples} samples); "
                         f"{command} measures the final generator on {default_samples(config.data.dataset):,} and adds the numbers here.</p>")
        else:
            parts.append(f"<p>Not evaluated yet: {command} measures it and adds the numbers here (a run that finishes "
                         "scores itself unless train.final_eval_samples = 0).</p>")
    parts += ["<h2>Config</h2>", _config(paths.config.read_text())]
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_text(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n")


def _summary(config: Config, losses: dict, precision: str, state: dict | None) -> list[tuple[str, str]]:
    model, loss, optim, train = config.model, config.loss, config.optim, config.train
    epochs_done = int(losses["epoch"].max()) if "epoch" in losses else 0
    rows = [
        ("dataset", config.data.dataset),
        ("epochs", f"{epochs_done} of {train.epochs}"),
        ("networks", f"{model.architecture}, G widths {model.generator_widths}, D widths {model.discriminator_widths}, "
                     f"{model.latent_dim}-d {model.latent_distribution} noise" + (", class-conditional" if model.conditional else "")),
        ("loss", loss.adversarial + "".join(f", {name} {value:g}" for name, value in (
            ("label smoothing", loss.label_smoothing), ("R1 gamma", loss.r1_gamma), ("R2 gamma", loss.r2_gamma),
            ("drift penalty", loss.drift_penalty)) if value)
         + (f", gradient penalty {loss.gp_lambda:g}" if loss.adversarial == "wasserstein-gp" else "")),
        ("optimiser", f"{optim.optimizer}, lr G {optim.generator_lr:g} / D {optim.discriminator_lr:g}, batch {train.batch_size}"
                      + (f", {train.d_steps} D steps per G step" if train.d_steps > 1 else "")
                      + (f", {train.g_steps} G steps per D step" if train.g_steps > 1 else "")
                      + (f", EMA of G {train.ema_decay:g}" if train.ema_decay else "")
                      + (f" (half-life at most {train.ema_rampup:.0%} of the steps taken)" if train.ema_rampup else "")),
        ("precision", _precision_words(config.performance.precision, precision)),
    ]
    if epochs_done:
        last = losses["epoch"] == epochs_done
        rows.append((f"epoch {epochs_done} means", "d_loss {:.4f}, g_loss {:.4f}, D(x) {:.3f}, D(G(z)) {:.3f}".format(
            *(losses[key][last].mean() for key in STAT_COLUMNS))))
    broken = _first_breakdown(loss.adversarial, losses, precision)
    if broken:
        rows.append(("warning", f"training broke down at {broken}"))
    if state and state.get("alike"):  # the collapse check (metrics/spread.py) failed at the latest grid
        rows.append(("warning", f"at the latest grid, and since epoch {state.get('alike_since')}, {state['alike']}: "
                                f"{COLLAPSE_VERDICT}"))
    return rows


def _last_state(paths: RunPaths) -> dict | None:
    """The run's last checkpoint, or None where there is none yet or it is damaged (the report still
    renders; resuming says what is wrong with it)."""
    if not paths.last_checkpoint.is_file():
        return None
    try:
        return load_checkpoint(paths.last_checkpoint)
    except UserError:
        return None


def _trained_precision(config: Config, state: dict | None) -> str:
    """What the run computed in: the config's precision where forced; under 'auto', the choice its last
    checkpoint records ('auto' where there is none to read, and bf16's own breakdown check is skipped)."""
    if config.performance.precision != "auto" or state is None:
        return config.performance.precision
    return str(state.get("precision", "auto"))


def _precision_words(setting: str, trained_in: str) -> str:
    """The precision row: what the steps computed in, and whether the config forced it or 'auto' chose it."""
    if setting != "auto":
        return f"{trained_in} (set in the config)"
    if trained_in == "auto":
        return "auto (chosen when training starts; no checkpoint records the choice yet)"
    return f"{trained_in} (chosen by auto when training started)"


def _first_breakdown(kind: str, losses: dict, precision: str) -> str | None:
    """The first epoch whose mean statistics in losses.csv show a broken GAN (``losses.breakdown``)."""
    if not all(key in losses for key in ("epoch", *STAT_COLUMNS)):
        return None
    for epoch in np.unique(losses["epoch"]):
        rows = losses["epoch"] == epoch
        reason = breakdown(kind, *(float(losses[key][rows].mean()) for key in STAT_COLUMNS), precision=precision)
        if reason:
            return f"epoch {int(epoch)}: {reason}"
    return None


def _quality(result: dict, paths: RunPaths, command: str) -> str:
    # The real data's numbers beside each (training's final evaluation stores them): the best a generator can reach.
    floor = result.get("real_floor") if isinstance(result.get("real_floor"), dict) else {}
    rows = [(key_info.label, _number(result[key]), *([_number(floor[key]) if key in floor else ""] if floor else []),
             f"{key_info.better} is better") for key, key_info in METRIC_KEYS.items() if key_info.label and key in result]
    if floor:
        rows.insert(0, ("", "this run", "real data", ""))
    weights = Path(str(result.get("weights", "")))
    when = f" (the generator after epoch {result['epoch']})" if isinstance(result.get("epoch"), int) else ""
    where = (f"<p>{_text(str(result.get('n', '?')))} samples against the {_text(str(result.get('reference', 'test')))} set, "
             f"weights from {_text(str(weights))}{_text(when)}.</p>")
    scored = paths.resolve_recorded(str(weights))
    if not scored.exists() and not weights.is_absolute() and weights.name == paths.generator.name:
        scored = paths.generator  # an older record: the run's own file, named from the folder training ran in
    if scored.is_file() and scored.stat().st_mtime > paths.metrics_json.stat().st_mtime:
        where += f"<p><strong>Stale:</strong> the run trained on after this evaluation; {command} measures it again.</p>"
    histogram = result.get("class_histogram")
    digits = ("<p>Share of each digit: " + ", ".join(f"{digit}: {_number(share, '.3f')}" for digit, share in enumerate(histogram))
              + "</p>" if isinstance(histogram, list) else "")
    return where + _table(rows, numeric_columns=(1, 2)) + digits


def _read_losses(path: Path) -> dict:
    """losses.csv's columns, or none if it is missing or damaged (a row cut short, say: resume trims it)."""
    try:
        return read_csv_columns(path) if path.is_file() else {}
    except (ValueError, TypeError, KeyError):
        return {}


def _number(value, spec: str = ".4g") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else _text(str(value))


def _table(rows: list[tuple[str, ...]], numeric_columns: tuple[int, ...] = ()) -> str:
    cells = "".join("<tr>" + "".join(f"<td class=\"number\">{_text(cell)}</td>" if index in numeric_columns else
                                     (f"<th>{_text(cell)}</th>" if index == 0 else f"<td>{_text(cell)}</td>")
                                     for index, cell in enumerate(row)) + "</tr>" for row in rows)
    return f"<table>{cells}</table>"


def _figure(path: Path, caption: str, pixels: bool) -> str:
    """``pixels``: digits keep hard pixel edges when a high-density screen enlarges them. Curves are
    smoothed instead: shrunk pixel by pixel to fit a narrow window, their thin lines break up."""
    kind = "gif" if path.suffix == ".gif" else "png"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    css_class = " class=\"pixels\"" if pixels else ""
    return (f"<figure{css_class}><img src=\"data:image/{kind};base64,{data}\" alt=\"{_text(caption)}\">"
            f"<figcaption>{_text(caption)}</figcaption></figure>")


# An array as tomli_w writes it, one item a line: "[\n    32,\n    64,\n]".
MULTILINE_ARRAY = re.compile(r"\[\n((?:[ \t]+[^\n]*,\n)+)[ \t]*\]")


def _config(toml: str) -> str:
    """The run's config.toml as written, but each list on one line, and each table a block of its own
    so that the blocks can stand in columns."""
    # Each table starts at a "[" at the start of a line; TOML's top-level keys come before every table.
    top, *tables = re.split(r"\n+(?=\[)", MULTILINE_ARRAY.sub(_one_line, toml).strip())
    if top.startswith("["):  # no top-level keys
        top, tables = "", [top, *tables]
    blocks = "".join(f"<pre>{_text(table)}</pre>" for table in tables)
    return (f"<pre>{_text(top)}</pre>" if top else "") + f"<div class=\"config\">{blocks}</div>"


def _one_line(array: re.Match) -> str:
    return "[" + ", ".join(line.strip().removesuffix(",") for line in array.group(1).splitlines()) + "]"


def _text(value: str) -> str:
    return html.escape(value, quote=True)
