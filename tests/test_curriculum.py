"""Complexity curriculum: scores, easy-to-hard order, cumulative shuffled stages, stage steps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trajdistill.train import Complexity
from trajdistill.train._curriculum import kind_counts, order, parse_curriculum
from trajdistill.train import stage_steps

SCORES = [50.0, 10.0, 30.0, 10.0, 90.0, 70.0, 20.0, 60.0]


def test_complexity_score_and_token_counts():
    c = Complexity(alpha=1.0, beta=2.0, gamma=10.0)
    assert c.score(reason_tokens=5, act_tokens=3, steps=2) == 5 + 6 + 20
    kinds = [0, 1, 1, 2, 2, 2, 3, 1]
    labels = [-100, 7, 8, 9, 9, -100, 4, 5]  # a masked token never counts
    assert kind_counts(kinds, labels) == {"reason": 3, "act": 2, "answer": 1}


def test_none_keeps_data_order():
    plan = order(SCORES, "none")
    assert plan.order == list(range(len(SCORES)))
    assert not plan.sequential  # the trainer may shuffle


def test_complexity_sorts_easy_to_hard_and_keeps_ties_in_data_order():
    plan = order(SCORES, "complexity")
    assert [SCORES[i] for i in plan.order] == sorted(SCORES)
    assert plan.order[:2] == [1, 3]  # the two 10.0 scores, in data order
    assert plan.sequential and plan.stage_starts == [0]


def test_staged_is_cumulative_and_shuffled_within_stages():
    plan = order(SCORES, "staged:4", seed=3)
    assert plan.stage_sizes() == [2, 4, 6, 8]
    ranked = sorted(range(len(SCORES)), key=lambda i: (SCORES[i], i))
    for k, (start, size) in enumerate(zip(plan.stage_starts, plan.stage_sizes()), 1):
        stage = plan.order[start:start + size]
        assert sorted(stage) == sorted(ranked[:2 * k])  # stage k holds every example of stages 1..k
    last = plan.order[plan.stage_starts[-1]:]
    assert last != ranked  # shuffled within the stage, not sorted
    assert order(SCORES, "staged:4", seed=3).order == plan.order  # deterministic for a seed
    assert order(SCORES, "staged:4", seed=4).order != plan.order


@given(st.lists(st.floats(0, 1e4), min_size=1, max_size=40), st.integers(1, 6))
def test_staged_property(scores, k):
    plan = order(scores, f"staged:{k}")
    sizes = plan.stage_sizes()
    assert sizes == sorted(sizes) and sizes[-1] == len(scores)
    final = plan.order[plan.stage_starts[-1]:]
    assert sorted(final) == list(range(len(scores)))  # the last stage is the whole data set
    ranked = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    for start, size in zip(plan.stage_starts, sizes):
        assert set(plan.order[start:start + size]) == set(ranked[:size])  # always the easiest `size`


@pytest.mark.parametrize("bad", ["", "sorted", "staged", "staged:0", "staged:x", "staged:-1"])
def test_bad_curriculum_names_accepted_forms(bad):
    with pytest.raises(ValueError, match="none, complexity, staged:K"):
        parse_curriculum(bad)


def test_stage_steps_follow_rows_per_step_and_repeat_each_epoch():
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=2, world_size=1,
                           num_train_epochs=2)
    # 20 rows, 4 rows per step: 5 steps per epoch; stages begin at rows 0, 4, 10
    assert stage_steps([0, 4, 10], 20, args) == [1, 2, 3, 6, 7, 8]
    assert stage_steps([0, 4, 10], 20, args, max_steps=2) == [1, 2]


def _data(n: int, mode: str, stage_rows: list[int]):
    from datasets import Dataset

    from trajdistill.train._data import TrainData

    plan = order([float(n - i) for i in range(n)], mode)  # example i has complexity n - i: the order reverses
    return TrainData(Dataset.from_list([{"example": i} for i in plan.order]), plan, stage_rows, [], {})


def test_a_curriculum_longer_than_the_step_budget_is_thinned_evenly_from_easy_to_hard():
    from trajdistill.train._data import paced

    data = _data(20, "complexity", [0])
    short = paced(data, 5)  # 5 rows fit the steps: every 4th of the ordered 20, the hardest quarter included
    assert short.dataset["example"] == [19, 15, 11, 7, 3] and short.paced_from == 20
    assert short.stage_rows == [0]
    staged = paced(_data(20, "staged:2", [0, 10]), 5)  # stages of 10 and 20 rows: 30 in all, every 6th kept
    assert len(staged.dataset) == 5 and staged.stage_rows == [0, 2]  # the second stage starts at its first kept row
    assert paced(data, 20) is data and paced(data, 0) is data  # it all fits, or no step budget
    unordered = _data(20, "none", [0])
    assert paced(unordered, 5) is unordered  # a shuffled set is sampled by the trainer, not cut
