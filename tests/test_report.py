"""The self-contained HTML report, including a real headless-Chromium check."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from conftest import write_run
from PIL import Image

from ncollapse.report import build_report, metric_table, render_html
from ncollapse.rundir import load_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report_written(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("rep") / "run", epochs=40, measurements=8,
                     onset=12, per_class=8)


@pytest.fixture(scope="module")
def report_run(report_written):
    return report_written.path


@pytest.fixture(scope="module")
def report_html(report_run, tmp_path_factory):
    return build_report(report_run, tmp_path_factory.mktemp("out") / "report.html", dpi=60)


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Collect:
    p = _Collect()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def test_report_is_self_contained(report_html):
    page = _parse(report_html)
    tags = [t for t, _ in page.tags]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    imgs = [a for t, a in page.tags if t == "img"]
    assert len(imgs) == 1 + 1 + 9  # animation, overview, nine panels
    kinds = []
    for attrs in imgs:
        src = attrs["src"]
        m = re.fullmatch(r"data:image/(png|gif);base64,([A-Za-z0-9+/=]+)", src)
        assert m, src[:60]
        data = base64.b64decode(m.group(2), validate=True)
        assert data.startswith(b"\x89PNG" if m.group(1) == "png" else b"GIF89a")
        kinds.append(m.group(1))
        assert attrs.get("alt")
    assert kinds.count("gif") == 1
    raw = report_html.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", raw)
    assert "@import" not in raw and "url(" not in raw


def test_report_table_values(report_written, report_html):
    run = load_run(report_written.path)
    onset_epoch = min(e for e in report_written.epochs if e >= 12)
    rows = {r["key"]: r for r in metric_table(run)}
    want_tpt = report_written.rows[onset_epoch]["train"]  # as logged through RunWriter
    want_end = report_written.rows[40]["train"]
    assert rows["train.nc1"]["tpt"] == want_tpt["nc1"]
    assert rows["train.nc1"]["end"] == want_end["nc1"]
    text = " ".join(_parse(report_html).text)
    assert f"{want_tpt['nc1']:.4g}" in text and f"{want_end['nc1']:.4g}" in text
    assert f"{100 * want_end['ncc_mismatch']:.4g} %" in text
    assert f"TPT onset, epoch 12 (measured at {onset_epoch})" in text
    assert "end, epoch 40" in text
    for heading in ("Key numbers", "The geometry, animated", "Configuration",
                    "NC3: self-duality"):
        assert heading in text


def test_report_escapes_run_text(tmp_path):
    run_dir = write_run(tmp_path / "r", epochs=10, measurements=3, snapshots=False).path
    config = {"run": {"name": "<script>alert(1)</script>", "note": "a & b \"q\""},
              "optim": {"epochs": 10}}
    (run_dir / "config.toml").write_text(tomli_w.dumps(config))
    status = json.loads((run_dir / "status.json").read_text())
    status.update(state="failed", message="<img src=x onerror=alert(2)>")
    (run_dir / "status.json").write_text(json.dumps(status))
    raw = render_html(load_run(run_dir), overview=None, panels={}, gif=None,
                      gif_note="snapshots/ is missing")
    assert "<script>" not in raw and "<img src=x" not in raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    assert "&lt;img src=x onerror=alert(2)&gt;" in raw
    assert "a &amp; b &quot;q&quot;" in raw
    assert "No animation: snapshots/ is missing" in raw


def test_report_of_crashed_run_lists_problems(tmp_path):
    run_dir = write_run(tmp_path / "c", epochs=30, measurements=6, crash_at=12,
                        truncate_last_line=True, with_weights=False).path
    run = load_run(run_dir)
    out = tmp_path / "c.html"
    out.write_text(render_html(run, overview=None, panels={}, gif=None, gif_note="not made"))
    text = " ".join(_parse(out).text)
    assert "What is missing or incomplete" in text
    assert "the last line is truncated" in text and "failed at epoch 12 of 30" in text
    with pytest.raises(ValueError, match="ending in .html"):
        build_report(run, tmp_path / "r.pdf")


def test_cli_report(report_run, tmp_path, capsys):
    from ncollapse.cli import main

    gif = tmp_path / "given.gif"
    Image.new("RGB", (8, 8), "red").save(gif)
    out = tmp_path / "cli.html"
    assert main(["report", str(report_run), "--out", str(out), "--animation", str(gif),
                 "--dpi", "40"]) == 0
    assert base64.b64encode(gif.read_bytes()).decode() in out.read_text()
    assert f"wrote {out}" in capsys.readouterr().out


# ----------------------------------------------------------------------------- browser


def _chromium(url: str, profile: Path, shot: Path, size: str = "1280,4000") -> str:
    """Load ``url`` headless, screenshot it; returns the browser's log (stderr)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
           f"--user-data-dir={profile}", f"--screenshot={shot}", f"--window-size={size}", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.is_file(), proc.stderr[-2000:]
    return proc.stderr


def _console_messages(log: str) -> list[str]:
    """Page console output (errors, uncaught exceptions, blocked loads) from Chromium's log."""
    return [line for line in log.splitlines()
            if ":CONSOLE" in line or "Uncaught" in line or "Not allowed to load" in line]


def _blue_pixels(png: Path) -> int:
    """Pixels of the plots' line colour #1f77b4: only drawn figures have many of them."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((np.abs(rgb - np.array([0x1F, 0x77, 0xB4])).sum(axis=2) < 40).sum())


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed "
                    "(Debian package 'chromium'; `make setup` installs it as root)")
def test_report_renders_in_chromium(report_html, tmp_path):
    # Negative control first, so the checks below are known to be able to fail: a page with a
    # script error and a broken image must be caught.
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><h1>x</h1><img src="data:image/png;base64,AAAA">'
                   "<script>undefinedFunction();</script></body></html>")
    bad_log = _chromium(bad.as_uri(), tmp_path / "p0", tmp_path / "bad.png", "800,600")
    assert any("Uncaught ReferenceError" in m for m in _console_messages(bad_log))
    assert _blue_pixels(tmp_path / "bad.png") < 100

    shot = tmp_path / "report.png"
    log = _chromium(report_html.as_uri(), tmp_path / "p1", shot)
    assert _console_messages(log) == []
    with Image.open(shot) as im:
        assert im.size == (1280, 4000)
        grey = np.asarray(im.convert("L"), dtype=float)
    assert grey.std() > 20  # not a blank page
    # the figures were decoded and drawn: plenty of the plot colour, spread down the page
    assert _blue_pixels(shot) > 2_000
    rows = np.flatnonzero((np.abs(np.asarray(Image.open(shot).convert("RGB")).astype(int)
                                  - np.array([0x1F, 0x77, 0xB4])).sum(axis=2) < 40).any(axis=1))
    assert rows.max() - rows.min() > 1500


def test_report_shows_collapse_through_depth(tmp_path):
    from ncollapse.rundir import RunWriter

    with RunWriter(tmp_path / "layers", {"model": {"name": "cnn"}}, epochs=4) as run:
        for e in (1, 2, 4):
            run.log_measurement(e, train={"nc1": 1.0 / e}, train_error=0.0,
                                layers={"conv1": {"nc1": 2.0 / e}, "fc": {"nc1": 0.2 / e}})
    page = build_report(tmp_path / "layers", make_animation=False).read_text()
    assert "<h2>Collapse through depth</h2>" in page
    start = page.index("<h2>Collapse through depth</h2>")
    assert page.index("data:image/png;base64,", start) < page.index("</p>", start)
    assert "Per class: imbalance" not in page  # a balanced run has no per-class section


def test_report_of_an_imbalanced_run_has_the_per_class_section(tmp_path):
    from ncollapse.rundir import RunWriter

    rng = np.random.default_rng(1)
    c, d = 4, 5
    labels = np.repeat(np.arange(c), 4)
    cfg = {"data": {"dataset": "gaussian", "imbalance": "step", "ratio": 5.0}}
    with RunWriter(tmp_path / "imb", cfg, epochs=2) as run:
        for e in (1, 2):
            means = rng.standard_normal((c, d)) * 2
            run.log_measurement(e, train={"nc1": 1.0}, snapshot={
                "features": means[labels] + 0.1 * rng.standard_normal((labels.size, d)),
                "labels": labels, "means": means, "weight": rng.standard_normal((c, d))})
    page = build_report(tmp_path / "imb", make_animation=False).read_text()
    assert "<h2>Per class: imbalance and minority collapse</h2>" in page
    assert "Collapse through depth" not in page  # no layer-wise rows in this run
