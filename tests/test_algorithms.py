"""Line tags: code that cites an algorithm line can be found from the label."""
from flashlab.algorithms import LINES, side_by_side, tagged_blocks

CUDA = """\
/* header: follows A1:L1-L16, mentions A1:L9 */
for (int j = 0; j < Tc; ++j) {      // A1:L5
    load(j);

    for (int i = 0; i < Tr; ++i) {  // A1:L7
        s = dot(i, j);              // A1:L9
        keep = 1;
    }
}
"""

PY = '''\
def f():
    """Runs A1:L5 and # A1:L9 in a docstring."""
    Tr, Tc = 1, 2  # A1:L3-L4
    for j in range(Tc):  # A1:L5
        x = 1
'''


def test_blocks_run_from_the_tag_to_the_next_tag_blank_line_or_scope_end():
    b = tagged_blocks(CUDA, "A1")
    assert set(b) == {"A1:L5", "A1:L7", "A1:L9"}  # header comments are not code
    assert b["A1:L5"] == (2, ["for (int j = 0; j < Tc; ++j) {      // A1:L5", "    load(j);"])
    assert b["A1:L9"][1] == ["s = dot(i, j);              // A1:L9", "keep = 1;"]


def test_ranges_tag_every_line_and_docstrings_do_not_count():
    b = tagged_blocks(PY, "A1")
    assert set(b) == {"A1:L3", "A1:L4", "A1:L5"}
    assert b["A1:L3"] == b["A1:L4"] and b["A1:L5"][0] == 4


def test_side_by_side_follows_the_paper_order():
    rows = side_by_side(CUDA, PY, "A1")
    assert [r[0] for r in rows] == ["A1:L3", "A1:L4", "A1:L5", "A1:L7", "A1:L9"]
    label, paper, kern, ref = rows[2]
    assert paper == LINES["A1:L5"]
    assert kern.startswith("   2| for (int j") and ref.startswith("   4| for j in range(Tc):")
    assert rows[0][2] == ""  # the kernel does not tag A1:L3
