"""Deterministic prompt text of a given approximate token length.

Plain common English words are about one token each in the usual tokenizers (Gemma, Llama,
Qwen), so `filler(n)` is roughly `n` tokens; callers that can tokenize (`/tokenize`) correct
the estimate with `scale_words`. A nonce at the very start of a prompt makes it share no
prefix with anything cached, which is what makes a "cold" request really cold.
"""

from __future__ import annotations

import random
import uuid

_VOCABULARY = (
    "the of and to in is it that for on with as was at by be this from or have an they which "
    "one you were her all she there would their we him been has when who will more no if out "
    "so said what up its about into than them can only other new some could time these two "
    "may then do first any my now such like our over man me even most made after also did "
    "many before must through back years where much your way well down should because each "
    "just those people how too little state good very make world still own see men work long "
    "get here between both life being under never day same another know while last might us "
    "great old year off come since against go came right used take three house garden river "
    "market music winter summer window table paper water light stone city road field letter"
)
_WORDS = tuple(_VOCABULARY.split())

QUESTIONS = (
    "What is the capital of France?",
    "Name three primary colors.",
    "How many legs does a spider have?",
    "What is two plus two?",
    "Which planet is closest to the sun?",
    "What language is spoken in Brazil?",
    "What is the boiling point of water in Celsius?",
    "Who wrote Romeo and Juliet?",
    "What is the largest ocean on Earth?",
    "How many days are in a leap year?",
    "What gas do plants absorb from the air?",
    "What is the square root of nine?",
    "Which animal is known as the king of the jungle?",
    "What is the freezing point of water in Fahrenheit?",
    "How many continents are there?",
    "What color is the sky on a clear day?",
)


def nonce() -> str:
    """A short random tag that makes a prompt unique."""
    return uuid.uuid4().hex[:12]


def filler(words: int, seed: int = 0) -> str:
    """About `words` tokens of sentence-shaped text, the same for the same `seed`."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < words:
        n = min(rng.randint(8, 16), words - len(out))
        sentence = [rng.choice(_WORDS) for _ in range(n)]
        sentence[0] = sentence[0].capitalize()
        sentence[-1] += "."
        out.extend(sentence)
    return " ".join(out)


def system_prompt(words: int, tag: str, seed: int = 0) -> str:
    """A long system prompt starting with `tag` (a nonce: no cached prefix can match it)."""
    head = f"[{tag}] You are a helpful assistant. Answer briefly. Background notes follow.\n"
    return head + filler(max(0, words - 16), seed)


def question(i: int) -> str:
    """The i-th short user question (cycles, with a number once the list runs out)."""
    base = QUESTIONS[i % len(QUESTIONS)]
    return base if i < len(QUESTIONS) else f"{base} (variant {i // len(QUESTIONS)})"


def scale_words(words: int, target_tokens: int, measured_tokens: int | None) -> int:
    """Word count giving about `target_tokens`, from a measurement of `words` words."""
    if not measured_tokens or measured_tokens <= 0:
        return target_tokens
    return max(1, round(words * target_tokens / measured_tokens))
