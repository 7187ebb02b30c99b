"""flashlab.bench.poster on the CPU (float64 autodiff, tiny sizes): the training sweep's rows and
table, the out-of-memory row, and its plot. The GPU run is scripts/poster_figures.py."""
import pytest

from flashlab.autodiff import train as train_mod
from flashlab.bench import poster

TINY = dict(device="cpu", steps=2, batch=2, layers=1, heads=2, dim=16)


def test_sweep_trains_both_attentions_to_the_same_losses():
    rows = poster.training_sweep([16, 32], **TINY)
    assert [r["N"] for r in rows] == [16, 32]
    for r in rows:
        assert r["flash_ms"] > 0 and r["standard_ms"] > 0
        assert r["speedup"] == pytest.approx(r["standard_ms"] / r["flash_ms"])
        assert r["loss_rel_diff"] < 1e-10  # float64: the same computation
    headers, table = poster.training_table(rows)
    assert headers[0] == "N" and table[0][3].endswith("x")


def test_an_out_of_memory_configuration_is_a_row_not_a_crash(monkeypatch):
    real = train_mod.train

    def train(cfg, *a, **kw):
        if cfg.attention == "standard":
            raise MemoryError("Out of memory allocating 8,589,934,592 bytes")
        return real(cfg, *a, **kw)

    monkeypatch.setattr(poster, "train", train)
    (row,) = poster.training_sweep([16], **TINY)
    assert row["standard_ms"] is None and "Out of memory" in row["standard_error"]
    assert "speedup" not in row
    assert poster.training_table([row])[1][0][2] == "out of memory"


def test_other_errors_are_not_swallowed(monkeypatch):
    def train(cfg, *a, **kw):
        raise ValueError("bad config")

    monkeypatch.setattr(poster, "train", train)
    with pytest.raises(ValueError, match="bad config"):
        poster.training_sweep([16], **TINY)


def test_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    rows = poster.training_sweep([16], **TINY)
    poster.training_plot(rows, str(tmp_path / "f.png"))
    assert (tmp_path / "f.png").stat().st_size > 1000
