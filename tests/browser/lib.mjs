// Shared helpers of the browser tests: a real `herald serve` per test, headless Chromium, and
// pages that run herald.js and record what it hands them.

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

import { chromium } from 'playwright-core';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const ARTIFACTS = join(ROOT, 'artifacts');

/** Longest wait for anything a test expects to happen (an event, a notification). */
export const WAIT_MS = 20_000;

/** The `herald` binary: $HERALD_BIN, else the newest of target/{debug,release}/herald. */
export function heraldBinary() {
  if (process.env.HERALD_BIN) return process.env.HERALD_BIN;
  const targetDir = process.env.CARGO_TARGET_DIR ?? join(ROOT, 'target');
  const candidates = ['debug', 'release']
    .map((profile) => join(targetDir, profile, 'herald'))
    .filter((path) => existsSync(path))
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  if (!candidates.length) throw new Error('no herald binary: run `cargo build -p herald` first (or set HERALD_BIN)');
  return candidates[0];
}

/** A TCP port that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * A `herald serve` in dev mode (so the demo is on) on 127.0.0.1 with its own data dir.
 * `restart()` stops it and starts it again on the same port and data dir.
 */
export class HeraldServer {
  static async start(options = {}) {
    const server = new HeraldServer(options);
    server.port = await freePort();
    server.dataDir = mkdtempSync(join(tmpdir(), 'herald-browser-'));
    await server.#spawn();
    return server;
  }

  /** `allowedOrigins(port)`, if given, is the server's `HERALD_ALLOWED_ORIGINS`. */
  constructor({ env = {}, allowedOrigins = null } = {}) {
    this.env = env;
    this.allowedOrigins = allowedOrigins;
    this.child = null;
    this.stderr = '';
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async #spawn() {
    this.stderr = '';
    this.child = spawn(heraldBinary(), ['serve', '--listen', `127.0.0.1:${this.port}`, '--data-dir', this.dataDir], {
      env: {
        PATH: process.env.PATH,
        RUST_LOG: process.env.RUST_LOG ?? 'warn',
        // Tests run side by side: each server's admin port on a free port, not the default 7301.
        HERALD_ADMIN_LISTEN: '127.0.0.1:0',
        ...(this.allowedOrigins ? { HERALD_ALLOWED_ORIGINS: this.allowedOrigins(this.port) } : {}),
        ...this.env,
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    this.child.stderr.on('data', (chunk) => { this.stderr += chunk; });
    const exited = new Promise((resolve) => this.child.once('exit', (code, signal) => resolve({ code, signal })));
    this.exited = exited;
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const gone = await Promise.race([exited, idle(100).then(() => null)]);
      if (gone) throw new Error(`herald serve exited (${JSON.stringify(gone)}):\n${this.stderr}`);
      try {
        const response = await fetch(`${this.url}/healthz`);
        if (response.ok) break;
      } catch { /* not listening yet */ }
      if (Date.now() > deadline) throw new Error(`herald serve did not answer /healthz:\n${this.stderr}`);
    }
    const credentials = JSON.parse(readFileSync(join(this.dataDir, 'dev-credentials.json'), 'utf8'));
    this.secret = credentials.secret;
    this.apiKey = credentials.api_key;
  }

  /** Stops the server (SIGTERM: it closes every client with `shutdown`), by its PID. */
  async stop() {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGTERM');
    const stopped = await Promise.race([this.exited, idle(15_000).then(() => null)]);
    if (!stopped) {
      this.child.kill('SIGKILL');
      await this.exited;
      throw new Error('herald serve did not stop within 15 s of SIGTERM');
    }
  }

  async restart() {
    await this.stop();
    await this.#spawn();
  }

  async dispose() {
    await this.stop().catch(() => {});
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  /** A subscriber token (HS256), as an app's backend mints it. */
  token(claims) {
    return mintToken(this.secret, claims);
  }

  /** `POST /v1/notify`; fails the test unless it answers 200. */
  async publish(body) {
    const response = await fetch(`${this.url}/v1/notify`, {
      method: 'POST',
      headers: { authorization: `Bearer ${this.apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    const answer = await response.json();
    assert.equal(response.status, 200, JSON.stringify(answer));
    return answer;
  }

  async presence(user) {
    const response = await fetch(`${this.url}/v1/users/${encodeURIComponent(user)}/presence`, {
      headers: { authorization: `Bearer ${this.apiKey}` },
    });
    assert.equal(response.status, 200);
    return response.json();
  }

  /** Waits until `user` has exactly `count` clients in presence. */
  async waitForPresence(user, count) {
    let presence;
    await until(async () => {
      presence = await this.presence(user);
      return presence.sessions.reduce((n, s) => n + s.clients.length, 0) === count;
    }, () => `presence of ${user}: ${JSON.stringify(presence)}, expected ${count} clients`);
    return presence;
  }
}

/**
 * A subscriber token (HS256) signed with `secret`, as an app's backend mints it; `topics`, if
 * given, is its `topics` claim (what its tabs may listen to).
 */
export function mintToken(secret, { user, session, ttlSeconds = 3600, topics }) {
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub: user, iat: now, exp: now + ttlSeconds };
  if (session) claims.sid = session;
  if (topics) claims.topics = topics;
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const unsigned = `${encode({ alg: 'HS256', typ: 'JWT' })}.${encode(claims)}`;
  const signature = createHmac('sha256', secret).update(unsigned).digest('base64url');
  return `${unsigned}.${signature}`;
}

export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-dev-shm-usage'],
  });
}

/**
 * A browser context (one browser profile: one Herald session) whose pages can mint tokens
 * through `window.heraldTestToken({user, session, ttlSeconds})`, as an app's backend would.
 */
export async function newContext(browser, server, options = {}) {
  const context = await browser.newContext(options);
  context.mintedTokens = 0;
  await context.exposeFunction('heraldTestToken', (claims) => {
    context.mintedTokens += 1;
    return server.token(claims);
  });
  return context;
}

/**
 * Opens a tab on the server's origin that runs herald.js with `options` and records everything
 * in `window.recorded`: notifications, statuses, resets, closed, inbox counts, inbox events and
 * topic events. `claim` is the token's `topics` claim; `listen`, topics the tab listens to
 * before its connection opens (`herald.listen` right after `new Herald`).
 */
export async function openTab(context, server, options) {
  const page = await context.newPage();
  page.on('pageerror', (error) => console.error(`[page error] ${error.message}`));
  await startHerald(page, server, options);
  return page;
}

/** Loads a same-origin page and starts herald.js in it (again after a reload, too). */
export async function startHerald(page, server, { user, session, transport, ttlSeconds = 3600, fallback = true, inbox = false, claim, listen }) {
  await page.goto(`${server.url}/healthz`);
  await page.evaluate(async ({ user, session, transport, ttlSeconds, fallback, inbox, claim, listen }) => {
    const { Herald } = await import('/herald.js');
    const recorded = { notifications: [], statuses: [], resets: [], closed: [], counts: [], inbox: [], topic: [] };
    window.recorded = recorded;
    window.herald = new Herald({
      url: '',
      transport,
      fallback,
      inbox,
      token: () => window.heraldTestToken({ user, session, ttlSeconds, topics: claim }),
    });
    herald.on('notification', (n) => recorded.notifications.push(n));
    herald.on('status', (s) => recorded.statuses.push(s));
    herald.on('reset', (r) => recorded.resets.push(r));
    herald.on('closed', (c) => recorded.closed.push(c));
    herald.on('counts', (c) => recorded.counts.push(c));
    herald.on('inbox', (e) => recorded.inbox.push(e));
    herald.on('topic', (e) => recorded.topic.push(e));
    if (listen) {
      window.listened = herald.listen(listen);
      window.listened.catch(() => { /* the test reads it */ });
    }
  }, { user, session, transport, ttlSeconds, fallback, inbox, claim, listen });
  await waitForStatus(page, 'open');
}

export function waitForStatus(page, status) {
  return page.waitForFunction((status) => window.herald?.status === status, status, { timeout: WAIT_MS });
}

/** Waits until the tab has received `count` notifications; returns them all. */
export async function waitForNotifications(page, count) {
  try {
    await page.waitForFunction((count) => window.recorded.notifications.length >= count, count, { timeout: WAIT_MS });
  } catch (error) {
    const got = await notifications(page);
    throw new Error(`expected ${count} notifications, got ${got.length}: ${JSON.stringify(got)}`, { cause: error });
  }
  return notifications(page);
}

export function notifications(page) {
  return page.evaluate(() => window.recorded.notifications);
}

export function recorded(page) {
  return page.evaluate(() => ({
    ...window.recorded,
    client: window.herald.client,
    status: window.herald.status,
    transport: window.herald.transport,
    lastSeq: window.herald.lastSeq,
    epoch: window.herald.epoch,
  }));
}

/** Polls `check` every 50 ms until it is true, for at most `WAIT_MS`. */
export async function until(check, describe = () => 'condition', timeout = WAIT_MS) {
  const deadline = Date.now() + timeout;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${describe()}`);
    await delay(50);
  }
}

export function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Like `delay`, but does not keep the process alive (for the losing side of a race). */
function idle(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

export function artifactPath(name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  return join(ARTIFACTS, name);
}
