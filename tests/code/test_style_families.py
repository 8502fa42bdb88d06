"""core.style names the candidate families itself (the service must not import scikit-learn for
a colour); they are the families models.candidates trains, in the same order."""

from models.candidates import CANDIDATES
from core import style


def test_style_families_are_the_candidate_families() -> None:
    assert style.FAMILIES == tuple(CANDIDATES)
    for family in style.FAMILIES:
        assert family in style.NAMES and family in style.COLOURS
