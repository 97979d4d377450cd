"""docs/configuration.md: its key reference is what the options generate, and its
examples are files the loader accepts."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import click
import pytest

from consortium.cli.config_cmd import COMMANDS
from consortium.cli.config_file import configurable, file_defaults, keyed_options
from consortium.cli.config_file_docs import BEGIN, END, reference, section_reference
from consortium.cli.main import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_checked_in_reference_is_the_generated_one() -> None:
    text = DOC.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END) + 1
    assert text[start:end] == reference(COMMANDS), (
        "docs/configuration.md is out of date: run "
        "consortium config docs --write docs/configuration.md"
    )


def test_every_key_is_in_the_reference_with_its_environment_variable() -> None:
    text = DOC.read_text()
    for section, command in COMMANDS.items():
        for key, option in keyed_options(command).items():
            assert f"| `{key}` |" in text, key
            assert f"`{option.envvar}`" in text, key
            prefix = f"CONSORTIUM_{section.upper()}_"
            assert option.envvar == prefix + key.upper().replace("-", "_")


def test_the_generator_reads_each_kind_of_option() -> None:
    @configurable("node")
    @click.command()
    @click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=0.5, help="A.")
    @click.option("--tries", type=click.IntRange(min=1, max=9), default=3, help="B | C.")
    @click.option("--mode", type=click.Choice(["x", "y"]), default="x", help="<mode>.")
    @click.option("--fast/--slow", default=True, help="D.")
    @click.option("--tag", multiple=True, help="E.")
    @click.option("--setting", multiple=True, metavar="KEY=VALUE", help="F.")
    @click.option("--home", type=click.Path(file_okay=False, path_type=Path), help="G.")
    def toy(**_: object) -> None:
        """A toy."""

    rows = section_reference("node", toy).splitlines()
    expected = [
        "| `rate` | number &gt; 0 | `0.5` | `--rate` | `CONSORTIUM_NODE_RATE` | A. |",
        "| `tries` | integer &gt;= 1 and &lt;= 9 | `3` | `--tries` | `CONSORTIUM_NODE_TRIES` "
        "| B \\| C. |",
        '| `mode` | one of "x", "y" | `"x"` | `--mode` | `CONSORTIUM_NODE_MODE` | &lt;mode&gt;. |',
        "| `fast` | boolean | `true` | `--fast` / `--slow` | `CONSORTIUM_NODE_FAST` | D. |",
        "| `tag` | list of strings | `[]` | `--tag` | `CONSORTIUM_NODE_TAG` | E. |",
        "| `setting` | table of key = value | `{}` | `--setting` | `CONSORTIUM_NODE_SETTING` "
        "| F. |",
        "| `home` | path to a folder | unset | `--home` | `CONSORTIUM_NODE_HOME` | G. |",
    ]
    assert [r for r in rows if r.startswith("| `")] == expected


def test_the_examples_in_the_doc_are_valid_files(tmp_path: Path) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 2
    seen = set()
    for block in blocks:
        for section, table in tomllib.loads(block).items():
            # paths are the deployment machine's: their types and keys are checked, not them
            file_defaults(COMMANDS[section], section, table, tmp_path / "x.toml",
                          check_paths=False)  # fmt: skip
            seen.add(section)
    assert seen == {"server", "node"}


def test_config_docs_check_exits_2_on_a_stale_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "docs", "--check", str(DOC)]) == 0
    stale = tmp_path / "configuration.md"
    stale.write_text(DOC.read_text().replace("| `heartbeat` | number", "| `heartbeat` | string"))
    assert main(["config", "docs", "--check", str(stale)]) == 2
    assert "out of date" in capsys.readouterr().err
    assert main(["config", "docs", "--write", str(stale)]) == 0
    assert stale.read_text() == DOC.read_text()
