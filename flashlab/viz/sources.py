"""A kernel's CUDA source beside its NumPy reference, one row per line of the paper's algorithm
(notebook 4). Text only: no matplotlib."""
from __future__ import annotations


class SourceTable:
    """Kernel and reference code side by side, one row per algorithm line. Shows as an HTML
    table in a notebook and as plain text anywhere else (str())."""

    def __init__(self, rows, headers):
        self.rows = list(rows)
        self.headers = list(headers)

    def __str__(self) -> str:
        out = []
        for label, paper, kern, ref in self.rows:
            out.append(f"=== {label}  {paper}")
            for name, code in ((self.headers[2], kern), (self.headers[3], ref)):
                out.append(f"--- {name}")
                out.append(code or "      (not tagged)")
        return "\n".join(out)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        from html import escape

        head = "".join(f"<th style='text-align:left'>{escape(h)}</th>" for h in self.headers)
        body = []
        for label, paper, kern, ref in self.rows:
            cells = [f"<td style='vertical-align:top'><b>{escape(label)}</b></td>",
                     f"<td style='vertical-align:top;max-width:16em'>{escape(paper)}</td>"]
            for code in (kern, ref):
                cells.append("<td style='vertical-align:top;text-align:left'>"
                             f"<pre style='margin:0;font-size:11px'>{escape(code)}</pre></td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def source_table(kernel: str = "fa1", algorithm: str = "A1") -> SourceTable:
    """kernels/<kernel>.cu beside flashlab/reference/<kernel>.py, line by line of `algorithm`
    (the code each file tags with that line's label, e.g. `// A1:L12` and `# A1:L12`)."""
    from pathlib import Path

    from ..algorithms import side_by_side
    from ..launch.sources import kernel_dir  # the launcher's, imported only when asked

    cu = kernel_dir() / f"{kernel}.cu"
    py = Path(__file__).resolve().parents[1] / "reference" / f"{kernel}.py"
    for path in (cu, py):
        if not path.is_file():
            raise ValueError(f"no source {path} for kernel {kernel!r}")
    rows = side_by_side(cu.read_text(), py.read_text(), algorithm)
    if not rows:
        raise ValueError(f"neither {cu.name} nor {py.name} tags any line of {algorithm!r}")
    return SourceTable(rows, ["line", "paper", f"kernels/{cu.name}", f"flashlab/reference/{py.name}"])
