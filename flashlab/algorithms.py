"""The algorithm listings flashlab cites (A0, A1, B1, F2, G2): the text of docs/ALGORITHMS.md.

Kernels, references, traces and tutorials tag code with line labels such as `A1:L12`; error
messages quote the line so a student can read the divergence without opening our code.
`flashlab algorithms A1 [--line L12]` prints a listing (or one line of it).

LISTINGS is the one copy of the text in the package: docs/ALGORITHMS.md holds the same sections
word for word (tests/test_algorithms_cli.py checks it), and LINES, the text of each labelled line,
is read off LISTINGS.
"""
import re

ALGORITHMS = ("A0", "A1", "B1", "F2", "G2")

LISTINGS = {  # docs/ALGORITHMS.md, section by section, exactly (its "## " headings without "## ")
    "A0": """\
A0 Standard attention (materialises S and P in HBM)
    A0:L1  load Q, K by blocks from HBM, compute S = tau Q K^T, write S to HBM
    A0:L2  read S from HBM, compute P = softmax(S), write P to HBM
    A0:L3  load P and V by blocks from HBM, compute O = P V, write O to HBM
HBM traffic: Theta(N d + N^2) elements. Memory: Theta(N^2) extra.""",
    "A1": """\
A1 FlashAttention forward, as in the paper's Algorithm 1
    A1:L1   block sizes Bc = ceil(M / 4d), Br = min(ceil(M / 4d), d)
    A1:L2   O = 0 (N x d), l = 0 (N), m = -inf (N), all in HBM
    A1:L3   split Q into Tr = ceil(N / Br) blocks Q_1..Q_Tr; K, V into Tc = ceil(N / Bc) blocks
    A1:L4   split O, l, m into Tr blocks to match Q
    A1:L5   for j = 1..Tc:                                   (outer loop: key/value blocks)
    A1:L6     load K_j, V_j from HBM to SRAM
    A1:L7     for i = 1..Tr:                                 (inner loop: query blocks)
    A1:L8       load Q_i, O_i, l_i, m_i from HBM to SRAM
    A1:L9       S_ij = Q_i K_j^T                             (Br x Bc, on chip; times tau in practice)
    A1:L10      m~_ij = rowmax(S_ij); P~_ij = exp(S_ij - m~_ij); l~_ij = rowsum(P~_ij)
    A1:L11      m_new = max(m_i, m~_ij); l_new = e^(m_i - m_new) l_i + e^(m~_ij - m_new) l~_ij
    A1:L12      O_i <- diag(l_new)^-1 (diag(l_i) e^(m_i - m_new) O_i + e^(m~_ij - m_new) P~_ij V_j), write to HBM
    A1:L13      l_i <- l_new, m_i <- m_new, write to HBM
    A1:L14    end for
    A1:L15  end for
    A1:L16  return O
HBM traffic: Theta(N^2 d^2 / M) elements (paper, Theorem 2). Memory: Theta(N) extra (l, m).
Note the loop order: O_i, l_i, m_i go to HBM and back once per (i, j) pair. A1 keeps that
order on purpose: it is the paper's own order, and the lesson.""",
    "B1": """\
B1 FlashAttention backward (the paper's Algorithm 4 without dropout)
Inputs: Q, K, V, O, dO, l, m from the forward pass. Define D_i = rowsum(dO_i * O_i).
    B1:L1   dQ = 0, dK = 0, dV = 0 in HBM
    B1:L2   for j = 1..Tc:
    B1:L3     load K_j, V_j; dK~_j = 0, dV~_j = 0 on chip
    B1:L4     for i = 1..Tr:
    B1:L5       load Q_i, O_i, dO_i, dQ_i, l_i, m_i
    B1:L6       S_ij = tau Q_i K_j^T  (apply mask)                     (recomputation, not storage)
    B1:L7       P_ij = diag(l_i)^-1 exp(S_ij - m_i)
    B1:L8       dV~_j += P_ij^T dO_i
    B1:L9       dP_ij = dO_i V_j^T
    B1:L10      D_i = rowsum(dO_i * O_i)
    B1:L11      dS_ij = P_ij * (dP_ij - D_i)
    B1:L12      dQ_i += tau dS_ij K_j, write dQ_i to HBM
    B1:L13      dK~_j += tau dS_ij^T Q_i
    B1:L14    end for
    B1:L15    write dK_j = dK~_j, dV_j = dV~_j to HBM
    B1:L16  end for
With dropout (rate p, mask Z regenerated from the same RNG state as the forward):
P_ij is used as P_ij * Z_ij / (1 - p) in B1:L8, and dP_ij is multiplied by Z_ij / (1 - p)
after B1:L9.""",
    "F2": """\
F2 FlashAttention-2 forward (row blocks independent: one thread block per (batch, head, i))
    F2:L1   for each Q block i (in parallel):
    F2:L2     load Q_i; O~ = 0, l = 0, m = -inf on chip
    F2:L3     for j = 1..Tc (causal: only blocks with any unmasked entry):
    F2:L4       load K_j, V_j
    F2:L5       S = tau Q_i K_j^T (mask)
    F2:L6       m_new = max(m, rowmax(S)); P~ = exp(S - m_new); l = e^(m - m_new) l + rowsum(P~)
    F2:L7       O~ = diag(e^(m - m_new)) O~ + P~ V_j; m = m_new
    F2:L8     end for
    F2:L9     O_i = diag(l)^-1 O~; L_i = m + log(l); write O_i, L_i      (one write per row block)
Only the logsumexp L (N floats) is kept for the backward pass.""",
    "G2": """\
G2 FlashAttention-2 backward (one thread block per (batch, head, j))
    G2:L0   D = rowsum(dO * O) (a small pre-pass kernel)
    G2:L1   for each K/V block j (in parallel):
    G2:L2     load K_j, V_j; dK~ = 0, dV~ = 0 on chip
    G2:L3     for i = 1..Tr (causal: only blocks with any unmasked entry):
    G2:L4       load Q_i, dO_i, L_i, D_i
    G2:L5       S = tau Q_i K_j^T (mask); P = exp(S - L_i)
    G2:L6       dV~ += P^T dO_i; dP = dO_i V_j^T; dS = P * (dP - D_i)
    G2:L7       dQ_i += tau dS K_j   (atomic add in fp32, or a separate dQ pass)
    G2:L8       dK~ += tau dS^T Q_i
    G2:L9     end for
    G2:L10    write dK_j, dV_j""",
}

_LINE = re.compile(r"^\s+([ABFG][0-2]:L\d+)\s+(.*\S)\s*$")


def listing_lines(algorithm: str) -> dict:
    """{label: the listing's line, as printed (label, then the text)} for one algorithm, in order,
    "end for" lines included."""
    out = {}
    for line in LISTINGS[algorithm].splitlines():
        hit = _LINE.match(line)
        if hit:
            out[hit.group(1)] = line.strip()
    return out


def _line_texts() -> dict:
    """{label: text} for every line that does something (not the bare "end for"); runs of spaces,
    which line up the margin notes in the listing, become one."""
    texts = {}
    for algorithm in ALGORITHMS:
        for label, line in listing_lines(algorithm).items():
            text = " ".join(line.split()[1:])
            if text != "end for":
                texts[label] = text
    return texts


LINES = _line_texts()


def describe(label: str) -> str:
    """'A1:L12' -> 'A1:L12 (O_i <- diag(l_new)^-1 (...))'."""
    text = LINES.get(label)
    return f"{label} ({text})" if text else label



def _tag(algorithm: str):
    import re

    return re.compile(rf"(?://|#)\s*{re.escape(algorithm)}:L(\d+)(?:-L(\d+))?")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def tagged_blocks(text: str, algorithm: str, max_lines: int = 10) -> dict:
    """{label: (first line number, [lines])}: for each line of `algorithm` that `text` tags
    (a comment `// A1:L12` in CUDA, `# A1:L12` in Python; `A1:L3-L4` tags L3 and L4), the code
    from the tagged line up to the next tag, a blank line or the end of its scope, at most
    `max_lines` lines.
    Only a label's first tagged line counts (docstrings that mention a label are skipped).
    """
    tag = _tag(algorithm)
    lines = text.splitlines()
    found: dict = {}
    for n, line in enumerate(lines):
        hit = tag.search(line)
        if hit is None or line.lstrip().startswith(("*", "/*", '"')):
            continue  # untagged, or a label quoted in a header comment or docstring
        labels = [f"{algorithm}:L{k}" for k in
                  range(int(hit.group(1)), int(hit.group(2) or hit.group(1)) + 1)]
        if all(lab in found for lab in labels):
            continue
        block = [line.rstrip()]
        for follow in lines[n + 1:]:
            if len(block) >= max_lines or tag.search(follow) or not follow.strip():
                break
            if follow.strip() and _indent(follow) < _indent(line):
                break
            block.append(follow.rstrip())
        cut = min(_indent(b) for b in block if b.strip())
        for lab in labels:
            found.setdefault(lab, (n + 1, [b[cut:] for b in block]))
    return found


def side_by_side(kernel_text: str, reference_text: str, algorithm: str) -> list:
    """Rows (label, paper line, kernel code, reference code) for every line of `algorithm` that
    the kernel or the reference tags, in the paper's order. Code cells start with the line number
    ("104| ...") of the tagged line in their file."""
    kern = tagged_blocks(kernel_text, algorithm)
    ref = tagged_blocks(reference_text, algorithm)

    def cell(hit):
        if hit is None:
            return ""
        start, block = hit
        return "\n".join(f"{start + k:4d}| {b}" for k, b in enumerate(block))

    return [(label, LINES[label], cell(kern.get(label)), cell(ref.get(label)))
            for label in LINES
            if label.startswith(algorithm + ":") and (label in kern or label in ref)]
