"""The stand-in's answers by teacher forcing: greedy's answer up to its first departure from the reference, from logits.

``forced_answer`` runs in the library's environment on the library's model; here a model whose logits are set by hand
stands in for it, so each case (all agree, a departure, a departure at the end of turn, no answer) is checked exactly.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from pipeline.npu_lib import worker_measure  # noqa: E402

VOCAB = 16


class ScriptedModel:
    """Logits whose top token after position ``i`` is ``script[i]``; records what it was called with."""

    def __init__(self, script: list[int]) -> None:
        self.script, self.calls = script, []

    def __call__(self, ids):  # noqa: ANN001, ANN204 (a model's forward)
        self.calls.append(ids.tolist())
        logits = torch.zeros(1, ids.shape[1], VOCAB)
        for i, token in enumerate(self.script[: ids.shape[1]]):
            logits[0, i, token] = 1.0
        return SimpleNamespace(logits=logits)


@pytest.fixture(autouse=True)
def no_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_measure, "drop_kernels", lambda: None)  # the library's kernel cache is not here


def case(prompt: list[int], answer: list[int]) -> dict:
    return {"prompt_ids": prompt, "output_ids": answer}


def test_an_answer_that_agrees_everywhere_is_the_references_in_one_pass() -> None:
    prompt, answer = [1, 2, 3], [7, 8, 9, 10]
    model = ScriptedModel([0, 0, 7, 8, 9, 10, 0])  # after the prompt's last token: 7, then 8, 9, 10
    assert worker_measure.forced_answer(model, case(prompt, answer)) == answer
    assert model.calls == [[prompt + answer]]  # one forward pass over prompt and answer


def test_an_answer_ends_at_the_first_token_that_departs() -> None:
    model = ScriptedModel([0, 0, 7, 8, 5, 10, 0])  # the third answer token would be 5, not 9
    assert worker_measure.forced_answer(model, case([1, 2, 3], [7, 8, 9, 10])) == [7, 8, 5]


def test_a_departure_at_the_first_token_and_an_empty_answer() -> None:
    assert worker_measure.forced_answer(ScriptedModel([0, 0, 4, 8, 9]), case([1, 2, 3], [7, 8, 9])) == [4]
    model = ScriptedModel([0])
    assert worker_measure.forced_answer(model, case([1, 2, 3], [])) == [] and model.calls == []


def test_the_verdict_is_greedys_exact_match_and_departure() -> None:
    """What the validation reads from answers (prompts.greedy_match) is the same for the forced answer as for a greedy
    one that goes on after departing."""
    from pipeline.validation.prompts import greedy_match

    reference = {"greedy": [{"output_ids": [7, 8, 9, 10]}, {"output_ids": [7, 8, 9, 10]}], "stop_token_ids": [10]}
    forced = [[7, 8, 9, 10], [7, 8, 5]]
    greedy = [[7, 8, 9, 10], [7, 8, 5, 3, 3, 3]]
    assert greedy_match(forced, reference) == greedy_match(greedy, reference) == (0.5, [None, 2])
