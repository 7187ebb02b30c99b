"""flashlab.torch's argument checks, on any machine with PyTorch (no GPU: the checks come before
any kernel): a CPU tensor is refused naming it, with or without a variant keyword; k and v with
fewer heads than q need enable_gqa=True, as SDPA's do."""
import pytest

torch = pytest.importorskip("torch")
ft = pytest.importorskip("flashlab.torch")
from flashlab import mods  # noqa: E402


@pytest.mark.parametrize("kw", [{}, dict(window=(2, 0)), dict(enable_gqa=True),
                                dict(score_mod=mods.softcap(2.0))])
def test_a_cpu_tensor_is_refused_naming_it(kw):
    q = torch.randn(1, 2, 8, 64)
    with pytest.raises(ValueError, match=r"q is on cpu; the kernels run on CUDA tensors: pass "
                                         r"q.cuda\(\)"):
        ft.flash_attention(q, q, q, **kw)


@pytest.mark.parametrize("kw", [{}, dict(mask_mod=mods.causal())])
def test_fewer_kv_heads_need_enable_gqa(monkeypatch, kw):
    monkeypatch.setattr(ft, "_check", lambda name, x: None)  # as if on a GPU
    q = torch.randn(1, 4, 8, 64)
    kv = torch.randn(1, 2, 8, 64)
    with pytest.raises(ValueError, match=r"k and v have 2 and 2 heads, q 4: pass "
                                         r"enable_gqa=True"):
        ft.flash_attention(q, kv, kv, **kw)
