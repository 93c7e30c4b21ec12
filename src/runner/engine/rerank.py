"""A reranker's input: one query-document pair as tokens, laid out as llama-server does."""

from __future__ import annotations

import llama_cpp

from .model import LlamaModel


def rank_tokens(model: LlamaModel, query: str, document: str) -> list[int]:
    """The model's own `rerank` template (`{query}`, `{document}`) when its GGUF has one,
    else [BOS] query [EOS] [SEP] document [EOS], each marker where the vocabulary adds it."""
    template = llama_cpp.llama_model_chat_template(model.handle, b"rerank")
    if template:
        text = template.decode("utf-8", "replace")
        text = text.replace("{query}", query).replace("{document}", document)
        return model.tokenize(text, add_special=False, parse_special=True)
    vocab = model.vocab
    eos = llama_cpp.llama_vocab_eos(vocab)
    if eos < 0:
        eos = llama_cpp.llama_vocab_sep(vocab)
    add_eos = bool(llama_cpp.llama_vocab_get_add_eos(vocab))
    tokens = [model.bos] if model.add_bos and model.bos >= 0 else []
    tokens += model.tokenize(query, add_special=False, parse_special=False)
    if add_eos:
        tokens.append(eos)
    if llama_cpp.llama_vocab_get_add_sep(vocab):
        tokens.append(llama_cpp.llama_vocab_sep(vocab))
    tokens += model.tokenize(document, add_special=False, parse_special=False)
    if add_eos:
        tokens.append(eos)
    return tokens
