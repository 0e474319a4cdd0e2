"""Masked-diffusion maths: schedule, corruption, 1/p-weighted loss, reveal order, and the ELBO."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from amadeus.metrics import DiffusionNLL
from amadeus.model import diffusion as D
from amadeus.model.diffusion import diffusion_elbo_nll


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
        for n in [K // S + (s < K % S) for s in range(S)]:  # as even as possible, earlier steps first
            reveal = D.confidence_reveal(torch.rand(N, K, generator=g), masked, n)
            assert (reveal.sum(1) == n).all() and not (reveal & ~masked).any()
            masked &= ~reveal
        assert not masked.any()
    assert math.isfinite(float(D.mask_probability(torch.tensor(0.0), 1e-3).reciprocal()))


# ---- diffusion ELBO (moved from test_metrics.py) ---------------------------------------------


def test_elbo_matches_hand_computation_k2():
    # slot k's logits: a fixed vector, sharper towards the target when the other slot is visible
    base = [torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 0.0, -1.0])]
    bonus = 3.0
    targets = torch.tensor([[2, 1]])

    def logits_fn(masked):
        out = []
        for k in range(2):
            lg = base[k].repeat(len(masked), 1)
            lg[:, targets[0, k]] += bonus * (~masked[:, 1 - k]).float()
            out.append(lg)
        return out

    def ce(k, other_visible):
        lg = base[k].clone()
        lg[targets[0, k]] += bonus * other_visible
        return float(torch.logsumexp(lg, 0) - lg[targets[0, k]])

    # m = 1: each of the 2 subsets with weight 1/2 (average) * 1/m; m = 2: both slots, weight 1/2
    want = [0.5 * ce(k, True) + 0.5 * ce(k, False) for k in range(2)]
    got = diffusion_elbo_nll(logits_fn, targets, num_samples=4)
    assert got.shape == (1, 2)
    assert got[0].tolist() == pytest.approx(want, rel=1e-6)


def exact_conditional_fn(joint: np.ndarray, targets: torch.Tensor):
    """logits_fn giving the true conditionals p(x_k | visible slots) of a joint table [V]*K."""
    K, V = joint.ndim, joint.shape[0]

    def fn(masked):
        out = [torch.zeros(len(targets), V) for _ in range(K)]
        for n in range(len(targets)):
            idx = tuple(slice(None) if masked[n, j] else int(targets[n, j]) for j in range(K))
            sub = joint[idx]  # over the masked slots
            hidden = [j for j in range(K) if masked[n, j]]
            for pos, k in enumerate(hidden):
                marg = sub.sum(axis=tuple(a for a in range(len(hidden)) if a != pos))
                out[k][n] = torch.log(torch.tensor(marg / marg.sum()))
        return out

    return fn


@pytest.mark.parametrize("num_samples, tol", [(8, 1e-6), (2, 0.06)])
def test_elbo_is_tight_for_true_conditionals(num_samples, tol):
    rng = np.random.default_rng(0)
    K, V = 3, 3
    joint = rng.dirichlet(np.ones(V**K)).reshape([V] * K)
    x = torch.tensor([[0, 2, 1]] * 400)  # one sequence many times: averages the sampled masks
    fn = exact_conditional_fn(joint, x)
    terms = diffusion_elbo_nll(fn, x, num_samples=num_samples, seed=1)  # 2 < C(3, 1): masks are sampled
    nll = -math.log(joint[0, 2, 1])
    assert float(terms.sum(dim=1).mean()) == pytest.approx(nll, rel=tol)


def test_training_estimator_converges_to_its_expectation():
    rng = np.random.default_rng(1)
    K, V, eps = 2, 3, 0.1
    joint = rng.dirichlet(np.ones(V**K)).reshape(V, V)
    x = torch.tensor([[1, 2]] * 3000)
    fn = exact_conditional_fn(joint, x)
    got = float(diffusion_elbo_nll(fn, x, num_samples=8, method="t", eps=eps, seed=3).sum(dim=1).mean())
    # expectation: E_t[(1/p) (p^2 (CE_0(none) + CE_1(none)) + p (1 - p) (CE_0(x1) + CE_1(x0)))], p = (1-eps) t + eps
    p0, p1 = joint.sum(axis=1)[1], joint.sum(axis=0)[2]
    ce_none = -math.log(p0) - math.log(p1)
    ce_one = -math.log(joint[1, 2] / joint[:, 2].sum()) - math.log(joint[1, 2] / joint[1].sum())
    mean_p = (1 - eps) / 2 + eps
    want = mean_p * ce_none + (1 - mean_p) * ce_one
    assert got == pytest.approx(want, rel=0.03)


def test_diffusion_nll_metric_and_valid_mask():
    rng = np.random.default_rng(2)
    joint = rng.dirichlet(np.ones(27)).reshape(3, 3, 3)
    x = torch.tensor([[0, 1, 2], [2, 2, 0]])
    fn = exact_conditional_fn(joint, x)
    m = DiffusionNLL(attribute_names=("a", "b", "c"))
    m.update(diffusion_elbo_nll(fn, x, num_samples=8))
    out = m.compute()
    want = -(math.log(joint[0, 1, 2]) + math.log(joint[2, 2, 0])) / 2
    assert float(out["nll/total"]) == pytest.approx(want, rel=1e-5)
    assert float(out["nll/total"]) == pytest.approx(sum(float(out[f"nll/{a}"]) for a in "abc"), rel=1e-6)
    valid = torch.tensor([[True, False, True]] * 2)
    terms = diffusion_elbo_nll(fn, x, num_samples=8, valid=valid)
    assert (terms[:, 1] == 0).all() and (terms[:, 0] > 0).all()
    with pytest.raises(ValueError, match="method"):
        diffusion_elbo_nll(fn, x, method="bogus")
