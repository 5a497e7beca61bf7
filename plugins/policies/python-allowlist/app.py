"""API-key allowlist policy (iii:policy@0.1.0), written in Python.

Config (the `config:` block of the `policies` entry):

    header: x-api-key          # the header carrying the key (default x-api-key)
    keys:                      # a list of keys (each grants `{}`), or a map
      k-live-1: {namespaces: {shop: ["*"]}}   # key -> AuthResult fields
    deny: ["admin::*", "*::drop"]             # function ids no call may reach

Decisions:
* authenticate: the key header must hold one of `keys`; deny otherwise.
* on-invocation: a call whose function id matches a `deny` pattern is
  rejected with `FORBIDDEN`; every other call proceeds with its payload as is.
* on-registration: allow.
* on-http-request: a request without the key header gets 401, one with an
  unknown key 403; the others proceed.

The policy is instantiated for every call, so config is read per call (it is
a host call, no file or network access) and nothing is kept between calls.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.decisions import (
    AuthDecision_Allow,
    AuthDecision_Deny,
    Connection,
    HttpDecision_Proceed,
    HttpDecision_Respond,
    HttpRequest,
    HttpResponse,
    Invocation,
    InvocationDecision_Proceed,
    InvocationDecision_Reject,
    RegistrationDecision_Allow,
    Rejection,
)
from wit_world.imports import config, logging

CONTEXT = "python-allowlist"
DEFAULT_HEADER = "x-api-key"


class ConfigError(Exception):
    """The policy's config block is unusable; every decision fails closed."""


def _config(key, default):
    try:
        raw = config.get(key)
    except Err as e:
        raise ConfigError(f"reading config.{key}: {e.value}") from None
    if raw is None:
        return default
    return json.loads(raw)


def _header_name():
    name = _config("header", DEFAULT_HEADER)
    if not isinstance(name, str) or not name:
        raise ConfigError("config.header must be a non-empty string")
    return name.lower()


def _keys():
    """The allowed keys as a dict key -> AuthResult object."""
    keys = _config("keys", None)
    if keys is None:
        raise ConfigError("config.keys is missing: no key could be accepted")
    if isinstance(keys, list):
        if not all(isinstance(k, str) for k in keys):
            raise ConfigError("config.keys as a list must hold strings only")
        return {k: {} for k in keys}
    if isinstance(keys, dict):
        for k, grant in keys.items():
            if not isinstance(grant, dict):
                raise ConfigError(f"config.keys.{k} must be an AuthResult object")
        return keys
    raise ConfigError("config.keys must be a list of keys or a map key -> AuthResult")


def _deny_patterns():
    deny = _config("deny", [])
    if not isinstance(deny, list) or not all(isinstance(p, str) for p in deny):
        raise ConfigError("config.deny must be a list of function id patterns")
    return deny


def matches(pattern, text):
    """Glob match where `*` stands for any run of characters (none included)
    and every other character is literal: function ids contain `?`, `[` and
    `.` often enough that fnmatch's classes would surprise."""
    parts = pattern.split("*")
    if len(parts) == 1:
        return pattern == text
    first, last = parts[0], parts[-1]
    if not text.startswith(first) or len(text) < len(first) + len(last):
        return False
    pos = len(first)
    end = len(text) - len(last)
    for middle in parts[1:-1]:
        found = text.find(middle, pos, end)
        if found < 0:
            return False
        pos = found + len(middle)
    return text.endswith(last)


def _header(headers, name):
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def _log(level, message):
    logging.log(level, CONTEXT, message)


class Decisions(exports.Decisions):
    def authenticate(self, conn: Connection):
        try:
            name = _header_name()
            keys = _keys()
        except ConfigError as e:
            _log(logging.Level.ERROR, str(e))
            return AuthDecision_Deny(f"policy misconfigured: {e}")
        key = _header(conn.headers, name)
        if key is None:
            return AuthDecision_Deny(f"missing {name} header")
        grant = keys.get(key)
        if grant is None:
            _log(logging.Level.INFO, f"unknown api key from {conn.ip_address}")
            return AuthDecision_Deny(f"unknown {name}")
        return AuthDecision_Allow(json.dumps(grant))

    def on_registration(self, kind, registration: str):
        return RegistrationDecision_Allow()

    def on_invocation(self, call: Invocation):
        try:
            patterns = _deny_patterns()
        except ConfigError as e:
            _log(logging.Level.ERROR, str(e))
            return InvocationDecision_Reject(
                Rejection("POLICY_MISCONFIGURED", f"policy misconfigured: {e}")
            )
        for p in patterns:
            if matches(p, call.function_id):
                return InvocationDecision_Reject(
                    Rejection(
                        "FORBIDDEN",
                        f"calls to {call.function_id} are denied by policy (pattern {p})",
                    )
                )
        return InvocationDecision_Proceed(call.payload)

    def on_http_request(self, request: HttpRequest):
        try:
            name = _header_name()
            keys = _keys()
        except ConfigError as e:
            _log(logging.Level.ERROR, str(e))
            return _respond(500, "policy misconfigured")
        key = _header(request.headers, name)
        if key is None:
            return _respond(401, f"missing {name} header", [("www-authenticate", "ApiKey")])
        if key not in keys:
            return _respond(403, f"unknown {name}")
        return HttpDecision_Proceed()


def _respond(status, error, headers=None):
    body = json.dumps({"error": error})
    hdrs = [("content-type", "application/json")] + (headers or [])
    return HttpDecision_Respond(HttpResponse(status, hdrs, body))
