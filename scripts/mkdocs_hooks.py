"""MkDocs hook (``mkdocs.yml``: ``hooks``): render the Sphinx roles of the docstrings as plain code.

The docstrings are Google style but cross-reference with Sphinx roles (``:class:`X```,
``:func:`~a.b.f```); mkdocstrings renders those as the role's text followed by the code. This hook
drops the role and, for a ``~`` target, keeps only its last component, as Sphinx shows it.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|meth|func|mod|attr|data|exc|obj|const):(?=<code>)")
_TILDE = re.compile(r"<code>~(?:[\w]+\.)*([\w]+)</code>")


def on_page_content(html: str, **kwargs: Any) -> str:
    return _TILDE.sub(r"<code>\1</code>", _ROLE.sub("", html))
