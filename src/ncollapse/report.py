"""The self-contained HTML report of one run: config, key numbers, figures, animation.

One file, no scripts, no network: figures are base64 PNGs, the animation a base64 GIF, the CSS
inline. Every piece of text taken from the run is escaped.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ncollapse import __version__
from ncollapse.animation import animate_run
from ncollapse.io import atomic_write_text
from ncollapse.plots import PANELS, figure_bytes, overview_figure, panel_figure
from ncollapse.plots.classes import imbalance_of, per_class_figure
from ncollapse.plots.depth import depth_figure, layer_records
from ncollapse.rundir import Run, load_run

__all__ = ["TABLE_ROWS", "build_report", "metric_table", "render_html"]

# (label, dotted key, kind) for the table at the TPT onset and at the end.
TABLE_ROWS: tuple[tuple[str, str, str], ...] = (
    ("training error", "train_error", "percent"),
    ("training loss", "train_loss", "number"),
    ("test accuracy", "test_accuracy", "percent"),
    ("test loss", "test_loss", "number"),
    ("NC1 within-class variability (train)", "train.nc1", "number"),
    ("NC1 (test)", "test.nc1", "number"),
    ("NC2 equinorm, class means", "train.equinorm_means", "number"),
    ("NC2 equinorm, classifier rows", "train.equinorm_weights", "number"),
    ("NC2 equiangularity, class means", "train.equiangular_means", "number"),
    ("NC2 equiangularity, classifier rows", "train.equiangular_weights", "number"),
    ("NC2 maximal angle, class means", "train.maxangle_means", "number"),
    ("NC2 maximal angle, classifier rows", "train.maxangle_weights", "number"),
    ("distance of the class means to the nearest ETF", "train.etf_error_means", "number"),
    ("NC3 self-duality", "train.self_duality", "number"),
    ("NC4 NCC mismatch (train)", "train.ncc_mismatch", "percent"),
    ("NC4 NCC mismatch (test)", "test.ncc_mismatch", "percent"),
)

CSS = """
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; color: #1d1d1f;
       max-width: 1180px; margin: 0 auto; padding: 24px 28px 60px; line-height: 1.45;
       background: #fff; }
h1 { font-size: 1.7em; margin: 0 0 4px; }
h2 { font-size: 1.25em; margin: 34px 0 10px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 1.02em; margin: 0 0 6px; }
p.sub { color: #555; margin: 0 0 16px; }
.state { display: inline-block; padding: 1px 9px; border-radius: 10px; font-size: 0.85em;
         font-weight: bold; }
.state-finished { background: #dff3e2; color: #1b6b2a; }
.state-running { background: #fff3cd; color: #7a5a00; }
.state-failed, .state-unknown { background: #fbe0e0; color: #8a1f1f; }
.problems { background: #fff8e6; border-left: 4px solid #e0a800; padding: 8px 14px;
            margin: 14px 0; }
.problems ul { margin: 4px 0; padding-left: 20px; }
table { border-collapse: collapse; font-size: 0.9em; margin: 6px 0 12px; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 4px 12px 4px 4px; text-align: left;
         vertical-align: top; }
th { background: #f5f5f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; font-family: "DejaVu Sans Mono",
         monospace; }
.config { display: flex; flex-wrap: wrap; gap: 8px 28px; }
.config table { min-width: 250px; }
.config caption { text-align: left; font-weight: bold; padding: 4px 0; }
img.figure { max-width: 100%; height: auto; border: 1px solid #eee; }
.panels { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr));
          gap: 22px; }
.panel { border: 1px solid #e6e6e6; border-radius: 6px; padding: 10px; background: #fcfcfd; }
.panel p { font-size: 0.88em; margin: 6px 0 0; color: #333; }
.anim { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.anim img { max-width: 486px; width: 100%; border: 1px solid #eee; }
.anim div { flex: 1; min-width: 280px; }
footer { margin-top: 40px; color: #777; font-size: 0.82em; }
code { background: #f3f3f5; padding: 0 3px; border-radius: 3px; }
"""

INTRO = (
    "Deep classifiers trained past the point of zero training error (the terminal phase of "
    "training, TPT) end in a strikingly simple geometry, called neural collapse (Papyan, Han "
    "and Donoho, PNAS 2020): the last-layer features of each class shrink onto their class mean "
    "(NC1); the class means spread out into a simplex equiangular tight frame, the most "
    "symmetric arrangement possible, with equal lengths and equal, maximal angles (NC2); the "
    "classifier's rows line up with the class means (NC3); and the network ends up deciding like "
    "a nearest-class-mean rule (NC4). This report shows how far this run has gone towards it."
)

ANIMATION_TEXT = (
    "Each frame is one measurement epoch. Small dots are the last-layer features of a fixed set "
    "of training samples, large dots the class means (over the whole training set), arrows the "
    "classifier's rows, and the grey dashed shape the reference simplex ETF. Everything is "
    "projected onto the plane (3 classes) or 3-D space (4 classes) spanned by the chosen class "
    "means and rescaled in every frame so the means best match the reference: the growth of the "
    "features' size is divided out and only the shape changes. Under neural collapse the small "
    "dots shrink into the large ones, the large ones settle on the vertices, and the arrows "
    "point at them."
)


DEPTH_TEXT = (
    "NC1 measured at each tracked layer (ncollapse train --layers), on the training set. Left: "
    "against depth at a few epochs, on a log scale, where a straight falling line is the "
    "geometric decay with depth reported by He and Su (2023); right: each layer against epoch. "
    "Conv maps are averaged over space before measuring. Layers the classifier does not act on "
    "report NC4 as the nearest-class-centre error against the labels."
)
PER_CLASS_TEXT = (
    "From the snapshots of this imbalanced run: the norms of the centred class means and of the "
    "classifier rows, one line per class (minority classes dashed), and the mean cosine between "
    "classifier rows of the minority classes and of the majority classes. The dashed black "
    "line is the norm-constrained layer-peeled model (Fang et al. 2021) for the same class "
    "proportions and the norm budgets the run has at those epochs: there the minority rows "
    "turn parallel as the imbalance grows (minority collapse). The model has free features "
    "and no bias, so it is a reference point, not a fit."
)


def metric_table(run: Run) -> list[dict[str, Any]]:
    """Rows ``{"label", "key", "kind", "tpt", "end"}`` for the table (values None if absent)."""
    onset_row = run.row_at(run.tpt_onset)
    end_row = run.metrics[-1] if run.metrics else None
    out = []
    for label, key, kind in TABLE_ROWS:
        out.append({"label": label, "key": key, "kind": kind,
                    "tpt": run.value(onset_row, key), "end": run.value(end_row, key)})
    return out


def build_report(run_dir: str | Path | Run, out: str | Path | None = None, *,
                 animation: str | Path | None = None, classes: int | None = None,
                 class_ids: Sequence[int] | None = None, make_animation: bool = True,
                 dpi: int = 120, figures_dir: str | Path | None = None) -> Path:
    """Write the report of one run to ``out`` (default RUN_DIR/report.html); returns its path.

    ``animation``: an existing GIF to embed; otherwise one is made from the snapshots (unless
    ``make_animation`` is False), with ``classes``/``class_ids`` as for ``ncollapse animate``.
    ``figures_dir``: embed the PNGs already written there by :func:`ncollapse.plots.plot_runs`
    for this run (figures missing there are drawn afresh at ``dpi``).
    """
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)
    out = Path(out) if out is not None else run.path / "report.html"
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"{out}: the report is an HTML file; give a path ending in .html")
    ready = Path(figures_dir) if figures_dir is not None else None

    def png(name: str, draw) -> bytes:
        if ready is not None and (ready / f"{name}.png").is_file():
            return (ready / f"{name}.png").read_bytes()
        return figure_bytes(draw(), "png", dpi=dpi)

    overview = png("overview", lambda: overview_figure([run]))
    panels = {name: png(name, lambda n=name: panel_figure([run], n)) for name in PANELS}
    extra = {}
    if layer_records(run):
        extra["depth"] = png("depth", lambda: depth_figure(run))
    if imbalance_of(run) and run.snapshots:
        extra["per_class"] = png("per_class", lambda: per_class_figure(run))
    gif, gif_note = _animation_bytes(run, animation, make_animation, classes, class_ids)
    text = render_html(run, overview=overview, panels=panels, gif=gif, gif_note=gif_note,
                       extra=extra)
    atomic_write_text(out, text)
    return out


def render_html(run: Run, *, overview: bytes | None, panels: Mapping[str, bytes],
                gif: bytes | None, gif_note: str | None = None,
                extra: Mapping[str, bytes] | None = None) -> str:
    """The report as one HTML string, images given as encoded bytes; ``extra`` may hold the
    ``"depth"`` and ``"per_class"`` figures."""
    extra = extra or {}
    e = html.escape
    state = run.state
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Neural collapse report: {e(run.name)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Neural collapse report: {e(run.name)}</h1>",
        f'<p class="sub"><span class="state state-{e(state)}">{e(state)}</span> '
        f"{e(run.describe_state())}. Run directory: <code>{e(str(run.path))}</code></p>",
    ]
    if run.problems:
        items = "".join(f"<li>{e(p)}</li>" for p in run.problems)
        parts.append(f'<div class="problems"><b>What is missing or incomplete</b><ul>{items}'
                     "</ul>The figures below show what exists.</div>")
    parts.append(f"<p>{e(INTRO)}</p>")
    parts.append("<h2>The geometry, animated</h2><div class=\"anim\">")
    if gif:
        parts.append(_img(gif, "gif", "Features, class means and classifier converging to a "
                                      "simplex ETF", None))
    else:
        parts.append(f"<p><i>No animation: {e(gif_note or 'not made')}.</i></p>")
    parts.append(f"<div><p>{e(ANIMATION_TEXT)}</p></div></div>")

    parts.append("<h2>Key numbers</h2>")
    parts.append(_table_html(run))

    parts.append("<h2>All measures at a glance</h2>")
    if overview:
        parts.append(_img(overview, "png", "All collapse measures against epoch", "figure"))
    parts.append("<p>Every panel plots one measure against the training epoch on a logarithmic "
                 "axis, as in Papyan, Han and Donoho (2020); the dashed vertical line marks the "
                 "start of the terminal phase (first epoch with zero training error). For every "
                 "collapse measure, lower is more collapsed and 0 is perfect collapse.</p>")

    parts.append("<h2>The measures one by one</h2><div class=\"panels\">")
    for name, spec in PANELS.items():
        img = panels.get(name)
        body = _img(img, "png", spec.title, "figure") if img else "<p>(figure missing)</p>"
        parts.append(f'<div class="panel"><h3>{e(spec.title)}</h3>{body}'
                     f"<p>{e(spec.explanation)}</p></div>")
    parts.append("</div>")

    if extra.get("depth"):
        parts.append("<h2>Collapse through depth</h2>")
        parts.append(_img(extra["depth"], "png", "NC1 of every tracked layer", "figure"))
        parts.append(f"<p>{e(DEPTH_TEXT)}</p>")
    if extra.get("per_class"):
        parts.append("<h2>Per class: imbalance and minority collapse</h2>")
        parts.append(_img(extra["per_class"], "png", "Per-class norms and minority cosines",
                          "figure"))
        parts.append(f"<p>{e(PER_CLASS_TEXT)}</p>")

    parts.append("<h2>Configuration</h2>")
    parts.append(_config_html(run.config))
    parts.append(f"<footer>Made by ncollapse {e(__version__)} with <code>ncollapse report "
                 f"{e(str(run.path))}</code>. Self-contained: no scripts, no network.</footer>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- internals


def _img(data: bytes, kind: str, alt: str, cls: str | None) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    klass = f' class="{cls}"' if cls else ""
    return f'<img{klass} alt="{html.escape(alt)}" src="data:image/{kind};base64,{b64}">'


def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "&ndash;"
    if kind == "percent":
        return html.escape(f"{100 * value:.4g} %")
    return html.escape(f"{value:.4g}")


def _table_html(run: Run) -> str:
    e = html.escape
    onset = run.tpt_onset
    onset_row = run.row_at(onset)
    end_row = run.metrics[-1] if run.metrics else None
    if onset is None:
        tpt_head = "TPT onset (not reached)"
    elif onset_row is not None and onset_row.get("epoch") != onset:
        tpt_head = f"TPT onset, epoch {onset} (measured at {onset_row.get('epoch')})"
    else:
        tpt_head = f"TPT onset, epoch {onset}"
    end_head = f"end, epoch {end_row.get('epoch')}" if end_row else "end (no measurement)"
    rows = [f"<tr><th>measure</th><th>{e(tpt_head)}</th><th>{e(end_head)}</th></tr>"]
    for item in metric_table(run):
        rows.append(f"<tr><td>{e(item['label'])}</td>"
                    f'<td class="num">{_fmt(item["tpt"], item["kind"])}</td>'
                    f'<td class="num">{_fmt(item["end"], item["kind"])}</td></tr>')
    note = ("<p>Collapse measures are computed on the training set unless marked test; "
            "&ndash; means not recorded.</p>")
    return f"<table>{''.join(rows)}</table>{note}"


def _config_html(config: Mapping[str, Any] | None) -> str:
    e = html.escape
    if not config:
        return "<p><i>No readable config.toml.</i></p>"
    tables = []
    loose = {k: v for k, v in config.items() if not isinstance(v, Mapping)}
    sections = [("", loose)] if loose else []
    sections += [(k, v) for k, v in config.items() if isinstance(v, Mapping)]
    for name, section in sections:
        rows = "".join(f"<tr><td>{e(k)}</td><td>{e(_plain(v))}</td></tr>"
                       for k, v in _flatten(section))
        caption = f"<caption>[{e(name)}]</caption>" if name else ""
        tables.append(f"<table>{caption}{rows}</table>")
    return f'<div class="config">{"".join(tables)}</div>'


def _flatten(section: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in section.items():
        if isinstance(value, Mapping):
            out.extend(_flatten(value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _plain(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return str(value)


def _animation_bytes(run: Run, animation: str | Path | None, make: bool,
                     classes: int | None, class_ids: Sequence[int] | None
                     ) -> tuple[bytes | None, str | None]:
    if animation is not None:
        return Path(animation).read_bytes(), None
    if not make:
        return None, "not requested"
    if not run.snapshots:
        return None, next((p for p in run.problems if "snapshots" in p), "no snapshots")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            paths = animate_run(run, Path(tmp) / "animation.gif", classes, class_ids=class_ids,
                                mp4=False)
        except ValueError as exc:
            return None, str(exc)
        return paths[0].read_bytes(), None
