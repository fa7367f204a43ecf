"""Every file a doc, comment or param comment points to exists: a renamed or moved doc fails here, not for a reader."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # tests/core/this file
# `<folder>/<file>.md` or anything under docs/ (in code, params and docs); in docs also the project's own folders
DOC_PATH = re.compile(r"(?<![\w/.<>{}-])((?:[\w.-]+/)+[\w.-]+\.md|docs/[\w./-]*[\w/])(#[\w-]+)?")
CODE_PATH = re.compile(r"(?<![\w/.<>{}-])((?:stages|tests|benchmarks|\.ci|\.dvc)/[\w./-]*[\w/])")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
OUTPUTS = ("artifacts/", "data/", "report/", "dvc_plots/", "test-artifacts/")  # what stages write, not docs
USER_FILES = {".dvc/config.local", ".dvc/cache"}  # what a user or DVC creates (git ignores them)


def sources() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "params.yaml", ROOT / "dvc.yaml", ROOT / "pyproject.toml"]
    for folder, pattern in (("stages", "*.py"), ("tests", "*.py"), ("benchmarks", "*.py"), ("docs", "*.md")):
        files += sorted((ROOT / folder).rglob(pattern))
    return [f for f in files if f.exists() and f != Path(__file__).resolve()]  # this file's examples are dangling


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(md: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def problems_in(path: Path) -> list[str]:
    text, found = path.read_text(), []
    prose = MD_LINK.sub("]()", text) if path.suffix == ".md" else text  # link targets resolve from the doc's folder
    refs = [(m.group(1), m.group(2), ROOT) for m in DOC_PATH.finditer(prose)]
    if path.suffix == ".md":
        refs += [(m.group(1), None, ROOT) for m in CODE_PATH.finditer(prose)]
        for m in MD_LINK.finditer(text):
            target = m.group(1)
            if "://" in target or target.startswith(("#", "mailto:")):
                if target.startswith("#") and target[1:] not in anchors(path):
                    found.append(f"{path.relative_to(ROOT)}: link {target}: no such heading")
                continue
            file, _, anchor = target.partition("#")
            refs.append((file, "#" + anchor if anchor else None, path.parent))
    for ref, anchor, base in refs:
        if ref.startswith(OUTPUTS) or ref in USER_FILES or "<" in ref or "{" in ref:
            continue
        target = (base / ref).resolve()
        if not target.exists():
            found.append(f"{path.relative_to(ROOT)}: {ref}: no such file")
        elif anchor and target.suffix == ".md" and anchor[1:] not in anchors(target):
            found.append(f"{path.relative_to(ROOT)}: {ref}{anchor}: no such heading")
    return found


def test_no_dangling_doc_references():
    problems = [p for f in sources() for p in problems_in(f)]
    assert not problems, "\n".join(problems)


def test_the_checker_sees_a_dangling_reference(tmp_path):
    bad = ROOT / "docs" / "_probe_dangling.md"
    # the dangling paths are assembled, so no scanner of the repository mistakes this test for a real reference
    gone, empty = "/".join(("research", "sre2l_family.md")), "/".join(("docs", "nothing.md"))
    bad.write_text(f"# Probe\n\nSee {gone}, {empty}, [x](methods/sre2l.md#no-such) and [y](#probe).\n")
    try:
        found = problems_in(bad)
    finally:
        bad.unlink()
    assert [p.split(": ", 1)[1] for p in found] == [
        f"{gone}: no such file", f"{empty}: no such file",
        "methods/sre2l.md#no-such: no such heading"]
