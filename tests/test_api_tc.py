"""kernel="auto" for 16-bit inputs, without a GPU: the references, and the GPU routing decided
from the device's compute capability (a stand-in array plays the CuPy one)."""
import ml_dtypes
import numpy as np
import pytest

import flashlab
from flashlab import api, lowp, registry
from flashlab.launch import device, plans
from flashlab.reference import fa2_forward, tc_forward


def _qkv(dtype, d=64, N=40, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 2, N, d)).astype(dtype) for _ in range(3)]


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_auto_on_numpy_16_bit_runs_the_tensor_core_twin(dtype):
    q, k, v = _qkv(dtype)
    o, lse = flashlab.flash_attention(q, k, v, causal=True, return_lse=True)
    o_tc, lse_tc = tc_forward(q, k, v, True)
    assert o.dtype == q.dtype and lse.dtype == np.float32
    np.testing.assert_array_equal(o.astype(np.float32), o_tc.astype(np.float32))
    np.testing.assert_array_equal(lse, lse_tc)


def test_auto_on_numpy_16_bit_without_a_tc_head_dim_runs_fa2_in_that_dtype():
    q, k, v = _qkv(np.float16, d=40)
    o = flashlab.flash_attention(q, k, v)
    np.testing.assert_array_equal(o, fa2_forward(q, k, v)[0])


class _FakeCupy:
    """Enough of a CuPy array for resolve_kernel: dtype, shape, ndim, device.id."""

    __module__ = "cupy._core.core"

    def __init__(self, dtype, d):
        self.dtype, self.shape, self.ndim = np.dtype(dtype), (1, 2, 64, d), 4
        self.device = type("Dev", (), {"id": 0})()


#: opt-in shared memory per block of a GPU of each compute capability (an H100 / H200, an
#: A100, an RTX 30xx / 40xx, a T4)
SMEM = {"90": 232448, "80": 166912, "86": 101376, "75": 65536, "70": 98304}


def _gpu(monkeypatch, cc, smem=None):
    """device_limits of a GPU of compute capability cc, for the API and tc's launcher."""
    from flashlab.launch import tc

    limits = {"compute_capability": cc, "smem_optin": smem or SMEM[cc]}
    monkeypatch.setattr(device, "device_limits", lambda dev: limits)
    monkeypatch.setattr(tc, "device_limits", lambda dev: limits)


@pytest.mark.parametrize("cc,d,dtype,want", [
    ("90", 64, ml_dtypes.bfloat16, "tc"), ("80", 128, np.float16, "tc"),
    ("75", 64, np.float16, "tc"), ("75", 128, np.float16, "tc"),  # the Turing build
    ("75", 64, ml_dtypes.bfloat16, "fa2"), ("75", 96, np.float16, "fa2"),
    ("70", 64, np.float16, "fa2"), ("90", 96, ml_dtypes.bfloat16, "tc"),
    ("80", 256, np.float16, "tc"), ("90", 16, ml_dtypes.bfloat16, "fa2"),
    ("90", 40, np.float16, "fa1"), ("90", 64, np.float32, "fa2"), ("75", 64, np.float32, "fa2"),
])
def test_auto_picks_tc_only_where_it_runs(monkeypatch, cc, d, dtype, want):
    monkeypatch.delenv(registry.TURING_FORCE, raising=False)
    _gpu(monkeypatch, cc)
    assert api.resolve_kernel("auto", _FakeCupy(dtype, d)) == want


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_auto_falls_back_where_tcs_tiles_do_not_fit_the_gpu(monkeypatch, dtype):
    # an RTX 30xx / 40xx (99 KB a block): tc's forward at d = 256 fits (96 KB), its backward
    # (136.5 KB, no smaller tiles at d = 256) does not, so the backward of kernel='auto' runs
    # fa1 (fa2 has no d = 256) on float32 copies, and says why, once
    monkeypatch.delenv(registry.TURING_FORCE, raising=False)
    monkeypatch.setenv("FLASHLAB_TC_WGMMA", "0")
    _gpu(monkeypatch, "86")
    monkeypatch.setattr(api, "_warned_fallback", False)
    q = _FakeCupy(dtype, 256)
    assert api._resolve("auto", q, "forward") == "tc"
    assert api._resolve("auto", q, "backward") == "fa1"
    with pytest.warns(UserWarning, match=r"on float32 copies because the backward of kernel 'tc' "
                                         r"at head_dim 256 needs 139776 bytes of shared memory "
                                         r"per block; this GPU allows 101376; outputs are cast"):
        assert api._gpu_lowp_fallback("fa1", q, "backward")
    _gpu(monkeypatch, "80")  # an A100's 163 KB: both fit
    assert api._resolve("auto", q, "backward") == "tc"


@pytest.mark.parametrize("cc,dtype,d,why", [
    ("70", np.float16, 64, r"because this GPU has compute capability 7.0 \(tc needs 7.5\+\)"),
    ("75", ml_dtypes.bfloat16, 64, r"because on compute capability 7.5 kernel 'tc' takes float16 "
                                   r"at head dims 64, 128 only \(the others need 8.0\+\)"),
    ("75", np.float16, 96, r"because on compute capability 7.5 kernel 'tc' takes float16 at "
                           r"head dims 64, 128 only"),
    ("90", np.float16, 40, r"because kernel 'tc' has no head dim 40 \(it has 32, 64, 96, 128"),
])
def test_the_fallback_warning_says_why(monkeypatch, cc, dtype, d, why):
    monkeypatch.delenv(registry.TURING_FORCE, raising=False)
    _gpu(monkeypatch, cc)
    monkeypatch.setattr(api, "_warned_fallback", False)
    with pytest.warns(UserWarning, match=f"{np.dtype(dtype).name} inputs run kernel 'fa2' on "
                                         f"float32 copies {why}"):
        assert api._gpu_lowp_fallback("fa2", _FakeCupy(dtype, d))


def test_the_fallback_warning_comes_once(monkeypatch):
    monkeypatch.setattr(device, "device_limits", lambda dev: {"compute_capability": "70"})
    monkeypatch.setattr(api, "_warned_fallback", False)
    q = _FakeCupy(np.float16, 64)
    with pytest.warns(UserWarning, match=r"because this GPU has compute capability 7.0"):
        assert api._gpu_lowp_fallback("fa2", q)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert api._gpu_lowp_fallback("fa2", q)  # silent the second time
    assert not api._gpu_lowp_fallback("tc", q)


def test_kernel_tc_on_numpy_float32_names_the_dtype():
    q, k, v = _qkv(np.float32)
    with pytest.raises(ValueError, match=r"q dtype must be float16 or bfloat16 for the tensor-core reference"):
        flashlab.flash_attention(q, k, v, kernel="tc")


def test_lowp_conversions_round_to_nearest_even():
    x = np.float32([1.0 + 2**-8, 1.0 + 3 * 2**-8, -3.3e-5, 65504.0, 1e-8])
    bf = lowp.from_float32(x, "bfloat16")
    assert bf.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(lowp.to_float32(bf), x.astype(ml_dtypes.bfloat16).astype(np.float32))
    np.testing.assert_array_equal(lowp.round_to(x, "bfloat16")[:2], [1.0, 1.0 + 2**-6])  # ties to even
    np.testing.assert_array_equal(lowp.round_to(x, "float16"), x.astype(np.float16).astype(np.float32))
    with pytest.raises(ValueError, match="dtype must be float16 or bfloat16, got 'int8'"):
        lowp.lowp_dtype("int8")


@pytest.mark.parametrize("d", [48, 40, 16])
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_kernel_tc_at_another_head_dim_says_what_the_api_can_do(rng, d, direction):
    # the reference's own message asks for Br and Bc, which flash_attention cannot take
    q, k, v, do = (rng.standard_normal((1, 2, 40, d)).astype(np.float16) for _ in range(4))
    with pytest.raises(ValueError) as e:
        if direction == "forward":
            flashlab.flash_attention(q, k, v, kernel="tc")
        else:
            o, lse = flashlab.flash_attention(q, k, v, return_lse=True)  # auto: fa2 at this d
            flashlab.flash_attention_backward(do, q, k, v, o, lse, kernel="tc")
    msg = str(e.value)
    assert msg.startswith(f"head_dim {d} is not supported by kernel 'tc' (supported: 32, 64, 96, 128, 256)")
    assert "kernel='auto' or kernel='fa2'" in msg and "pass Br" not in msg
    # the reference's tiles are public only for d a multiple of 16 (mma's 16-wide k slices)
    assert ("tc_forward / tc_backward with Br=, Bc=" in msg) == (d % 16 == 0)
    # and what it suggests runs
    assert flashlab.flash_attention(q, k, v, kernel="fa2").shape == q.shape


def test_kernel_tc_head_dim_error_on_the_gpu_path_names_what_runs():
    # device.check_head_dim (every tc launch; tc_plan needs no GPU)
    with pytest.raises(ValueError, match=r"head_dim 48 is not supported by kernel 'tc' \(supported: "
                                         r"32, 64, 96, 128, 256\); pad the head dim to one of those, or use "
                                         r"kernel='auto' \(runs fa2 or fa1 on float32 copies\), or "
                                         r"kernel='fa1' on float32 inputs \(any d up to 256\)"):
        plans.tc_plan(48, "forward")
    with pytest.raises(ValueError, match=r"needs \d+ bytes of shared memory per block; this GPU "
                                         r"allows 1000: use kernel='fa2' or 'fa1' on float32"):
        plans.plan("tc", 64, "forward", 1000)


def test_resolve_kernel_checks_its_arguments(rng):
    q = rng.standard_normal((1, 2, 8, 64)).astype(np.float16)
    assert api.resolve_kernel("auto", q) == "tc" and api.resolve_kernel("fa1", q) == "fa1"
    with pytest.raises(ValueError, match="kernel must be one of"):
        api.resolve_kernel("fast", q)
    with pytest.raises(TypeError, match=r"q must be a NumPy or CuPy array .* got tuple"):
        api.resolve_kernel("auto", tuple(q.tolist()))
