import pytest

from tests.corpus import InvalidCase, invalid_cases
from tradewind.api import ManifestError, load_resources

CASES = invalid_cases()


def test_corpus_covers_every_field_family() -> None:
    assert len(CASES) >= 40
    families = {c.family for c in CASES}
    assert {"type", "range", "enum", "unknown", "required", "combination"} <= families
    kinds = {c.name.split("-")[0] for c in CASES}
    assert {"tr", "rl", "sw"} <= kinds


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_invalid_manifest_fails_with_one_line_naming_the_field(case: InvalidCase) -> None:
    with pytest.raises(ManifestError) as info:
        load_resources(case.path)
    problems = info.value.problems
    assert len(problems) == 1, problems
    line = problems[0]
    assert "\n" not in line
    assert line.startswith(f"{case.path}: {case.field}: "), line
    assert case.fragment in line, line
