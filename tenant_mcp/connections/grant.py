"""`Grant`: the tokens of one upstream connection, as they are sealed into the control plane."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

# A token this close to its expiry is refreshed first: it could expire on its way upstream.
EARLY_SECONDS = 30.0


@dataclass(frozen=True)
class Grant:
    access_token: str
    refresh_token: str | None = None
    expires_at: float | None = None  # None: the provider did not say; used until it is refused
    token_type: str = "Bearer"  # noqa: S105 - a token type, not a token
    scope: str | None = None

    @classmethod
    def from_token_response(cls, body: Any, previous: Grant | None = None) -> Grant:
        """From a token endpoint's JSON answer. A refresh answer without a new refresh token keeps
        the old one: losing it would force the person through the connect link again."""
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("access_token"), str)
            or not body["access_token"]
        ):
            raise ValueError("the token endpoint's answer has no access_token")
        if str(body.get("token_type", "Bearer")).lower() != "bearer":
            raise ValueError("the token endpoint issued a token that is not a bearer token")
        expires_in, refresh, scope = body.get("expires_in"), body.get("refresh_token"), body.get("scope")
        if not (isinstance(refresh, str) and refresh):
            refresh = previous.refresh_token if previous else None
        return cls(
            access_token=body["access_token"],
            refresh_token=refresh,
            expires_at=time.time() + float(expires_in) if isinstance(expires_in, int | float) else None,
            scope=scope if isinstance(scope, str) else previous.scope if previous else None,
        )

    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at - EARLY_SECONDS <= time.time()

    def usable(self, refused: str | None) -> bool:
        """Not expired, and not the token the API just refused (`refused`)."""
        return not self.expired() and (refused is None or self.access_token != refused)

    def dumps(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def loads(cls, data: bytes) -> Grant:
        return cls(**json.loads(data))
