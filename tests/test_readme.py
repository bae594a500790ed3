"""The README cannot rot: its runnable shell blocks run, in order, in a fresh folder.

Convention (docs/integrations.md):
- `<!-- readme-test -->` on the line before a ```bash block makes it runnable; it must exit 0,
  or the code given as `<!-- readme-test exit=1 -->`.
- `<!-- readme-test output -->` before the fenced block right after a runnable one makes that
  block the exact terminal output (stdout and stderr) of the command before it.
All runnable blocks of a file share one fresh temporary folder, in order, like a newcomer's
shell session, with `ema-lint` and `python` from the environment running the tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = re.compile(r"^<!--\s*readme-test\b(?P<options>[^>]*?)\s*-->\s*$")
FENCE_OPEN = re.compile(r"^(?P<fence>`{3,}|~{3,})\s*(?P<language>[\w+-]*)\s*$")
BLOCK_TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    line: int  # of the first line of code, 1-based
    code: str
    exit_code: int = 0
    output: str | None = None


class MarkupError(ValueError):
    pass


def runnable_blocks(markdown: str) -> list[Block]:
    lines = markdown.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        marker = MARKER.match(lines[index])
        index += 1
        if marker is None:
            continue
        marker_line, options = index, marker.group("options").split()
        start, language, body, index = _fenced_block(lines, index, marker_line)
        if options == ["output"]:
            if not blocks or blocks[-1].output is not None:
                raise MarkupError(f"line {marker_line}: an output block must follow a runnable block")
            blocks[-1] = Block(blocks[-1].line, blocks[-1].code, blocks[-1].exit_code, body)
            continue
        exit_code = 0
        for option in options:
            if not re.fullmatch(r"exit=\d+", option):
                raise MarkupError(f"line {marker_line}: unknown readme-test option {option!r}")
            exit_code = int(option.partition("=")[2])
        if language not in ("bash", "sh", "shell"):
            raise MarkupError(f"line {marker_line}: a runnable block must be ```bash, not ```{language}")
        blocks.append(Block(start, body, exit_code))
    return blocks


def _fenced_block(lines: list[str], index: int, marker_line: int) -> tuple[int, str, str, int]:
    """(first code line, language, code, index after the closing fence) of the block at `index`."""
    opening = FENCE_OPEN.match(lines[index]) if index < len(lines) else None
    if opening is None:
        raise MarkupError(f"line {marker_line}: readme-test marker not followed by a fenced block")
    fence = opening.group("fence")
    end = next((i for i in range(index + 1, len(lines)) if lines[i].strip() == fence), None)
    if end is None:
        raise MarkupError(f"line {index + 1}: fenced block never closed")
    body = "".join(f"{line}\n" for line in lines[index + 1 : end])
    return index + 2, opening.group("language"), body, end + 1


def run_blocks(blocks: list[Block], folder: Path, name: str) -> None:
    """Run `blocks` in order in `folder`; fail at the first one that exits or prints otherwise."""
    environment = {
        **os.environ,
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
        "NO_COLOR": "1",
    }
    for block in blocks:
        completed = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.code],
            cwd=folder,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
        )
        where = f"{name}:{block.line}"
        assert completed.returncode == block.exit_code, (
            f"{where}: exit {completed.returncode}, expected {block.exit_code}\n{block.code}--- output\n{completed.stdout}"
        )
        if block.output is not None:
            assert completed.stdout == block.output, f"{where}: output differs from the README\n{block.code}"


def test_readme_walkthrough(tmp_path: Path) -> None:
    blocks = runnable_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md marks no block with <!-- readme-test -->; see docs/integrations.md"
    run_blocks(blocks, tmp_path, "README.md")


SAMPLE = """\
# Title

```bash
this block is not marked, so it never runs
```

<!-- readme-test -->
```bash
printf 'x = 1\\n' > example.py
```

<!-- readme-test exit=3 -->
```bash
cat example.py
exit 3
```
<!-- readme-test output -->
```text
x = 1
```

<!-- readme-test -->
```bash
echo "$(basename "$PWD")" >&2
```
"""


def test_marked_blocks_are_extracted_with_options() -> None:
    assert runnable_blocks(SAMPLE) == [
        Block(9, "printf 'x = 1\\n' > example.py\n"),
        Block(14, "cat example.py\nexit 3\n", exit_code=3, output="x = 1\n"),
        Block(24, 'echo "$(basename "$PWD")" >&2\n'),
    ]


def test_blocks_share_one_fresh_folder_in_order(tmp_path: Path) -> None:
    folder = tmp_path / "walk"
    folder.mkdir()
    blocks = runnable_blocks(SAMPLE)
    run_blocks(blocks, folder, "SAMPLE")
    assert [p.name for p in folder.iterdir()] == ["example.py"]


def test_wrong_output_or_exit_code_fails(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=r"SAMPLE:14: output differs from the README"):
        run_blocks(runnable_blocks(SAMPLE.replace("x = 1\n```\n\n<!-- readme-test -->", "x = 2\n```\n\n<!-- readme-test -->")), tmp_path, "SAMPLE")
    with pytest.raises(AssertionError, match=r"SAMPLE:14: exit 3, expected 0"):
        run_blocks(runnable_blocks(SAMPLE.replace("exit=3", "")), tmp_path, "SAMPLE")


def test_a_shell_failure_inside_a_block_fails_it(tmp_path: Path) -> None:
    blocks = runnable_blocks("<!-- readme-test -->\n```bash\nfalse | cat\necho never\n```\n")
    with pytest.raises(AssertionError, match=r"X:3: exit 1, expected 0"):
        run_blocks(blocks, tmp_path, "X")


@pytest.mark.parametrize(
    ("markdown", "message"),
    [
        ("<!-- readme-test -->\nplain text\n", "line 1: readme-test marker not followed by a fenced block"),
        ("<!-- readme-test -->\n```python\nx = 1\n```\n", "line 1: a runnable block must be ```bash, not ```python"),
        ("<!-- readme-test fast -->\n```bash\ntrue\n```\n", "line 1: unknown readme-test option 'fast'"),
        ("<!-- readme-test output -->\n```text\nx\n```\n", "line 1: an output block must follow a runnable block"),
        ("<!-- readme-test -->\n```bash\ntrue\n", "line 2: fenced block never closed"),
    ],
)
def test_bad_markup_is_an_error(markdown: str, message: str) -> None:
    with pytest.raises(MarkupError, match=re.escape(message)):
        runnable_blocks(markdown)
