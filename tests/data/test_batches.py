"""Training and evaluation batches: drop-last, one pass per epoch, (seed, epoch) order, resuming."""

from __future__ import annotations

import pytest
import torch

from trainer.data.batches import batches_per_epoch, eval_batches, example_epoch
from trainer.data.loading import train_batches

N, BATCH = 50, 8  # 6 whole batches and 2 examples left over


def data(n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    """x holds each example's own index (twice, as a 2-feature row) so batches can be traced back."""
    index = torch.arange(n)
    return torch.stack([index, -index], dim=1).float(), index


def epoch_batches(x, y, batch_size, *, start_batch=0, **kwargs):
    """The epoch's batches from ``start_batch`` on, as the loop's in-memory path yields them."""
    epoch = example_epoch(x, y, batch_size, **kwargs)
    return train_batches(epoch, start_batch=start_batch, device=torch.device("cpu"), num_workers=None)


def order(**kwargs) -> list[list[int]]:
    x, y = data()
    return [b.tolist() for _, b in epoch_batches(x, y, BATCH, **kwargs)]


def test_batches_per_epoch_is_floor_division():
    assert [batches_per_epoch(n, 8) for n in (7, 8, 15, 16, 50)] == [0, 1, 1, 2, 6]


def test_drops_the_last_partial_batch_and_sees_each_example_at_most_once():
    x, y = data()
    batches = list(epoch_batches(x, y, BATCH, seed=3, epoch=1))
    assert [len(b) for _, b in batches] == [BATCH] * 6
    seen = torch.cat([b for _, b in batches]).tolist()
    assert len(set(seen)) == 48 and set(seen) <= set(range(N))
    for bx, by in batches:  # inputs and labels stay paired after the shuffle
        assert torch.equal(bx[:, 0], by.float()) and torch.equal(bx[:, 1], -by.float())


def test_order_is_a_pure_function_of_seed_and_epoch():
    first = order(seed=3, epoch=1)
    torch.manual_seed(123)  # the global RNG plays no part ...
    state = torch.get_rng_state()
    assert order(seed=3, epoch=1) == first
    assert torch.equal(torch.get_rng_state(), state)  # ... and is not advanced
    assert order(seed=3, epoch=2) != first
    assert order(seed=4, epoch=1) != first
    assert sum(first, []) != list(range(48))  # it does shuffle


def test_without_shuffle_batches_are_in_order():
    assert order(seed=3, epoch=1, shuffle=False) == [list(range(i, i + BATCH)) for i in range(0, 48, BATCH)]


@pytest.mark.parametrize("start", range(7))
def test_start_batch_yields_exactly_the_tail_of_the_epoch(start):
    full = order(seed=5, epoch=2)
    assert order(seed=5, epoch=2, start_batch=start) == full[start:]


def test_eval_batches_are_in_order_and_keep_the_partial_batch():
    x, y = data()
    batches = list(eval_batches(x, y, BATCH))
    assert [len(b) for _, b in batches] == [BATCH] * 6 + [2]
    assert torch.equal(torch.cat([b for _, b in batches]), y)
    assert torch.equal(torch.cat([bx for bx, _ in batches]), x)
