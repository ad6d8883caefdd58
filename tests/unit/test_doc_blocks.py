"""Every shell and Python block of the docs says how the docs test treats it (testing/.../docblocks.py).

The docs test (tests/node/test_docs.py) runs the `cluster` and `local` blocks as written; a block with no
marker would silently drift, and a skip must say why.
"""

from __future__ import annotations

from pathlib import Path

from transferjob_testing.docblocks import LABELS, Block, blocks, doc_files


def _all() -> list[Block]:
    return [block for path in doc_files() for block in blocks(path)]


def test_every_shell_and_python_block_is_marked() -> None:
    unmarked = [block.where for block in _all() if block.label not in LABELS]
    assert not unmarked, f"add <!-- doc-test: cluster|local|skip (why) --> before: {unmarked}"


def test_every_skip_says_why() -> None:
    silent = [block.where for block in _all() if block.label == "skip" and len(block.reason) < 10]
    assert not silent, f"say why these blocks are not run: {silent}"


def test_the_docs_have_blocks_to_run() -> None:
    labels = {block.label for block in _all()}
    assert {"cluster", "local"} <= labels, labels


def test_markers_are_found_across_blank_lines_and_fences_nest(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "<!-- doc-test: local -->\n\n```bash\necho one\n```\n"
        "````markdown\n```python\nnot a block of this file\n```\n````\n"
        "<!-- doc-test: skip (needs Docker) -->\n```sh\ndocker build .\n```\n"
        "```python\nprint('unmarked')\n```\n"
        "```yaml\nkind: TransferJob\n```\n"
    )
    found = blocks(doc)
    assert [(b.language, b.label, b.reason, b.code) for b in found] == [
        ("bash", "local", "", "echo one\n"),
        ("bash", "skip", "(needs Docker)", "docker build .\n"),
        ("python", "", "", "print('unmarked')\n"),
    ]
    assert [b.line for b in found] == [3, 12, 15]
