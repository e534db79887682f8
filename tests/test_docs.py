"""The README stays short and starts with the two commands; every page it links exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_is_short_and_opens_with_the_two_commands():
    text = (REPO / "README.md").read_text()
    assert len(text) < 8000, len(text)
    commands = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    lines = [line for line in commands.splitlines() if line and not line.startswith("#")]
    assert lines[0].endswith("&& braintl run")
    assert lines[1].endswith("python -m pytest -q")


def test_every_linked_page_exists():
    for page in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), f"{page.name} links {target}"
