"""README is a front door and the docs do not point at things that are not there (issue 17 item 5).

Checks README's length and contents list, every relative link of README.md and docs/*.md (file and,
for markdown targets, the #anchor), every repository path named in backticks, and that every
`mcr-swift` command of cli.COMMANDS is documented.
"""
import re
import unicodedata
from pathlib import Path

import pytest

from mcr_swift import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README] + DOCS

#: paths the README names that other issue-17 branches create; the lead empties this set at the merge.
#: A path listed here that exists is an error too, so the set cannot silently outlive its reason.
PENDING: set = set()   # paths the docs may name before they exist (none now)

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE = re.compile(r"`([^`\n]+)`")
REPO_PATH = re.compile(r"^(mcr_swift|recipes|tools|docs|prompts|tests|\.ci)(/[A-Za-z0-9_.\-/]*)?$")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces -> '-'."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    out = []
    for ch in text:
        if ch in " -":
            out.append("-")
        elif ch == "_" or unicodedata.category(ch)[0] in "LN":
            out.append(ch)
    return "".join(out)


def _anchors(page: Path) -> set:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*)$", text, re.M)}


def _prose(page: Path) -> str:
    return FENCE.sub("", page.read_text(encoding="utf-8"))


def test_slug_matches_github_rules():
    assert _slug("Three-source D_R (App. E.1)") == "three-source-d_r-app-e1"
    assert _slug("D1/D2 split (`mcr-swift split`)") == "d1d2-split-mcr-swift-split"
    assert _slug("Where is what") == "where-is-what"


def test_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 350, f"README.md has {len(lines)} lines (at most 350)"
    assert "## Contents" in lines
    start = lines.index("## Contents")
    contents = [ln for ln in lines[start + 1:start + 15] if ln.startswith("- [")]
    assert len(contents) >= 5
    # every contents entry points at a heading of the README or a doc page
    own = _anchors(README)
    for ln in contents:
        target = LINK.search(ln).group(1)
        if target.startswith("#"):
            assert target[1:] in own, ln


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    bad = []
    for target in LINK.findall(_prose(page)):
        if re.match(r"^[a-z]+:", target):          # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not bad, f"{page.name}: " + "; ".join(bad)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_backticked_repo_paths_exist(page):
    missing = []
    for span in CODE.findall(_prose(page)):
        for word in span.split():
            word = word.strip(",;:()\"'")
            if not REPO_PATH.match(word):
                continue
            rel = word.rstrip("/")
            if rel in PENDING:
                continue
            if not (ROOT / rel).exists():
                missing.append(word)
    assert not missing, f"{page.name} names paths that do not exist: {sorted(set(missing))}"


def test_pending_paths_are_still_pending():
    done = sorted(p for p in PENDING if (ROOT / p).exists())
    assert not done, f"remove {done} from PENDING in tests/test_docs.py: they exist now"


def test_every_command_is_documented():
    text = "\n".join(p.read_text(encoding="utf-8") for p in PAGES)
    missing = [c for c in cli.COMMANDS if f"mcr-swift {c}" not in text]
    assert not missing, f"commands not mentioned in README.md or docs/: {missing}"
