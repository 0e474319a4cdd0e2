"""MLSDES: pooling, dispersive loss value and sign, MLSDES switch, DDP gathering, latent metrics."""

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from amadeus.losses import (
    dispersive_loss,
    effective_rank,
    gather_with_grad,
    masked_mean_pool,
    mlsdes_loss,
    pairwise_cosine_stats,
    uniformity,
)
from amadeus.model import ModelConfig


def mean_cos(f):
    u = torch.nn.functional.normalize(f, dim=-1)
    B = f.shape[0]
    return ((u @ u.T).sum() - B) / (B * (B - 1))


def test_masked_mean_pool_excludes_padding():
    h = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    pooled = masked_mean_pool(h, mask)
    torch.testing.assert_close(pooled[0], h[0, :2].mean(0))
    torch.testing.assert_close(pooled[1], h[1].mean(0))
    h2 = h.clone()
    h2[0, 2:] = 1e6
    torch.testing.assert_close(masked_mean_pool(h2, mask), pooled)
    assert torch.equal(masked_mean_pool(h, torch.zeros(2, 4, dtype=torch.bool)), torch.zeros(2, 3))


def test_dispersive_loss_value():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    u = torch.nn.functional.normalize(f, dim=-1)
    d = 1 - u @ u.T
    terms = [math.exp(-d[a, b].item() / 0.5) for a in range(3) for b in range(3) if a != b]
    assert dispersive_loss(f, 0.5).item() == pytest.approx(math.log(sum(terms) / 6), rel=1e-6)
    # two orthogonal vectors: D = 1 -> loss = -1 / tau
    assert dispersive_loss(f[:2], 0.5).item() == pytest.approx(-2.0, rel=1e-6)
    one = torch.randn(1, 4, requires_grad=True)
    zero = dispersive_loss(one)
    assert zero.item() == 0.0 and zero.requires_grad
    zero.backward()
    assert torch.equal(one.grad, torch.zeros(1, 4))


def test_dispersive_sign_pushes_sequences_apart():
    """A gradient step on our loss lowers the mean pairwise cosine; the authors' code's sign raises it."""
    torch.manual_seed(0)
    base = torch.randn(8, 16) + 2.0  # a cone: fairly similar features

    def step(loss_fn):
        f = base.clone().requires_grad_(True)
        loss_fn(f).backward()
        with torch.no_grad():
            return mean_cos(f - 5.0 * f.grad).item()

    def reference(f, tau=0.5):  # -log(sum over all pairs incl. the diagonal / B(B-1)), as in the authors' code
        u = torch.nn.functional.normalize(f, dim=-1)
        B = f.shape[0]
        return -torch.log(torch.exp(-(1 - u @ u.T) / tau).sum() / (B * (B - 1)))

    start = mean_cos(base).item()
    assert step(lambda f: dispersive_loss(f, 0.5)) < start - 1e-3
    assert step(reference) > start + 1e-3


def test_mlsdes_switch():
    mid = torch.randn(3, 5, 8, requires_grad=True)
    mask = torch.ones(3, 5, dtype=torch.bool)
    on = ModelConfig(vocab_sizes=(4,), use_mlsdes=True)
    off = ModelConfig(vocab_sizes=(4,), use_mlsdes=False)
    val = mlsdes_loss(mid, mask, on)
    assert val.item() < 0 and val.item() == pytest.approx(dispersive_loss(masked_mean_pool(mid, mask), on.mlsdes_tau).item())
    zero = mlsdes_loss(mid, mask, off)
    assert zero.item() == 0.0 and zero.requires_grad
    zero.backward()
    assert torch.equal(mid.grad, torch.zeros_like(mid))


def test_gather_without_process_group_is_identity():
    f = torch.randn(3, 4)
    assert gather_with_grad(f) is f


def _features(data, weight):
    return torch.tanh(data @ weight)  # a tiny "network" whose weight DDP would replicate


def _ddp_worker(rank, world, port, path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        data, weight = torch.randn(5, 6), torch.randn(6, 4).requires_grad_(True)
        local = data[:3] if rank == 0 else data[3:]  # uneven: 3 + 2 rows
        gathered = gather_with_grad(_features(local, weight))
        loss = dispersive_loss(gathered, 0.5)
        loss.backward()
        grad = weight.grad.clone()
        dist.all_reduce(grad)
        grad /= world  # what DDP does to parameter gradients
        torch.save({"gathered": gathered.detach(), "loss": loss.detach(), "grad": grad}, f"{path}.{rank}")
    finally:
        dist.destroy_process_group()


def test_gather_with_grad_two_ranks(tmp_path):
    """Two gloo ranks with uneven batches give the single-process loss and parameter gradient."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = str(tmp_path / "out")
    mp.spawn(_ddp_worker, args=(2, port, path), nprocs=2, join=True)
    torch.manual_seed(0)
    data, weight = torch.randn(5, 6), torch.randn(6, 4).requires_grad_(True)
    feats = _features(data, weight)
    loss = dispersive_loss(feats, 0.5)
    loss.backward()
    for rank in (0, 1):
        out = torch.load(f"{path}.{rank}")
        torch.testing.assert_close(out["gathered"], feats.detach())
        torch.testing.assert_close(out["loss"], loss.detach())
        torch.testing.assert_close(out["grad"], weight.grad)


def test_latent_metrics():
    same = torch.ones(6, 4)
    assert pairwise_cosine_stats(same) == pytest.approx((1.0, 0.0), abs=1e-6)
    assert uniformity(same) == pytest.approx(0.0, abs=1e-6)
    assert effective_rank(same) == 0.0
    eye = torch.eye(4)
    mean, std = pairwise_cosine_stats(eye)
    assert mean == pytest.approx(0.0, abs=1e-6) and std == pytest.approx(0.0, abs=1e-6)
    assert uniformity(eye) == pytest.approx(-4.0, rel=1e-5)  # ||u_a - u_b||^2 = 2 for all pairs
    assert effective_rank(eye) == pytest.approx(3.0, rel=1e-4)  # centring removes one direction
    line = torch.randn(10, 1) * torch.tensor([[1.0, 2.0, 3.0]])
    assert effective_rank(line) == pytest.approx(1.0, rel=1e-3)
    spread = torch.randn(200, 8)
    assert effective_rank(spread) > 6.5 and uniformity(spread) < uniformity(spread + 5.0)
