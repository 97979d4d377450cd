"""docs/security.md names, for every claim, the test that checks it: those tests exist.

A reference is a pytest node id, ``tests/PATH.py::test_name``,
``tests/PATH.py::TestClass::test_name`` or either with a parameter id
(``::test_name[case]``). Each must name a file that exists and defines that test (for a
parameter id, the id must appear in the file as a string literal). And every row of the
threat model's claim tables must name at least one test, so a claim cannot lose its
evidence by a rename or go without any.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security.md"

#: a pytest node id as the doc writes it
REFERENCE = re.compile(r"(tests/[\w/.-]+?\.py)::((?:Test\w+::)?test_\w+)(?:\[([^\]\s`]+)\])?")
#: the threat model's three attackers: each section's claim table must cite tests
SECTIONS = ("## A malicious coordinator", "## A malicious node", "## A network attacker")


def _defines(path: Path, name: str) -> bool:
    """Whether ``path`` defines test ``name`` (``test_x``, or ``TestClass::test_x``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    if "::" not in name:
        return any(isinstance(n, functions) and n.name == name for n in tree.body)
    cls, method = name.split("::")
    return any(
        isinstance(n, ast.ClassDef)
        and n.name == cls
        and any(isinstance(m, functions) and m.name == method for m in n.body)
        for n in tree.body
    )


def missing_references(text: str, root: Path) -> list[str]:
    """Every reference in ``text`` that does not name an existing test under ``root``."""
    missing = []
    for match in REFERENCE.finditer(text):
        file, name, case = match.groups()
        path = root / file
        if not path.is_file():
            missing.append(f"{match.group(0)}: no file {file}")
        elif not _defines(path, name):
            missing.append(f"{match.group(0)}: {file} defines no {name}")
        elif case is not None and not re.search(rf"[\"']{re.escape(case)}[\"']", path.read_text()):
            missing.append(f"{match.group(0)}: {file} has no parameter id {case!r}")
    return missing


def uncited_claims(text: str) -> list[str]:
    """Rows of the three attackers' ``| claim | test |`` tables that name no test."""
    uncited = []
    for heading in SECTIONS:
        assert heading in text, f"docs/security.md has no section {heading!r}"
        section = text.split(heading, 1)[1].split("\n## ", 1)[0]
        rows = [
            line
            for line in section.splitlines()
            if line.startswith("| ") and not line.startswith(("| claim |", "|---"))
        ]
        assert rows, f"{heading}: no claim table"
        uncited += [f"{heading}: {row}" for row in rows if not REFERENCE.search(row)]
    return uncited


def test_every_test_the_security_doc_names_exists() -> None:
    text = DOC.read_text(encoding="utf-8")
    references = REFERENCE.findall(text)
    assert len(references) >= 40, "the threat model cites its tests as pytest node ids"
    assert missing_references(text, ROOT) == []


def test_every_claim_of_the_threat_model_names_its_test() -> None:
    assert uncited_claims(DOC.read_text(encoding="utf-8")) == []


def test_the_checks_catch_a_renamed_test_a_missing_file_a_bad_case_and_an_uncited_claim(
    tmp_path: Path,
) -> None:
    """The checks above can fail: a doc citing what does not exist is caught."""
    tests = tmp_path / "tests" / "x"
    tests.mkdir(parents=True)
    (tests / "test_a.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.parametrize('case', ['small', 'large'])\n"
        "def test_real(case):\n    pass\n\n"
        "class TestGroup:\n    def test_method(self):\n        pass\n"
    )
    doc = (
        "`tests/x/test_a.py::test_real` `tests/x/test_a.py::test_real[large]` "
        "`tests/x/test_a.py::TestGroup::test_method`\n"
        "`tests/x/test_a.py::test_renamed` `tests/x/test_gone.py::test_real` "
        "`tests/x/test_a.py::test_real[huge]` `tests/x/test_a.py::TestGroup::test_real`\n"
    )
    assert missing_references(doc, tmp_path) == [
        "tests/x/test_a.py::test_renamed: tests/x/test_a.py defines no test_renamed",
        "tests/x/test_gone.py::test_real: no file tests/x/test_gone.py",
        "tests/x/test_a.py::test_real[huge]: tests/x/test_a.py has no parameter id 'huge'",
        "tests/x/test_a.py::TestGroup::test_real: tests/x/test_a.py defines no "
        "TestGroup::test_real",
    ]
    table = "| claim | test |\n|---|---|\n| cited | `tests/x/test_a.py::test_real` |\n"
    sections = "".join(f"{h}\n\n{table}" for h in SECTIONS)
    assert uncited_claims(sections) == []
    bare = sections.replace("## A network attacker\n", "## A network attacker\n\n| bare | |\n")
    assert uncited_claims(bare) == ["## A network attacker: | bare | |"]
