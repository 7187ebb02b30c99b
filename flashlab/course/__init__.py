"""Course content that is not a lesson's text: the planted bugs (bugs.py) of `flashlab trace
--inject-bug` and the bug hunt. The assignments (exercise regions, student copies, the
autograder) are flashlab.assignment."""
from .bugs import BUGS, HUNT, Bug, find, patched

__all__ = ["BUGS", "HUNT", "Bug", "find", "patched"]
