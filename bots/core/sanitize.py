"""User text as data: what no message may carry into a prompt."""

from __future__ import annotations

import re
import unicodedata

# Role and turn markers of common chat templates (ChatML, Llama, Mistral, Gemma...).
_CONTROL = re.compile(
    r"<\|[^|<>\n]{1,40}\|>|\[/?INST\]|<</?SYS>>|</?s>|<start_of_turn>|<end_of_turn>", re.IGNORECASE
)


def clean_user_text(text: str) -> str:
    """Fold width and invisible characters, then drop chat-template control tokens, so a member
    cannot open a fake system turn."""
    if text.isascii() and "<" not in text and "[" not in text:
        return text  # the common case costs nothing
    # Cf: invisible format characters; Cs: lone surrogates, which no encoder accepts
    text = "".join(
        ch for ch in unicodedata.normalize("NFKC", text) if unicodedata.category(ch) not in ("Cf", "Cs")
    )
    previous = None
    while previous != text:  # nested tokens (<|im_<|x|>start|>) fall apart one layer at a time
        previous, text = text, _CONTROL.sub("", text)
    return text
