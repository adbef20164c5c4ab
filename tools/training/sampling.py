"""Which training slices make a batch: UniformSampler (every slice once per pass) or OrganSampler (rare
organs as often as common ones). Each owns its torch.Generator, seeded from the run's seed, and its whole
state is in state_dict(), so a resumed run draws the batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

import torch

SAMPLERS = ("uniform", "organs")


class UniformSampler:
    """Batches of slice indices: consecutive random permutations of range(n), cut in batches (every slice
    once per pass). Its whole state is the generator's and the unused rest of the current permutation."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.buffer = torch.empty(0, dtype=torch.int64)

    def next_batch(self) -> torch.Tensor:
        while len(self.buffer) < self.batch_size:
            self.buffer = torch.cat([self.buffer, torch.randperm(self.n, generator=self.generator)])
        batch, self.buffer = self.buffer[:self.batch_size], self.buffer[self.batch_size:]
        return batch

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "buffer": self.buffer.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.buffer = state["buffer"].clone()


class OrganSampler:
    """Organ-balanced batches: each sample is, with probability p_organ, a slice that shows an organ drawn
    uniformly from the organs the training slices show (so the adrenals, on a few percent of the slices,
    come as often as the liver), otherwise a uniformly random slice (background-only slices included).

    The slice showing the drawn organ is uniform over its slices when slice_power is 0; with slice_power p > 0
    a slice is drawn with weight area ** -p, area the organ's pixels in it, so the thin ends of an organ (a
    kidney's poles, where it shows a small cross-section) come more often than its middle: p = 0.5 draws a
    slice with a quarter of another's cross-section twice as often.

    pairs: label pairs (a, b) that a model confuses (the left kidney and the spleen); with p_pair > 0 an
    organ-drawn sample is, with probability p_pair, instead a slice showing both organs of a pair drawn
    uniformly (uniform over those slices), so the boundary between them comes more often. Without pairs the
    draws are those of a sampler that has none.

    areas: (N, C) pixels per label per slice (organ_areas; column 0, background, is ignored)."""

    def __init__(self, areas: torch.Tensor, batch_size: int, seed: int, p_organ: float = 0.5,
                 slice_power: float = 0.0, pairs=(), p_pair: float = 0.0):
        self.n, self.batch_size, self.p_organ = areas.shape[0], batch_size, float(p_organ)
        organs = [k for k in range(1, areas.shape[1]) if bool((areas[:, k] > 0).any())]
        self.slices_of = [torch.nonzero(areas[:, k] > 0).flatten() for k in organs]
        # cumulative draw weights per organ (None: uniform, the draws of a sampler without slice_power)
        self.cumulative_of = [None if slice_power == 0 else
                              torch.cumsum(areas[members, k].double() ** -float(slice_power), 0)
                              for k, members in zip(organs, self.slices_of)]
        self.slices_of_pair = [torch.nonzero((areas[:, a] > 0) & (areas[:, b] > 0)).flatten() for a, b in pairs]
        empty = [pair for pair, members in zip(pairs, self.slices_of_pair) if len(members) == 0]
        if p_pair > 0 and empty:
            raise ValueError(f"no training slice shows both labels of the pair(s) {empty}")
        self.p_pair = float(p_pair) if pairs else 0.0
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> torch.Tensor:
        g = self.generator
        out = torch.randint(self.n, (self.batch_size,), generator=g)
        by_organ = torch.rand(self.batch_size, generator=g) < self.p_organ
        organs = torch.randint(max(1, len(self.slices_of)), (self.batch_size,), generator=g)
        picks = torch.rand(self.batch_size, generator=g)
        for i in torch.nonzero(by_organ & (len(self.slices_of) > 0)).flatten().tolist():
            members, cumulative = self.slices_of[int(organs[i])], self.cumulative_of[int(organs[i])]
            if cumulative is None:
                out[i] = members[min(int(picks[i] * len(members)), len(members) - 1)]
            else:                               # inverse CDF of the area weights
                at = int(torch.searchsorted(cumulative, picks[i].double() * cumulative[-1], right=True))
                out[i] = members[min(at, len(members) - 1)]
        if self.p_pair > 0:                     # drawn only with pairs: a pairless run's stream is unchanged
            by_pair = by_organ & (torch.rand(self.batch_size, generator=g) < self.p_pair)
            which = torch.randint(len(self.slices_of_pair), (self.batch_size,), generator=g)
            pair_picks = torch.rand(self.batch_size, generator=g)
            for i in torch.nonzero(by_pair).flatten().tolist():
                members = self.slices_of_pair[int(which[i])]
                out[i] = members[min(int(pair_picks[i] * len(members)), len(members) - 1)]
        return out

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
