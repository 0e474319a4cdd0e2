"""Masked-diffusion maths: schedule, corruption, 1/p-weighted loss, reveal schedule and order."""

import math

import pytest
import torch
import torch.nn.functional as F

from amadeus.model import diffusion as D


def test_mask_probability():
    t = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(D.mask_probability(t, 1e-3), torch.tensor([1e-3, 0.5005, 1.0]))


def test_corrupt_shapes_rates_and_reproducibility():
    masked, p = D.corrupt((4000, 8), torch.Generator().manual_seed(0), eps=1e-3)
    assert masked.shape == (4000, 8) and masked.dtype == torch.bool and p.shape == (4000,)
    assert p.min() >= 1e-3 and p.max() <= 1.0
    # each note is masked at its own rate p
    assert abs(masked.float().mean().item() - 0.5) < 0.02
    low, high = p < 0.2, p > 0.8
    assert masked[low].float().mean() < 0.15 and masked[high].float().mean() > 0.85
    again, p2 = D.corrupt((4000, 8), torch.Generator().manual_seed(0), eps=1e-3)
    assert torch.equal(masked, again) and torch.equal(p, p2)
    m3, p3 = D.corrupt(torch.zeros(2, 5, 8, dtype=torch.long))  # a token tensor works too
    assert m3.shape == (2, 5, 8) and p3.shape == (2, 5)


def test_loss_matches_hand_computation():
    """K = 3, two notes, fixed mask and logits."""
    logits = [
        torch.tensor([[2.0, 0.0], [0.0, 1.0]]),
        torch.tensor([[0.0, 0.0, 1.0], [1.0, 2.0, 3.0]]),
        torch.tensor([[0.5, -0.5], [1.0, 1.0]]),
    ]
    targets = torch.tensor([[0, 2, 1], [1, 0, 0]])
    masked = torch.tensor([[True, False, True], [False, True, False]])
    p = torch.tensor([0.5, 0.25])

    def ce(lg, y):
        return -(lg[y] - torch.logsumexp(lg, 0)).item()

    note0 = (ce(logits[0][0], 0) + ce(logits[2][0], 1)) / 0.5 / 3
    note1 = ce(logits[1][1], 0) / 0.25 / 3
    loss, per_attr = D.diffusion_loss(logits, targets, masked, p, torch.tensor([True, True]))
    assert loss.item() == pytest.approx((note0 + note1) / 2, rel=1e-6)
    # per attribute: unweighted mean CE over masked slots
    expected = [ce(logits[0][0], 0), ce(logits[1][1], 0), ce(logits[2][0], 1)]
    assert per_attr.tolist() == pytest.approx(expected, rel=1e-6)
    # an invalid note does not count, in the sum or in the mean
    loss_v, per_v = D.diffusion_loss(logits, targets, masked, p, torch.tensor([True, False]))
    assert loss_v.item() == pytest.approx(note0, rel=1e-6)
    assert per_v.tolist() == pytest.approx([expected[0], 0.0, expected[2]], rel=1e-6)
    # note weights make it a weighted mean over the valid notes
    loss_w, per_w = D.diffusion_loss(logits, targets, masked, p, torch.tensor([True, True]), torch.tensor([3.0, 1.0]))
    assert loss_w.item() == pytest.approx((3 * note0 + note1) / 4, rel=1e-6) and per_w.tolist() == per_attr.tolist()
    ones, _ = D.diffusion_loss(logits, targets, masked, p, torch.tensor([True, False]), torch.tensor([1.0, 9.0]))
    assert ones.item() == pytest.approx(note0, rel=1e-6)  # an invalid note's weight does not count


def test_loss_is_unbiased_estimate_of_full_cross_entropy():
    """E_t,mask[(1/K) sum_k masked_k CE_k / p] = (1/K) integral over t of E[#masked]/p = mean CE."""
    torch.manual_seed(0)
    N, K = 20000, 4
    logits = [torch.randn(N, 5) for _ in range(K)]
    targets = torch.randint(0, 5, (N, K))
    masked, p = D.corrupt((N, K), torch.Generator().manual_seed(1), eps=0.05)
    loss, _ = D.diffusion_loss(logits, targets, masked, p)
    full = torch.stack([F.cross_entropy(logits[k], targets[:, k], reduction="none") for k in range(K)], 1).mean()
    assert abs(loss.item() - full.item()) / full.item() < 0.08


def test_no_nan_when_nothing_is_masked():
    logits = [torch.randn(2, 4, requires_grad=True) for _ in range(3)]
    targets = torch.zeros(2, 3, dtype=torch.long)
    masked = torch.zeros(2, 3, dtype=torch.bool)
    loss, per_attr = D.diffusion_loss(logits, targets, masked, torch.full((2,), 1e-3))
    assert loss.item() == 0.0 and torch.equal(per_attr, torch.zeros(3))
    loss.backward()
    assert all(torch.isfinite(lg.grad).all() and lg.grad.abs().sum() == 0 for lg in logits)
    none_valid, _ = D.diffusion_loss(logits, targets, ~masked, torch.ones(2), torch.zeros(2, dtype=torch.bool))
    assert none_valid.item() == 0.0


def test_loss_accepts_batch_time_dims():
    logits = [torch.randn(2, 5, v) for v in (4, 6)]
    targets = torch.stack([torch.randint(0, 4, (2, 5)), torch.randint(0, 6, (2, 5))], -1)
    masked, p = D.corrupt(targets)
    a, pa = D.diffusion_loss(logits, targets, masked, p, torch.ones(2, 5, dtype=torch.bool))
    b, pb = D.diffusion_loss([lg.reshape(10, -1) for lg in logits], targets.reshape(10, 2), masked.reshape(10, 2), p.reshape(10))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(pa, pb)


@pytest.mark.parametrize("K", [1, 3, 8])
def test_reveal_schedule(K):
    for S in range(1, K + 1):
        sched = D.reveal_schedule(K, S)
        assert len(sched) == S and sum(sched) == K
        assert min(sched) >= 1 and max(sched) - min(sched) <= 1
        assert sched == sorted(sched, reverse=True)
    assert D.reveal_schedule(8, 3) == [3, 3, 2]
    for bad in (0, K + 1):
        with pytest.raises(ValueError, match="steps"):
            D.reveal_schedule(K, bad)


def test_confidence_reveal_order_and_ties():
    conf = torch.tensor([[0.2, 0.9, 0.9, 0.5], [0.7, 0.7, 0.7, 0.7], [0.1, 0.2, 0.3, 0.4]])
    still = torch.tensor([[True, True, True, True], [True, True, True, True], [True, False, False, True]])
    out = D.confidence_reveal(conf, still, 2)
    assert out.tolist() == [
        [False, True, True, False],  # the two most confident (a tie, both taken)
        [True, True, False, False],  # all tied: lowest slot indices first
        [True, False, False, True],  # only two masked slots remain
    ]
    per_row = D.confidence_reveal(conf, still, torch.tensor([1, 3, 5]))
    assert per_row.tolist() == [
        [False, True, False, False],  # tie between slots 1 and 2 -> slot 1
        [True, True, True, False],
        [True, False, False, True],  # asking for more than remain reveals what remains
    ]
    # NaN / -inf confidences are still revealable, after the finite ones
    odd = torch.tensor([[float("nan"), float("-inf"), 0.1]])
    assert D.confidence_reveal(odd, torch.tensor([[True, True, False]]), 2).tolist() == [[True, True, False]]


def test_schedule_and_reveal_unmask_everything_in_S_steps():
    g = torch.Generator().manual_seed(0)
    N, K = 5, 8
    for S in (1, 3, 8):
        masked = torch.ones(N, K, dtype=torch.bool)
        for n in D.reveal_schedule(K, S):
            reveal = D.confidence_reveal(torch.rand(N, K, generator=g), masked, n)
            assert (reveal.sum(1) == n).all() and not (reveal & ~masked).any()
            masked &= ~reveal
        assert not masked.any()
    assert math.isfinite(float(D.mask_probability(torch.tensor(0.0), 1e-3).reciprocal()))
