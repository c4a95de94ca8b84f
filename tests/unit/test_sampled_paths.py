"""The path classification of `benchmarks/sampled_paths.py`: a correct response that is not the annotated CoT
counts as a valid other path only when every `a op b = c` step in it is right. No model runs here."""

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def sp():
    spec = importlib.util.spec_from_file_location("sampled_paths", BENCH / "sampled_paths.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_miscopied_operand_with_the_memorised_result_is_not_a_valid_path(sp):
    assert sp.steps_hold("Each friend pays 75 / 5 = 15 dollars. Each friend pays 13 + 15 = 28 dollars in all.")
    assert not sp.steps_hold("Each friend pays 75 / 7 = 15 dollars. Each friend pays 13 + 15 = 28 dollars in all.")
    assert not sp.steps_hold("First it goes 3 * 3 = 27 km. There are 100 - 27 = 73 km left.")
    assert sp.steps_hold("He reads 16 * 4 = 64 pages. There are 100 - 64 = 36 pages left.")  # the other order
    assert not sp.steps_hold("There are 36 pages left.")  # no step at all: nothing shows the path is valid
    assert not sp.steps_hold("7 / 0 = 0")


def test_the_reasoning_is_compared_without_the_answer_line_or_layout(sp):
    annotated = "He reads 4 * 16 = 64 pages.\nThere are 100 - 64 = 36 pages left."
    response = "He reads 4 * 16 = 64 pages.  There are 100 - 64 = 36 pages left.\nTherefore, the answer is: 36"
    assert sp.reasoning_of(response) == sp.reasoning_of(annotated)
    assert sp.reasoning_of(response.replace("4 * 16", "16 * 4")) != sp.reasoning_of(annotated)
