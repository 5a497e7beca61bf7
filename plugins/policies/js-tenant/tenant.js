// Tenant routing policy (iii:policy@0.1.0), written in JavaScript.
//
// Config (the `config:` block of the `policies` entry):
//
//   tokens:                  # bearer token -> tenant name
//     tok-acme: acme
//     tok-globex: globex
//
// Decisions:
// * authenticate: `authorization: Bearer <token>` names a tenant; the
//   connection is granted every function of the tenant's namespace
//   (`namespaces: {<tenant>: ["*"]}`) and carries `{tenant}` in its context.
//   No header or an unknown token: deny.
// * on-invocation: the tenant of the caller's context is written into the
//   payload's `tenant` field (over any value the caller put there, so a
//   tenant cannot pose as another); a call without a tenant in its context,
//   or with a payload that is not an object, is rejected.
// * on-registration: allow.
// * on-http-request: the same bearer check as authenticate; 401 otherwise.
//
// The component is instantiated for every call: config is read per call and
// nothing survives between calls.

import { get } from 'iii:adapter/config@0.1.0';
import { log } from 'iii:adapter/logging@0.1.0';

const CONTEXT = 'js-tenant';

class ConfigError extends Error {}

function tokens() {
  let raw;
  try {
    raw = get('tokens');
  } catch (e) {
    throw new ConfigError(`reading config.tokens: ${describe(e)}`);
  }
  if (raw === undefined) {
    throw new ConfigError('config.tokens is missing: no token could be accepted');
  }
  const map = JSON.parse(raw);
  if (map === null || typeof map !== 'object' || Array.isArray(map)) {
    throw new ConfigError('config.tokens must be a map token -> tenant');
  }
  for (const tenant of Object.values(map)) {
    if (typeof tenant !== 'string' || tenant === '') {
      throw new ConfigError('config.tokens: every tenant must be a non-empty string');
    }
  }
  return map;
}

// A jco `result` error arrives as an exception whose `payload` is the WIT
// error variant (`{tag: 'io', val: '...'}`).
function describe(e) {
  const p = e && e.payload;
  if (p && typeof p === 'object' && 'val' in p) return String(p.val);
  return String(e && e.message ? e.message : e);
}

function header(headers, name) {
  for (const [k, v] of headers) {
    if (k.toLowerCase() === name) return v;
  }
  return undefined;
}

// `Bearer <token>` (scheme case-insensitive, RFC 7235) or undefined.
function bearer(headers) {
  const value = header(headers, 'authorization');
  if (value === undefined) return undefined;
  const m = /^bearer\s+(\S+)\s*$/i.exec(value);
  return m ? m[1] : undefined;
}

// Token -> tenant, or a reason to refuse.
function tenantOf(headers) {
  const token = bearer(headers);
  if (token === undefined) return { error: 'missing bearer token' };
  const map = tokens();
  if (!Object.prototype.hasOwnProperty.call(map, token)) return { error: 'unknown bearer token' };
  return { tenant: map[token] };
}

export const decisions = {
  authenticate(conn) {
    let found;
    try {
      found = tenantOf(conn.headers);
    } catch (e) {
      log('error', CONTEXT, e.message);
      return { tag: 'deny', val: `policy misconfigured: ${e.message}` };
    }
    if (found.error) return { tag: 'deny', val: found.error };
    const grant = {
      namespaces: { [found.tenant]: ['*'] },
      context: { tenant: found.tenant },
    };
    return { tag: 'allow', val: JSON.stringify(grant) };
  },

  onRegistration(_kind, _registration) {
    return { tag: 'allow' };
  },

  onInvocation(call) {
    const context = JSON.parse(call.context);
    const tenant = context && typeof context === 'object' ? context.tenant : undefined;
    if (typeof tenant !== 'string' || tenant === '') {
      return reject('NO_TENANT', `the caller of ${call.functionId} has no tenant in its auth context`);
    }
    const payload = JSON.parse(call.payload);
    if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) {
      return reject('INVALID_PAYLOAD', `tenant routing needs an object payload for ${call.functionId}`);
    }
    payload.tenant = tenant;
    return { tag: 'proceed', val: JSON.stringify(payload) };
  },

  onHttpRequest(request) {
    let found;
    try {
      found = tenantOf(request.headers);
    } catch (e) {
      log('error', CONTEXT, e.message);
      return respond(500, 'policy misconfigured');
    }
    if (found.error) {
      return respond(401, found.error, [['www-authenticate', 'Bearer']]);
    }
    return { tag: 'proceed' };
  },
};

function reject(code, message) {
  return { tag: 'reject', val: { code, message } };
}

function respond(statusCode, error, extra = []) {
  return {
    tag: 'respond',
    val: {
      statusCode,
      headers: [['content-type', 'application/json'], ...extra],
      body: JSON.stringify({ error }),
    },
  };
}
