// A real OpenID provider on loopback for the SSO tests (node's oidc-provider).
//
// Started by tests/staffsso/provider.py (the `oidc_provider` fixture):
//   node tests/oidc_provider/provider.mjs
// with CLIENT_ID, CLIENT_SECRET and, optionally, PROVIDER_NOW_MS (the test
// process's clock, which tests/clock/sitecustomize.py may have moved: the
// provider then dates its tokens by the same clock). It listens on a free
// port of 127.0.0.1 and prints "READY <issuer>" once it serves.
//
// Everything the registry sees is the real protocol: discovery, the
// authorization endpoint with PKCE, a sign-in page, the token endpoint with
// client authentication, signed ID tokens, JWKS, userinfo, refresh tokens.
// Only the test-control API below (/test/...) is not OpenID Connect: the tests
// use it to set a person's groups, amr and status, and to have the next ID
// token issued with one fault (re-signed with the provider's own key, so only
// the fault differs from a genuine token).

const RealDate = Date;
// Moved by POST /test/clock too, when a test moves its own clock (time_machine) across a token's life.
let offsetMs = process.env.PROVIDER_NOW_MS ? Number(process.env.PROVIDER_NOW_MS) - RealDate.now() : 0;
class ShiftedDate extends RealDate {
  constructor(...args) {
    if (args.length === 0) super(RealDate.now() + offsetMs);
    else super(...args);
  }
  static now() {
    return RealDate.now() + offsetMs;
  }
}
globalThis.Date = ShiftedDate;

// After the clock is set: oidc-provider and jose read Date when they date a token.
const { default: Provider } = await import('oidc-provider');
const jose = await import('jose');
const http = await import('node:http');
const crypto = await import('node:crypto');

const CLIENT_ID = process.env.CLIENT_ID || 'cd2-registry';
const CLIENT_SECRET = process.env.CLIENT_SECRET || 'test-client-secret-not-for-production';

// People the provider knows, by subject. Set by the tests (PUT /test/users/<sub>).
const users = new Map();
// The fault the next ID token from the token endpoint carries, if any.
let nextFault = null;
// What the token endpoint was asked, for tests that check a re-validation happened.
const tokenRequests = [];

const { privateKey, publicKey } = await jose.generateKeyPair('RS256', { extractable: true });
const kid = crypto.randomUUID();
const privateJwk = { ...(await jose.exportJWK(privateKey)), kid, alg: 'RS256', use: 'sig' };
// A key of nobody's: an ID token signed with it must be refused (bad signature).
const strangerKey = (await jose.generateKeyPair('RS256')).privateKey;

async function withFault(idToken, fault) {
  const claims = jose.decodeJwt(idToken);
  const now = Math.floor(Date.now() / 1000);
  let key = privateKey;
  switch (fault) {
    case 'wrong_audience':
      claims.aud = 'someone-elses-client';
      claims.azp = 'someone-elses-client';
      break;
    case 'wrong_issuer':
      claims.iss = 'https://evil.example.org';
      break;
    case 'expired':
      claims.iat = now - 7200;
      claims.exp = now - 3600;
      break;
    case 'wrong_nonce':
      claims.nonce = 'not-the-nonce-you-sent';
      break;
    case 'no_nonce':
      delete claims.nonce;
      break;
    case 'stranger_key':
      key = strangerKey;
      break;
    case 'stale_auth_time':
      // As a provider that ignored prompt=login and max_age would answer.
      claims.auth_time = now - 3600;
      break;
    case 'tampered': {
      // The genuine token with one claim changed and its signature kept: a
      // person promoting themselves on the way.
      const [header, , signature] = idToken.split('.');
      const payload = { ...claims, groups: ['cd2-admins', 'added-in-transit'] };
      return `${header}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.${signature}`;
    }
    default:
      throw new Error(`unknown fault ${fault}`);
  }
  return new jose.SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid, typ: 'JWT' }).sign(key);
}

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      // The registry's callback on the test client's host; any loopback port is
      // allowed too (Client.prototype.redirectUriAllowed below) for the browser tests.
      redirect_uris: ['http://testserver/sso/callback/'],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_post',
      require_auth_time: true,
    },
  ],
  jwks: { keys: [privateJwk] },
  cookies: { keys: ['test-provider-cookie-key'] },
  scopes: ['openid', 'email', 'profile', 'groups', 'offline_access'],
  claims: {
    // amr and auth_time from the sign-in: amr is what the registry reads for multi-factor.
    openid: ['sub', 'amr', 'auth_time'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  // Claims asked by scope go into the ID token too, as Entra ID and Okta do
  // for their groups claim.
  conformIdTokenClaims: false,
  // PKCE required of every client: a registry that stopped sending it would fail here.
  pkce: { required: () => true },
  features: { devInteractions: { enabled: false }, revocation: { enabled: true } },
  // A refresh token on every code exchange, so the registry can re-validate the session.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  ttl: { AccessToken: 3600, IdToken: 3600, RefreshToken: 2 * 24 * 3600, Interaction: 600, Session: 24 * 3600, Grant: 24 * 3600, AuthorizationCode: 60 },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  // First-party: no consent screen.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid email profile groups offline_access');
    await grant.save();
    return grant;
  },
  async findAccount(ctx, sub) {
    const person = users.get(sub);
    // A disabled or removed person: no sign-in, no refresh, no userinfo.
    if (!person || person.disabled) return undefined;
    return {
      accountId: sub,
      async claims() {
        const claims = { sub, email: person.email, email_verified: person.email_verified ?? true, name: person.name ?? sub };
        if (person.groups !== null && person.groups !== undefined) claims.groups = person.groups;
        if (person.hd) claims.hd = person.hd;
        return claims;
      },
    };
  },
  renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = `<!doctype html><title>Provider error</title><h1>Provider error</h1><pre>${escapeHtml(JSON.stringify(out))}</pre>`;
  },
});
provider.proxy = false;

const originalRedirectUriAllowed = provider.Client.prototype.redirectUriAllowed;
provider.Client.prototype.redirectUriAllowed = function redirectUriAllowed(uri) {
  return originalRedirectUriAllowed.call(this, uri) || /^http:\/\/(127\.0\.0\.1|localhost):\d+\/sso\/callback\/$/.test(uri);
};

provider.use(async (ctx, next) => {
  await next();
  if (ctx.path === '/token') {
    const grantType = ctx.oidc?.params?.grant_type;
    tokenRequests.push({ grant_type: grantType, status: ctx.status, error: ctx.body?.error ?? null });
    if (ctx.status === 200 && ctx.body?.id_token && nextFault) {
      const fault = nextFault;
      nextFault = null;
      ctx.body = { ...ctx.body, id_token: await withFault(ctx.body.id_token, fault) };
    }
  }
});

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    let data = '';
    req.on('data', (chunk) => { data += chunk; });
    req.on('end', () => resolve(data));
    req.on('error', reject);
  });
}

function send(res, status, type, body) {
  res.statusCode = status;
  res.setHeader('Content-Type', type);
  res.end(body);
}

function signInPage(uid, { error = '', prompt = 'login' } = {}) {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Test identity provider: sign in</title></head>
<body>
<h1>Test identity provider</h1>
<p>${prompt === 'login' ? 'Sign in to continue to the CD2 key registry.' : escapeHtml(prompt)}</p>
${error ? `<p role="alert" id="error">${escapeHtml(error)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}/login">
  <label>Username <input name="login" id="login" autocomplete="username" autofocus></label>
  <button type="submit" id="sign-in">Sign in</button>
</form>
</body></html>`;
}

async function interaction(req, res, url) {
  const match = url.pathname.match(/^\/interaction\/([^/]+)(\/login)?$/);
  const uid = match[1];
  const details = await provider.interactionDetails(req, res);
  if (req.method === 'GET') {
    if (details.prompt.name === 'login') return send(res, 200, 'text/html; charset=utf-8', signInPage(uid));
    // No consent screen (loadExistingGrant): finish any other prompt at once.
    return provider.interactionFinished(req, res, {}, { mergeWithLastSubmission: true });
  }
  const form = new URLSearchParams(await readBody(req));
  const sub = form.get('login') || '';
  const person = users.get(sub);
  if (!person || person.disabled) {
    return send(res, 200, 'text/html; charset=utf-8', signInPage(uid, { error: 'Unknown or disabled user.' }));
  }
  return provider.interactionFinished(
    req,
    res,
    { login: { accountId: sub, amr: person.amr ?? ['pwd'], remember: true } },
    { mergeWithLastSubmission: false },
  );
}

async function control(req, res, url) {
  const body = req.method === 'GET' ? {} : JSON.parse((await readBody(req)) || '{}');
  let match;
  if ((match = url.pathname.match(/^\/test\/users\/([^/]+)$/)) && req.method === 'PUT') {
    users.set(decodeURIComponent(match[1]), body);
  } else if ((match = url.pathname.match(/^\/test\/users\/([^/]+)$/)) && req.method === 'PATCH') {
    const sub = decodeURIComponent(match[1]);
    users.set(sub, { ...(users.get(sub) || {}), ...body });
  } else if ((match = url.pathname.match(/^\/test\/users\/([^/]+)$/)) && req.method === 'DELETE') {
    users.delete(decodeURIComponent(match[1]));
  } else if (url.pathname === '/test/next-id-token' && req.method === 'POST') {
    nextFault = body.fault;
    await withFault(await new jose.SignJWT({ probe: true }).setProtectedHeader({ alg: 'RS256', kid }).sign(privateKey), nextFault);
  } else if (url.pathname === '/test/clock' && req.method === 'POST') {
    offsetMs = Number(body.now_ms) - RealDate.now();
  } else if (url.pathname === '/test/token-requests' && req.method === 'GET') {
    return send(res, 200, 'application/json', JSON.stringify(tokenRequests));
  } else if (url.pathname === '/test/reset' && req.method === 'POST') {
    users.clear();
    nextFault = null;
    tokenRequests.length = 0;
  } else {
    return send(res, 404, 'application/json', '{"error":"no such test control"}');
  }
  return send(res, 200, 'application/json', '{"ok":true}');
}

const callback = provider.callback();
server.on('request', async (req, res) => {
  const url = new URL(req.url, issuer);
  try {
    if (url.pathname.startsWith('/interaction/')) return await interaction(req, res, url);
    if (url.pathname.startsWith('/test/')) return await control(req, res, url);
    return callback(req, res);
  } catch (err) {
    console.error(err);
    if (!res.headersSent) send(res, 500, 'text/plain', String(err));
  }
});

process.on('SIGTERM', () => server.close(() => process.exit(0)));
console.log(`READY ${issuer}`);
