"""The documentation's examples run, and print what the documentation says they print.

Every ```python block in README.md and docs/*.md (docs/performance.md excepted: its
examples are benchmarks) runs as a script of its own in a fresh interpreter. A block
opts out with a line ``<!-- not run: reason -->`` right before it. When a ```text block
follows a python block directly, it is the exact expected output.

The demo (examples/demo.py) runs too, and must show the bounds it is there to show.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_COLLECTED = {"performance.md"}
NOT_RUN = re.compile(r"^<!-- not run: .+ -->$")
TIMEOUT = 30


@dataclass(frozen=True)
class Example:
    page: str
    line: int  # of the opening ```python fence, 1-based
    code: str
    output: str | None  # the ```text block right after it, if any


def _fenced(lines: list[str], start: int) -> tuple[str, int]:
    """The body of the fence opened at ``lines[start]``, and the index of its closing line."""
    end = start + 1
    while end < len(lines) and lines[end].strip() != "```":
        end += 1
    if end == len(lines):
        raise ValueError(f"unclosed code block at line {start + 1}")
    return "".join(line + "\n" for line in lines[start + 1 : end]), end


def _previous_text(lines: list[str], index: int) -> str:
    """The nearest non-blank line before ``lines[index]``."""
    for line in reversed(lines[:index]):
        if line.strip():
            return line.strip()
    return ""


def _next_nonblank(lines: list[str], index: int) -> int | None:
    for i in range(index, len(lines)):
        if lines[i].strip():
            return i
    return None


def examples_of(path: Path) -> list[Example]:
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Example] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```python":
            i += 1
            continue
        code, end = _fenced(lines, i)
        output = None
        after = _next_nonblank(lines, end + 1)
        if after is not None and lines[after].strip() == "```text":
            output, _ = _fenced(lines, after)
        if not NOT_RUN.match(_previous_text(lines, i)):
            found.append(Example(path.name, i + 1, code, output))
        i = end + 1
    return found


def collect_examples() -> list[Example]:
    return [
        example for page in PAGES if page.name not in NOT_COLLECTED for example in examples_of(page)
    ]


EXAMPLES = collect_examples()


def normalised(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def run_script(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_the_documentation_has_examples() -> None:
    pages = {example.page for example in EXAMPLES}
    assert {"README.md", "concurrency.md", "errors.md", "blocking.md", "index.md"} <= pages


@pytest.mark.parametrize(
    "example", EXAMPLES, ids=[f"{example.page}:L{example.line}" for example in EXAMPLES]
)
def test_example_runs_and_prints_its_output(example: Example, tmp_path: Path) -> None:
    script = tmp_path / "example.py"  # a file, not -c: process pools re-import __main__
    script.write_text(example.code, encoding="utf-8")
    result = run_script(script)
    where = f"{example.page}:{example.line}"
    assert result.returncode == 0, f"{where} failed:\n{result.stderr}"
    assert result.stderr == "", f"{where} wrote to stderr:\n{result.stderr}"
    if example.output is not None:
        assert normalised(result.stdout) == normalised(example.output), where


def test_demo_shows_the_concurrency_limit_and_the_run_ahead_bound() -> None:
    result = run_script(ROOT / "examples" / "demo.py")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("max fetches in flight: 8 (concurrency=8)") == 2, out
    ahead = [int(n) for n in re.findall(r"max source run-ahead: (\d+) items", out)]
    assert len(ahead) == 2, out
    # Never past the bound; and past the 8 calls in flight, or backpressure did not show.
    assert all(8 < n <= 24 for n in ahead), out
    assert "bound: concurrency + buffer = 8 + 16 = 24" in out
    assert "in input order: yes; all 60 pages received" in out
    assert "in input order: no (completion order); all 60 pages received" in out
    assert re.search(r"in_thread: 8 blocking 50 ms calls, at most [1-4] at once", out), out
