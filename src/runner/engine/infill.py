"""A fill-in-the-middle prompt, laid out as llama-server's `/infill` does (repo-level FIM,
https://arxiv.org/pdf/2409.12186):

    [FIM_REP]myproject\\n [FIM_SEP]filename0\\n extra 0 ... [FIM_SEP]filename\\n
    [BOS] [FIM_PRE]prefix prompt [FIM_SUF]suffix [FIM_MID]

The prefix keeps its last 3/4 of a batch, the suffix what is left of the batch's last 1/4,
and the extra chunks (other files) only what the context leaves after the batch and twice
the output limit, their last tokens first.
"""

from __future__ import annotations

from collections.abc import Sequence

import llama_cpp

from .model import LlamaModel
from .types import InvalidRequest

# Separator of extra chunks in a vocabulary without FIM_SEP ("\n\n--- snippet ---\n\n").
_CHUNK_SEPARATOR = "\n\n--- snippet ---\n\n"


def has_fim(model: LlamaModel) -> bool:
    vocab = model.vocab
    ids = (
        llama_cpp.llama_vocab_fim_pre,
        llama_cpp.llama_vocab_fim_suf,
        llama_cpp.llama_vocab_fim_mid,
    )
    return all(fim(vocab) >= 0 for fim in ids)


def infill_tokens(
    model: LlamaModel,
    prefix: str,
    suffix: str,
    extra: Sequence[tuple[str, str]],
    prompt: str,
    n_batch: int,
    n_ctx: int,
    n_predict: int,
) -> list[int]:
    """The prompt tokens of an infill request; `extra` holds (filename, text) chunks."""
    if not has_fim(model):
        raise InvalidRequest(
            f"{model.path.name} has no fill-in-the-middle tokens (tokenizer.ggml.fim_pre, "
            "fim_suf, fim_mid): it is not a code-infill model"
        )
    vocab = model.vocab

    def tokens(text: str) -> list[int]:
        return model.tokenize(text, add_special=False, parse_special=False)

    rep, sep = llama_cpp.llama_vocab_fim_rep(vocab), llama_cpp.llama_vocab_fim_sep(vocab)
    extra_tokens: list[int] = []
    if rep >= 0:
        extra_tokens += [rep, *tokens("myproject\n")]
    for filename, text in extra:
        if sep >= 0:
            extra_tokens += [sep, *tokens((filename or "tmp") + "\n")]
        else:
            extra_tokens += tokens(_CHUNK_SEPARATOR)
        extra_tokens += tokens(text)
    if sep >= 0:
        extra_tokens += [sep, *tokens("filename\n")]

    prompt_tokens = tokens(prompt)
    prefix_tokens, suffix_tokens = tokens(prefix), tokens(suffix)
    n_prefix = min(len(prefix_tokens), 3 * (n_batch // 4))
    n_suffix = min(len(suffix_tokens), max(0, n_batch // 4 - (2 + len(prompt_tokens))))
    n_extra = min(max(0, n_ctx - n_batch - 2 * n_predict), len(extra_tokens))

    head = [llama_cpp.llama_vocab_fim_pre(vocab)]
    head += prefix_tokens[len(prefix_tokens) - n_prefix :] + prompt_tokens
    tail = [llama_cpp.llama_vocab_fim_suf(vocab), *suffix_tokens[:n_suffix]]
    if model.add_bos and model.bos >= 0:
        head.insert(0, model.bos)
    context = extra_tokens[len(extra_tokens) - n_extra :] if n_extra else []
    return [*context, *head, *tail, llama_cpp.llama_vocab_fim_mid(vocab)]
