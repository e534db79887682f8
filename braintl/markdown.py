"""Text from data or from a caller (file names, label folders, URLs, run ids, weights) inside
the Markdown braintl writes: Prefect artifacts, ``table.md``, the model card. Such text must
not become a link, an image, emphasis, code, raw HTML or an entity in the rendered page, nor
break a table row. Names braintl itself validates (registry models, its own warnings) are
written as they are, so the files stay readable as plain text."""

from __future__ import annotations

import re

# The characters that open inline Markdown (CommonMark + GFM tables and strikethrough); a
# backslash before any ASCII punctuation makes it literal.
_MARKUP = re.compile(r"([\\`*_\[\]<>|!~&#])")


def markdown_escape(value: object) -> str:
    """``value`` as literal text inside a Markdown line: its markup characters backslash-escaped
    and its line breaks folded to spaces (a newline could open a heading, list or block)."""
    return _MARKUP.sub(r"\\\1", " ".join(str(value).splitlines()))
