"""Reward-function tests: answer extraction, math equivalence, format, lookup."""

import threading

import pytest

from mlx_align.rewards import (
    REWARD_FUNCTIONS,
    extract_answer,
    format_reward,
    math_reward,
    resolve_reward,
)


def score(completion, reference: str) -> float | None:
    return math_reward(["prompt"], [completion], answer=[reference])[0]


# --- extract_answer ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{\\frac{63}{400}}.", "\\frac{63}{400}"),
        ("\\boxed{1} then \\boxed{x^{2}+1}", "x^{2}+1"),  # last, nested braces
        ("Steps: 3 + 4 = 7\n#### 1,234", "1234"),  # thousands comma dropped
        ("<answer> 42 </answer> checked with 99 others", "42"),
        ("First 12 apples, then 7.5 kg, so 41.", "41"),  # last-number fallback
        ("-3 degrees", "-3"),
        ("no answer here", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


# --- math_reward ---------------------------------------------------------------


def test_boxed_fraction_matches_plain_reference():
    assert score("The probability is \\boxed{\\frac{63}{400}}.", "63/400") == 1.0


def test_wrong_fraction_scores_zero():
    assert score("The probability is \\boxed{\\frac{64}{400}}.", "63/400") == 0.0


def test_gsm8k_answer_line():
    assert score("6 * 7 = 42\n#### 42", "42") == 1.0
    assert score("6 * 7 = 43\n#### 43", "42") == 0.0


def test_answer_tag_beats_later_numbers():
    assert score("<answer>42</answer> (checked 99 times)", "42") == 1.0


def test_last_number_fallback():
    assert score("12 + 30 makes 42.", "42") == 1.0
    assert score("42 is wrong, it is 41.", "42") == 0.0


def test_completion_without_answer_scores_zero():
    assert score("I do not know.", "42") == 0.0


@pytest.mark.parametrize("reference", ["not a number at all", ""])
def test_unparseable_reference_gives_none(reference):
    assert score("#### 42", reference) is None


def test_reference_from_full_solution_column():
    """A GSM8K-style `solution` is reduced to its marked answer first."""
    rewards = math_reward(
        ["p", "p", "p"],
        ["#### 72", "#### 7", "#### 5"],
        solution=[
            "48 / 2 = 24, 48 + 24 = 72\n#### 72",
            "so $\\boxed{7}$",
            "<answer>5</answer>, not 3 + 3",  # math-verify alone would read 6
        ],
    )
    assert rewards == [1.0, 1.0, 1.0]


def test_latex_reference_without_delimiters():
    """A bare `2\\pi` reference must mean 2π, not 2."""
    assert score("\\boxed{2\\pi}", "2\\pi") == 1.0
    assert score("#### 2", "2\\pi") == 0.0


def test_conversational_completions():
    completion = [{"role": "assistant", "content": "\\boxed{\\frac{63}{400}}"}]
    assert score(completion, "63/400") == 1.0


def test_math_reward_off_the_main_thread():
    """math-verify's signal-based timeout raises off the main thread; the
    reward must still work there (e.g. in a reward thread pool)."""
    results = []
    thread = threading.Thread(
        target=lambda: results.append(score("\\boxed{\\frac{63}{400}}", "63/400"))
    )
    thread.start()
    thread.join()
    assert results == [1.0]


def test_math_reward_needs_a_reference_column():
    with pytest.raises(ValueError, match="answer"):
        math_reward(["p"], ["#### 1"])


# --- format_reward -------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("6 * 7 = 42\n#### 42", 1.0),
        ("6 * 7 = 42\n#### -1,234.5  \n\n", 1.0),  # trailing whitespace
        ("6 * 7 = 42\n#### 42<|im_end|>", 1.0),  # end-of-sequence marker
        ("#### 42 and then more text", 0.0),
        ("the answer #### 42", 0.0),  # not on its own line
        ("#### 42\nMore words after.", 0.0),
        ("#### forty-two", 0.0),
        ("\\boxed{42}", 0.0),
    ],
)
def test_format_reward(completion, expected):
    assert format_reward(["p"], [completion]) == [expected]


def test_format_reward_conversational():
    completion = [{"role": "assistant", "content": "steps\n#### 7"}]
    assert format_reward(["p"], [completion]) == [1.0]


# --- resolve_reward ------------------------------------------------------------


def test_resolve_builtins():
    assert resolve_reward("math") is math_reward
    assert resolve_reward("format") is format_reward
    assert set(REWARD_FUNCTIONS) == {"math", "format"}


@pytest.mark.parametrize(
    "spec", ["mlx_align.rewards.math:math_reward", "mlx_align.rewards.math.math_reward"]
)
def test_resolve_import_path(spec):
    assert resolve_reward(spec) is math_reward


@pytest.mark.parametrize(
    "spec",
    ["nonsense", "no_such_module_xyz:reward", "mlx_align.rewards.math:no_such_fn"],
)
def test_resolve_unknown_names_the_spec(spec):
    with pytest.raises(ValueError, match=spec):
        resolve_reward(spec)
