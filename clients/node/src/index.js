// @herald/server: Herald's server-side client for Node (≥ 20). An app's backend uses it to publish
// notifications, mint subscriber tokens, read presence, close sessions (sign-out), manage a
// user's inbox, make tabs, sessions or users listen to topics, and see a user's Web Push
// subscriptions.
//
// No dependency: Node's own `fetch`, `AbortSignal` and `node:crypto`. Plain JavaScript, with
// hand-kept types in ../index.d.ts (type-checked by `npm run typecheck`), so there is nothing to
// build before use. The routes and bodies are docs/PROTOCOL.md's; the browser client is
// clients/js (herald.js), not this.
//
// Nothing here retries by itself: a publish that timed out may or may not have been stored, and
// only the caller knows whether to send it again (with the same `idempotencyKey`, so a repeat
// within 24 hours stores nothing twice).

import { createHmac } from 'node:crypto';

/** How long one request may take, by default, before it is abandoned (a `timeout` error). */
export const DEFAULT_TIMEOUT_MS = 10_000;

/** Lifetime of a minted token when `ttl` is not given, in seconds: short, since herald.js asks
 * for a new token by itself whenever one expires. */
export const DEFAULT_TOKEN_TTL_SECS = 900;

/** Entries a batch publish takes at most (the server's bound: more is 400 `invalid_batch`). */
export const BATCH_LEN_MAX = 1_000;

/**
 * Herald refused a request, or did not answer it.
 *
 * `status` is the HTTP status (`null` when there was no answer), `code` the server's error code
 * (`invalid_target`, `client_not_found`, `rate_limited`, … see docs/PROTOCOL.md#errors), or one of
 * this client's: `timeout` (no answer within the timeout), `aborted` (the caller's signal),
 * `unreachable` (the connection failed), `invalid_response` (an answer that is not Herald's JSON).
 * `retryAfter` is the `Retry-After` of a 429 or 503, in seconds.
 */
export class HeraldError extends Error {
  constructor(status, code, message, { retryAfter = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'HeraldError';
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** A publisher of one Herald server (or cluster): its URL, the API key and the token secret. */
export class Herald {
  #url;
  #apiKey;
  #secret;
  #timeoutMs;

  /**
   * `url`: where Herald answers, with any path prefix it is mounted under
   * (`http://127.0.0.1:7300`, `https://app.example/herald`). `apiKey` (HERALD_API_KEY) is needed
   * by every call but `mintToken`, `secret` (HERALD_SECRET) only by `mintToken`.
   */
  constructor({ url, apiKey, secret, timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
    if (typeof url !== 'string' || !/^https?:\/\//.test(url)) {
      throw new TypeError('Herald: `url` must be an http:// or https:// URL');
    }
    if (apiKey !== undefined && (typeof apiKey !== 'string' || apiKey === '')) {
      throw new TypeError('Herald: `apiKey` must be a non-empty string');
    }
    if (secret !== undefined && !((typeof secret === 'string' || secret instanceof Uint8Array) && secret.length > 0)) {
      throw new TypeError('Herald: `secret` must be a non-empty string or Uint8Array');
    }
    checkTimeout(timeoutMs);
    this.#url = url.replace(/\/+$/, '');
    this.#apiKey = apiKey;
    this.#secret = secret;
    this.#timeoutMs = timeoutMs;
  }

  /** The URL given, without a trailing slash. */
  get url() {
    return this.#url;
  }

  // ---- Publishing -------------------------------------------------------------------------

  /**
   * `POST /v1/notify`: one notification to exactly one target (`user`, `users`, `user` +
   * `session`, `client` or `topic`). Resolves to the receipt, e.g.
   * `{notifications: [{user, seq}], delivered}` (`topic: {topic, tseq}` for a durable topic
   * event, `{job}` when an `inbox` publish goes on in the background).
   *
   * Web Push, on a server with a VAPID key: `push` is `offline` (the default: a durable
   * notification is pushed to each subscription whose session has no live tab, after a 5 s
   * grace), `always` (every subscription, at once) or `never`; `pushPayload` what the push
   * carries instead of `data` (about 3,800 bytes at most: 413 `push_payload_too_large`);
   * `pushTtl` its `TTL` in seconds (a day by default); `pushUrgency` `very-low`, `low`, `normal`
   * or `high`; `pushTopic` its collapse key (1 to 32 of `A-Z a-z 0-9 - _`).
   */
  notify(notification, options) {
    return this.#request('POST', '/v1/notify', { body: notifyBody(notification), options });
  }

  /**
   * `POST /v1/notify/batch`: up to 1,000 notifications in one request (each as for `notify`),
   * stored together. Resolves to `{results, failed}`: one result per entry, in order, either a
   * receipt or `{error: {status, code, message}}` (an entry fails alone).
   */
  notifyBatch(notifications, options) {
    if (!Array.isArray(notifications) || notifications.length === 0 || notifications.length > BATCH_LEN_MAX) {
      throw new TypeError(`Herald.notifyBatch: give 1 to ${BATCH_LEN_MAX} notifications`);
    }
    return this.#request('POST', '/v1/notify/batch', {
      body: { notifications: notifications.map(notifyBody) },
      options,
    });
  }

  /** `GET /v1/jobs/{id}`: how far the background job of a large `inbox` publish has got. */
  job(id, options) {
    return this.#request('GET', `/v1/jobs/${segment(id, 'job id')}`, { options });
  }

  // ---- Subscriber tokens ------------------------------------------------------------------

  /**
   * A subscriber token for the page of a signed-in user: an HS256 JWT signed with the secret,
   * with `sub` = `user`, `sid` = `session` (when given), `iat` = now and `exp` = now + `ttl`
   * seconds (900 by default; the server refuses more than its `--token-ttl-max`, 30 days by
   * default), the `topics` claim (topics and `prefix*` patterns the tab may listen to by itself)
   * and `aud` (only if the server runs with `--token-audience`) when given.
   */
  mintToken({ user, session, ttl = DEFAULT_TOKEN_TTL_SECS, topics, audience } = {}) {
    if (this.#secret === undefined) throw new TypeError('Herald.mintToken: no `secret` was given');
    if (typeof user !== 'string' || user === '') throw new TypeError('Herald.mintToken: `user` must be a non-empty string');
    if (session !== undefined && (typeof session !== 'string' || session === '')) {
      throw new TypeError('Herald.mintToken: `session` must be a non-empty string');
    }
    if (!Number.isInteger(ttl) || ttl <= 0) throw new TypeError('Herald.mintToken: `ttl` must be a whole number of seconds > 0');
    if (topics !== undefined && (!Array.isArray(topics) || !topics.every((t) => typeof t === 'string'))) {
      throw new TypeError('Herald.mintToken: `topics` must be an array of strings');
    }
    const now = Math.floor(Date.now() / 1000);
    const claims = { sub: user };
    if (session !== undefined) claims.sid = session;
    claims.iat = now;
    claims.exp = now + ttl;
    if (topics !== undefined) claims.topics = topics;
    if (audience !== undefined) claims.aud = audience;
    const unsigned = `${base64url({ alg: 'HS256', typ: 'JWT' })}.${base64url(claims)}`;
    const signature = createHmac('sha256', this.#secret).update(unsigned).digest('base64url');
    return `${unsigned}.${signature}`;
  }

  // ---- Users: presence, sessions, stored notifications ------------------------------------

  /** `GET /v1/users/{user}/presence`: the user's sessions and their connected clients. */
  presence(user, options) {
    return this.#request('GET', `/v1/users/${segment(user, 'user')}/presence`, { options });
  }

  /**
   * `DELETE /v1/users/{user}/sessions/{session}`: sign-out. Closes the session's clients
   * (`closed: session_closed`) and refuses its tokens issued until now. Resolves to `{closed}`.
   */
  closeSession(user, session, options) {
    return this.#request('DELETE', `/v1/users/${segment(user, 'user')}/sessions/${segment(session, 'session')}`, { options });
  }

  /** `DELETE /v1/users/{user}/sessions`: sign-out everywhere (every session). `{closed}`. */
  closeAllSessions(user, options) {
    return this.#request('DELETE', `/v1/users/${segment(user, 'user')}/sessions`, { options });
  }

  /** `GET /v1/users/{user}/notifications?after&limit`: stored notifications, oldest first. */
  notifications(user, { after, limit, ...options } = {}) {
    return this.#request('GET', `/v1/users/${segment(user, 'user')}/notifications`, {
      query: { after, limit },
      options,
    });
  }

  /** The inbox of `user` (read state, counts), with the API key. */
  inbox(user) {
    return new Inbox((method, path, options) => this.#request(method, path, options), `/v1/users/${segment(user, 'user')}/inbox`);
  }

  // ---- Topics -----------------------------------------------------------------------------

  /**
   * `POST /v1/topics/listen`: makes a tab (`{client}`), a session (`{user, session}`) or a user
   * (`{user}`, following) listen to `topics`, whatever its tokens allow. Resolves to the scope's
   * topics now (`{client|user[, session], topics, positions}`).
   */
  listen({ topics, client, user, session }, options) {
    return this.#request('POST', '/v1/topics/listen', { body: listenBody({ topics, client, user, session }), options });
  }

  /** `POST /v1/topics/unlisten`: the reverse of `listen`, at the same scopes. */
  unlisten({ topics, client, user, session }, options) {
    return this.#request('POST', '/v1/topics/unlisten', { body: listenBody({ topics, client, user, session }), options });
  }

  /** `GET /v1/topics/{topic}`: who listens to it (`{topic, users, sessions, clients, truncated}`). */
  topic(topic, options) {
    return this.#request('GET', `/v1/topics/${segment(topic, 'topic')}`, { options });
  }

  // ---- Web Push ----------------------------------------------------------------------------

  /**
   * `GET /v1/users/{user}/push-subscriptions`: the user's push subscriptions (each browser
   * registers its own, with herald.js's `herald.push.subscribe()`), oldest first:
   * `{user, subscriptions: [{id, session, push_service, created_at}]}`.
   */
  pushSubscriptions(user, options) {
    return this.#request('GET', `/v1/users/${segment(user, 'user')}/push-subscriptions`, { options });
  }

  /**
   * `DELETE /v1/users/{user}/push-subscriptions/{id}`: removes one, by the `id` listed.
   * Resolves to nothing; an id the user does not have rejects with 404 `no_such_subscription`.
   */
  removePushSubscription(user, id, options) {
    const path = `/v1/users/${segment(user, 'user')}/push-subscriptions/${segment(id, 'subscription id')}`;
    return this.#request('DELETE', path, { options }).then(() => undefined);
  }

  /**
   * `GET /v1/push/vapid-public-key` (no API key needed): `{public_key}`, what a page gives
   * `pushManager.subscribe`. A server without a VAPID key rejects with 404 `push_not_configured`.
   */
  vapidPublicKey(options) {
    return this.#request('GET', '/v1/push/vapid-public-key', { auth: false, options });
  }

  // ---- The server -------------------------------------------------------------------------

  /** `GET /healthz`: `{status, node, store, bus}` (`status` is `ok` or `degraded`). */
  health(options) {
    return this.#request('GET', '/healthz', { auth: false, options });
  }

  /**
   * `GET /v1/cluster`: this node's view of its cluster: `{node, bus, peers, subscribed_shards,
   * …}` and its bus traffic since it started (a single node: `bus: 'local'`, no peers).
   */
  cluster(options) {
    return this.#request('GET', '/v1/cluster', { options });
  }

  /**
   * One request: JSON in, JSON out, a `HeraldError` for anything but a 2xx answer. `options`:
   * `signal` (the caller's AbortSignal), `timeoutMs` (this call's timeout).
   */
  #request(method, path, { body, query, auth = true, headers = {}, options: { signal, timeoutMs = this.#timeoutMs } = {} } = {}) {
    // Mistakes of the caller throw at once; what the server or the network does rejects.
    checkTimeout(timeoutMs);
    if (auth && this.#apiKey === undefined) throw new TypeError('Herald: no `apiKey` was given');
    if (signal !== undefined && !(signal instanceof AbortSignal)) throw new TypeError('Herald: `signal` must be an AbortSignal');
    return this.#send(method, path, { body, query, auth, headers, signal, timeoutMs });
  }

  async #send(method, path, { body, query, auth, headers, signal, timeoutMs }) {
    const url = new URL(this.#url + path);
    for (const [name, value] of Object.entries(query ?? {})) {
      if (value !== undefined && value !== null) url.searchParams.set(name, String(value));
    }
    const timeout = AbortSignal.timeout(timeoutMs);
    const sent = {
      method,
      headers: {
        accept: 'application/json',
        ...(auth ? { authorization: `Bearer ${this.#apiKey}` } : {}),
        ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...headers,
      },
      body: body !== undefined ? JSON.stringify(body) : undefined,
      signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
    };
    let response;
    let text;
    try {
      response = await fetch(url, sent);
      text = await response.text();
    } catch (error) {
      if (signal?.aborted) throw new HeraldError(null, 'aborted', `${method} ${path}: aborted by the caller`, { cause: error });
      if (timeout.aborted) throw new HeraldError(null, 'timeout', `${method} ${path}: no answer within ${timeoutMs} ms`, { cause: error });
      throw new HeraldError(null, 'unreachable', `${method} ${path}: ${error.cause?.message ?? error.message}`, { cause: error });
    }
    let answer;
    try {
      answer = text === '' ? null : JSON.parse(text);
    } catch (error) {
      throw new HeraldError(response.status, 'invalid_response', `${method} ${path}: answered ${response.status} with a body that is not JSON`, { cause: error });
    }
    if (response.ok) return answer;
    const retryAfter = response.headers.get('retry-after');
    const refusal = answer?.error;
    if (typeof refusal?.code !== 'string') {
      throw new HeraldError(response.status, 'invalid_response', `${method} ${path}: answered ${response.status} without Herald's error body`);
    }
    throw new HeraldError(response.status, refusal.code, String(refusal.message ?? refusal.code), {
      retryAfter: retryAfter === null ? null : Number(retryAfter),
    });
  }
}

/** The inbox of one user, with the API key: `herald.inbox(user)`. */
export class Inbox {
  #request;
  #path;

  /** Made by `herald.inbox(user)`. */
  constructor(request, path) {
    this.#request = request;
    this.#path = path;
  }

  /** `GET …/inbox/counts` → `{unread, unseen, total, archived, version}`. */
  counts(options) {
    return this.#request('GET', `${this.#path}/counts`, { options }).then((answer) => answer.counts);
  }

  /** `GET …/inbox?status&type&before&limit`: a page, newest first, with `next_before` and `counts`. */
  list({ status, type, before, limit, ...options } = {}) {
    return this.#request('GET', this.#path, { query: { status, type, before, limit }, options });
  }

  /**
   * `POST …/inbox/mark`: `[seq, …]` (1 to 1,000) or `{allUpTo: seq}`, as `read` (default),
   * `unread`, `seen`, `archived` or `unarchived` (`unread` and `unarchived` only take seqs). Resolves
   * to the change (`{op: 'mark', as, at, seqs | all_up_to, changed, counts}`). `exceptClient`:
   * a tab that must not get the `inbox` event (the one that made the change).
   */
  mark(target, as = 'read', { exceptClient, ...options } = {}) {
    return this.#request('POST', `${this.#path}/mark`, {
      body: { ...selection(target), as },
      headers: exceptClient === undefined ? {} : { 'x-herald-client': exceptClient },
      options,
    });
  }

  /** Deletes one seq (`DELETE …/inbox/{seq}`) or `{allUpTo: seq}` (`DELETE …/inbox?all_up_to`). */
  delete(target, { exceptClient, ...options } = {}) {
    const headers = exceptClient === undefined ? {} : { 'x-herald-client': exceptClient };
    if (Number.isInteger(target)) {
      return this.#request('DELETE', `${this.#path}/${target}`, { headers, options });
    }
    if (target && Number.isInteger(target.allUpTo)) {
      return this.#request('DELETE', this.#path, { query: { all_up_to: target.allUpTo }, headers, options });
    }
    throw new TypeError('Inbox.delete: give a seq or {allUpTo: seq}');
  }
}

/** The wire body of one notification, from the camelCase options. */
function notifyBody(notification) {
  if (notification === null || typeof notification !== 'object') {
    throw new TypeError('Herald.notify: give {user | users | client | topic, type, data, …}');
  }
  const {
    user, session, client, users, topic, type, data, durable, idempotencyKey, exceptClient, exceptUser, inbox,
    push, pushPayload, pushTtl, pushUrgency, pushTopic, ...rest
  } = notification;
  const unknown = Object.keys(rest);
  if (unknown.length) throw new TypeError(`Herald.notify: unknown option ${unknown.map((k) => `\`${k}\``).join(', ')}`);
  const to = {};
  if (user !== undefined) to.user = user;
  if (session !== undefined) to.session = session;
  if (client !== undefined) to.client = client;
  if (users !== undefined) to.users = users;
  if (topic !== undefined) to.topic = topic;
  const body = { to };
  if (type !== undefined) body.type = type;
  if (data !== undefined) body.data = data;
  if (durable !== undefined) body.durable = durable;
  if (idempotencyKey !== undefined) body.idempotency_key = idempotencyKey;
  if (exceptClient !== undefined) body.except_client = exceptClient;
  if (exceptUser !== undefined) body.except_user = exceptUser;
  if (inbox !== undefined) body.inbox = inbox;
  // Web Push: sent as given; the server checks the values (400 `invalid_json` for an unknown
  // `push` or `pushUrgency`, `invalid_request` for a bad `pushTopic`).
  if (push !== undefined) body.push = push;
  if (pushPayload !== undefined) body.push_payload = pushPayload;
  if (pushTtl !== undefined) body.push_ttl = pushTtl;
  if (pushUrgency !== undefined) body.push_urgency = pushUrgency;
  if (pushTopic !== undefined) body.push_topic = pushTopic;
  return body;
}

function listenBody({ topics, client, user, session }) {
  const body = { topics: typeof topics === 'string' ? [topics] : topics };
  if (client !== undefined) body.client = client;
  if (user !== undefined) body.user = user;
  if (session !== undefined) body.session = session;
  return body;
}

function selection(target) {
  if (Array.isArray(target)) return { seqs: target };
  if (target && Number.isInteger(target.allUpTo)) return { all_up_to: target.allUpTo };
  throw new TypeError('Inbox.mark: give [seq, …] or {allUpTo: seq}');
}

/** One path segment, percent-encoded (user and session ids may hold `/`, spaces, …). */
function segment(value, what) {
  if (typeof value !== 'string' || value === '') throw new TypeError(`Herald: the ${what} must be a non-empty string`);
  return encodeURIComponent(value);
}

function checkTimeout(timeoutMs) {
  if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) throw new TypeError('Herald: `timeoutMs` must be a whole number of milliseconds > 0');
}

function base64url(value) {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}
