"""Registry credentials and the distribution spec's auth dance, as an `httpx.Auth`.

Credentials belong to one registry host, as Docker keeps them: the settings'
`registry_username` / `registry_password` (`RUNNER_REGISTRY_USERNAME` / `_PASSWORD`) go only
to `registry_host` (Docker Hub unless set, like `docker login` without a server); the Docker
config file's (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`: inline `auths`
entries or a `credsStore` / `credHelpers` helper program) only to the host they are filed
under. Any other registry is spoken to anonymously.

A 401 carries `WWW-Authenticate`: `Basic` means send the credentials; `Bearer realm=...,
service=...,scope=...` (Docker Hub) means fetch a token from the realm (with the credentials,
if the realm is on the registry's own host, or Docker Hub's `auth.docker.io`) and retry with
it. Credentials never follow a redirect to another host (httpx drops them) and a challenge
from anywhere but the registry itself is not answered. The last header is reused so later
requests skip the 401.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Generator
from pathlib import Path

import httpx

from ..config import Settings
from .netguard import AddressPolicy, guarded_client

Credentials = tuple[str, str]

_DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io")
_DOCKER_HUB_NAMES = {"docker.io", "index.docker.io", "registry-1.docker.io"}
_DOCKER_HUB_TOKEN_HOST = "auth.docker.io"
_PARAM = re.compile(r'(\w+)="([^"]*)"')


class RegistryAuthError(Exception):
    """The token service refused us or answered nonsense."""


def registry_key(registry: str) -> str:
    """One spelling per registry: lower case, no scheme or path, Docker Hub as `docker.io`."""
    key = registry.strip().lower()
    key = key.split("://", 1)[-1].split("/", 1)[0]
    return "docker.io" if key in _DOCKER_HUB_NAMES else key


def credentials_for(registry: str, settings: Settings) -> Credentials | None:
    """Username and password (or token) for `registry`, if any are configured for it."""
    user, password = settings.registry_username, settings.registry_password
    if user and password and registry_key(registry) == registry_key(settings.registry_host):
        return user, password
    config_dir = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    try:
        config = json.loads((config_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    keys = _DOCKER_HUB_KEYS if registry == "docker.io" else (registry, f"https://{registry}")
    auths = config.get("auths") if isinstance(config.get("auths"), dict) else {}
    for key in keys:
        entry = auths.get(key)
        if isinstance(entry, dict) and (found := _inline(entry)):
            return found
    helpers = config.get("credHelpers") if isinstance(config.get("credHelpers"), dict) else {}
    helper = next((helpers[k] for k in keys if isinstance(helpers.get(k), str)), None)
    helper = helper or config.get("credsStore")
    return _from_helper(helper, keys[0]) if isinstance(helper, str) else None


def _inline(entry: dict) -> Credentials | None:
    if isinstance(entry.get("auth"), str) and entry["auth"]:
        with contextlib.suppress(ValueError):
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            if user and password:
                return user, password
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return entry["username"], entry["password"]
    return None


def _from_helper(helper: str, server: str) -> Credentials | None:
    program = shutil.which(f"docker-credential-{helper}")
    if not program:
        return None
    try:
        done = subprocess.run(
            [program, "get"], input=server, capture_output=True, text=True, timeout=30
        )
        data = json.loads(done.stdout) if done.returncode == 0 else {}
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    user, secret = data.get("Username"), data.get("Secret")
    return (user, secret) if isinstance(user, str) and isinstance(secret, str) else None


def _basic(creds: Credentials) -> str:
    return "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()


class RegistryAuth(httpx.Auth):
    """Answers Basic and Bearer challenges; tokens are fetched with a separate client."""

    def __init__(
        self,
        credentials: Credentials | None,
        base_url: str,
        *,
        policy: AddressPolicy | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.credentials = credentials
        self._origin = _origin(httpx.URL(base_url))
        self._docker_hub = self._origin[1] == "registry-1.docker.io"
        self._policy = policy or AddressPolicy()
        self._header: str | None = None
        self._timeout = timeout

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._header and _origin(request.url) == self._origin:
            request.headers["Authorization"] = self._header
        response = yield request
        # Only the registry's own challenge is answered: not one from a host it redirected to.
        if response.status_code != 401 or _origin(response.request.url) != self._origin:
            return
        scheme, _, rest = response.headers.get("www-authenticate", "").partition(" ")
        if scheme.lower() == "basic":
            if not self.credentials:
                return
            header = _basic(self.credentials)
        elif scheme.lower() == "bearer":
            header = "Bearer " + self._token(dict(_PARAM.findall(rest)))
        else:
            return
        if header == request.headers.get("Authorization"):
            return  # the same credentials were just refused: let the 401 through
        self._header = header
        request.headers["Authorization"] = header
        yield request

    def _token(self, challenge: dict[str, str]) -> str:
        realm = challenge.get("realm")
        if not realm:
            raise RegistryAuthError("the registry asked for a token but named no token service")
        params = {k: v for k, v in challenge.items() if k in ("service", "scope")}
        try:
            realm_url = httpx.URL(realm)
        except httpx.InvalidURL as exc:
            raise RegistryAuthError("the registry named an unusable token service") from exc
        if realm_url.scheme not in ("http", "https"):
            raise RegistryAuthError("the registry named an unusable token service")
        send = self.credentials is not None and self._own_realm(realm_url)
        headers = {"Authorization": _basic(self.credentials)} if send else {}  # type: ignore[arg-type]
        with guarded_client(self._policy, timeout=self._timeout, follow_redirects=True) as client:
            response = client.get(realm_url, params=params, headers=headers)
        if response.status_code in (401, 403):
            raise RegistryAuthError(
                f"the registry's token service refused the credentials ({response.status_code})"
            )
        if response.status_code != 200:
            raise RegistryAuthError(f"the registry's token service answered {response.status_code}")
        try:
            data = response.json()
            return str(data.get("token") or data["access_token"])
        except (ValueError, KeyError, AttributeError) as exc:
            raise RegistryAuthError("the registry's token service sent no token") from exc

    def _own_realm(self, realm: httpx.URL) -> bool:
        """Whether the token service may see the credentials: the registry's own host (and
        scheme), or Docker Hub's token service for Docker Hub."""
        if self._docker_hub:
            return realm.scheme == "https" and realm.host == _DOCKER_HUB_TOKEN_HOST
        scheme, host, port = self._origin
        realm_scheme, realm_host, realm_port = _origin(realm)
        return realm_host == host and realm_port == port and realm_scheme == scheme


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default
