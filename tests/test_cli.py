"""The command line: `flashlab io` prints the traffic table; usage errors are one line, exit 2."""
import subprocess
import sys

from flashlab.cli import main


def test_io_prints_the_traffic_table(capsys):
    assert main(["io", "--seq", "512,2k", "--head-dim", "64", "--sram", "12288"]) == 0
    out = capsys.readouterr().out
    assert "A0 MB" in out and "F2 MB" in out and "N^2d^2/M MB" in out
    lines = [l for l in out.splitlines() if l.strip().startswith(("512", "2048"))]
    assert len(lines) == 2
    assert "48 x 48" in out  # A1:L1 at d = 64, M = 12288


def test_usage_errors_are_one_line(capsys):
    assert main(["io", "--seq", "abc"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert main(["io", "--head-dim", "0"]) == 2
    assert "--head-dim must be >= 1" in capsys.readouterr().err
    assert main(["nonsense"]) == 2


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "flashlab", "io", "--seq", "1k"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "1024" in out.stdout


def test_help_shows_an_example(capsys):
    try:
        main(["io", "--help"])
    except SystemExit as e:
        assert e.code == 0
    assert "example" in capsys.readouterr().out
