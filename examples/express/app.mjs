// An Express app wired to Herald (docs/guides/express.md): a toy sign-in, a token for the signed-in
// user's page, a page that loads herald.js, a background job that notifies, and sign-out.
//
//   HERALD_SECRET=… HERALD_API_KEY=… node app.mjs
//
// Settings, from the environment: HERALD_SECRET and HERALD_API_KEY (required: the same as
// Herald's), HERALD_URL (where this backend reaches Herald: http://127.0.0.1:7300),
// HERALD_PUBLIC_URL (where the page reaches it: /herald, behind the same-origin proxy of
// deploy/nginx/same-origin.conf), PORT (3000; 0 picks a free one), EXPORT_DELAY_MS (2000: how long
// the job "works"). It prints `listening on http://ADDR` once it serves.

import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';

import express from 'express';
import { Herald } from '@herald/server';

import { ExportQueue } from './jobs.mjs';

const herald = new Herald({
  url: process.env.HERALD_URL ?? 'http://127.0.0.1:7300',
  apiKey: required('HERALD_API_KEY'),
  secret: required('HERALD_SECRET'),
});
const heraldPublicUrl = process.env.HERALD_PUBLIC_URL ?? '/herald';

// The toy sign-in: whoever types a name is that user. Each sign-in gets a random cookie (secret:
// only this server and the browser know it) and a public session id for Herald (the token's
// `sid`, which the page can see: never the cookie's value).
const signIns = new Map(); // cookie value -> {user, session}
const SIGN_INS_MAX = 10_000; // a toy store: the oldest sign-in goes first past this bound

const app = express();
app.use(express.urlencoded({ extended: false }));

function signedIn(req) {
  const cookie = /(?:^|;\s*)app_session=([0-9a-f]{64})/.exec(req.headers.cookie ?? '')?.[1];
  return cookie ? { cookie, ...signIns.get(cookie) } : null;
}

function requireSignIn(req, res, next) {
  const signIn = signedIn(req);
  if (!signIn?.user) return res.status(401).json({ error: 'sign in first' });
  req.signIn = signIn;
  next();
}

app.post('/sign-in', (req, res) => {
  const user = String(req.body.user ?? '').trim();
  if (!user || Buffer.byteLength(user) > 128) return res.status(400).send('a name of 1 to 128 bytes');
  const cookie = randomBytes(32).toString('hex');
  if (signIns.size >= SIGN_INS_MAX) signIns.delete(signIns.keys().next().value);
  signIns.set(cookie, { user, session: randomBytes(12).toString('base64url') });
  // In production: `Secure` too (HTTPS only).
  res.setHeader('Set-Cookie', `app_session=${cookie}; HttpOnly; SameSite=Lax; Path=/`);
  res.redirect(303, '/');
});

// Who is signed in, and where the page finds Herald.
app.get('/me', requireSignIn, (req, res) => {
  res.json({ user: req.signIn.user, heraldUrl: heraldPublicUrl });
});

// The page's Herald token: herald.js calls this whenever it needs one (at start, and when the
// token expires), so a short lifetime costs nothing.
app.get('/herald-token', requireSignIn, (req, res) => {
  const { user, session } = req.signIn;
  res.json({ token: herald.mintToken({ user, session, ttl: 900 }) });
});

// Something slow the user asks for: the answer comes at once, the notification when it is done.
const exports = new ExportQueue(herald, { delayMs: Number(process.env.EXPORT_DELAY_MS ?? 2_000) });
app.post('/exports', requireSignIn, (req, res) => {
  const id = exports.enqueue(req.signIn.user);
  if (id === null) return res.status(503).json({ error: 'too many exports waiting: try again later' });
  res.status(202).json({ export: id });
});

// Sign-out closes the session's streams in every tab and refuses its tokens from now on.
app.post('/sign-out', requireSignIn, async (req, res, next) => {
  const { cookie, user, session } = req.signIn;
  signIns.delete(cookie);
  try {
    await herald.closeSession(user, session);
  } catch (error) {
    return next(error);
  }
  res.setHeader('Set-Cookie', 'app_session=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0');
  res.redirect(303, '/');
});

app.use(express.static(fileURLToPath(new URL('./public', import.meta.url))));

const server = app.listen(Number(process.env.PORT ?? 3000), '127.0.0.1', () => {
  const { address, port } = server.address();
  console.log(`listening on http://${address}:${port}`);
});

// SIGTERM or Ctrl-C: stop taking requests and jobs, let the running job finish.
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.once(signal, async () => {
    server.close();
    await exports.stop();
    process.exit(0);
  });
}

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`set ${name} (the same as Herald's)`);
    process.exit(2);
  }
  return value;
}
