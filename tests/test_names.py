"""One spelling of the paper's tilde. In text (comments, docstrings, docs, trace names) the `~`
goes after the letter, each quantity spelled as docs/ALGORITHMS.md's listing of its algorithm
writes it (`m~_ij`, `P~_ij` in A1; `O~`, `P~` in F2; `dK~_j` in B1; `dK~` in G2); in identifiers
(Python names, Step keys, CUDA locals) the word `tilde` stands where the `~` does (`m_tilde_ij`,
`O_tilde`, `dK_tilde_j`). Read from the sources (the step-throughs run on tiny inputs)."""
import re
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from flashlab import algorithms, trace
from flashlab.reference import (fa1_backward_steps, fa1_forward_steps, fa2_backward_steps,
                                fa2_forward_steps, naive_attention, tc_backward_steps,
                                tc_forward, tc_forward_steps)

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ALGORITHMS.md"

# the spellings the tilde had before it had one, and what they become
OLD_SPELLINGS = {
    r"\bm_t\b": "m_tilde_ij (an identifier) or m~_ij (text)",
    r"\bP_t\b": "P_tilde_ij / P_tilde (identifiers) or P~_ij / P~ (text)",
    r"\bl_t\b": "l_tilde_ij or l~_ij",
    r"\bmt\b": "m_tilde_ij",
    r"(?<!&)\blt\b": "l_tilde_ij",  # (&lt; is HTML)
    r"O~_i\b": "O~ (F2's accumulator, as docs/ALGORITHMS.md writes it)",
    # m~ and l~ are A1's alone, and always m~_ij, l~_ij there
    r"(?<![\w~])[ml]~(?!_ij)": "m~_ij, l~_ij",
    # a tilde identifier spelled another way: O_t, dK_t, Ot, Pt, ...
    r"(?<!&)\b(?:m|l|P|O|dK|dV)_?t(?:_\w*)?\b": "the word tilde: O_tilde, dK_tilde_j, ...",
    r"[A-Za-z0-9]tilde|\btilde_|tilde(?=[A-Za-z0-9])": "_tilde after the letter: m_tilde_ij",
    r"_(?:tl|tld|til|tild)\b": "_tilde",
}


def _scanned():
    files = [ROOT / "README.md"]
    files += sorted(p for p in (ROOT / "flashlab").rglob("*") if p.suffix in (".py", ".md"))
    files += sorted((ROOT / "kernels").glob("*.cu")) + sorted((ROOT / "kernels").glob("*.cuh"))
    files += sorted((ROOT / "tutorials").glob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))
    files += sorted(p for p in (ROOT / "docs").rglob("*") if p.suffix in (".md", ".json"))
    return [p for p in files if "__pycache__" not in p.parts]


def old_spellings(text: str, where: str = "") -> list[str]:
    """'file:line: the line' for every line of `text` that spells a tilde the old way."""
    found = []
    for n, line in enumerate(text.splitlines(), start=1):
        for pattern, fix in OLD_SPELLINGS.items():
            hit = re.search(pattern, line)
            if hit:
                found.append(f"{where}:{n}: {hit.group(0)!r} (write {fix}): {line.strip()}")
                break  # one report a line
    return found


def _token(name: str) -> re.Pattern:
    """`name` as a whole token: not part of a longer name (O~ is not O~_i, dK~ is not dK~_j)."""
    return re.compile(rf"(?<![\w~]){re.escape(name)}(?![\w~])")


def test_no_file_spells_a_tilde_the_old_way():
    found = []
    for path in _scanned():
        found += old_spellings(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, "\n".join(found)


@pytest.mark.parametrize("planted", [
    "m_t = S_ij.max(axis=-1)", "float mt = FL_NEG_INF;", "l_new = alpha * l_i + beta * l_t",
    "P_t = np.exp(S_ij)", "lt += pv;", 'step_buffers(ctx, ("m_i", "l_i", "O~_i"))',
    "O_t = alpha * O_t", "dK_t = np.zeros_like(K_j)", "# beta = e^(m~ - m_new)",
    "float Ot = 0.0f;", "Otilde_i", "tilde_m = 1", "m_tld = 0",
])
def test_the_old_spellings_are_caught(planted):
    assert old_spellings(planted)


@pytest.mark.parametrize("fine", [
    "m_tilde_ij = S_ij.max(axis=-1)  # A1:L10  m~_ij", "float l_tilde_ij = 0.0f;",
    "O_tilde = alpha[..., None] * O_tilde + P_tilde @ V_j  # F2:L7  O~ += P~ V_j",
    "dK_tilde_j  # dK~_j", '"&lt;" in html', "cc & ~7", "the paper's tilde", "o~ of notebook 2",
    "P~_{j-1} V_{j-1}", "fmt = 1; dt = q.dtype; m_i, l_i, m_new",
])
def test_the_convention_is_not_caught(fine):
    assert not old_spellings(fine)


def _listing(algorithm: str) -> str:
    return algorithms.LISTINGS[algorithm]


@pytest.mark.parametrize("algorithm", sorted(trace.SPEC))
def test_every_trace_name_is_written_as_docs_algorithms_writes_it(algorithm):
    doc = DOC.read_text()
    for name, tile, line, _, _ in trace.SPEC[algorithm]:
        assert _token(name).search(doc), f"trace name {name!r} ({algorithm}) is not in {DOC.name}"
        assert line.startswith(algorithm + ":") and line in algorithms.LINES, line
        if "~" in name:
            # a tilde quantity: the listing of its own algorithm spells it so (G2's dK~, not
            # B1's dK~_j), and its Step key is the same name with the word tilde
            assert _token(name).search(_listing(algorithm)), \
                f"{algorithm}'s listing does not write {name!r}"
            assert tile == name.replace("~", "_tilde"), (name, tile)


def _tiny(dtype=np.float64, d=4, N=9):
    rng = np.random.default_rng(0)
    return [rng.standard_normal((1, 1, N, d)).astype(dtype) for _ in range(4)]


def _first_steps():
    """(algorithm, Step) for the first step of every step-through."""
    q, k, v, do = _tiny()
    o, lse = naive_attention(q, k, v)
    out = [next(fa1_forward_steps(q, k, v, Br=4, Bc=4)),
           next(fa1_backward_steps(do, q, k, v, o, lse, Br=4, Bc=4)),
           next(fa2_forward_steps(q, k, v, Br=4, Bc=4)),
           next(fa2_backward_steps(do, q, k, v, o, lse, Br=4, Bc=4))]
    q, k, v, do = _tiny(ml_dtypes.bfloat16, d=64, N=20)
    o, lse = tc_forward(q, k, v)
    out += [next(tc_forward_steps(q, k, v)), next(tc_backward_steps(do, q, k, v, o, lse))]
    return out


def test_step_keys_with_the_word_tilde_are_their_algorithms_tilde_names():
    for step in _first_steps():
        keys = list(step.tiles)
        assert keys, step.algorithm
        for key in keys:
            assert not old_spellings(key), (step.algorithm, key)
            if "tilde" in key:
                text = key.replace("_tilde", "~")
                assert _token(text).search(_listing(step.algorithm)), \
                    f"{step.algorithm} step key {key!r}: its listing does not write {text!r}"
