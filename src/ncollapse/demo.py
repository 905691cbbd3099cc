"""``ncollapse demo``: train the ``demo`` preset, then write figures, animation and report.

Layout of the output directory::

    OUT/run/            the run directory (config, metrics, snapshots, checkpoints)
    OUT/figures/        overview.png/.svg and one file per panel
    OUT/animation.gif   the ETF animation (and animation.mp4 when ffmpeg is on PATH)
    OUT/report.html     the self-contained report

A finished run in ``OUT/run`` is reused, an unfinished one resumed; ``fresh=True`` starts over.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ncollapse import training
from ncollapse.animation import animate_run
from ncollapse.config import TrainConfig, load_config
from ncollapse.plots import plot_runs
from ncollapse.report import build_report
from ncollapse.rundir import (
    CONFIG,
    RunLock,
    config_differences,
    foreign_entries,
    is_run_dir,
    load_run,
)

__all__ = ["DEFAULT_OUT", "run_demo"]

DEFAULT_OUT = Path("ncollapse-demo")


def run_demo(out: str | Path = DEFAULT_OUT, *, fresh: bool = False,
             overrides: Mapping[str, Any] | None = None, progress: bool = True,
             classes: int | None = None, formats: tuple[str, ...] = ("png", "svg"),
             dpi: int | None = None, echo: Callable[[str], None] | None = None
             ) -> dict[str, Any]:
    """Train (or reuse) the demo run under ``out`` and write everything; returns the paths.

    ``overrides`` change the ``demo`` preset (e.g. fewer epochs for a quick check); a finished
    run made with a different config is not reused silently: it raises, suggesting ``fresh``.
    ``formats`` and ``dpi`` are those of the figure files (PNG is always written: the report
    embeds it); ``classes`` (3 or 4) those of the animation.
    The result maps ``run``, ``figures`` (list), ``overview``, ``animation`` (list),
    ``report`` to paths, ``trained`` to what happened (``"new"``, ``"resumed"``, ``"reused"``)
    and ``seconds`` to the wall time.
    """
    say = echo or (lambda line: print(line, flush=True))
    start = time.perf_counter()
    out = Path(out)
    run_dir = out / "run"
    config = load_config(preset="demo", overrides=overrides)

    if fresh:
        _remove_run(run_dir, say)

    state = _run_state(run_dir)
    what = _describe(config)
    if state == "finished":
        _check_same_config(run_dir, config)
        say(f"[1/4] reusing the finished run in {run_dir} (use --fresh to train again)")
        trained = "reused"
    elif state is None:
        say(f"[1/4] training {what} -> {run_dir}")
        training.train(config, out=run_dir, progress=progress)
        trained = "new"
    else:
        _check_same_config(run_dir, config)
        say(f"[1/4] resuming the unfinished run in {run_dir} ({state}) -> {what}")
        training.train(None, out=run_dir, resume=True, progress=progress)
        trained = "resumed"

    run = load_run(run_dir, name="demo")
    say(f"[2/4] figures -> {out / 'figures'}")
    formats = ("png", *[f for f in formats if f != "png"])
    figures = plot_runs([run], out / "figures", formats=formats, dpi=dpi)
    say(f"[3/4] animation -> {out / 'animation.gif'}")
    animation = animate_run(run, out / "animation.gif", classes)
    say(f"[4/4] report -> {out / 'report.html'}")
    report = build_report(run, out / "report.html", animation=animation[0],
                          figures_dir=out / "figures")
    seconds = time.perf_counter() - start

    result = {"run": run_dir, "figures": figures, "overview": figures[0],
              "animation": animation, "report": report, "trained": trained,
              "seconds": seconds}
    for line in summary_lines(run, result):
        say(line)
    return result


def summary_lines(run: Any, result: Mapping[str, Any]) -> list[str]:
    """What the demo found and where everything is, in a few lines."""
    onset = run.tpt_onset
    first, last = (run.metrics[0], run.metrics[-1]) if run.metrics else (None, None)
    nc1_first = run.value(first, "train.nc1")
    at_onset = run.row_at(onset)  # the measurement at the onset, else the first after it
    nc1_onset = run.value(at_onset, "train.nc1")
    nc1_end = run.value(last, "train.nc1")
    acc = run.value(last, "test_accuracy")

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3g}"

    lines = [f"done in {result['seconds']:.0f} s: the run {run.describe_state()}"]
    if onset is not None:
        where = ("the onset" if at_onset is None or at_onset["epoch"] == onset
                 else f"epoch {at_onset['epoch']}, the first measurement after the onset")
        lines.append(f"  zero training error from epoch {onset} (TPT onset); NC1 "
                     f"{fmt(nc1_first)} at epoch {first['epoch']} -> {fmt(nc1_onset)} at "
                     f"{where} -> {fmt(nc1_end)} at epoch {last['epoch']}")
    elif last is not None:
        lines.append(f"  training error never reached zero; NC1 {fmt(nc1_first)} -> "
                     f"{fmt(nc1_end)}")
    if acc is not None:
        lines.append(f"  test accuracy at the end: {100 * acc:.1f} %")
    lines += [
        f"  report:     {result['report']}   (open it in a browser)",
        f"  figures:    {Path(result['overview']).parent}/ (overview: {result['overview']})",
        f"  animation:  {', '.join(str(p) for p in result['animation'])}",
        f"  run:        {result['run']}",
    ]
    return lines


def _remove_run(run_dir: Path, say: Callable[[str], None]) -> None:
    """Delete ``run_dir`` for ``--fresh``: only a real folder that is a run directory of ours
    and holds nothing its writer did not make (it is checked whole before anything goes)."""
    if run_dir.is_symlink():
        raise ValueError(f"{run_dir} is a symbolic link; refusing to delete through it with "
                         "--fresh. Remove the link yourself or choose another --out")
    if not run_dir.exists():
        return
    if not run_dir.is_dir() or (not is_run_dir(run_dir) and any(run_dir.iterdir())):
        raise ValueError(f"{run_dir} exists but is not a run directory; refusing to delete "
                         "it with --fresh. Move it away or choose another --out")
    foreign = foreign_entries(run_dir)
    if foreign:
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise ValueError(f"{run_dir} holds files the run did not write ({shown}); refusing to "
                         "delete them with --fresh. Move them away or choose another --out")
    say(f"--fresh: removing the previous run in {run_dir}")
    with RunLock(run_dir):  # not while another process is writing it
        shutil.rmtree(run_dir)


def _run_state(run_dir: Path) -> str | None:
    """None when there is no run yet, else the state in status.json (``"unknown"`` without)."""
    if not is_run_dir(run_dir):
        return None
    return load_run(run_dir).state


def _check_same_config(run_dir: Path, config: TrainConfig) -> None:
    path = run_dir / CONFIG
    if not path.is_file():
        raise ValueError(f"{run_dir} holds a run without config.toml; rerun with --fresh")
    diff = config_differences(load_config(path=path), config)
    if diff:
        raise ValueError(f"{run_dir} holds a run with a different config (differs in: "
                         f"{', '.join(diff)}); rerun with --fresh or choose another --out")


def _describe(config: Any) -> str:
    arch = f"{config.model} {config.depth}x{config.width}" if config.width else config.model
    return (f"the demo preset ({config.dataset}, {arch}, {config.loss} loss, {config.epochs} "
            f"epochs on {config.device})")

