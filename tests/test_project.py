"""The README's promises about the project itself."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = [b.strip() for b in _bash_blocks(readme)]
    test_cmd = next(b for b in blocks if "pytest" in b)
    ci_lines = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines()
                if l.strip() and not l.startswith("#") and not l.startswith(("set ", "cd "))]
    assert ci_lines == [test_cmd]


def test_readme_leads_with_the_main_command_then_the_tests():
    blocks = [b.strip() for b in _bash_blocks((ROOT / "README.md").read_text())]
    assert "flashlab " in blocks[0] and "pytest" in blocks[1]


def test_design_card_layout_exists():
    for name in ("kernels", "flashlab", "tutorials", "tests", "scripts", "environment.yml",
                 "pyproject.toml"):
        assert (ROOT / name).exists(), name
