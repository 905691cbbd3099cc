"""The ``ncollapse`` dispatcher: every subcommand registered, help and version, user errors."""

from __future__ import annotations

import pytest

from ncollapse import __version__, cli


def test_every_command_is_registered(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_version(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert __version__ in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "usage: ncollapse" in capsys.readouterr().out


def test_user_error_is_one_line_without_traceback(tmp_path, capsys):
    missing = tmp_path / "nope.npz"
    assert cli.main(["measure", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ncollapse measure: error:") and "Traceback" not in err


def test_missing_optional_extra_is_one_line(monkeypatch, capsys):
    # an integration whose extra is not installed raises ImportError naming the pip command
    import ncollapse.commands.measure as measure_cmd

    def needs_extra(_args):
        raise ImportError("tensorboard is not installed; pip install 'ncollapse[tensorboard]'")

    monkeypatch.setattr(measure_cmd, "run", needs_extra)
    assert cli.main(["measure", "--example"]) == 2
    err = capsys.readouterr().err
    assert err == ("ncollapse measure: error: tensorboard is not installed; "
                   "pip install 'ncollapse[tensorboard]'\n")


@pytest.mark.parametrize("argv,message", [
    (["plot", "RUN", "--dpi", "20000"], "argument --dpi: must be in [10, 1200], got 20000"),
    (["animate", "--ufm", "--lr", "1e9"], "argument --lr: must be in (0, 10], got 1e9"),
    (["animate", "--ufm", "--fps", "0"], "argument --fps: must be in (0, 60], got 0"),
    (["animate", "--ufm", "--steps", "x"], "argument --steps: expected an integer in"),
])
def test_out_of_range_arguments_are_refused_with_the_range(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
