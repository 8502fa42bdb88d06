"""The README is derived from the code where it describes the contract."""

from pathlib import Path

from core.contract import markdown_table
import re

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_contract_table_is_the_contract():
    text = (README.parent / "docs" / "contract.md").read_text()
    block = text.split("<!-- contract:start -->\n", 1)[1].split("\n<!-- contract:end -->", 1)[0]
    assert block == markdown_table(), "README table is stale: paste `icans-risk contract`"


def test_readme_states_intended_use_and_the_two_commands():
    text = README.read_text()
    assert "Research use only" in text
    assert re.search(r"`make serve`|^make serve\b", text, flags=re.M), "make serve"
    # `make test` itself, not the prefix of `make test-fast` or `make test-cohorts`
    assert re.search(r"\bmake test\b(?![-\w])", text), "make test"
