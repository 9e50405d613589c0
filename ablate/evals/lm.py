"""What every task asks of a model: log-likelihoods and greedy generation, batched.

Sequences longer than the model's training length keep their last ``seq_length`` tokens (the
context the model was trained with). Batches are right-padded: attention is causal, so a
padded position never influences a real one, and every row's result is the one it would get
alone (up to float rounding of batched matmuls; results are deterministic for a fixed batch
size and order, which is what scores need).

Gradients are off with ``no_grad``, not ``inference_mode``: inside training, megatron-core's
dispatchers keep buffers that training later updates in place, which inference tensors forbid.

Generation keeps keys and values in megatron-core's ``StaticInferenceContext`` (its KV cache
for static batches), so each new token costs one position, not the whole prefix; on CPU the
local attention's causal mask is made bottom-right aligned for that (``cpu_compat``). Once a
row outgrows the training length it continues by recomputing a sliding window, as the
no-cache path does throughout; both give the same tokens (tested), ``benchmarks/eval.py``
measures the difference.

Sampling (``Sampling(temperature, top_p, seed)``; temperature 0 is greedy): every row draws from
its own ``torch.Generator``, seeded from the sampling seed and the row's ``row_seeds`` entry
(the task passes one per prompt and sample), one draw per accepted token, on the CPU. So a
sample's tokens depend on the checkpoint, its prompt and its seed, not on which rows share its
batch or on whether the KV cache is used (up to float rounding of batched matmuls).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ablate.evals.loading import EvalModel


@dataclass
class Continuation:
    nll: float  # summed negative log-likelihood of the continuation tokens (nats)
    tokens: int  # how many continuation tokens were scored
    greedy: bool  # every continuation token is the model's argmax


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy (argmax)
    top_p: float = 1.0  # nucleus: the smallest set of tokens whose probability reaches top_p
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def sample_token(
    logits_V: torch.Tensor, sampling: Sampling, generator: torch.Generator | None
) -> int:
    """One token from ``logits_V`` (already cut to the real vocabulary)."""
    if sampling.greedy or generator is None:
        return int(logits_V.argmax())
    probs_V = F.softmax(logits_V.float().cpu() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_V, order_V = probs_V.sort(descending=True)
        before_V = sorted_V.cumsum(0) - sorted_V  # mass of the tokens ranked above each one
        sorted_V = sorted_V.masked_fill(before_V >= sampling.top_p, 0.0)
        probs_V = torch.zeros_like(probs_V).scatter_(0, order_V, sorted_V)
    return int(torch.multinomial(probs_V, 1, generator=generator))


class LanguageModel:
    def __init__(self, em: EvalModel, batch_size: int = 16, kv_cache: bool = True):
        self.em = em
        self.model = em.model
        self.device = em.device
        self.max_length = em.seq_length
        self.batch_size = batch_size
        self.kv_cache = kv_cache
        self.pad = em.tokenizer.pad
        self.eod = em.tokenizer.eod
        self.vocab_size = (
            em.tokenizer.vocab_size
        )  # the embedding is padded beyond it; never generate those ids

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def logits(self, tokens_BS: torch.Tensor) -> torch.Tensor:
        """The model's logits at every position, float32 ``[B, S, V]`` (padded vocabulary)."""
        tokens_BS = tokens_BS.to(self.device)
        B, S = tokens_BS.shape
        position_ids_BS = torch.arange(S, device=self.device).unsqueeze(0).expand(B, S)
        return self.model(tokens_BS, position_ids_BS, None).float()

    def logprobs(self, tokens_BS: torch.Tensor) -> torch.Tensor:
        """log-softmax over the vocabulary at every position, float32 ``[B, S, V]``."""
        return F.log_softmax(self.logits(tokens_BS), dim=-1)

    def target_nll(self, inputs_BS: torch.Tensor, targets_BS: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of ``targets_BS[b, s]`` after ``inputs_BS[b, :s+1]``,
        ``[B, S]``."""
        logits_BSV = self.logits(inputs_BS)
        B, S = inputs_BS.shape
        return F.cross_entropy(
            logits_BSV.reshape(B * S, -1), targets_BS.to(self.device).reshape(-1), reduction="none"
        ).reshape(B, S)

    # ------------------------------------------------------------------ scoring
    def score(
        self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], progress: Callable | None = None
    ) -> list[Continuation]:
        """For each ``(context, continuation)`` token lists: the continuation's summed NLL,
        its length, and whether greedy decoding would produce it.

        Every continuation token is scored: one longer than the window is cut, from its end,
        into pieces of at most ``seq_length`` tokens, each run on the ``seq_length`` tokens of
        text that end where the piece ends (so the first piece sees the context's tail), as
        lm-eval's rolling likelihood does. The first token of a text with no context has nothing
        to be predicted from and is not scored."""
        L = self.max_length
        pieces: list[
            tuple[int, list[int], int]
        ] = []  # (pair, input row of <= L + 1 tokens, targets at its end)
        for i, (ctx, cont) in enumerate(pairs):
            ctx, cont = list(ctx), list(cont)
            if not cont:
                raise ValueError("an empty continuation has no likelihood")
            full = ctx + cont
            first = max(len(ctx), 1)  # the first target position
            end = len(full)
            while end > first:
                start = max(first, end - L)
                pieces.append((i, full[max(0, end - L - 1) : end], end - start))
                end = start
        nll = [0.0] * len(pairs)
        scored = [0] * len(pairs)
        greedy = [True] * len(pairs)
        # longest first: similar lengths share a batch, little padding
        order = sorted(range(len(pieces)), key=lambda j: -len(pieces[j][1]))
        for start in range(0, len(order), self.batch_size):
            batch = [pieces[j] for j in order[start : start + self.batch_size]]
            S = max(len(r) for _, r, _ in batch) - 1
            inputs = torch.full((len(batch), S), self.pad, dtype=torch.long)
            targets = torch.full((len(batch), S), self.pad, dtype=torch.long)
            for b, (_, r, _) in enumerate(batch):
                inputs[b, : len(r) - 1] = torch.tensor(r[:-1])
                targets[b, : len(r) - 1] = torch.tensor(r[1:])
            logprobs_BSV = self.logprobs(inputs)
            for b, (i, r, n) in enumerate(batch):
                end = len(r) - 1
                lp_CV = logprobs_BSV[b, end - n : end]
                tgt_C = targets[b, end - n : end].to(lp_CV.device)
                nll[i] -= lp_CV.gather(1, tgt_C[:, None]).sum().item()
                scored[i] += n
                greedy[i] = greedy[i] and bool((lp_CV.argmax(-1) == tgt_C).all())
            if progress:
                progress(len(batch))  # pieces scored (a long continuation is several)
        return [
            Continuation(nll=nll[i], tokens=scored[i], greedy=greedy[i]) for i in range(len(pairs))
        ]

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop: Callable[[list[int]], bool] | None = None,
        progress: Callable | None = None,
        kv_cache: bool | None = None,
        sampling: Sampling | None = None,
        row_seeds: Sequence[int] | None = None,
    ) -> list[list[int]]:
        """Continuations (token ids) of each prompt, greedy unless ``sampling`` has a
        temperature; a row stops at ``eod``, when ``stop(generated_ids)`` says so, or after
        ``max_new_tokens``. With ``kv_cache`` (the default) through megatron-core's
        ``StaticInferenceContext``; the tokens are the same either way (tested). ``row_seeds``:
        one integer per prompt, mixed into its generator's seed (default: its index)."""
        kv_cache = self.kv_cache if kv_cache is None else kv_cache
        sampling = sampling or Sampling()
        if row_seeds is not None and len(row_seeds) != len(prompts):
            raise ValueError("row_seeds needs one entry per prompt")
        results: list[list[int] | None] = [None] * len(prompts)
        for batch in self._length_batches([min(len(p), self.max_length - 1) for p in prompts]):
            generators = None
            if not sampling.greedy:
                generators = [
                    torch.Generator().manual_seed(
                        _mix(sampling.seed, row_seeds[i] if row_seeds is not None else i)
                    )
                    for i in batch
                ]
            rows = _Rows(
                [list(prompts[i])[-(self.max_length - 1) :] for i in batch],
                max_new_tokens,
                stop,
                self.eod,
                sampling,
                generators,
                self.vocab_size,
            )
            if kv_cache and max_new_tokens > 0:
                self._generate_cached(rows)
            self._generate_recompute(
                rows
            )  # rows that outgrew the window (or all, without the cache)
            for j, i in enumerate(batch):
                results[i] = rows.generated[j]
            if progress:
                progress(len(batch))
        return results  # type: ignore[return-value]

    def _length_batches(self, lengths: list[int], tolerance: int = 16) -> list[list[int]]:
        """Longest first, at most ``batch_size`` per batch, prompt lengths within ``tolerance``
        of each other: the static KV cache feeds the tokens beyond the shortest prompt one step
        at a time, so mixing a 30- and a 150-token prompt would cost 120 extra steps."""
        batches: list[list[int]] = []
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            if (
                not batches
                or len(batches[-1]) == self.batch_size
                or lengths[batches[-1][0]] - lengths[i] > tolerance
            ):
                batches.append([])
            batches[-1].append(i)
        return batches

    @torch.no_grad()
    def _generate_cached(self, rows: "_Rows") -> None:
        """All rows advance one position per step from the shortest prompt's length; a row still
        inside its prompt is fed its own next prompt token (Megatron's static batching)."""
        from megatron.core.inference.contexts import StaticInferenceContext

        B, lens = len(rows.seqs), [len(s) for s in rows.seqs]
        cur = min(lens)
        context = StaticInferenceContext(B, self.max_length)
        tokens_BL = torch.tensor([s[:cur] for s in rows.seqs], device=self.device)
        position_ids_BL = torch.arange(cur, device=self.device).unsqueeze(0).expand(B, cur)
        logits_B1V = self.model(
            tokens_BL, position_ids_BL, None, inference_context=context, runtime_gather_output=True
        )
        context.sequence_len_offset = cur
        context.enable_decode_mode()
        while rows.active:
            last_BV = logits_B1V[:, -1, : self.vocab_size]
            next_B = last_BV.argmax(-1).tolist() if rows.sampling.greedy else None
            feed = []
            for b in range(B):
                if cur < lens[b]:
                    feed.append(rows.seqs[b][cur])
                else:
                    if b in rows.active:
                        rows.accept(
                            b, next_B[b] if next_B is not None else rows.draw(b, last_BV[b])
                        )
                    feed.append(rows.seqs[b][-1] if len(rows.seqs[b]) > cur else self.pad)
            if not rows.active or cur + 1 >= self.max_length:
                return  # the window is full: what is left continues without the cache
            logits_B1V = self.model(
                torch.tensor(feed, device=self.device)[:, None],
                torch.full((B, 1), cur, device=self.device),
                None,
                inference_context=context,
                runtime_gather_output=True,
            )
            context.sequence_len_offset += 1
            cur += 1

    def _generate_recompute(self, rows: "_Rows") -> None:
        """Each step runs the last ``max_length`` tokens of every active row (right-padded)."""
        while rows.active:
            active = sorted(rows.active)
            windows = [rows.seqs[j][-self.max_length :] for j in active]
            S = max(len(w) for w in windows)
            inputs = torch.full((len(windows), S), self.pad, dtype=torch.long)
            for b, w in enumerate(windows):
                inputs[b, : len(w)] = torch.tensor(w)
            logprobs_BSV = self.logprobs(inputs)
            last = torch.tensor([len(w) - 1 for w in windows], device=logprobs_BSV.device)
            last_BV = logprobs_BSV[
                torch.arange(len(windows), device=last.device), last, : self.vocab_size
            ]
            if rows.sampling.greedy:
                for j, tok in zip(active, last_BV.argmax(-1).tolist()):
                    rows.accept(j, tok)
            else:
                for b, j in enumerate(active):
                    rows.accept(j, rows.draw(j, last_BV[b]))

    def generate_text(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        stop_strings: Sequence[str] = (),
        progress: Callable | None = None,
        sampling: Sampling | None = None,
        row_seeds: Sequence[int] | None = None,
    ) -> list[str]:
        """Text continuations (greedy unless ``sampling`` says otherwise), cut at the first stop
        string."""
        tok = self.em.tokenizer

        def stop(ids: list[int]) -> bool:
            if not stop_strings:
                return False
            text = tok.decode(ids[-64:])
            return any(s in text for s in stop_strings)

        ids = self.generate(
            [tok.encode(p) for p in prompts],
            max_new_tokens,
            stop,
            progress,
            sampling=sampling,
            row_seeds=row_seeds,
        )
        texts = []
        for g in ids:
            text = tok.decode(g)
            cut = min((text.find(s) for s in stop_strings if s in text), default=-1)
            texts.append(text[:cut] if cut >= 0 else text)
        return texts


class _Rows:
    """Per-row generation state of one batch."""

    def __init__(
        self,
        seqs: list[list[int]],
        max_new_tokens: int,
        stop,
        eod: int,
        sampling: Sampling | None = None,
        generators: list[torch.Generator] | None = None,
        vocab_size: int | None = None,
    ):
        self.seqs = seqs
        self.generated: list[list[int]] = [[] for _ in seqs]
        self.active = set(range(len(seqs))) if max_new_tokens > 0 else set()
        self.max_new_tokens, self.stop, self.eod = max_new_tokens, stop, eod
        self.sampling, self.generators = sampling or Sampling(), generators

    def draw(self, j: int, logits_V: torch.Tensor) -> int:
        return sample_token(
            logits_V, self.sampling, self.generators[j] if self.generators else None
        )

    def accept(self, j: int, token: int) -> None:
        if token == self.eod:
            self.active.discard(j)
            return
        self.seqs[j].append(token)
        self.generated[j].append(token)
        if len(self.generated[j]) >= self.max_new_tokens or (
            self.stop and self.stop(self.generated[j])
        ):
            self.active.discard(j)


def _mix(seed: int, row: int) -> int:
    """A 63-bit generator seed from the sampling seed and a row's own seed (splitmix64)."""
    z = (seed * 0x9E3779B97F4A7C15 + row + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF
