"""The ETF animation: projection and alignment, frames, GIF/MP4 writing, the CLI."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import write_run
from PIL import Image

from ncollapse import animation as A
from ncollapse.geometry import is_simplex_etf, random_orthonormal, simplex_etf
from ncollapse.rundir import load_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("anim") / "run", classes=5, dim=10, epochs=40,
                     measurements=7, onset=10, per_class=10).path


def _collapsed(classes: int, dim: int, per_class: int, *, seed: int, noise: float = 0.0):
    """Features exactly on (or near) an ETF in a random orientation, shifted and scaled."""
    rng = np.random.default_rng(seed)
    etf = simplex_etf(classes, dim, scale=7.0, seed=seed)
    offset = rng.standard_normal(dim) * 3
    labels = np.repeat(np.arange(classes), per_class)
    feats = etf[labels] + offset + noise * rng.standard_normal((len(labels), dim))
    means = np.stack([feats[labels == c].mean(axis=0) for c in range(classes)])
    weight = 0.3 * etf  # self-dual classifier
    return feats, labels, means, weight


def test_reference_etf_is_a_simplex_etf():
    for k in (3, 4):
        ref = A.reference_etf(k)
        assert ref.shape == (k, k - 1)
        assert is_simplex_etf(ref, atol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(ref, axis=1), 1.0, rtol=1e-14)


@pytest.mark.parametrize("ids", [(0, 1, 2), (0, 1, 2, 3), (4, 1, 6)])
def test_collapsed_features_land_on_the_reference_vertices(ids):
    feats, labels, means, weight = _collapsed(7, 9, 5, seed=3)
    frame = A.project_frame(feats, labels, means, ids, weight=weight, epoch=5, nc1=0.0)
    ref = A.reference_etf(len(ids))
    # any subset of a simplex ETF, centred, is a regular simplex: it maps exactly onto ref
    np.testing.assert_allclose(frame.means, ref, atol=1e-12)
    np.testing.assert_allclose(frame.weights, ref, atol=1e-12)
    np.testing.assert_allclose(frame.features, ref[frame.labels], atol=1e-12)
    assert frame.etf_distance < 1e-12
    assert frame.class_ids == ids and len(frame.features) == 5 * len(ids)


def test_projection_ignores_rotation_scale_and_shift():
    feats, labels, means, weight = _collapsed(6, 8, 6, seed=1, noise=2.0)
    q = random_orthonormal(8, 8, seed=11)
    shift = np.arange(8.0)
    a = A.project_frame(feats, labels, means, (0, 2, 3, 5), weight=weight)
    b = A.project_frame(3.5 * feats @ q + shift, labels, 3.5 * means @ q + shift,
                        (0, 2, 3, 5), weight=10 * weight @ q)
    # the alignment to the fixed reference removes the transformation (up to a reflection
    # fixed by Procrustes, identical for both since the means agree up to the map)
    np.testing.assert_allclose(a.means, b.means, atol=1e-10)
    np.testing.assert_allclose(a.features, b.features, atol=1e-10)
    np.testing.assert_allclose(a.weights, b.weights, atol=1e-10)
    assert a.etf_distance == pytest.approx(b.etf_distance, rel=1e-10)
    assert a.etf_distance > 0.01  # noisy: the means are not an exact ETF


def test_frame_scale_is_that_of_the_reference():
    """Per-frame rescaling: the least-squares fit puts the means at the reference's size."""
    feats, labels, means, _ = _collapsed(4, 5, 8, seed=2, noise=3.0)
    frame = A.project_frame(feats, labels, means * 1e6, (0, 1, 2, 3))
    ref = A.reference_etf(4)
    # optimal scale s = <P R, E>/|P|^2 means <frame.means, E> = |frame.means|^2
    np.testing.assert_allclose(np.sum(frame.means * ref), np.sum(frame.means ** 2), rtol=1e-10)


def test_choose_classes():
    assert A.choose_classes(10, 16) == (0, 1, 2, 3)
    assert A.choose_classes(3, 16) == (0, 1, 2)
    assert A.choose_classes(10, 2) == (0, 1, 2)  # a tetrahedron needs 3 dimensions
    assert A.choose_classes(10, 16, classes=3) == (0, 1, 2)
    assert A.choose_classes(10, 16, class_ids=[7, 2, 5]) == (7, 2, 5)
    with pytest.raises(ValueError, match="3 or 4 class ids"):
        A.choose_classes(10, 16, class_ids=[1, 2])
    with pytest.raises(ValueError, match="distinct"):
        A.choose_classes(10, 16, class_ids=[1, 1, 2])
    with pytest.raises(ValueError, match=r"out of range: the run has classes 0\.\.9"):
        A.choose_classes(10, 16, class_ids=[1, 2, 10])
    with pytest.raises(ValueError, match="only 3 classes"):
        A.choose_classes(3, 16, classes=4)
    with pytest.raises(ValueError, match="dimension 2"):
        A.choose_classes(10, 2, class_ids=[0, 1, 2, 3])


def test_run_frames_follow_the_snapshots(run_dir):
    run = load_run(run_dir)
    frames = A.run_frames(run)
    assert [f.epoch for f in frames] == sorted(run.snapshots)
    assert all(f.class_ids == (0, 1, 2, 3) and f.dim == 3 for f in frames)
    assert [f.in_tpt for f in frames] == [e >= 10 for e in sorted(run.snapshots)]
    for f in frames:
        snap = np.load(run.snapshots[f.epoch])
        assert f.nc1 == float(snap["nc1"])
        assert len(f.features) == 4 * 10
    # the synthetic run collapses: the last frame is closer to the ETF than the first
    assert frames[-1].etf_distance < frames[0].etf_distance
    spread = [np.mean(np.linalg.norm(f.features - f.means[f.labels], axis=1)) for f in frames]
    assert spread[-1] < 0.5 * spread[0]
    thinned = A.run_frames(run, classes=3, max_frames=3, max_per_class=4)
    assert [f.epoch for f in thinned] == [frames[0].epoch, frames[3].epoch, frames[-1].epoch]
    assert len(thinned[0].features) == 12


def test_damaged_or_missing_snapshots(tmp_path):
    run_dir = write_run(tmp_path / "r", epochs=20, measurements=5, per_class=4).path
    snaps = sorted((run_dir / "snapshots").iterdir())
    snaps[1].write_bytes(b"PK\x03\x04 not really a zip")
    run = load_run(run_dir)
    frames = A.run_frames(run)
    assert len(frames) == len(snaps) - 1
    assert any(snaps[1].name in p and "unreadable snapshot" in p for p in run.problems)
    shutil.rmtree(run_dir / "snapshots")
    with pytest.raises(ValueError, match="nothing to animate"):
        A.run_frames(run_dir)


def test_render_frame_png(run_dir, tmp_path):
    frames = A.run_frames(run_dir)
    for k, frame in ((3, A.run_frames(run_dir, classes=3)[-1]), (4, frames[-1])):
        out = tmp_path / f"frame{k}.png"
        fig = A.render_frame(frame, out=out)
        title = fig.texts[0].get_text()
        assert f"epoch {frame.epoch}" in title and f"NC1 = {frame.nc1:.3g}" in title
        assert "terminal phase" in title
        with Image.open(out) as im:
            rgb = np.asarray(im.convert("RGB")).astype(int)
        assert rgb.shape[:2] == (486, 486)
        assert rgb.std() > 10
        # every class colour is on the picture (class means drawn as large dots)
        for c in frame.class_ids:
            col = np.array([int(A.CLASS_COLOURS[c][i:i + 2], 16) for i in (1, 3, 5)])
            close = np.abs(rgb - col).sum(axis=2) < 30
            assert close.sum() > 50, (k, c)


def test_write_animation_gif_and_mp4(run_dir, tmp_path):
    frames = A.run_frames(run_dir, max_per_class=5)
    paths = A.write_animation(frames, tmp_path / "a.gif", fps=5, hold_last=0.4,
                              mp4=bool(shutil.which("ffmpeg")))
    with Image.open(paths[0]) as im:
        assert im.format == "GIF" and im.n_frames == len(frames)
        assert im.info["duration"] == 200 and im.info.get("loop") == 0
        im.seek(im.n_frames - 1)
        assert im.info["duration"] == 600  # the last frame is held 0.4 s longer
    assert paths[0].stat().st_size < 3_000_000
    if shutil.which("ffmpeg"):
        assert paths[1].suffix == ".mp4" and paths[1].read_bytes()[4:8] == b"ftyp"
    with pytest.raises(ValueError, match="ending in .gif"):
        A.write_animation(frames, tmp_path / "a.mp4")
    with pytest.raises(ValueError, match="fps"):
        A.write_animation(frames, tmp_path / "b.gif", fps=0)


def test_ufm_frames_converge_to_the_etf():
    from ncollapse.theory.ufm import gradient_descent_trajectory

    records = gradient_descent_trajectory(classes=4, per_class=6, dim=5, loss="ce",
                                          lambda_w=5e-3, lambda_h=5e-3, lambda_b=5e-3,
                                          steps=1500, lr=0.5, num_records=12, seed=0)
    frames = A.ufm_frames(records)
    assert frames[0].time_label == "step" and frames[-1].epoch == 1500
    assert frames[-1].etf_distance < 1e-3 < frames[0].etf_distance
    assert frames[-1].nc1 < 1e-4 * frames[0].nc1
    np.testing.assert_allclose(frames[-1].weights, A.reference_etf(4), atol=1e-2)


def test_cli_animate(run_dir, tmp_path, capsys):
    from ncollapse.cli import main

    out = tmp_path / "cli.gif"
    rc = main(["animate", str(run_dir), "--class-ids", "4,0,2", "--out", str(out), "--no-mp4",
               "--max-frames", "3", "--frames", str(tmp_path / "frames")])
    assert rc == 0 and out.is_file() and not out.with_suffix(".mp4").exists()
    assert len(list((tmp_path / "frames").glob("epoch_*.png"))) == 3
    assert "classes 4, 0, 2" in capsys.readouterr().out
    assert main(["animate", str(run_dir), "--class-ids", "0,1"]) == 2
    assert "give 3 or 4 class ids" in capsys.readouterr().err
    assert main(["animate"]) == 2
    rc = main(["animate", "--ufm", "--classes", "3", "--steps", "300", "--max-frames", "4",
               "--per-class", "3", "--dim", "3", "--out", str(tmp_path / "u.gif"), "--no-mp4"])
    assert rc == 0 and (tmp_path / "u.gif").is_file()
    assert "last step 300" in capsys.readouterr().out


def test_nonfinite_snapshot_is_skipped_with_a_note(tmp_path, capsys):
    from ncollapse.cli import main
    from ncollapse.rundir import RunWriter

    rng = np.random.default_rng(0)
    c, d = 3, 4
    labels = np.repeat(np.arange(c), 6)
    with RunWriter(tmp_path / "run", {"model": {"name": "mlp"}}, epochs=3) as run:
        for e in (1, 2, 3):
            means = rng.standard_normal((c, d)) * 3
            feats = means[labels] + 0.1 * rng.standard_normal((labels.size, d))
            if e == 2:
                feats[0, 0] = np.nan  # a diverging measurement
            run.log_measurement(e, train={"nc1": 1.0}, snapshot={
                "features": feats, "labels": labels, "means": means,
                "weight": rng.standard_normal((c, d))})
    frames = A.run_frames(tmp_path / "run")
    assert [f.epoch for f in frames] == [1, 3]
    assert main(["animate", str(tmp_path / "run"), "--no-mp4"]) == 0
    out = capsys.readouterr().out
    assert "note: snapshot of epoch 2 skipped: its features hold NaN/Inf" in out
