"""Course content that is not a lesson's text: the planted bugs (bugs.py) of `flashlab trace
--inject-bug` and the bug hunt, and the assignments (assignment.py: exercise regions, student
copies, the autograder; `from flashlab.course import assignment`, which this package does not
import itself)."""
from .bugs import BUGS, HUNT, Bug, find, patched

__all__ = ["BUGS", "HUNT", "Bug", "find", "patched"]
