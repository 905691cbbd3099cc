"""Writing the ETF animation: frames to a GIF (and an MP4 with ffmpeg); a run or the UFM."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from ncollapse.animation.frames import (
    FRAME_DPI,
    FRAME_SIZE_IN,
    VIEW_AZIM,
    Frame,
    run_frames,
    ufm_frames,
)
from ncollapse.animation.render import render_frame
from ncollapse.io import atomic_write_bytes
from ncollapse.rundir import Run, load_run
from ncollapse.theory.ufm import gradient_descent_trajectory

__all__ = ["animate_run", "animate_ufm", "write_animation"]


# ----------------------------------------------------------------------------- writing


def write_animation(frames: Sequence[Frame], out: str | Path, *, fps: float = 6.0,
                    mp4: bool | None = None, hold_last: float = 1.5,
                    degrees_per_frame: float = 2.0, dpi: int = FRAME_DPI) -> list[Path]:
    """Write the frames as a looping GIF at ``out`` (and ``out`` with .mp4 when asked).

    ``mp4=None`` writes the MP4 exactly when ffmpeg is on PATH; ``True`` requires it. The last
    frame is shown ``hold_last`` seconds longer; 3-D views turn by ``degrees_per_frame``.
    Returns the written paths (GIF first).
    """
    if not frames:
        raise ValueError("no frames to write")
    if not (isinstance(fps, (int, float)) and 0 < fps <= 60):
        raise ValueError(f"fps must be a number in (0, 60], got {fps!r}")
    out = Path(out)
    if out.suffix.lower() != ".gif":
        raise ValueError(f"{out}: the animation is written as a GIF; give a path ending in .gif")
    ffmpeg = shutil.which("ffmpeg")
    if mp4 and ffmpeg is None:
        raise ValueError("MP4 output needs ffmpeg on PATH (Debian: apt-get install ffmpeg); "
                         "drop --mp4 to write only the GIF")
    want_mp4 = bool(ffmpeg) if mp4 is None else bool(mp4)
    fig = Figure(figsize=(FRAME_SIZE_IN, FRAME_SIZE_IN), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    images: list[np.ndarray] = []
    for k, frame in enumerate(frames):
        render_frame(frame, fig=fig, azim=VIEW_AZIM + degrees_per_frame * k)
        canvas.draw()
        images.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    step_ms = 1000.0 / fps
    durations = [int(round(step_ms))] * len(images)
    durations[-1] = int(round(step_ms + 1000.0 * max(0.0, hold_last)))
    written = [_write_gif(images, out, durations)]
    if want_mp4 and ffmpeg:
        held = images + [images[-1]] * int(round(max(0.0, hold_last) * fps))
        written.append(_write_mp4(held, out.with_suffix(".mp4"), fps, ffmpeg))
    return written


def _write_gif(images: list[np.ndarray], out: Path, durations: list[int]) -> Path:
    # one palette per frame: Pillow's mapping onto a shared palette shifts colours (white
    # becomes 252), median cut per frame keeps the few flat colours of a plot exact
    pal = [Image.fromarray(im).quantize(colors=128, method=Image.Quantize.MEDIANCUT)
           for im in images]
    buf = io.BytesIO()
    pal[0].save(buf, format="GIF", save_all=True, append_images=pal[1:],
                duration=durations, loop=0, optimize=False, disposal=1)
    atomic_write_bytes(out, buf.getvalue())
    return out


def _write_mp4(images: list[np.ndarray], out: Path, fps: float, ffmpeg: str) -> Path:
    h, w = images[0].shape[:2]
    h2, w2 = h - h % 2, w - w % 2  # yuv420p needs even sizes
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".mp4", dir=out.parent)
    os.close(fd)
    cmd = [ffmpeg, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w2}x{h2}", "-r", f"{fps:g}", "-i", "-", "-an", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-movflags", "+faststart", tmp]
    data = b"".join(np.ascontiguousarray(im[:h2, :w2]).tobytes() for im in images)
    try:
        proc = subprocess.run(cmd, input=data, capture_output=True, check=False)
        if proc.returncode != 0:  # no libx264 in this ffmpeg build: plain MPEG-4 instead
            cmd[cmd.index("libx264")] = "mpeg4"
            proc = subprocess.run(cmd, input=data, capture_output=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg failed: {proc.stderr.decode(errors='replace')[-500:]}")
        atomic_write_bytes(out, Path(tmp).read_bytes())  # usual permissions, atomic
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def animate_run(run_dir: str | Path | Run, out: str | Path | None = None,
                classes: int | None = None, *, class_ids: Sequence[int] | None = None,
                fps: float = 6.0,
                mp4: bool | None = None, max_per_class: int | None = 40,
                max_frames: int | None = 60) -> list[Path]:
    """Animate a run directory's snapshots; writes ``out`` (default RUN_DIR/animation.gif)."""
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)
    frames = run_frames(run, classes=classes, class_ids=class_ids, max_per_class=max_per_class,
                        max_frames=max_frames)
    out = Path(out) if out is not None else run.path / "animation.gif"
    return write_animation(frames, out, fps=fps, mp4=mp4)


def animate_ufm(out: str | Path, *, classes: int = 4, per_class: int = 15, dim: int = 6,
                loss: str = "ce", lambda_w: float = 5e-3, lambda_h: float = 5e-3,
                lambda_b: float = 5e-3, steps: int = 3000, lr: float = 0.5,
                num_records: int = 50, seed: int = 0, fps: float = 6.0,
                mp4: bool | None = None) -> list[Path]:
    """Animate plain gradient descent on the unconstrained features model (all ``classes``
    drawn, 3 or 4) from a small random start; returns the written paths."""
    if classes not in (3, 4):
        raise ValueError(f"classes must be 3 (triangle) or 4 (tetrahedron), got {classes}")
    records = gradient_descent_trajectory(
        classes=classes, per_class=per_class, dim=dim, loss=loss, lambda_w=lambda_w,
        lambda_h=lambda_h, lambda_b=lambda_b, bias=True, steps=steps, lr=lr,
        num_records=num_records, seed=seed)
    frames = ufm_frames(records, classes=classes)
    return write_animation(frames, out, fps=fps, mp4=mp4)
