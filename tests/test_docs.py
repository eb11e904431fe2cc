"""The codebase stands alone: every document the code cites is in the repository, with the cited section."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    p for d in ("smoothcert", "tests", "benchmarks") for p in (REPO / d).rglob("*.py") if p != Path(__file__).resolve()
)  # this file's probes cite missing documents on purpose

# a cited document: a path ending in .md, then optionally sections "§N", "§N–§M", "§N, §M". It counts
# as a citation when it names a section or a folder (``docs/x.md``), or is the MATH.md this project
# once cited without having it; a bare file name such as the demo's ``table.md`` is an output.
CITATION = re.compile(r"(?P<doc>[\w./-]+\.md)`*(?P<sections>(?:[ ,]*§\d+(?:[–-]§\d+)?)*)")


def _citations(text: str) -> list[tuple[str, list[int]]]:
    out = []
    for m in CITATION.finditer(text):
        sections: list[int] = []
        for lo, hi in re.findall(r"§(\d+)(?:[–-]§(\d+))?", m["sections"]):
            sections += range(int(lo), int(hi or lo) + 1)
        if sections or "/" in m["doc"] or m["doc"].lower() == "math.md":
            out.append((m["doc"], sections))
    return out


def _problems(sources: list[tuple[str, str]]) -> list[str]:
    """What is wrong with the citations in ``(name, text)`` pairs; paths are relative to the repository."""
    problems = []
    for name, text in sources:
        for doc, sections in _citations(text):
            target = REPO / doc
            if doc.startswith("..") or not target.is_file():
                problems.append(f"{name} cites {doc}, which is not in the repository")
                continue
            headings = {int(n) for n in re.findall(r"^#+ §(\d+)\b", target.read_text(), flags=re.M)}
            problems += [f"{name} cites {doc} §{s}, which has no such section" for s in sections if s not in headings]
    return problems


def test_every_cited_document_and_section_exists():
    assert len(SOURCES) > 20
    assert any(_citations(p.read_text()) for p in SOURCES), "the code cites docs/"
    assert _problems([(str(p.relative_to(REPO)), p.read_text()) for p in SOURCES]) == []


def test_the_check_catches_a_missing_document_and_a_missing_section():
    """Positive control: a citation of an absent file, or of a section the file lacks, is reported."""
    text = '"""See ``MATH.md`` §3, ../elsewhere/NOTES.md and ``docs/statistics.md`` §2–§3, §99.\nMATH.md, Table 2."""'
    assert _problems([("probe.py", text)]) == [
        "probe.py cites MATH.md, which is not in the repository",
        "probe.py cites ../elsewhere/NOTES.md, which is not in the repository",
        "probe.py cites docs/statistics.md §99, which has no such section",
        "probe.py cites MATH.md, which is not in the repository",
    ]
