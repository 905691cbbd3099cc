"""The ETF animation: features, class means and classifier rows converging to a simplex ETF.

For 3 chosen classes the picture is a triangle in the plane, for 4 a tetrahedron in 3-D
(rotating slowly). Every frame projects onto the subspace spanned by the chosen class means
(centred on their average), then rotates and rescales so that the means best match a fixed
reference simplex ETF of unit radius (orthogonal Procrustes, :func:`ncollapse.geometry.procrustes`):
the shape moves, not the norm that grows during training. Classifier rows are centred the same
way, projected onto the same plane/space, rotated alike and scaled to unit mean length.

:func:`run_frames` / :func:`ufm_frames` build :class:`Frame` objects, :func:`render_frame`
draws one (save it as a PNG to inspect), :func:`write_animation` writes the GIF (and MP4 when
ffmpeg is on PATH); :func:`animate_run` and :func:`animate_ufm` do all of it.

Modules: ``frames`` (projection and alignment), ``render`` (drawing one frame), ``write``
(GIF/MP4 and the one-call entry points).
"""

from ncollapse.animation.frames import (
    CLASS_COLOURS,
    Frame,
    choose_classes,
    project_frame,
    reference_etf,
    run_frames,
    ufm_frames,
)
from ncollapse.animation.render import render_frame
from ncollapse.animation.write import animate_run, animate_ufm, write_animation

__all__ = [
    "CLASS_COLOURS",
    "Frame",
    "animate_run",
    "animate_ufm",
    "choose_classes",
    "project_frame",
    "reference_etf",
    "render_frame",
    "run_frames",
    "ufm_frames",
    "write_animation",
]
