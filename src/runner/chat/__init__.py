"""Chat prompt rendering (Jinja chat templates) and output constraints (GBNF grammars)."""

from .builtin_templates import BUILTINS, BuiltinTemplate, builtin_for
from .grammar import (
    GrammarError,
    grammar_for,
    json_object_grammar,
    schema_to_grammar,
    validate_gbnf,
)
from .sandbox import RenderLimits
from .template import (
    ChatTemplate,
    ChatTemplateError,
    content_length,
    normalize_messages,
    template_for,
)

__all__ = [
    "BUILTINS",
    "BuiltinTemplate",
    "ChatTemplate",
    "ChatTemplateError",
    "GrammarError",
    "RenderLimits",
    "builtin_for",
    "grammar_for",
    "json_object_grammar",
    "content_length",
    "normalize_messages",
    "schema_to_grammar",
    "template_for",
    "validate_gbnf",
]
