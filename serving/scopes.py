"""The scopes an API key can carry, declared once: the store, the auth dependency and the CLI read them.

score: the scoring endpoints; outcomes: reporting outcomes (POST /v1/outcomes); admin: everything.
"""

from typing import Literal, get_args

Scope = Literal["score", "outcomes", "admin"]
SCOPES: tuple[str, ...] = get_args(Scope)
