"""flashlab.native where its C++ extension cannot be built (no compiler, no ninja, no torch):
module() says why once, warns with the install command, and remembers it, so flashlab.torch
runs its calls from Python. Needs no torch."""
import warnings

import pytest

from flashlab import native


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(native, "_state", {})


def test_a_failed_build_warns_once_with_the_fix_and_is_remembered(fresh, monkeypatch):
    calls = []

    def no_ninja():
        calls.append(1)
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(native, "_build", no_ninja)
    with pytest.warns(RuntimeWarning, match=r"did not build \(RuntimeError: Ninja is required.*"
                                            r"C\+\+ compiler and ninja \(pip install .*\[torch\]"):
        assert native.module() is None
    assert native.why_not() == "RuntimeError: Ninja is required to load C++ extensions"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second build
        assert native.module() is None
    assert calls == [1]


def test_the_environment_switch_skips_the_build(fresh, monkeypatch):
    monkeypatch.setenv("FLASHLAB_TORCH_NATIVE", "0")
    monkeypatch.setattr(native, "_build", lambda: pytest.fail("built although switched off"))
    assert native.module() is None and native.why_not() == "FLASHLAB_TORCH_NATIVE=0"
