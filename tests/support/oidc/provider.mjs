// A real OpenID Provider for the tests: panva's oidc-provider (OpenID
// Certified), configured from a JSON file the tests write:
//   { issuer, port, jwks: {keys: [private JWKs]}, clients: [...],
//     users: {id: {password, email, groups}} }
// Its built-in development login accepts any password, so this serves its
// own interaction: a login form that checks the password, then grants the
// requested scopes (login and consent in one step).
import http from 'node:http';
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));

const provider = new Provider(config.issuer, {
  clients: config.clients,
  jwks: config.jwks,
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
  // Without this, claims of granted scopes go to userinfo only, not the ID token.
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: false } },
  pkce: { required: () => true },
  cookies: { keys: ['volt-test-cookie-key'] },
  findAccount: async (ctx, id) => {
    const user = config.users[id];
    if (!user) return undefined;
    return {
      accountId: id,
      claims: async () => ({ sub: id, email: user.email, email_verified: true,
                             groups: user.groups }),
    };
  },
});

function readForm(req) {
  return new Promise((resolve) => {
    let body = '';
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', () => resolve(Object.fromEntries(new URLSearchParams(body))));
  });
}

const callback = provider.callback();
const server = http.createServer(async (req, res) => {
  try {
    const match = req.url.match(/^\/interaction\/([^/?]+)(\/login)?/);
    if (!match) return callback(req, res);
    const details = await provider.interactionDetails(req, res);
    if (!match[2]) {
      res.writeHead(200, { 'content-type': 'text/html' });
      return res.end(`<form method="post" action="/interaction/${match[1]}/login">` +
        '<input name="username"><input name="password" type="password"><button>Sign in</button></form>');
    }
    const form = await readForm(req);
    const user = config.users[form.username];
    if (!user || user.password !== form.password) {
      res.writeHead(401, { 'content-type': 'text/plain' });
      return res.end('wrong username or password');
    }
    const grant = new provider.Grant({ accountId: form.username, clientId: details.params.client_id });
    grant.addOIDCScope(details.params.scope);
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, {
      login: { accountId: form.username }, consent: { grantId },
    }, { mergeWithLastSubmission: false });
  } catch (error) {
    res.writeHead(500, { 'content-type': 'text/plain' });
    res.end(String(error));
  }
});
server.listen(config.port, '127.0.0.1', () => console.log(`listening ${config.port}`));
