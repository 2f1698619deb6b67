"""The README is a test: every command and Python snippet in it runs, in order, as a newcomer would.

The tour runs in one fresh folder beside a `../shared/datasets` link to the real datasets, so
the README's paths are the paths a user of this workplace types. Blocks:

- ```sh: each command must exit 0;
- an untagged block of `$ command` lines (a transcript): each command runs, and the output
  shown under it must match, where a line `...` stands for any number of lines, a line ending
  in ` ...` for any rest of the line, and runs of spaces for any spacing;
- ```python: run in one shared namespace, in order, as in a notebook.

An HTML comment on the line before a block changes how it is checked:
`<!-- readme-test: numbers vary -->` (decimals and integers below 100 match any number, since
training's accuracies, losses, times and best epoch depend on the CPU; counts of 100 and more,
such as parameters and images, and shapes must still match), `full data` (no CNNLAB_SUBSET: the
demo's transcript shows its real image counts), `<!-- readme-test: exit 2 -->`,
`<!-- readme-test: skip REASON -->`. Any other block fails the test unless it is skipped.
Training is cut short by `CNNLAB_SUBSET` (every new run trains on at most that many images), and
runs on the CPU, as the README's outputs were made.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
QUICK_SUBSET = "1000"
NUMBER = r"[-+]?(?:\d[\d,]*)?\.?\d+(?:e[-+]?\d+)?"
SHAPE = r"\d+(?:x\d+)+"  # 1x28x28


def _varies(token: str) -> bool:
    """Whether a number in a `numbers vary` block stands for any number: a measurement, not a count."""
    return not re.fullmatch(SHAPE, token) and ("." in token or (token.lstrip("+-").isdigit() and int(token) < 100))


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    directive: str


def read_blocks(text: str) -> list[Block]:
    """The fenced blocks of a markdown text, each with the readme-test directive just above it."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        above = lines[i - 1] if i else ""
        directive = re.match(r"^<!-- readme-test: (.*) -->$", above)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        blocks.append(Block(i + 1, fence.group(1), "\n".join(lines[i + 1:end]), directive.group(1) if directive else ""))
        i = end + 1
    return blocks


def transcript(text: str) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for each `$ ` line of a transcript block."""
    pairs: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], []))
        elif pairs:
            pairs[-1][1].append(line)
    return pairs


def shell_commands(text: str) -> list[str]:
    """The commands of a ```sh block: backslash continuations joined, blank lines and comments left out."""
    commands, current = [], ""
    for line in text.splitlines():
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip() and not current.lstrip().startswith("#"):
            commands.append(current.strip())
        current = ""
    return commands


def _words(text: str) -> str:
    return r"[ \t]+".join(re.escape(word) for word in text.split())


def line_pattern(line: str, numbers_vary: bool) -> str:
    """A regex for one expected output line: any spacing (columns widen with their numbers)."""
    rest = line.endswith(" ...")
    body = (line[:-4] if rest else line).strip()
    if numbers_vary:
        parts = re.split(f"({SHAPE}|{NUMBER})", body)
        pieces = (_words(part) if k % 2 == 0 else NUMBER if _varies(part) else re.escape(part)
                  for k, part in enumerate(parts))
        core = r"[ \t]*".join(p for p in pieces if p)
    else:
        core = _words(body)
    return r"[ \t]*" + core + (r"[^\n]*" if rest else r"[ \t]*")


def output_matches(expected: list[str], actual: str, numbers_vary: bool) -> bool:
    """Whether `actual` shows the `expected` lines, `...` standing for any lines."""
    while expected and not expected[-1].strip():
        expected = expected[:-1]
    pattern = ""
    for line in expected:
        if line.strip() == "...":
            pattern += r"(?:[^\n]*\n)*?"
        elif line.strip() and set(line.strip()) <= set("━─"):  # a table rule: its width follows the columns
            pattern += r"[ \t]*[━─]+[ \t]*\n"
        else:
            pattern += line_pattern(line, numbers_vary) + r"\n"
    return re.fullmatch(pattern, actual.rstrip("\n") + "\n") is not None


def test_output_matching_is_strict_where_it_should_be():
    assert output_matches(["a 1", "...", "z"], "a 1\nb\nc\nz\n", False)
    assert not output_matches(["a 1", "z"], "a 1\nb\nz\n", False)  # an unshown line needs `...`
    assert not output_matches(["a 1"], "a 2\n", False)
    assert output_matches(["a 1"], "a 2\n", True)
    assert output_matches(["acc  84.25%   x"], "acc 9.50% x\n", True)
    assert not output_matches(["795,010 parameters"], "7 parameters\n", True)  # counts are no measurement
    assert not output_matches(["of 2,000 images"], "of 1,000 images\n", True)
    assert not output_matches(["on 1x28x28 inputs"], "on 3x32x32 inputs\n", True)  # nor are shapes
    assert output_matches(["best epoch 4, 2.7 s"], "best epoch 5, 12.0 s\n", True)
    assert not output_matches(["acc 84.25% x"], "acc 9.50% y\n", True)  # only numbers vary
    assert output_matches(["top Sneaker ..."], "top Sneaker 99.9% Sandal 0.0%\n", False)
    assert output_matches(["━━━━"], "━━━━━━━━\n", False)
    assert not output_matches(["a", "", "b"], "a\n━━\nb\n", False)  # a blank line is blank


ALL_BLOCKS = read_blocks(README.read_text())
BLOCKS = [b for b in ALL_BLOCKS if b.lang in ("sh", "python") or (not b.lang and b.text.startswith("$ "))]


def test_the_readme_has_a_tour_and_every_block_is_checked():
    assert sum(b.text.startswith("$ ") for b in BLOCKS) >= 10 and sum(b.lang == "python" for b in BLOCKS) >= 3
    unchecked = [f"README.md:{b.line}" for b in ALL_BLOCKS if b not in BLOCKS and not b.directive.startswith("skip")]
    assert not unchecked, f"blocks this test cannot run (make them sh, python or a $ transcript, or skip them): {unchecked}"


@pytest.fixture(scope="module")
def tour(tmp_path_factory: pytest.TempPathFactory, datasets_dir: Path) -> dict:
    """A fresh folder with `../shared/datasets` beside it, an environment, and the snippets' namespace."""
    root = tmp_path_factory.mktemp("readme")
    (root / "shared").mkdir()
    (root / "shared" / "datasets").symlink_to(datasets_dir)
    cwd = root / "tour"
    cwd.mkdir()
    env = {**os.environ, "CNNLAB_SUBSET": QUICK_SUBSET, "COLUMNS": "200", "CUDA_VISIBLE_DEVICES": "",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("CNNLAB_DATA", None)
    return {"cwd": cwd, "env": env, "namespace": {"__name__": "__readme__"}}


def _run(command: str, tour: dict, full_data: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in tour["env"].items() if not (full_data and k == "CNNLAB_SUBSET")}
    return subprocess.run(["bash", "-c", command], cwd=tour["cwd"], env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"README.md:{b.line}" for b in BLOCKS])
def test_readme_block(block: Block, tour: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    if block.directive.startswith("skip"):
        pytest.skip(f"README.md:{block.line}: {block.directive}")
    status = int(m.group(1)) if (m := re.search(r"exit (\d+)", block.directive)) else 0
    if block.lang == "python":
        monkeypatch.chdir(tour["cwd"])
        monkeypatch.setenv("CNNLAB_SUBSET", QUICK_SUBSET)
        exec(compile(block.text, f"README.md:{block.line}", "exec"), tour["namespace"])
        return
    pairs = transcript(block.text) if block.text.startswith("$ ") else [(c, None) for c in shell_commands(block.text)]
    for command, expected in pairs:
        done = _run(command, tour, "full data" in block.directive)
        # The note CNNLAB_SUBSET prints is this test's doing, not part of what a user sees.
        shown = "".join(line for line in (done.stdout + done.stderr).splitlines(keepends=True)
                        if not line.startswith("CNNLAB_SUBSET is set"))
        where = f"README.md:{block.line}: `{command}`"
        assert done.returncode == status, f"{where} exited {done.returncode}, not {status}:\n{shown[-4000:]}"
        if expected is not None:
            assert output_matches(expected, shown, "numbers vary" in block.directive), (
                f"{where} printed something else than the README shows:\n{shown[-6000:]}")
