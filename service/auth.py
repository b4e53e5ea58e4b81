"""API keys: who may call what.

Keys come from settings or from mounted secret files (one key per line, `#` comments), are compared in
constant time, and are never logged: a caller is named by its key id, the first 12 hex digits of the key's
sha256. Regular routes accept a client or an admin key; admin routes (repository load/unload) only an admin
key; the open paths (health, metrics by default) need none. With no key configured, authentication is off.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from service.errors import ServiceError

ADMIN_PREFIXES = ("/v2/repository",)


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers = {"WWW-Authenticate": 'Bearer realm="defended-inference"'}


class Forbidden(ServiceError):
    status_code = 403
    code = "forbidden"


@dataclass(frozen=True)
class Caller:
    key_id: str
    admin: bool


def key_id(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class KeyRing:
    def __init__(self, client_keys: list[str], admin_keys: list[str]) -> None:
        # NOTE: digests, not the keys, are compared: equal lengths, so the comparison time says nothing
        # about how much of a guess was right, and the keys themselves are not kept in memory twice.
        self._keys = [(hashlib.sha256(k.encode()).digest(), key_id(k), False) for k in client_keys]
        self._keys += [(hashlib.sha256(k.encode()).digest(), key_id(k), True) for k in admin_keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, presented: str) -> Caller | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for known, ident, admin in self._keys:
            # every key is compared (no early exit), so timing does not tell which one matched
            if hmac.compare_digest(digest, known) and found is None:
                found = Caller(ident, admin)
        return found

    def authorize(self, path: str, headers: dict[bytes, bytes]) -> Caller | None:
        """The caller allowed on `path`, None when authentication is off; raises 401/403 otherwise."""
        if not self.enabled:
            return None
        presented = _presented_key(headers)
        if presented is None:
            raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key'")
        caller = self.identify(presented)
        if caller is None:
            raise Unauthorized("the API key is not valid")
        if path.startswith(ADMIN_PREFIXES) and not caller.admin:
            raise Forbidden("this route needs an admin API key")
        return caller


def _presented_key(headers: dict[bytes, bytes]) -> str | None:
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    api_key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    return api_key or None
