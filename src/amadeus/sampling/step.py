"""One note: the next row of every running piece, drawn from the head's context C.

`NoteSampler` (the Amadeus decoder): S denoising passes over the K attribute slots, all masked at first;
each pass computes the head's logits, applies temperature, the guards and the controls (logit masks from
`amadeus.sampling.guards`), top-k / top-p per attribute, draws a value for every masked slot and reveals
the next ones of the reveal order (default: the token columns' order; "confidence": the most confident
ones, ties to the lower slot; near-certain slots at once, see SamplingOptions.reveal_threshold). Revealed
slots are frozen. When several slots revealed in one pass contradict each other (the model drew them
independently), they are accepted in confidence order and a contradicting one is re-drawn from its
logits restricted to what the accepted ones allow (with the same random number).

`AttributeSampler` (the autoregressive decoders: flat, nested, parallel): the attributes of a row are
drawn one at a time in column order, each from its logits given the attributes already drawn, with the
same guards, controls and truncation.

All of it is batched tensor work on the device. Where the host may look at the device (`looks`, eager
decoding) it skips work nobody needs: a pass once every slot is revealed, the contradiction check when no
row revealed two slots, the re-draws when none contradict, and it re-draws only the rows that need it.
Without looks (static decoding: `amadeus.sampling.batch`) the same work is done every note, whatever the
data, and its result is kept only where it applies (torch.where), so that a note is a fixed sequence of
kernels that CUDA graphs can replay: every pass runs, and contradictions are resolved in a fixed number
of masked rounds. Both give the same rows.

Both count interventions on the device: `guard_count` (revealed slots whose argmax the grammar forbade, or
re-drawn to resolve a same-pass contradiction), `control_count` (whose argmax a user control forbade), and
`passes` (head passes, batched); rows that already ended (`live` False) are not counted.
Classifier-free guidance mixes the conditional and unconditional logits over the plausible values (`guide`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from amadeus.grammar import COL_METRIC, COL_POSITION, METRIC_EMPTY_BAR, METRIC_EOS, is_ts_change
from amadeus.model.diffusion import confidence_reveal
from amadeus.sampling.guards import Guards, NoteTables

IMPLAUSIBLE = -1e4  # added to the logits of values outside the plausible set: last resort of the guards


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float, plausibility: float,
          allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Classifier-free guidance over the last dim: l_u + g (l_c - l_u) on the values whose conditional
    probability is at least `plausibility` times the conditional maximum; every other value keeps its
    conditional logit minus 10^4, below any plausible value, so that it is drawn only when the grammar
    allows no plausible one. With `allowed` (bool, the shape of cond: what the grammar and the controls
    allow) the probabilities are taken over the allowed values only, so that a favourite the controls
    forbid does not switch guidance off for every value they allow.

    Why: guidance multiplies a value's probability by (p_c / p_u)^(g - 1). A value that both models find
    unlikely, such as a 1/4 bar in a corpus of 4/4 and 3/4, can have a large ratio (p_c = 0.01, p_u = 0.001)
    and win at g = 3 over a value the caption makes likely. This is the degeneration contrastive decoding
    guards against with the same "adaptive plausibility constraint" (Li et al., 2023). -inf entries (outside
    a vocabulary) stay -inf. `plausibility` 0: plain guidance."""
    finite = torch.isfinite(cond)
    mixed = torch.where(finite, uncond + scale * (cond - uncond), cond)
    if plausibility <= 0:
        return mixed
    logp = torch.log_softmax(cond if allowed is None else cond.masked_fill(~allowed, float("-inf")), -1)
    keep = logp >= logp.amax(-1, keepdim=True) + math.log(plausibility)
    return torch.where(keep, mixed, cond + IMPLAUSIBLE)


def filter_probs(raw: torch.Tensor, allowed: torch.Tensor, temps: torch.Tensor, top_k: torch.Tensor,
                 top_p: torch.Tensor, use_k: bool, use_p: bool) -> torch.Tensor:
    """Probabilities [B, K, V]: logits / T (T = 0: greedy), restricted to `allowed`, then top-k and top-p
    (nucleus over the allowed values; the most likely value is always kept). temps, top_k, top_p: [K]."""
    return truncate(raw, allowed, temps, top_k, top_p, use_k, use_p)


def truncate(raw: torch.Tensor, allowed: torch.Tensor, temps: torch.Tensor, top_k: torch.Tensor,
             top_p: torch.Tensor, use_k: bool, use_p: bool) -> torch.Tensor:
    """`filter_probs` over raw [..., V] with settings that broadcast against raw[..., 0] (one per attribute
    [K], or one per row [B] when each row draws a different attribute). Branch-free: greedy attributes are
    handled by a mask, not by a host test."""
    x = raw.float()
    greedy = temps <= 0
    x = x / torch.where(greedy, torch.ones_like(temps), temps)[..., None]
    x = x.masked_fill(~allowed, float("-inf"))
    top = x.amax(-1, keepdim=True)
    x = torch.where(greedy[..., None] & (x < top), torch.full_like(x, float("-inf")), x)
    if use_k or use_p:
        srt = x.sort(-1, descending=True).values  # [..., V]
        thr = torch.full_like(x[..., :1], float("-inf"))
        if use_k:
            k = top_k.clamp(1, x.shape[-1]).expand(x.shape[:-1])[..., None]  # 0 = off is mapped to V by the caller
            thr = torch.maximum(thr, srt.gather(-1, k - 1))
        if use_p:
            ps = torch.softmax(srt, -1)
            keep = (ps.cumsum(-1) - ps) < top_p[..., None]
            thr = torch.maximum(thr, srt.masked_fill(~keep, float("inf")).amin(-1, keepdim=True))
        x = x.masked_fill(x < thr, float("-inf"))
    return torch.softmax(x, -1)


def draw(probs: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF draw: probs [..., V], u [...] in (0, 1) -> (index [...], its probability [...])."""
    cdf = probs.cumsum(-1)
    target = (u.to(cdf.dtype) * cdf[..., -1])[..., None]
    idx = (cdf < target).sum(-1).clamp_max(probs.shape[-1] - 1)
    return idx, probs.gather(-1, idx[..., None]).squeeze(-1)


def _gate(x: torch.Tensor, live: torch.Tensor | None) -> torch.Tensor:
    """x [B, ...] bool, False on the rows that ended (live [B] False)."""
    if live is None:
        return x
    return x & live.view(-1, *([1] * (x.dim() - 1)))


class NoteSampler:
    """Samples the next row for a batch of pieces from the head's context C."""

    def __init__(self, head, guards: Guards, steps: int, temps, top_p, top_k, guidance: float,
                 order: Sequence[int] | None = None, threshold: float = 2.0, plausibility: float = 0.0,
                 looks: bool = True):
        self.head, self.g, self.steps, self.threshold = head, guards, steps, threshold
        self.plausibility = plausibility
        self.looks = looks  # the host may look at the device to skip work (eager decoding)
        dev = guards.v.device
        # added to the confidence (in [0, 2]) when choosing the slots to reveal: 0 = confidence order;
        # 4 per rank of a fixed order (column indices, first revealed first) = that order, whatever the
        # confidences
        K = guards.K
        self.priority = torch.zeros(K, device=dev)
        if order is not None:
            self.priority[torch.tensor(order, device=dev)] = torch.arange(K, 0, -1, dtype=torch.float32, device=dev) * 4.0
        self.temps = torch.tensor(temps, dtype=torch.float32, device=dev)
        V = guards.V
        self.top_k = torch.tensor([int(k) if k > 0 else V for k in top_k], dtype=torch.long, device=dev)
        self.top_p = torch.tensor(top_p, dtype=torch.float32, device=dev)
        self.use_k = any(0 < k < V for k in top_k)
        self.use_p = any(p < 1.0 for p in top_p)
        self.guidance = guidance
        sizes = guards.tok.vocab_sizes
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        idx = offsets[:, None] + np.minimum(np.arange(V)[None, :], np.array(sizes)[:, None] - 1)
        self.pad_index = torch.as_tensor(idx, dtype=torch.long, device=dev)  # [K, V] into the concatenated logits
        self.passes = torch.zeros((), dtype=torch.long, device=dev)
        self.guard_count = torch.zeros((), dtype=torch.long, device=dev)
        self.control_count = torch.zeros((), dtype=torch.long, device=dev)
        self.conflict_count = torch.zeros((), dtype=torch.long, device=dev)

    def counters(self) -> list[torch.Tensor]:
        """The device counters, in the order (passes, guard, control, conflicts)."""
        return [self.passes, self.guard_count, self.control_count, self.conflict_count]

    def _any(self, x: torch.Tensor) -> bool:
        """Whether any entry of x is set, when the host may look (eager: the look skips work nobody needs);
        True without looking otherwise (the work is done and its result kept where it applies)."""
        return bool(x.any()) if self.looks else True

    def raw_logits(self, C: torch.Tensor, tok: torch.Tensor, masked: torch.Tensor,
                   allowed: torch.Tensor | None = None) -> torch.Tensor:
        """Padded logits [B, K, V] (-inf outside each vocabulary); with guidance C holds [cond; uncond], and
        the plausible values are those of `allowed` [B, K, V] (see `guide`)."""
        B = tok.shape[0]
        guided = C.shape[0] == 2 * B
        if guided:
            tok, masked = torch.cat([tok, tok]), torch.cat([masked, masked])
        flat = torch.cat(self.head.logits(C, tok, masked), -1).float()  # [B', sum V]
        self.passes.add_(1)
        padded = flat[:, self.pad_index].masked_fill(~self.g.vocab_valid, float("-inf"))  # [B', K, V]
        if guided:
            return guide(padded[:B], padded[B:], self.guidance, self.plausibility, allowed)
        return padded

    def _belief(self, raw: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The head's own probability [B, K] of each drawn value: its logits at the temperature, before
        guards, controls and truncation (a value the grammar forces is sure only if the head expected it)."""
        t = torch.where(self.temps > 0, self.temps, torch.ones_like(self.temps))[:, None]
        return torch.softmax(raw / t, -1).gather(-1, y[..., None]).squeeze(-1)

    def _count(self, raw, allowed, ctrl, newly, live):
        """Add interventions for the newly revealed slots of the live rows (argmax of the raw logits forbidden)."""
        am = raw.argmax(-1)  # [B, K]
        forbidden = _gate(~allowed.gather(-1, am[..., None]).squeeze(-1) & newly, live)
        by_control = ~ctrl.gather(-1, am[..., None]).squeeze(-1) & (am > 0)
        by_control[:, :2] = False
        self.control_count.add_((forbidden & by_control).sum())
        self.guard_count.add_((forbidden & ~by_control).sum())

    def _probs(self, raw: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        return filter_probs(raw, allowed, self.temps, self.top_k, self.top_p, self.use_k, self.use_p)

    def sample(self, C: torch.Tensor, tables: NoteTables, ctrl_static: torch.Tensor, bar: torch.Tensor,
               tok: torch.Tensor, rev: torch.Tensor, u: torch.Tensor, live: torch.Tensor | None = None,
               metric_open: bool = True) -> torch.Tensor:
        """One row per piece. tok/rev [B, K]: slots fixed before step 1 (template rows). u [B, 1+S, K].
        live [B]: rows still generating (counted); metric_open: some row's metric is still to draw (False
        when a template fixes every metric)."""
        tok, rev = tok.clone(), rev.clone()
        ctrl, note_forced = ctrl_static, None
        if self.g.metric_first:
            tok, rev, ctrl, note_forced = self._metric_first(C, tables, ctrl, bar, tok, rev, u, live, metric_open)
        masked = ~rev
        # at most this many slots are masked before pass 0 (each pass reveals at least one per row)
        open_slots = self.g.K - int(self.g.metric_first or not metric_open)
        for s in range(self.steps):
            if not self._any(masked):
                break
            tok, masked = self._pass(s, C, tables, ctrl, tok, masked, u, note_forced, live, open_slots - s)
        return tok

    def _metric_first(self, C, tables, ctrl, bar, tok, rev, u, live, metric_open):
        """Decide the metric first: it says whether this row is a note and in which bar it lies, which the
        fixed controls need (they apply to the notes of their bars only). Returns (tok, rev, ctrl, note_forced)."""
        g = self.g
        zero_ts = torch.zeros(tok.shape[0], dtype=torch.bool, device=tok.device)
        if metric_open:
            allowed = g.allowed(tables, ctrl, tok, rev)
            raw = self.raw_logits(C, tok, ~rev, allowed)
            y, _ = draw(self._probs(raw, allowed)[:, COL_METRIC], u[:, 0, COL_METRIC])
            newly = torch.zeros_like(rev)
            newly[:, COL_METRIC] = ~rev[:, COL_METRIC]
            self._count(raw, allowed, ctrl, newly, live)
            tok[:, COL_METRIC] = torch.where(rev[:, COL_METRIC], tok[:, COL_METRIC], y)
            rev[:, COL_METRIC] = True
            # a NEW_BAR_TS row is a note or an empty bar: decided by the position's mass at 0 given the
            # metric just drawn (the logits recomputed with it revealed, not the all-masked ones)
            allowed = g.allowed(tables, ctrl, tok, rev)
            if self._any(is_ts_change(tok[:, COL_METRIC])):  # the only rows where p0 is used
                raw = self.raw_logits(C, tok, ~rev, allowed)
            p0 = self._probs(raw, allowed)[:, COL_POSITION, 0]
            zero_ts = ~rev[:, COL_POSITION] & (u[:, 0, COL_POSITION] < p0)
        m = tok[:, COL_METRIC]
        zero_ts |= rev[:, COL_POSITION] & (tok[:, COL_POSITION] == 0)
        empty = (m == METRIC_EOS) | (m == METRIC_EMPTY_BAR) | (is_ts_change(m) & zero_ts)
        tok[:, 1:] = torch.where(empty[:, None], torch.zeros_like(tok[:, 1:]), tok[:, 1:])
        rev[:, 1:] |= empty[:, None]
        ctrl = g.row_controls(bar + g.starts_bar[m.clamp(0, g.Vm - 1)].long())
        fixed = g.fixed_columns(ctrl) & ~rev  # [B, K]
        value = ctrl[..., 1:].float().argmax(-1) + 1
        return torch.where(fixed, value, tok), rev | fixed, ctrl, ~empty

    def _pass(self, s, C, tables, ctrl, tok, masked, u, note_forced, live, open_slots):
        """Denoising pass s: draw every masked slot, reveal the next ones; returns (tok, masked)."""
        g = self.g
        allowed = g.allowed(tables, ctrl, tok, ~masked, note_forced)
        raw = self.raw_logits(C, tok, masked, allowed)
        y, q = draw(self._probs(raw, allowed), u[:, 1 + s])
        # near-certain slots (drawn value's probability >= the threshold) are revealed now and cost none
        # of the step budget; of the uncertain ones, the most confident go now and each later step keeps
        # one, so the least confident (usually the pitch) is drawn last, given the rest
        sure = torch.zeros_like(masked)  # a threshold above 1 (off): no softmax to compute
        if self.threshold <= 1:
            sure = masked & (self._belief(raw, y) >= self.threshold)
        uncertain = (masked & ~sure).sum(1)  # [B]
        left = self.steps - s
        count = (uncertain - left + 1).clamp_min(1)
        if s == 0:
            # the metric (what the row is: note, new bar, time-signature change, EOS) goes first and wins
            # any conflict: were the position drawn first, a position past the end of the bar would leave
            # a time-signature change as the only grammatical metric. Every other attribute depends on it,
            # so an uncertain metric is revealed alone (with the sure slots)
            open_metric = masked[:, COL_METRIC] & ~sure[:, COL_METRIC]
            q = q.clone()
            q[:, COL_METRIC] = torch.where(masked[:, COL_METRIC], 2.0, q[:, COL_METRIC])
            if left > 1:
                count = torch.where(open_metric, torch.ones_like(count), count)
        key = q + self.priority
        newly = confidence_reveal(key, masked & ~sure, count) | sure
        self._count(raw, allowed, ctrl, newly, live)
        tok = torch.where(newly, y, tok)
        if self._any(newly.sum(1) > 1):  # several slots in one step: they may contradict each other
            bad = ~g.consistent(tables, ctrl, tok, ~masked | newly)
            if self._any(bad):
                tok = self._resolve(raw, key, tables, ctrl, tok, masked, newly, bad, u[:, 1 + s], note_forced,
                                    live, open_slots)
        return tok, masked & ~newly

    def _resolve(self, raw, key, tables, ctrl, tok, masked, newly, bad, u, note_forced, live, open_slots):
        """Rows `bad`: accept the newly revealed slots in confidence order, re-drawing any that the already
        accepted ones forbid (same uniform as the first draw). With looks, only those rows, for as many
        rounds as they revealed slots; without, every row (kept where bad) for `open_slots` rounds, the most
        a pass can reveal."""
        if not self.looks:
            return self._accept(raw, key, tables, ctrl, tok, masked, newly, bad, u, note_forced, _gate(bad, live),
                                open_slots)
        idx = bad.nonzero().squeeze(1)
        nw = newly[idx]
        every = torch.ones_like(idx, dtype=torch.bool)
        t = self._accept(raw[idx], key[idx], tables.take(idx), ctrl[idx], tok[idx], masked[idx], nw, every, u[idx],
                         None if note_forced is None else note_forced[idx], every, int(nw.sum(1).max()))
        out = tok.clone()
        out[idx] = t
        return out

    def _accept(self, raw, key, tables, ctrl, tok, masked, newly, gate, u, note_forced, counted, rounds):
        """The re-draws of `_resolve` on rows [b]: slots revealed this pass, in confidence order (`key`), for
        `rounds` ranks; a rank changes a slot only on the rows `gate`. The first rank never changes: it was
        drawn from what the slots revealed before allow, which is what it is re-drawn from."""
        g = self.g
        order = key.masked_fill(~newly, -1e9).sort(dim=-1, descending=True, stable=True).indices  # [b, K]
        rows = torch.arange(tok.shape[0], device=tok.device)
        accepted = ~masked  # revealed before this step
        t = tok.clone()
        for r in range(rounds):
            k = order[:, r]
            live = newly[rows, k]
            if r > 0:
                allowed = g.allowed(tables, ctrl, t, accepted, note_forced)[rows, k]  # [b, V]
                probs = truncate(raw[rows, k], allowed, self.temps[k], self.top_k[k], self.top_p[k], self.use_k,
                                 self.use_p)
                y, _ = draw(probs, u[rows, k])
                change = live & gate & (y != t[rows, k])
                n = (change & counted).sum()
                self.conflict_count.add_(n)
                self.guard_count.add_(n)
                t[rows, k] = torch.where(change, y, t[rows, k])
            accepted[rows, k] |= live
        return t


class AttributeSampler(NoteSampler):
    """The autoregressive decoders (flat, nested, parallel): the attributes of a row are drawn one at a
    time in column order, each from its logits given the attributes already drawn (`head.attribute_logits`),
    with the grammar guards and controls applied as an allowed-value mask before each draw (`Guards.allowed`
    given the decided slots; the controls of the row's bar once the metric is known). Attribute k uses the
    uniform of lane (pass 1, slot k); temperature / top-k / top-p per attribute as for Amadeus. No branch
    on the data: the same K passes every note."""

    def sample(self, C: torch.Tensor, tables: NoteTables, ctrl_static: torch.Tensor, bar: torch.Tensor,
               tok: torch.Tensor, rev: torch.Tensor, u: torch.Tensor, live: torch.Tensor | None = None,
               metric_open: bool = True, advance=None) -> torch.Tensor:
        """One row per piece; `advance(tok[:, :k + 1]) -> C` feeds the drawn attributes to a flat backbone."""
        g = self.g
        B, K = tok.shape
        tok, rev = tok.clone(), rev.clone()
        ctrl = ctrl_static
        for k in range(K):
            allowed = g.allowed(tables, ctrl, tok, rev)[:, k: k + 1]
            lg = self.head.attribute_logits(C, torch.cat([tok, tok]) if C.shape[0] == 2 * B else tok, k).float()
            if C.shape[0] == 2 * B:
                lg = guide(lg[:B], lg[B:], self.guidance, self.plausibility, allowed[:, 0, : lg.shape[-1]])
            self.passes.add_(1)
            raw = lg.new_full((B, 1, g.V), float("-inf"))
            raw[:, 0, : lg.shape[-1]] = lg
            probs = filter_probs(raw, allowed, self.temps[k: k + 1], self.top_k[k: k + 1], self.top_p[k: k + 1],
                                 self.use_k, self.use_p)
            y, _ = draw(probs[:, 0], u[:, 1, k])
            am = lg.argmax(-1)
            forbidden = _gate(~allowed[:, 0].gather(1, am[:, None]).squeeze(1), live)
            by_control = ~ctrl[:, k].gather(1, am[:, None]).squeeze(1) & (am > 0) & (k >= 2)
            self.control_count.add_((forbidden & by_control).sum())
            self.guard_count.add_((forbidden & ~by_control).sum())
            tok[:, k], rev[:, k] = y, True
            if k == COL_METRIC:  # the row's bar is known now: its controls apply
                ctrl = g.row_controls(bar + g.starts_bar[y.clamp(0, g.Vm - 1)].long())
            if advance is not None and k < K - 1:
                C = advance(tok[:, : k + 1])
        return tok
