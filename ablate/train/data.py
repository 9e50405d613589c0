"""Feeding the compiled plan to the model: stages in order, exact stage boundaries.

Global step ``t`` of stage ``k`` uses that stage's blend samples ``[t * G, (t + 1) * G)``
(``G`` = global batch). Data-parallel rank ``r`` takes the contiguous ``G / dp`` slice
``r``, split into micro-batches (megatron's pretraining sampler does the same). A step never
mixes two stages, since every stage is a whole number of steps (see ``recipe.plan``).

Only the first and last pipeline stages read tokens (``read_tokens``): a middle stage takes its
input from the previous stage and needs each sample's domain only (routing counts).

Under context parallelism every rank of a context-parallel group reads the same samples and
keeps its part of the sequence (``_cp_slice``).

Every sample's ``dataset_id`` maps to a domain index, so each token's domain is known: for the
per-domain loss, the per-domain token counts and the routing capture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ablate.recipe.plan import Plan


@dataclass
class Microbatch:
    tokens_BS: torch.Tensor
    labels_BS: torch.Tensor
    loss_mask_BS: torch.Tensor
    position_ids_BS: torch.Tensor
    domain_B: torch.Tensor  # index into StagedData.domains


class StagedData:
    def __init__(
        self,
        plan: Plan,
        blends: list,
        micro_batch_size: int,
        dp_rank: int,
        dp_size: int,
        device: torch.device | str = "cpu",
        cp_rank: int = 0,
        cp_size: int = 1,
        read_tokens: bool = True,
    ):
        self.plan, self.blends, self.device = plan, blends, device
        # a middle pipeline stage feeds on activations: it reads only each sample's domain
        self.read_tokens = read_tokens
        self.mbs, self.dp_rank, self.dp_size = micro_batch_size, dp_rank, dp_size
        self.cp_rank, self.cp_size = cp_rank, cp_size
        self.gbs = plan.global_batch_size
        self.domains = sorted({d.domain for s in plan.stages for d in s.datasets})
        self.stage_steps = [s.steps for s in plan.stages]
        self.total_steps = sum(self.stage_steps)
        # per stage: dataset_id -> domain index
        self._domain_of = [
            np.array([self.domains.index(d.domain) for d in s.datasets], dtype=np.int64)
            for s in plan.stages
        ]

    def locate(self, step: int) -> tuple[int, int]:
        """(stage index, step within the stage) of global step ``step``."""
        for k, n in enumerate(self.stage_steps):
            if step < n:
                return k, step
            step -= n
        raise IndexError("step beyond the plan")

    def domain_samples(self, step: int) -> np.ndarray:
        """Samples per domain in the whole global batch of ``step`` (same on every rank)."""
        k, t = self.locate(step)
        ids = np.asarray(self.blends[k].dataset_index[t * self.gbs : (t + 1) * self.gbs])
        return np.bincount(self._domain_of[k][ids], minlength=len(self.domains))

    def microbatches(self, step: int) -> list[Microbatch]:
        k, t = self.locate(step)
        blend = self.blends[k]
        local = self.gbs // self.dp_size
        start = t * self.gbs + self.dp_rank * local
        out = []
        if not self.read_tokens:
            ids_all = np.asarray(blend.dataset_index[start : start + local])
            positions_BS = self._cp_slice(
                torch.arange(self.plan.seq_length).expand(self.mbs, -1)
            ).to(self.device)
            return [
                Microbatch(
                    tokens_BS=None,
                    labels_BS=None,
                    loss_mask_BS=None,
                    position_ids_BS=positions_BS,
                    domain_B=torch.as_tensor(
                        self._domain_of[k][ids_all[m * self.mbs : (m + 1) * self.mbs]],
                        device=self.device,
                    ),
                )
                for m in range(local // self.mbs)
            ]
        for m in range(local // self.mbs):
            samples = [blend[i] for i in range(start + m * self.mbs, start + (m + 1) * self.mbs)]
            stack = lambda key: self._cp_slice(  # noqa: E731
                torch.stack([torch.as_tensor(s[key]) for s in samples])
            ).to(self.device)
            ids = np.array([int(s["dataset_id"]) for s in samples])
            out.append(
                Microbatch(
                    tokens_BS=stack("tokens").long(),
                    labels_BS=stack("labels").long(),
                    loss_mask_BS=stack("loss_mask").float(),
                    position_ids_BS=stack("position_ids").long(),
                    domain_B=torch.as_tensor(self._domain_of[k][ids], device=self.device),
                )
            )
        return out

    def _cp_slice(self, x_BS: torch.Tensor) -> torch.Tensor:
        """This context-parallel rank's part of the sequence: megatron's load-balanced split
        (2 cp chunks; rank r holds chunks r and 2cp-1-r, as ``get_batch_on_this_cp_rank``)."""
        if self.cp_size == 1:
            return x_BS
        chunks = x_BS.chunk(2 * self.cp_size, dim=1)
        return torch.cat([chunks[self.cp_rank], chunks[2 * self.cp_size - 1 - self.cp_rank]], dim=1)
