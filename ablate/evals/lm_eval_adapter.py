"""lm-eval-harness over an ablate checkpoint: ``lm_eval.api.model.TemplateLM``, registered as
``ablate``.

From Python (importing this module registers the name)::

    import ablate.evals.lm_eval_adapter, lm_eval
    lm_eval.simple_evaluate(model="ablate", model_args="run_dir=runs/quickstart,step=2441",
                            tasks=[...])

From the command line, ``ablate eval RUN_DIR --tasks lm_eval:<task>[,...] [--lm-eval-include DIR]``
scores lm-eval tasks into the same ``eval/step_<N>.json`` as the built-in ones. Offline, tasks
come from local YAML + JSONL (``dataset_path: json``, ``dataset_kwargs: {data_files: ...}``)
found through ``--lm-eval-include``; hub tasks work where the user has network.
"""

from __future__ import annotations

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from ablate.evals.lm import LanguageModel


@register_model("ablate")
class AblateLM(TemplateLM):
    def __init__(
        self,
        run_dir: str | None = None,
        step: int | str | None = None,
        batch_size: int | str = 16,
        lm: LanguageModel | None = None,
        **_ignored,
    ):
        super().__init__()
        if lm is None:
            from ablate.evals.loading import load_eval_model

            em = load_eval_model(run_dir, None if step in (None, "", "latest") else int(step))
            lm = LanguageModel(em, int(batch_size))
        self.lm = lm
        self.tok = lm.em.tokenizer

    @property
    def eot_token_id(self) -> int:
        return self.tok.eod

    @property
    def max_length(self) -> int:
        return self.lm.max_length

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **kwargs
    ) -> list[int]:
        return self.tok.encode(string)

    def tok_decode(self, tokens, **kwargs) -> str:
        return self.tok.decode(tokens)

    def _loglikelihood_tokens(
        self, requests, disable_tqdm: bool = False, **kwargs
    ) -> list[tuple[float, bool]]:
        scored = self.lm.score([(ctx, cont) for _, ctx, cont in requests])
        return [(-c.nll, c.greedy) for c in scored]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Total log-likelihood of each whole text, in windows of the training length, every
        token predicted once with as much preceding context as fits (the first one after eod)."""
        S = self.lm.max_length
        pairs, owner = [], []  # every window of every text, scored in one batched pass
        for i, req in enumerate(requests):
            (text,) = req.args
            ids = self.tok.encode(text)
            start = 0
            while start < len(ids):
                end = min(start + S, len(ids))
                context_start = max(0, end - S - 1)
                context = ([self.tok.eod] + ids)[
                    context_start : start + 1
                ]  # tokens before ids[start]
                pairs.append((context, ids[start:end]))
                owner.append(i)
                start = end
        out = [0.0] * len(requests)
        for i, c in zip(owner, self.lm.score(pairs) if pairs else []):
            out[i] -= c.nll
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Requests with the same stop strings and length limit are generated as one batch."""
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            _, gen_kwargs = req.args
            until = gen_kwargs.get("until", [])
            until = (until,) if isinstance(until, str) else tuple(until)
            groups.setdefault((until, int(gen_kwargs.get("max_gen_toks", 256))), []).append(i)
        results: list[str] = [""] * len(requests)
        for (until, max_new), members in groups.items():
            texts = self.lm.generate_text([requests[i].args[0] for i in members], max_new, until)
            for i, text in zip(members, texts):
                results[i] = text
        return results
