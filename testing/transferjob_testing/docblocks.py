"""The docs' shell and Python blocks, found and run as a reader would run them.

Every fenced ``bash``/``sh``/``python`` block in README.md, docs/*.md and examples/README.md carries a
marker on the line before it (an HTML comment, invisible on GitHub):

- ``<!-- doc-test: cluster -->`` runs on the README's quickstart cluster (`cluster.quickstart`);
- ``<!-- doc-test: local -->`` runs on this machine, no cluster;
- ``<!-- doc-test: skip (why) -->`` is not run, and says why (it needs Docker, a GPU cluster, the internet,
  or it is the test suite itself).

A block with no marker fails tests/unit/test_doc_blocks.py, so a new block cannot drift unseen. The
runner (`DocRunner`) runs a file's blocks in order in one working folder: each shell block in its own
``bash -euo pipefail``; the Python blocks of a file in one interpreter, so that later blocks see the names
earlier ones defined, as in a notebook.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from transferjob_testing.cluster.binaries import REPO_ROOT

LANGUAGES = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python"}
LABELS = ("cluster", "local", "skip")
MARKER = re.compile(r"^<!--\s*doc-test:\s*(\w+)\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")


def doc_files() -> list[Path]:
    """The documents a reader follows, in the order the README sends them there."""
    docs = sorted((REPO_ROOT / "docs").glob("*.md"))
    return [REPO_ROOT / "README.md", *docs, REPO_ROOT / "examples" / "README.md"]


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str  # "bash" or "python"
    label: str  # cluster | local | skip | "" (no marker)
    reason: str  # what a skip marker says
    code: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The shell and Python blocks of one Markdown file, with the marker each carries."""
    found: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        opening, language = fence.group(1), fence.group(2).lower()
        end = i + 1
        while end < len(lines) and not lines[end].startswith(opening):
            end += 1
        if language in LANGUAGES:
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = MARKER.match(before.strip())
            label, reason = (marker.group(1), marker.group(2)) if marker else ("", "")
            code = "\n".join(lines[i + 1 : end]) + "\n"
            found.append(Block(path, i + 1, LANGUAGES[language], label, reason, code))
        i = end + 1
    return found


class DocBlockError(AssertionError):
    """A docs block that did not run as written: where it is, and what it printed."""


_DRIVER = """
import json, os, sys, traceback
results = os.fdopen(int(sys.argv[1]), "w")
scope = {"__name__": "__main__"}
for line in sys.stdin:
    block = json.loads(line)
    try:
        exec(compile(block["code"], block["where"], "exec"), scope)
        outcome = {"ok": True}
    except BaseException:
        outcome = {"ok": False, "error": traceback.format_exc()}
    sys.stdout.flush()
    sys.stderr.flush()
    results.write(json.dumps(outcome) + "\\n")
    results.flush()
"""


class DocRunner:
    """Runs blocks in `cwd` with `env`; the transcript of everything they printed goes to `log`."""

    def __init__(self, cwd: Path, env: dict[str, str], log: Path, timeout: float = 600.0) -> None:
        self.cwd = cwd
        self.env = env
        self.log = log
        self.timeout = timeout
        self._python: subprocess.Popen[str] | None = None
        self._results: IO[str] | None = None
        self._transcript: IO[str] | None = None

    def __enter__(self) -> DocRunner:
        self._transcript = self.log.open("a")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._python is not None:
            assert self._python.stdin is not None
            self._python.stdin.close()
            try:
                self._python.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._python.kill()
            self._python = None
        if self._transcript is not None:
            self._transcript.close()

    def run(self, block: Block) -> None:
        assert self._transcript is not None, "use DocRunner as a context manager"
        heading = f"{block.where} ({block.language}, {block.label})"
        self._transcript.write(f"\n===== {heading}\n{block.code}-----\n")
        self._transcript.flush()
        started = time.monotonic()
        if block.language == "bash":
            self._bash(block)
        else:
            self._exec(block)
        self._transcript.write(f"----- ok in {time.monotonic() - started:.1f}s\n")
        self._transcript.flush()

    def _output_since(self, offset: int) -> str:
        with self.log.open() as f:
            f.seek(offset)
            return f.read()[-6000:]

    def _timed_out(self, block: Block, offset: int) -> DocBlockError:
        return DocBlockError(
            f"{block.where}: still running after {self.timeout:.0f}s:\n{self._output_since(offset)}"
        )

    def _bash(self, block: Block) -> None:
        assert self._transcript is not None
        offset = self.log.stat().st_size
        try:
            proc = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", block.code],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=self._transcript,
                stderr=subprocess.STDOUT,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise self._timed_out(block, offset) from None
        if proc.returncode != 0:
            raise DocBlockError(
                f"{block.where}: exit code {proc.returncode}:\n{block.code}\n{self._output_since(offset)}"
            )

    def _exec(self, block: Block) -> None:
        assert self._transcript is not None
        offset = self.log.stat().st_size
        if self._python is None:
            read, write = os.pipe()
            self._python = subprocess.Popen(
                [sys.executable, "-u", "-c", _DRIVER, str(write)],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=self._transcript,
                stderr=subprocess.STDOUT,
                text=True,
                pass_fds=(write,),
            )
            os.close(write)
            self._results = os.fdopen(read)
        assert self._python.stdin is not None and self._results is not None
        self._python.stdin.write(json.dumps({"code": block.code, "where": block.where}) + "\n")
        self._python.stdin.flush()
        ready, _, _ = select.select([self._results], [], [], self.timeout)
        if not ready:
            self._python.kill()
            self._python = None
            raise self._timed_out(block, offset)
        line = self._results.readline()
        if not line:
            raise DocBlockError(f"{block.where}: the interpreter died:\n{self._output_since(offset)}")
        outcome = json.loads(line)
        if not outcome["ok"]:
            raise DocBlockError(f"{block.where}:\n{outcome['error']}\n{self._output_since(offset)}")


def workdir(root: Path) -> Path:
    """A folder that looks like the repository root (every top-level entry linked) but keeps what the
    blocks write (plots, datasets, `.local/`) out of the real one."""
    root.mkdir(parents=True, exist_ok=True)
    for entry in REPO_ROOT.iterdir():
        if entry.name in (".local", ".git", "out"):
            continue
        link = root / entry.name
        if not link.exists():
            link.symlink_to(entry)
    return root
