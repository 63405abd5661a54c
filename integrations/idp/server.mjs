// A test-only OpenID provider for the secure_mw test suite, built on oidc-provider.
// NEVER use it for anything but tests: it trusts its config file, keeps everything in memory,
// and exposes test-control endpoints under /__test/ that let any local caller disable users
// and forge the next ID token.
//
//   node server.mjs --port N --config /path/config.json
//
// See README.md beside this file for the config format and the /__test/ endpoints.

import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';
import { CompactSign, decodeJwt, decodeProtectedHeader, importJWK } from 'jose';

const HOST = '127.0.0.1';
const MAX_TEST_BODY = 64 * 1024;
const DEFAULT_TTL = {
  AccessToken: 600,
  AuthorizationCode: 60,
  IdToken: 600,
  RefreshToken: 24 * 3600,
  Session: 24 * 3600,
  Interaction: 600,
  Grant: 24 * 3600,
};
const TTL_NAMES = new Set(Object.keys(DEFAULT_TTL));
// The claims a user's own fields give; `claims` adds others (granted with `profile`).
const STANDARD_CLAIMS = ['sub', 'email', 'email_verified', 'name', 'groups'];
// oidc-provider's error events worth a line on stderr (with the detail it keeps from clients).
const ERROR_EVENTS = [
  'authorization.error', 'grant.error', 'userinfo.error', 'revocation.error',
  'introspection.error', 'end_session.error', 'end_session_confirm.error',
  'end_session_success.error', 'pushed_authorization_request.error', 'jwks.error',
  'discovery.error', 'backchannel.error',
];

function fail(message) {
  console.error(`idp: ${message}`);
  process.exit(2);
}

function log(message) {
  console.error(`idp: ${message}`);
}

// -- command line and config -------------------------------------------------------------

function readOptions() {
  let values;
  try {
    ({ values } = parseArgs({
      options: { port: { type: 'string' }, config: { type: 'string' } },
      strict: true,
    }));
  } catch (err) {
    fail(`${err.message}\nusage: node server.mjs --port N --config /path/config.json`);
  }
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    fail('--port must be an integer from 1 to 65535');
  }
  if (!values.config) {
    fail('--config /path/config.json is required');
  }
  let config;
  try {
    config = JSON.parse(readFileSync(values.config, 'utf8'));
  } catch (err) {
    fail(`cannot read the config ${values.config}: ${err.message}`);
  }
  return { port, config };
}

function isObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function checkConfig(config) {
  if (!isObject(config)) fail('the config must be a JSON object');
  if (typeof config.issuer !== 'string' || !/^https?:\/\/[^/?#]+$/.test(config.issuer)) {
    fail('config.issuer must be an origin such as http://127.0.0.1:8080 (no path, no slash)');
  }
  if (!Array.isArray(config.clients) || !config.clients.every(isObject)) {
    fail('config.clients must be a list of client metadata objects');
  }
  if (!Array.isArray(config.users) || !config.users.every(isObject)) {
    fail('config.users must be a list of user objects');
  }
  for (const user of config.users) {
    if (typeof user.sub !== 'string' || !user.sub || typeof user.password !== 'string') {
      fail('every user needs a non-empty string sub and a string password');
    }
    if (user.claims !== undefined && (!isObject(user.claims)
        || Object.keys(user.claims).some((name) => STANDARD_CLAIMS.includes(name)))) {
      fail(`users[${user.sub}].claims must be an object of other claims than `
           + STANDARD_CLAIMS.join(', '));
    }
  }
  if (!isObject(config.jwks) || !Array.isArray(config.jwks.keys) || !config.jwks.keys.length) {
    fail('config.jwks must be a private JWK Set with at least one key');
  }
  for (const jwk of config.jwks.keys) {
    if (!isObject(jwk) || typeof jwk.kid !== 'string' || typeof jwk.d !== 'string'
        || typeof jwk.alg !== 'string') {
      fail('every key in config.jwks needs kid, alg and its private members');
    }
  }
  const ttl = config.ttl ?? {};
  if (!isObject(ttl)) fail('config.ttl must be an object');
  for (const [name, value] of Object.entries(ttl)) {
    if (!TTL_NAMES.has(name)) fail(`config.ttl.${name} is not one of ${[...TTL_NAMES].join(', ')}`);
    if (!Number.isInteger(value) || value < 1) fail(`config.ttl.${name} must be a positive integer`);
  }
  if (config.cookie_keys !== undefined && (!Array.isArray(config.cookie_keys)
      || !config.cookie_keys.length || !config.cookie_keys.every((k) => typeof k === 'string'))) {
    fail('config.cookie_keys, when given, must be a non-empty list of strings');
  }
  if (config.rotate_refresh_tokens !== undefined
      && typeof config.rotate_refresh_tokens !== 'boolean') {
    fail('config.rotate_refresh_tokens, when given, must be true or false');
  }
  if (config.backchannel_logout !== undefined && typeof config.backchannel_logout !== 'boolean') {
    fail('config.backchannel_logout, when given, must be true or false');
  }
  const servers = config.resource_servers ?? {};
  if (!isObject(servers)) fail('config.resource_servers must be an object');
  for (const [resource, info] of Object.entries(servers)) {
    if (!isObject(info) || typeof info.scope !== 'string'
        || !['jwt', 'opaque'].includes(info.format ?? 'jwt')) {
      fail(`config.resource_servers[${JSON.stringify(resource)}] needs scope (a string) and `
           + "format 'jwt' or 'opaque'");
    }
  }
}

// Resource indicators (RFC 8707) and the client_credentials grant, only when the config
// lists resource servers: { "<resource>": { "scope": "api:read", "format": "jwt" } }.
// JWT access tokens (RFC 9068, typ at+jwt) or opaque ones (for introspection, RFC 7662).
function resourceFeatures(config, firstAlg) {
  const servers = config.resource_servers ?? {};
  if (!Object.keys(servers).length) {
    return { clientCredentials: { enabled: false } };
  }
  return {
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: (_ctx, _client, oneOf) => oneOf,
      useGrantedResource: () => true,
      getResourceServerInfo(_ctx, resource) {
        const info = servers[resource];
        if (!info) throw new errors.InvalidTarget();
        const format = info.format ?? 'jwt';
        return {
          scope: info.scope,
          audience: resource,
          accessTokenTTL: info.ttl ?? 300,
          accessTokenFormat: format,
          ...(format === 'jwt' ? { jwt: { sign: { alg: firstAlg } } } : {}),
        };
      },
    },
  };
}

// -- accounts ----------------------------------------------------------------------------

function sha256(value) {
  return createHash('sha256').update(value, 'utf8').digest();
}

function passwordMatches(user, password) {
  // Compare digests so that the comparison takes the same time whatever the lengths.
  return timingSafeEqual(sha256(user.password), sha256(password));
}

class Accounts {
  constructor(users) {
    this.users = new Map(users.map((user) => [user.sub, user]));
    this.disabled = new Set();
  }

  active(sub) {
    return this.disabled.has(sub) ? undefined : this.users.get(sub);
  }

  // oidc-provider's findAccount: undefined for an unknown or disabled account, which makes
  // the authorization ask for a login again and refresh_token/authorization_code grants fail
  // with invalid_grant, and userinfo with invalid_token.
  find(sub) {
    const user = this.active(sub);
    if (!user) return undefined;
    return {
      accountId: user.sub,
      // oidc-provider keeps only the claims that the granted scopes (or claims) allow.
      async claims() {
        const claims = { ...(user.claims ?? {}), sub: user.sub };
        for (const name of ['email', 'email_verified', 'name', 'groups']) {
          if (user[name] !== undefined) claims[name] = user[name];
        }
        return claims;
      },
    };
  }

  // The password check: a login for an unknown, disabled or wrongly-passworded user fails.
  authenticate(login, password) {
    const user = typeof login === 'string' ? this.active(login) : undefined;
    const candidate = typeof password === 'string' ? password : '';
    // Compare even when the user is unknown, so the answer takes about the same time.
    const ok = passwordMatches(user ?? { password: `\0${candidate}` }, candidate);
    return user && ok ? user.sub : undefined;
  }
}

// -- small HTTP helpers ------------------------------------------------------------------

async function readRawBody(req, limit) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw Object.assign(new Error('request body too large'), { status: 413 });
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function escapeHtml(value) {
  return String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>
<body>
<h1>${escapeHtml(title)}</h1>
${body}
</body>
</html>`;
}

function jsonResponse(ctx, status, body) {
  ctx.status = status;
  ctx.type = 'application/json';
  ctx.set('Cache-Control', 'no-store');
  ctx.body = body;
}

// -- ID token tampering (one-shot) ---------------------------------------------------------

async function tamperIdToken(idToken, request, signingKeys) {
  const header = decodeProtectedHeader(idToken);
  const payload = { ...decodeJwt(idToken), ...request.claims };
  for (const name of request.remove) delete payload[name];
  const jwk = signingKeys.get(header.kid);
  if (!jwk) throw new Error(`no private key with kid ${header.kid} to re-sign the ID token`);
  const key = await importJWK(jwk, header.alg);
  const encoded = new TextEncoder().encode(JSON.stringify(payload));
  return new CompactSign(encoded).setProtectedHeader(header).sign(key);
}

function parseTamperRequest(body) {
  const request = JSON.parse(body || '{}');
  if (!isObject(request)) throw new Error('the body must be a JSON object');
  const claims = request.id_token_claims ?? {};
  const remove = request.remove ?? [];
  if (!isObject(claims)) throw new Error('id_token_claims must be an object');
  if (!Array.isArray(remove) || !remove.every((n) => typeof n === 'string')) {
    throw new Error('remove must be a list of claim names');
  }
  return { claims, remove };
}

// -- the provider ------------------------------------------------------------------------

function buildProvider(config, accounts) {
  const ttl = { ...DEFAULT_TTL, ...(config.ttl ?? {}) };
  const extraClaims = [...new Set(config.users.flatMap((u) => Object.keys(u.claims ?? {})))];
  const firstAlg = config.jwks.keys[0].alg;

  const provider = new Provider(config.issuer, {
    clients: config.clients,
    clientDefaults: {
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: firstAlg,
    },
    jwks: config.jwks,
    cookies: {
      keys: config.cookie_keys ?? [randomBytes(32).toString('base64url')],
      // oidc-provider adds `secure` only on https requests, so these work over loopback http.
      long: { httpOnly: true, sameSite: 'lax' },
      short: { httpOnly: true, sameSite: 'lax' },
    },
    claims: {
      openid: ['sub'],
      profile: ['name', ...extraClaims],
      email: ['email', 'email_verified'],
      groups: ['groups'],
    },
    scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
    responseTypes: ['code'],
    // Put the claims the scopes grant into the ID token too, not only into userinfo.
    conformIdTokenClaims: false,
    findAccount: (_ctx, sub) => accounts.find(sub),
    pkce: { required: () => true },
    // A refresh token for every authorization_code grant of a client allowed to use them,
    // with or without offline_access.
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    // Every refresh_token grant returns a new refresh token and consumes the old one;
    // presenting a consumed one again fails and revokes the whole grant.
    // (config.rotate_refresh_tokens = false: the same refresh token is returned every time,
    // as Google, Auth0 and Okta do by default.)
    rotateRefreshToken: config.rotate_refresh_tokens ?? true,
    ttl,
    // oidc-provider refuses to connect to special-use addresses (SSRF protection), loopback
    // included; this test provider's clients (the back-channel logout URIs) are on loopback,
    // so requests to 127.0.0.1 / localhost go without that check, and only those.
    fetch(url, options) {
      const { hostname } = new URL(url);
      if (config.backchannel_logout === true && ['127.0.0.1', 'localhost'].includes(hostname)) {
        const { dispatcher: _ssrfGuard, ...rest } = options;
        return globalThis.fetch(url, rest);
      }
      return globalThis.fetch(url, options);
    },
    features: {
      devInteractions: { enabled: true },
      revocation: { enabled: true },
      introspection: { enabled: true },
      userinfo: { enabled: true },
      ...resourceFeatures(config, firstAlg),
      // OpenID Connect Back-Channel Logout 1.0, only when the config asks for it: clients
      // may then register backchannel_logout_uri (and backchannel_logout_session_required).
      backchannelLogout: { enabled: config.backchannel_logout === true },
      registration: { enabled: false },
      rpInitiatedLogout: {
        enabled: true,
        // The buttons sit inside the form, so a plain HTTP client can submit it with
        // its hidden xsrf input plus logout=yes.
        async logoutSource(ctx, form) {
          const inner = form.replace('</form>', `
<button autofocus type="submit" name="logout" value="yes">Yes, sign me out</button>
<button type="submit">No, stay signed in</button>
</form>`);
          ctx.type = 'html';
          ctx.body = page('Sign out?', inner);
        },
        async postLogoutSuccessSource(ctx) {
          ctx.type = 'html';
          ctx.body = page('Signed out', '<p>You are signed out.</p>');
        },
      },
    },
    async renderError(ctx, out) {
      ctx.type = 'html';
      const rows = Object.entries(out)
        .map(([key, value]) => `<p><strong>${escapeHtml(key)}</strong>: ${escapeHtml(value)}</p>`)
        .join('\n');
      ctx.body = page('Error', rows);
    },
  });
  provider.proxy = false;
  return provider;
}

// Checks the password of the devInteractions login form before oidc-provider sees it:
// oidc-provider's development login accepts any login. A wrong password sends the browser
// back to the login page (303), so the login form appears again.
function loginCheck(provider, accounts) {
  return async function checkLogin(ctx, next) {
    const match = /^\/interaction\/([^/]+)$/.exec(ctx.path);
    if (ctx.method !== 'POST' || !match) return next();
    let details;
    try {
      details = await provider.interactionDetails(ctx.req, ctx.res);
    } catch {
      return next(); // no interaction: let oidc-provider answer with its own error
    }
    if (details.prompt.name !== 'login') return next();
    // From here on a login is pending: it never reaches oidc-provider's own (password-less)
    // login handler, which would accept any login.
    const form = ctx.is('application/x-www-form-urlencoded')
      ? new URLSearchParams(await readRawBody(ctx.req, MAX_TEST_BODY)) : new URLSearchParams();
    if (details.uid !== match[1] || form.get('prompt') !== 'login') {
      ctx.status = 400;
      ctx.type = 'html';
      ctx.body = page('Error', '<p>expected the login form of this interaction</p>');
      return undefined;
    }
    const accountId = accounts.authenticate(form.get('login'), form.get('password'));
    if (!accountId) {
      log(`login refused for ${JSON.stringify(form.get('login'))}`);
      ctx.set('Cache-Control', 'no-store');
      ctx.redirect(`/interaction/${details.uid}`);
      ctx.status = 303;
      return undefined;
    }
    const returnTo = await provider.interactionResult(ctx.req, ctx.res, {
      login: { accountId },
    }, { mergeWithLastSubmission: false });
    ctx.set('Cache-Control', 'no-store');
    ctx.redirect(returnTo);
    ctx.status = 303;
    return undefined;
  };
}

// What GET /jwks answers instead of the key set, by the mode set with POST /__test/jwks.
const JWKS_MODES = {
  garbage: (ctx) => { ctx.status = 200; ctx.type = 'application/json'; ctx.body = '{"keys": [ oops'; },
  empty: (ctx) => jsonResponse(ctx, 200, { keys: [] }),
  error: (ctx) => jsonResponse(ctx, 503, { error: 'temporarily_unavailable' }),
};

// /__test/ endpoints, the JWKS faults, and the one-shot ID token rewrite on the token
// endpoint's response.
function testControl(accounts, signingKeys) {
  let pendingTamper;
  let jwksMode = 'normal';
  let jwksRequests = 0;
  const tokenPath = '/token';
  const jwksPath = '/jwks';
  return async function control(ctx, next) {
    if (ctx.method === 'GET' && ctx.path === jwksPath) {
      jwksRequests += 1;
      if (jwksMode !== 'normal') {
        ctx.set('Cache-Control', 'no-store');
        JWKS_MODES[jwksMode](ctx);
        return;
      }
    }
    if (ctx.path === '/__test/jwks') {
      if (ctx.method === 'POST') {
        let mode;
        try {
          ({ mode } = JSON.parse(await readRawBody(ctx.req, MAX_TEST_BODY) || '{}'));
        } catch {
          mode = undefined;
        }
        if (mode !== 'normal' && !Object.hasOwn(JWKS_MODES, mode)) {
          jsonResponse(ctx, 400, { error: `mode must be normal, ${Object.keys(JWKS_MODES).join(', ')}` });
          return;
        }
        jwksMode = mode;
      }
      jsonResponse(ctx, 200, { mode: jwksMode, requests: jwksRequests });
      return;
    }
    if (ctx.path.startsWith('/__test/')) {
      const user = /^\/__test\/users\/([^/]+)\/(disable|enable)$/.exec(ctx.path);
      const claimsOf = /^\/__test\/users\/([^/]+)\/claims$/.exec(ctx.path);
      if (ctx.method === 'GET' && ctx.path === '/__test/health') {
        jsonResponse(ctx, 200, { ok: true });
      } else if (ctx.method === 'POST' && user) {
        const sub = decodeURIComponent(user[1]);
        if (!accounts.users.has(sub)) {
          jsonResponse(ctx, 404, { error: 'no such user' });
        } else {
          if (user[2] === 'disable') accounts.disabled.add(sub);
          else accounts.disabled.delete(sub);
          jsonResponse(ctx, 200, { sub, disabled: accounts.disabled.has(sub) });
        }
      } else if (ctx.method === 'POST' && claimsOf) {
        const found = accounts.users.get(decodeURIComponent(claimsOf[1]));
        let claims;
        try {
          claims = JSON.parse(await readRawBody(ctx.req, MAX_TEST_BODY) || '{}');
        } catch {
          claims = undefined;
        }
        if (!found) {
          jsonResponse(ctx, 404, { error: 'no such user' });
        } else if (!isObject(claims)
                   || Object.keys(claims).some((name) => STANDARD_CLAIMS.includes(name))) {
          jsonResponse(ctx, 400, { error: `the body must be an object of other claims than ${
            STANDARD_CLAIMS.join(', ')}` });
        } else {
          found.claims = claims;
          jsonResponse(ctx, 200, { sub: found.sub, claims });
        }
      } else if (ctx.method === 'POST' && /^\/__test\/users\/[^/]+\/groups$/.test(ctx.path)) {
        // The user's groups from now on (userinfo, new ID tokens): {"groups": [...]}.
        const sub = decodeURIComponent(ctx.path.split('/')[3]);
        let body;
        try {
          body = JSON.parse(await readRawBody(ctx.req, MAX_TEST_BODY));
        } catch (err) {
          body = undefined;
        }
        if (!accounts.users.has(sub)) {
          jsonResponse(ctx, 404, { error: 'no such user' });
        } else if (!isObject(body) || !Array.isArray(body.groups)
                   || !body.groups.every((g) => typeof g === 'string')) {
          jsonResponse(ctx, 400, { error: 'give {"groups": [strings]}' });
        } else {
          accounts.users.get(sub).groups = body.groups;
          jsonResponse(ctx, 200, { sub, groups: body.groups.length });
        }
      } else if (ctx.method === 'POST' && ctx.path === '/__test/tamper') {
        try {
          pendingTamper = parseTamperRequest(await readRawBody(ctx.req, MAX_TEST_BODY));
          jsonResponse(ctx, 200, { pending: true });
        } catch (err) {
          jsonResponse(ctx, 400, { error: err.message });
        }
      } else {
        jsonResponse(ctx, 404, { error: 'no such test endpoint' });
      }
      return;
    }
    await next();
    if (pendingTamper && ctx.method === 'POST' && ctx.path === tokenPath && ctx.status === 200
        && isObject(ctx.body) && typeof ctx.body.id_token === 'string') {
      const request = pendingTamper;
      pendingTamper = undefined;
      ctx.body = { ...ctx.body, id_token: await tamperIdToken(ctx.body.id_token, request, signingKeys) };
    }
  };
}

// -- main --------------------------------------------------------------------------------

// oidc-provider validates static clients on first use; do it now, so a bad one fails the start.
async function checkClients(provider, clients) {
  for (const { client_id: clientId } of clients) {
    try {
      if (!await provider.Client.find(String(clientId))) throw new Error('not found');
    } catch (err) {
      fail(`invalid client ${JSON.stringify(clientId)}: ${err.error_description ?? err.message}`);
    }
  }
}

async function main() {
  const [major, minor] = process.versions.node.split('.').map(Number);
  if (major < 20 || (major === 20 && minor < 12)) {
    fail(`Node.js ${process.versions.node} is too old: oidc-provider 9 needs 20.12 or newer`);
  }
  const { port, config } = readOptions();
  checkConfig(config);
  const accounts = new Accounts(config.users);
  const signingKeys = new Map(config.jwks.keys.map((jwk) => [jwk.kid, jwk]));

  let provider;
  try {
    provider = buildProvider(config, accounts);
  } catch (err) {
    fail(`invalid provider configuration: ${err.message}`);
  }
  await checkClients(provider, config.clients);
  provider.use(testControl(accounts, signingKeys));
  provider.use(loginCheck(provider, accounts));
  provider.on('server_error', (_ctx, err) => log(`server_error: ${err.stack ?? err}`));
  for (const event of ERROR_EVENTS) {
    provider.on(event, (ctx, err) => {
      const detail = err.error_detail ? ` (${err.error_detail})` : '';
      log(`${event}: ${ctx.method} ${ctx.path}: ${err.error ?? err.message}${detail}`);
    });
  }

  const server = provider.listen(port, HOST, () => {
    console.log(`listening on ${config.issuer}`);
  });
  server.on('error', (err) => fail(`cannot listen on ${HOST}:${port}: ${err.message}`));

  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => fail(err.stack ?? String(err)));
