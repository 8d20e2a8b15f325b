// herald.js: the browser client of Herald, a real-time notification server.
//
// An ES module with no dependency and no build step:
//
//   import { Herald } from '/herald.js';
//   const herald = new Herald({ url: '', token: () => fetchTokenFromMyBackend() });
//   herald.on('notification', (n) => show(n));
//   herald.on('status', (s) => console.log(s));   // connecting, open, reconnecting, offline, closed
//
// With `inbox: true` it also keeps the user's inbox counts (the unread badge) right in every tab:
//
//   const herald = new Herald({ token, inbox: true });
//   herald.on('counts', (counts) => showBadge(counts.unread));
//   const page = await herald.inbox.list({ status: 'unread' });
//   await herald.inbox.mark([17], 'read');        // or mark({ allUpTo: 42 }, 'read'), markAll()
//
// What it does for the app:
// - keeps one connection: SSE (the default), WebSocket (`transport: 'ws'`) or long-polling
//   (`transport: 'poll'`, and the fallback when streams keep failing while the server is up);
// - reconnects by itself with exponential back-off and jitter (capped at 30 s), and at once when
//   the browser comes back online; resumes from the last seq it saw, so nothing durable is lost,
//   and never hands the same seq to the app twice; sends the seq with its epoch (the `hello`'s),
//   so that a server whose log is another history now (a database restored or failed over, a
//   restarted `--memory` server) answers `reset` instead of other notifications under seqs the
//   app saw;
// - gets a new token from `token()` (when it is a function) when the old one expired or was
//   refused;
// - keeps its client id across reconnects and reloads of the tab (sessionStorage), while a new
//   or duplicated tab gets its own;
// - stops for good (a `closed` event) when the server says the client was `evicted`, `replaced`
//   or its session closed, or refuses it with 403 (`forbidden`, e.g. `forbidden_origin`);
// - the inbox (`herald.inbox`): lists pages, marks and deletes with the same token, and holds the
//   newest counts (highest `version`) from every source: the `inbox` events of other tabs and
//   sessions, the answers to this tab's own changes (which the server leaves this tab out of),
//   pages, and a fetch after every (re)connection. With `inbox: true` the connection follows
//   the counts of new notifications too (`inbox=1`).
// - topics (Eliom's listen/notify by key; by default at client scope: this tab only):
//   `herald.listen('room:1')` and `herald.unlisten('room:1')` (a topic or a list) resolve to
//   the topics the tab listens to after the change (`herald.topics` holds them);
//   `herald.on('topic', (e) => …)` gets `{topic, type, data, created_at}`. The token's
//   `topics` claim decides what a tab may listen to (else the promise rejects with a
//   `HeraldError`, code `topic_forbidden`). The client keeps the topics it asked for and names
//   them on every (re)connection (`?topics=`), so they outlive reconnects and server restarts;
//   a change made while there is no connection is sent with the next one, and its promise
//   resolves then. A durable topic event (the default publish) has a `tseq`, 1, 2, … per
//   topic: the client keeps each topic's last one (`herald.positions`) and resumes every topic
//   exactly, with the user's seq, on every transport and across server restarts, never handing
//   a tseq to the app twice; a `topic_reset` event `{topic, last_tseq}` says that a topic's
//   events were lost to this tab (older than the server keeps, or of another epoch). An
//   ephemeral topic event (no `tseq`) reaches only the tabs connected. With `{scope: 'session'}` or
//   `{scope: 'user'}` the server keeps the listen for every tab of the session or the user
//   instead (those opened later too): the change is sent at once, connected or not, and the
//   promise resolves to that scope's topics.
//
//     await herald.listen('room:1');
//     await herald.listen('post:42', { scope: 'user' });   // "follow": every tab, every device
//     herald.on('topic', ({ topic, tseq, type, data }) => showInRoom(topic, data));
//     herald.on('topic_reset', ({ topic }) => reloadRoom(topic));
//
// Web Push (`herald.push`) reaches the user's browser when no tab is open: the server's VAPID
// key, a service worker (`/herald-sw.js`, which shows the notification) and the subscription,
// posted with the token:
//
//   button.onclick = () => herald.push.subscribe();   // asks permission: from a user's gesture
//   const { supported, permission, subscribed } = await herald.push.state();
//   await herald.push.unsubscribe();
//
// The server is on the page's origin (or behind it through a proxy), or on another origin that
// lists this page's in `--allowed-origins` (Herald then answers with CORS headers).

const VERSION = '1';
/** Close reasons after which reconnecting would be wrong: the server or the user decided. */
const TERMINAL_REASONS = new Set(['evicted', 'replaced', 'session_closed']);
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 30_000;
/** Consecutive streams that fail before `hello` while the server answers: then long-poll. */
const FALLBACK_AFTER_FAILURES = 3;
/** After this long on the long-poll fallback, streaming is tried again. */
const FALLBACK_RETRY_STREAM_MS = 10 * 60_000;
/** A stream that has not said `hello` within this is given up and retried. */
const OPEN_TIMEOUT_MS = 20_000;
/** Seconds a long-poll waits on the server (the server allows up to 60). */
const POLL_WAIT_S = 25;
/** A poll that has not answered this long after its wait is given up. */
const POLL_GRACE_MS = 15_000;
/** A token that expires within this (or a quarter of its lifetime, if shorter) is renewed first. */
const TOKEN_MARGIN_MS = 5_000;
/** How long a tab waits for another tab to say it holds the same stored client id. */
const CLAIM_WAIT_MS = 150;
/** A connection that lasted at least this long resets the back-off. */
const STABLE_MS = 5_000;
/** A topic: 1 to 128 bytes of these (the server's rule; none needs escaping in `?topics=a,b`). */
const TOPIC_PATTERN = /^[A-Za-z0-9_.:@/-]{1,128}$/;
/** The push service worker's URL by default (Herald serves it; a same-origin proxy too). */
const SERVICE_WORKER = '/herald-sw.js';
/** Error codes of a connection refused for the topics it names (`?topics=`). */
const TOPIC_REFUSALS = new Set(['topic_forbidden', 'too_many_topics', 'invalid_topic']);

/**
 * A subscription of this tab to its user's notifications. See herald.d.ts for the types.
 */
export class Herald {
  #base;
  #tokenSource;
  #token = null;
  #tokenExpiresAt = null;
  #tokenMargin = TOKEN_MARGIN_MS;
  #preferred;
  #fallback;
  #mode;
  #fallbackSince = 0;
  #listeners = new Map();
  #status = 'idle';
  #lastSeq = null;
  #epoch = null; // the epoch of #lastSeq: the last `hello`'s or poll answer's
  #epochAfterReset = null; // another epoch a `hello` named: taken with the `reset` after it
  #client = null;
  #user = null;
  #stopped = false;
  #abort = null; // ends the current connection or wait
  #channel = null;
  #storageKey = null;
  #claimNonce = Math.random();
  #onOnline = () => this.#wake();
  // The browser knows the network is gone: drop the connection now rather than wait for TCP to
  // notice, and reconnect (and catch up) when it is back.
  #onOffline = () => { if (this.#status === 'open') this.#abort?.(); };
  #tokenPending = null; // one call of the token function at a time
  #followInbox = false;
  #counts = null;
  #countsVersion = -1; // the version of `#counts`, lowered at each `hello` (see #hello)
  #inboxMaxSeq = 0; // the newest seq of the user this tab knows of (for markAll)
  #inboxApi = null;
  #pushApi = null;
  #claimTopics = null; // the token's `topics` claim (patterns), or null when the token is unreadable
  #wanted = new Set(); // topics this tab listens to by its own wish (client scope): sent as ?topics=
  #serverTopics = null; // the topics the tab listens to, as the server last said
  #held = []; // client-scope listens and unlistens made while not connected: sent after the next `hello`
  // The session's and the user's topics (sets), as the answer to this tab's last change at that
  // scope listed them (null before one): an unlisten at one of these scopes leaves in `topics`
  // what the other scopes still give the tab.
  #stored = { session: null, user: null };
  #topicChain = Promise.resolve(); // listens and unlistens run one at a time, in call order
  // Each durable topic's position: the last tseq handled, where the next connection resumes it
  // (with #lastSeq, in one resume point). Set from `hello` (or a poll answer), each event's
  // tseq, a `topic_reset`, and a listen's answer (the topic's last tseq then: a topic listened
  // to while connected starts there). Only topics the tab listens to are kept: one it listens to
  // again later starts afresh, not with the events of the time it was away.
  #positions = new Map();
  // The last tseq of each topic handed to the app (or where its stream started), to drop one
  // that comes again. Not raised by a listen's answer, unlike #positions: an event published
  // just before the answer was made may come after it, and is new to the app.
  #handed = new Map();

  /**
   * @param {import('./herald').HeraldOptions} options
   */
  constructor({ url = '', token, transport = 'sse', fallback = true, lastSeq = null, epoch = null, positions = null, inbox = false } = {}) {
    if (typeof token !== 'string' && typeof token !== 'function') {
      throw new TypeError('Herald: `token` must be a string or a function returning one');
    }
    if (!['sse', 'ws', 'poll'].includes(transport)) {
      throw new TypeError(`Herald: unknown transport ${JSON.stringify(transport)}`);
    }
    this.#base = new URL(url || '/', globalThis.location?.href).href.replace(/\/+$/, '');
    this.#tokenSource = token;
    this.#preferred = transport;
    this.#mode = transport;
    this.#fallback = fallback && transport !== 'poll';
    if (lastSeq != null) this.#lastSeq = Number(lastSeq);
    if (lastSeq != null && epoch != null) this.#epoch = String(epoch);
    // Positions resume only with a seq (a resume point starts with one).
    if (lastSeq != null && positions != null) {
      for (const [topic, tseq] of Object.entries(positions)) {
        if (TOPIC_PATTERN.test(topic) && Number.isSafeInteger(tseq) && tseq >= 0) {
          this.#positions.set(topic, tseq);
          this.#handed.set(topic, tseq);
        }
      }
    }
    this.#followInbox = Boolean(inbox);
    globalThis.addEventListener?.('online', this.#onOnline);
    globalThis.addEventListener?.('offline', this.#onOffline);
    // Start after the caller had a chance to attach listeners.
    queueMicrotask(() => this.#run());
  }

  /** The current status: `connecting`, `open`, `reconnecting`, `offline` or `closed`. */
  get status() { return this.#status; }
  /** This tab's client id, once the server gave one (for `except_client`, or to target it). */
  get client() { return this.#client; }
  /** The last seq handed to the app (or where the stream started); `null` before the first connection. */
  get lastSeq() { return this.#lastSeq; }
  /** The epoch of `lastSeq` (keep both to resume later: options `lastSeq` and `epoch`); `null` before the server named one. */
  get epoch() { return this.#epoch; }
  /** The transport in use: `sse`, `ws` or `poll`. */
  get transport() { return this.#mode; }
  /**
   * Each durable topic's position, `{topic: tseq}` (the last tseq handled): keep it with
   * `lastSeq` and `epoch` to resume later (option `positions`).
   */
  get positions() { return Object.freeze(Object.fromEntries(this.#positions)); }

  /**
   * The topics this tab listens to (at any scope): as the server last said (`hello`, a poll
   * answer, the answer to a client-scope change), with this tab's changes made since applied
   * (those held for the next connection too).
   */
  get topics() {
    const unlistening = new Set(this.#held.flatMap((op) => (op.kind === 'unlisten' ? op.topics : [])));
    const topics = (this.#serverTopics ?? []).filter((topic) => !unlistening.has(topic) || this.#wanted.has(topic) || this.#keeps(topic, 'client'));
    for (const topic of this.#wanted) if (!topics.includes(topic)) topics.push(topic);
    return topics;
  }

  /**
   * Listens to a topic (or several) too: `POST /v1/listen` now if connected, else with the next
   * connection. Resolves to the topics the tab listens to then (at `scope` `session` or `user`:
   * sent at once, and resolves to that scope's topics). Throws a TypeError for a name that is
   * not a topic.
   */
  listen(topics, { scope = 'client' } = {}) {
    return this.#topicOp('listen', topicList(topics), scopeOf(scope));
  }

  /** Stops listening to a topic (or several); resolves like `listen`. */
  unlisten(topics, { scope = 'client' } = {}) {
    return this.#topicOp('unlisten', topicList(topics), scopeOf(scope));
  }

  /**
   * The user's inbox: `counts` (the newest known, or `null`), `list()`, `refresh()`, `mark()`,
   * `markAll()`, `delete()`. See herald.d.ts.
   */
  get inbox() {
    if (this.#inboxApi) return this.#inboxApi;
    const self = this;
    this.#inboxApi = Object.freeze({
      get counts() { return self.#counts; },
      get following() { return self.#followInbox; },
      list: (options) => this.#inboxList(options),
      refresh: () => this.#refreshCounts(),
      mark: (target, as = 'read') => this.#inboxMark(target, as),
      markAll: (as = 'read', upTo = this.#newestKnownSeq()) => this.#inboxMark({ allUpTo: upTo }, as),
      delete: (target) => this.#inboxDelete(target),
    });
    return this.#inboxApi;
  }

  /**
   * Web Push, to reach this browser when no tab is open: `subscribe()`, `unsubscribe()`,
   * `state()`. See herald.d.ts.
   */
  get push() {
    if (this.#pushApi) return this.#pushApi;
    this.#pushApi = Object.freeze({
      state: (options) => this.#pushState(options),
      subscribe: (options) => this.#pushSubscribe(options),
      unsubscribe: (options) => this.#pushUnsubscribe(options),
    });
    return this.#pushApi;
  }

  /** Adds a listener; returns a function that removes it. */
  on(event, listener) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(listener);
    return () => this.off(event, listener);
  }

  /** Removes a listener added with `on`. */
  off(event, listener) {
    this.#listeners.get(event)?.delete(listener);
  }

  /** Closes the connection for good. No `closed` event: that is for the server's reasons. */
  close() {
    if (this.#stopped) return;
    this.#stop();
  }

  // ---- the connection loop ----

  async #run() {
    let failures = 0; // consecutive attempts that ended without a working connection
    let streamFailures = 0; // consecutive streams that failed before `hello` while the server was up
    let first = true;
    while (!this.#stopped) {
      this.#setStatus(first ? 'connecting' : 'reconnecting');
      first = false;
      let outcome;
      let token = null;
      try {
        token = await this.#currentToken();
      } catch (error) {
        // The app could not give a token (its backend is down?): try again later.
        (globalThis.reportError ?? console.error)(error);
      }
      if (this.#stopped) break;
      if (token !== null) {
        if (this.#storageKey === null) await this.#restoreClient();
        if (this.#stopped) break;
        outcome = this.#mode === 'poll' ? await this.#pollLoop(token) : await this.#streamOnce(token);
        if (this.#stopped) break;
      } else {
        outcome = { opened: false, tokenError: true };
      }

      const { opened, openedAt, reason, httpStatus, errorCode } = outcome;
      if (reason && TERMINAL_REASONS.has(reason)) {
        this.#finish(reason);
        break;
      }
      if (this.#topicsRefused(httpStatus, errorCode, outcome.errorMessage)) continue;
      if (reason === 'token_expired' || httpStatus === 401) {
        if (typeof this.#tokenSource !== 'function') {
          this.#finish(errorCode === 'token_expired' || reason === 'token_expired' ? 'token_expired' : 'unauthorized');
          break;
        }
        this.#token = null; // the next turn asks for a new one
        if (opened) continue; // expired while open: reconnect at once
      }
      if (httpStatus === 403) {
        // Refused for good, whatever the token (e.g. `forbidden_origin`: this page's origin may
        // not use the server): retrying would only repeat it.
        this.#finish('forbidden', errorCode);
        break;
      }
      if (httpStatus === 400 && (errorCode === 'invalid_last_event_id' || errorCode === 'invalid_after')) {
        // Our resume point is ahead of the server's log, in its epoch (or a server without
        // epochs): it lost its data. Start from now.
        this.#forgetPositions();
        this.#emit('reset', { last_seq: null });
        continue;
      }
      if (outcome.retryStream) {
        this.#mode = this.#preferred;
        streamFailures = 0;
        continue;
      }

      if (opened) {
        streamFailures = 0;
        // A node that shuts down (`closed: shutdown`: a restart, a deploy) is no failure of ours:
        // reconnect after the first back-off step, whichever node answers next.
        failures = Date.now() - openedAt >= STABLE_MS || reason === 'shutdown' ? 0 : failures + 1;
      } else {
        failures += 1;
        if (this.#mode !== 'poll' && !outcome.tokenError) {
          // The stream never opened: is the server there, and is it only streaming that fails?
          const diagnosis = await this.#diagnose();
          if (this.#stopped) break;
          if (diagnosis.httpStatus) {
            // The probe poll was refused: handle it as the stream's own refusal.
            if (this.#topicsRefused(diagnosis.httpStatus, diagnosis.errorCode, diagnosis.errorMessage)) continue;
            this.#token = diagnosis.httpStatus === 401 && typeof this.#tokenSource === 'function' ? null : this.#token;
            if (diagnosis.httpStatus === 401 && typeof this.#tokenSource !== 'function') {
              this.#finish(diagnosis.errorCode === 'token_expired' ? 'token_expired' : 'unauthorized');
              break;
            }
            if (diagnosis.httpStatus === 403) {
              this.#finish('forbidden', diagnosis.errorCode);
              break;
            }
            if (diagnosis.httpStatus === 400) {
              this.#forgetPositions();
              this.#emit('reset', { last_seq: null });
              continue;
            }
          } else if (diagnosis.reason && TERMINAL_REASONS.has(diagnosis.reason)) {
            this.#finish(diagnosis.reason);
            break;
          } else if (diagnosis.polled) {
            streamFailures += 1;
            if (this.#fallback && streamFailures >= FALLBACK_AFTER_FAILURES) {
              this.#mode = 'poll';
              this.#fallbackSince = Date.now();
              failures = 0;
              continue;
            }
          }
        }
      }
      const offline = globalThis.navigator?.onLine === false;
      this.#setStatus(offline ? 'offline' : 'reconnecting');
      await this.#sleep(offline ? BACKOFF_MAX_MS : backoff(failures));
    }
  }

  /** The token to use now: the string given, or one from the function (renewed when expiring). */
  #currentToken() {
    // The connection loop and inbox requests may ask at once: one call of the function serves both.
    this.#tokenPending ??= this.#loadToken().finally(() => { this.#tokenPending = null; });
    return this.#tokenPending;
  }

  async #loadToken() {
    if (typeof this.#tokenSource === 'string') {
      this.#token ??= this.#tokenSource;
    } else if (this.#token === null || this.#tokenExpiring()) {
      const token = await this.#tokenSource();
      if (typeof token !== 'string' || token === '') throw new Error('Herald: the token function returned no token');
      this.#token = token;
    } else {
      return this.#token;
    }
    const claims = decodeJwt(this.#token);
    this.#tokenExpiresAt = typeof claims?.exp === 'number' ? claims.exp * 1000 : null;
    const lifetime = this.#tokenExpiresAt === null ? Infinity : this.#tokenExpiresAt - Date.now();
    this.#tokenMargin = Math.max(0, Math.min(TOKEN_MARGIN_MS, lifetime / 4));
    this.#user = typeof claims?.sub === 'string' ? claims.sub : null;
    this.#claimTopics = claims === null ? null : (Array.isArray(claims.topics) ? claims.topics.filter((p) => typeof p === 'string') : []);
    return this.#token;
  }

  #tokenExpiring() {
    return this.#tokenExpiresAt !== null && this.#tokenExpiresAt - Date.now() < this.#tokenMargin;
  }

  /** One SSE or WebSocket connection, until it ends. */
  #streamOnce(token) {
    return new Promise((resolve) => {
      const params = this.#params(token);
      let opened = false;
      let openedAt = 0;
      let reason = null;
      let socket;
      let ended = false;
      const end = () => {
        if (ended) return;
        ended = true;
        clearTimeout(openTimer);
        this.#abort = null;
        try { socket.close(); } catch { /* already closed */ }
        resolve({ opened, openedAt, reason });
      };
      const openTimer = setTimeout(end, OPEN_TIMEOUT_MS);
      this.#abort = end;
      const onEvent = (event, data) => {
        switch (event) {
          case 'hello':
            opened = true;
            openedAt = Date.now();
            clearTimeout(openTimer);
            this.#hello(data);
            break;
          case 'notification':
            this.#deliver(data);
            break;
          case 'reset':
            this.#reset(data.last_seq);
            break;
          case 'inbox':
            this.#onInbox(data);
            break;
          case 'topic':
            this.#onTopic(data);
            break;
          case 'topic_reset':
            this.#onTopicReset(data);
            break;
          case 'closed':
            reason = data.reason;
            end();
            break;
        }
      };
      if (this.#mode === 'ws') {
        socket = new WebSocket(`${this.#base.replace(/^http/, 'ws')}/v1/ws?${params}`);
        socket.onmessage = (message) => {
          let data;
          try {
            data = JSON.parse(message.data);
          } catch (error) {
            // One frame the browser cannot parse ends nothing: the app hears of it, and the
            // position moves past its seq (the frame starts `{"event":"notification","seq":N`).
            // A `topic` or `inbox` event is dropped (a durable topic event moves its topic's
            // position past its tseq: `{"event":"topic","topic":T,"tseq":N`).
            const head = /^\{"event":"(\w+)",(?:"seq":(\d+))?/.exec(message.data);
            if (head?.[1] === 'notification') this.#undecodable(head[2], error, message.data);
            if (head?.[1] === 'topic') this.#undecodableTopic(`{${message.data.slice(head[0].length)}`);
            return;
          }
          if (data !== null && typeof data === 'object') onEvent(data.event, data);
        };
        socket.onclose = end;
        socket.onerror = end;
      } else {
        socket = new EventSource(`${this.#base}/v1/stream?${params}`);
        for (const name of ['hello', 'notification', 'reset', 'inbox', 'topic', 'topic_reset', 'closed']) {
          socket.addEventListener(name, (message) => {
            let data;
            try {
              data = JSON.parse(message.data);
            } catch (error) {
              // As over WebSocket: the event's data starts `{"seq":N` when it is durable (and a
              // `topic` or `inbox` event that cannot be parsed is dropped; a durable topic
              // event's starts `{"topic":T,"tseq":N`).
              if (name === 'notification') this.#undecodable(/^\{"seq":(\d+)/.exec(message.data)?.[1], error, message.data);
              if (name === 'topic') this.#undecodableTopic(message.data);
              return;
            }
            if (data !== null && typeof data === 'object') onEvent(name, data);
          });
        }
        // EventSource would reconnect by itself, but with the same URL: the same token and the
        // `last_event_id` it was opened with. We reconnect ourselves instead, with the resume
        // point we keep (the seq and every topic's position, as the events' `id:` has it once
        // the tab listens to topics: `17;room:1=5`, no longer a number; it is not read here).
        socket.onerror = end;
      }
    });
  }

  /** Long-polls until an error, a `closed`, or the time to try streaming again. */
  async #pollLoop(token) {
    let opened = false;
    let openedAt = 0;
    while (!this.#stopped) {
      if (this.#fallbackSince && Date.now() - this.#fallbackSince > FALLBACK_RETRY_STREAM_MS) {
        this.#fallbackSince = 0;
        return { opened, openedAt, retryStream: true };
      }
      if (typeof this.#tokenSource === 'function' && this.#tokenExpiring()) {
        return { opened, openedAt, reason: 'token_expired' };
      }
      // The first poll does not wait: it is the handshake (client id, position, catching up).
      const answer = await this.#pollOnce(token, opened ? POLL_WAIT_S : 0);
      if (this.#stopped) break;
      if (!answer.polled) return { opened, openedAt, ...answer };
      if (!opened) {
        opened = true;
        openedAt = Date.now();
        this.#setStatus('open');
      }
      // Each poll names the topics wanted: changes held since the last (the server had forgotten
      // the tab) go now.
      this.#afterOpen();
      if (answer.reason) return { opened, openedAt, reason: answer.reason };
    }
    return { opened, openedAt };
  }

  /**
   * One `GET /v1/poll`; hands its notifications to the app. Answers `{polled: true, reason?}`,
   * or `{httpStatus, errorCode}` when refused, or `{error}` when it did not get through.
   */
  async #pollOnce(token, waitSeconds) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), waitSeconds * 1000 + POLL_GRACE_MS);
    this.#abort = () => controller.abort();
    try {
      const params = this.#params(null, waitSeconds);
      const response = await fetch(`${this.#base}/v1/poll?${params}`, {
        headers: { authorization: `Bearer ${token}` },
        cache: 'no-store',
        signal: controller.signal,
      });
      const text = await response.text();
      let body = null;
      let parseError = null;
      try { body = JSON.parse(text); } catch (error) { parseError = error; }
      if (!response.ok) {
        return { httpStatus: response.status, errorCode: body?.error?.code ?? null, errorMessage: body?.error?.message ?? null };
      }
      if (body === null || typeof body !== 'object') {
        // An answer the browser cannot parse (a notification it cannot read): polling it again
        // would fail the same way. Tell the app, and go on after the answer's last seq (its
        // top-level `last_seq`, the last one in the text: it follows the notifications).
        const lastSeq = [...text.matchAll(/"last_seq":(\d+)/g)].pop()?.[1];
        this.#undecodable(lastSeq, parseError ?? new SyntaxError('not a JSON object'), text);
        // And after its topics' positions (its top-level `positions`, after the topic events).
        const positions = [...text.matchAll(/"positions":(\{[^{}]*\})/g)].pop()?.[1];
        try { if (positions) this.#advancePositions(JSON.parse(positions)); } catch { /* unreadable too */ }
        return { polled: true, reason: null };
      }
      if (typeof body?.client === 'string') this.#setClient(body.client);
      const epoch = typeof body.epoch === 'string' ? body.epoch : null;
      if (body.reset) {
        if (epoch !== null && epoch !== this.#epoch) this.#epochAfterReset = epoch;
        // A reset answer holds no notifications: its `last_seq` is where the poller goes on from.
        const empty = !(body.notifications?.length) && typeof body.last_seq === 'number';
        this.#reset(empty ? body.last_seq : null);
      }
      if (epoch !== null) this.#epoch = epoch;
      for (const n of body.notifications ?? []) this.#deliver(n);
      if (typeof body.last_seq === 'number' && (this.#lastSeq === null || body.last_seq > this.#lastSeq)) {
        this.#lastSeq = body.last_seq;
      }
      if (typeof body.last_seq === 'number') this.#knowSeq(body.last_seq);
      for (const event of body.inbox ?? []) this.#onInbox(event);
      this.#serverTopics = Array.isArray(body.topics) ? body.topics : [];
      // A topic's reset comes before the events of its log that follow it (as on streams).
      for (const reset of body.topic_resets ?? []) this.#onTopicReset(reset);
      for (const event of body.topic ?? []) this.#onTopic(event);
      // Where this answer left each topic (events for other tabs skipped included); only the
      // topics the tab listens to are kept.
      this.#advancePositions(body.positions);
      this.#keepPositionsOf(this.#serverTopics);
      // Read when the answer was made, after its events: the newest of this answer.
      if (body.counts) this.#applyCounts(body.counts);
      return { polled: true, reason: body.closed ?? null };
    } catch (error) {
      return { error };
    } finally {
      clearTimeout(timer);
      this.#abort = null;
    }
  }

  /**
   * After a stream failed before `hello`: is the server up (`/healthz`)? If so, one poll that
   * does not wait tells whether the token or the resume point is refused, and catches up.
   */
  async #diagnose() {
    try {
      const controller = new AbortController();
      this.#abort = () => controller.abort();
      const timer = setTimeout(() => controller.abort(), 5_000);
      const health = await fetch(`${this.#base}/healthz`, { cache: 'no-store', signal: controller.signal })
        .finally(() => clearTimeout(timer));
      if (!health.ok) return {};
    } catch {
      return {};
    } finally {
      this.#abort = null;
    }
    if (this.#stopped) return {};
    return this.#pollOnce(this.#token, 0);
  }

  #params(token, pollWait) {
    const params = new URLSearchParams();
    if (token) params.set('token', token);
    if (this.#lastSeq !== null) {
      // The resume point: the seq, and each durable topic's position. A stream takes them as
      // one id (`17;post:42=5;room:1=0`, what its SSE `id:`s are), a poll as `after` and
      // `positions` (`post:42=5,room:1=0`). A topic not named starts at its last tseq.
      const positions = [...this.#positions].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([topic, tseq]) => `${topic}=${tseq}`);
      if (pollWait === undefined) {
        params.set('last_event_id', [String(this.#lastSeq), ...positions].join(';'));
      } else {
        params.set('after', String(this.#lastSeq));
        if (positions.length) params.set('positions', positions.join(','));
      }
      // The seq (and the positions) mean something only in their epoch: a server with another
      // one answers `reset` (and `topic_reset`s).
      if (this.#epoch !== null) params.set('epoch', this.#epoch);
    }
    if (this.#client) params.set('client', this.#client);
    if (pollWait !== undefined) params.set('timeout', String(pollWait));
    if (this.#followInbox) params.set('inbox', '1');
    // A poll that waits: the server answers at once if the counts changed since these. The
    // server keeps this tab's queue between two polls, `inbox` events included, but a poll that
    // starts afresh (the tab was away past the linger, or resumed from elsewhere) has not seen
    // the events before it.
    if (this.#followInbox && pollWait && this.#countsVersion >= 0) {
      params.set('inbox_version', String(this.#countsVersion));
    }
    // Every connection (and every poll) names the topics the tab wants: the server adds them to
    // those it keeps for the client id, or listens to them afresh if it forgot the tab.
    if (this.#wanted.size) params.set('topics', [...this.#wanted].join(','));
    return params;
  }

  #hello(data) {
    if (typeof data.client === 'string') this.#setClient(data.client);
    const epoch = typeof data.epoch === 'string' ? data.epoch : null;
    this.#epochAfterReset = null;
    if (epoch !== null && this.#epoch !== null && epoch !== this.#epoch && this.#lastSeq !== null) {
      // Another epoch than our seq's: a `reset` follows, and takes the epoch with its seq. Not
      // before: a connection lost between the two resumes with the old epoch and gets the reset
      // again, rather than with the old seq under the new epoch.
      this.#epochAfterReset = epoch;
    } else {
      if (epoch !== null) this.#epoch = epoch;
      if (this.#lastSeq === null && typeof data.last_seq === 'number') this.#lastSeq = data.last_seq;
      if (typeof data.last_seq === 'number') this.#knowSeq(data.last_seq);
    }
    if (this.#followInbox) {
      // `inbox` events are not replayed: whatever changed while this tab was away (or before it
      // loaded) is only in a fresh read of the counts. The version floor is lowered so that the
      // server's answer wins even if its versions restarted (a server without its data);
      // among the counts that arrive from now on, the highest version still wins.
      this.#countsVersion = -1;
      this.#refreshCounts().catch(() => { /* the next connection tries again */ });
    }
    this.#serverTopics = Array.isArray(data.topics) ? data.topics : [];
    // Where this stream starts in each topic: the positions given, or (for a topic the resume
    // point did not name) its last tseq. A `topic_reset` may follow for a position lost.
    this.#positions = new Map();
    this.#handed = new Map();
    this.#advancePositions(data.positions);
    this.#keepPositionsOf(this.#serverTopics);
    this.#setStatus('open');
    this.#afterOpen();
  }

  /** Hands a notification to the app, unless its seq was handed already. */
  #deliver(n) {
    if (n === null || typeof n !== 'object') return;
    if (typeof n.seq === 'number') {
      if (this.#lastSeq !== null && n.seq <= this.#lastSeq) return;
      this.#lastSeq = n.seq;
      this.#knowSeq(n.seq);
    }
    const { event: _event, ...notification } = n;
    this.#emit('notification', notification);
  }

  /**
   * A notification (or a poll answer) this browser could not parse: tells the app with an
   * `undecodable` event and moves the position past its seq, so that no resume brings it back.
   */
  #undecodable(seqText, error, raw) {
    const seq = seqText === undefined ? null : Number(seqText);
    if (seq !== null && Number.isSafeInteger(seq) && (this.#lastSeq === null || seq > this.#lastSeq)) {
      this.#lastSeq = seq;
      this.#knowSeq(seq);
    }
    this.#emit('undecodable', { seq, error: String(error?.message ?? error), raw });
  }

  #reset(lastSeq) {
    this.#lastSeq = typeof lastSeq === 'number' ? lastSeq : null;
    if (this.#epochAfterReset !== null) {
      // Seqs of the old epoch say nothing of the new log ("mark all" must not reach past it).
      this.#epoch = this.#epochAfterReset;
      this.#epochAfterReset = null;
      this.#inboxMaxSeq = this.#lastSeq ?? 0;
    }
    this.#emit('reset', { last_seq: this.#lastSeq });
  }

  #finish(reason, code = null) {
    this.#stop();
    this.#emit('closed', code === null ? { reason } : { reason, code });
  }

  #stop() {
    this.#stopped = true;
    for (const op of this.#held.splice(0)) op.reject(closedError());
    this.#abort?.();
    this.#abort = null;
    this.#channel?.close();
    this.#channel = null;
    globalThis.removeEventListener?.('online', this.#onOnline);
    globalThis.removeEventListener?.('offline', this.#onOffline);
    this.#setStatus('closed');
  }

  /** Waits `ms`, or less if the browser comes online or the client is closed. */
  #sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.#abort = () => { this.#abort = null; done(); };
    });
  }

  #wake() {
    // Coming back online: cut the back-off short (a live connection is left alone).
    if (this.#status === 'offline' || this.#status === 'reconnecting') this.#abort?.();
  }

  // ---- the client id: kept per tab, not shared with a duplicated tab ----

  /**
   * Reads the client id this tab had (it reloaded), unless another tab holds it (this tab is a
   * duplicate: browsers copy sessionStorage into a duplicated tab).
   */
  async #restoreClient() {
    this.#storageKey = `herald.client ${this.#base} ${this.#user ?? ''}`;
    if (typeof BroadcastChannel === 'function') {
      this.#channel = new BroadcastChannel(`herald-client ${VERSION} ${this.#storageKey}`);
      this.#channel.onmessage = ({ data }) => this.#onClaim(data);
    }
    let stored = null;
    try { stored = globalThis.sessionStorage?.getItem(this.#storageKey) ?? null; } catch { /* no storage */ }
    if (!stored || this.#client) return;
    if (this.#channel) {
      this.#claiming = stored;
      this.#claimLost = false;
      this.#channel.postMessage({ type: 'claim', client: stored, nonce: this.#claimNonce });
      await new Promise((resolve) => setTimeout(resolve, CLAIM_WAIT_MS));
      this.#claiming = null;
      if (this.#claimLost) return; // another tab has it: let the server issue a new id
    }
    this.#client = stored;
  }

  #claiming = null;
  #claimLost = false;

  #onClaim(message) {
    if (message?.type === 'claim') {
      if (message.client === this.#client) {
        this.#channel?.postMessage({ type: 'taken', client: message.client, nonce: message.nonce });
      } else if (message.client === this.#claiming && message.nonce > this.#claimNonce) {
        // Two new instances claim the same id at once: the larger nonce keeps it.
        this.#claimLost = true;
      }
    } else if (message?.type === 'taken' && message.client === this.#claiming && message.nonce === this.#claimNonce) {
      this.#claimLost = true;
    }
  }

  #setClient(client) {
    this.#client = client;
    try { globalThis.sessionStorage?.setItem(this.#storageKey, client); } catch { /* no storage */ }
  }

  // ---- the inbox ----

  /** `GET /v1/inbox`: a page, newest first, `{notifications, next_before, counts}`. */
  async #inboxList({ status, type, before, limit } = {}) {
    const query = new URLSearchParams();
    if (status != null) query.set('status', status);
    if (type != null) query.set('type', type);
    if (before != null) query.set('before', String(before));
    if (limit != null) query.set('limit', String(limit));
    const page = await this.#request('GET', `/v1/inbox${String(query) ? `?${query}` : ''}`);
    for (const n of page.notifications ?? []) this.#knowSeq(n.seq);
    if (page.counts) this.#applyCounts(page.counts);
    return page;
  }

  /** `GET /v1/inbox/counts`; answers the newest counts known (these, or newer ones that came first). */
  async #refreshCounts() {
    const { counts } = await this.#request('GET', '/v1/inbox/counts');
    this.#applyCounts(counts);
    return this.#counts;
  }

  /** `POST /v1/inbox/mark` for `[seq, …]` or `{allUpTo: N}`; the answer is applied here at once. */
  async #inboxMark(target, as) {
    const body = { ...selection(target), as };
    const answer = await this.#request('POST', '/v1/inbox/mark', body, true);
    this.#onInbox(answer);
    return answer;
  }

  /** `DELETE /v1/inbox/{seq}` for each seq of `[seq, …]`, or `DELETE /v1/inbox?all_up_to=N`. */
  async #inboxDelete(target) {
    const { seqs, all_up_to: allUpTo } = selection(target);
    if (allUpTo !== undefined) {
      const answer = await this.#request('DELETE', `/v1/inbox?all_up_to=${allUpTo}`, undefined, true);
      this.#onInbox(answer);
      return answer;
    }
    const answers = await Promise.all(seqs.map((seq) => this.#request('DELETE', `/v1/inbox/${seq}`, undefined, true)));
    for (const answer of answers) this.#onInbox(answer);
    // One answer for all: the seqs deleted, how many, and the newest counts.
    const newest = answers.reduce((a, b) => (b.counts.version > a.counts.version ? b : a));
    return {
      op: 'delete',
      seqs: answers.flatMap((a) => (a.changed ? a.seqs ?? [] : [])).sort((a, b) => a - b),
      changed: answers.reduce((n, a) => n + (a.changed ?? 0), 0),
      counts: newest.counts,
    };
  }

  /**
   * A request with the subscriber token (renewed once if refused, when `token` is a function).
   * A change names this tab (`X-Herald-Client`), so that the server leaves it out of the event:
   * the answer is that event.
   */
  async #request(method, path, body, change = false) {
    for (let attempt = 0; ; attempt += 1) {
      const token = await this.#currentToken();
      const headers = { authorization: `Bearer ${token}` };
      if (body !== undefined) headers['content-type'] = 'application/json';
      if (change && this.#client) headers['x-herald-client'] = this.#client;
      const response = await fetch(`${this.#base}${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
      });
      const answer = await response.json().catch(() => null);
      if (response.ok) return answer;
      if (response.status === 401 && attempt === 0 && typeof this.#tokenSource === 'function') {
        this.#token = null;
        continue;
      }
      throw new HeraldError(response.status, answer?.error?.code ?? null, answer?.error?.message ?? `HTTP ${response.status}`);
    }
  }

  /** An `inbox` event (from the connection, or the answer to this tab's own change). */
  #onInbox(event) {
    if (event === null || typeof event !== 'object') return;
    const { event: _event, ...change } = event;
    if (change.op === 'append') for (const seq of change.seqs ?? []) this.#knowSeq(seq);
    if (change.counts) this.#applyCounts(change.counts);
    if (change.changed === 0) return; // an answer that changed nothing: no event was sent either
    this.#emit('inbox', change);
  }

  /** Keeps `counts` if newer (higher `version`) than the ones held; emits `counts` then. */
  #applyCounts(counts) {
    if (counts === null || typeof counts !== 'object' || typeof counts.version !== 'number') return;
    if (counts.version <= this.#countsVersion) return;
    this.#countsVersion = counts.version;
    this.#counts = Object.freeze({ ...counts });
    this.#emit('counts', this.#counts);
  }

  #knowSeq(seq) {
    if (typeof seq === 'number' && seq > this.#inboxMaxSeq) this.#inboxMaxSeq = seq;
  }

  /** The newest seq of the user this tab has heard of: what "mark all" goes up to. */
  #newestKnownSeq() {
    return Math.max(this.#inboxMaxSeq, this.#lastSeq ?? 0);
  }

  // ---- Web Push ----
  // The browser's part of a subscription (permission, service worker, `pushManager`) and the
  // server's (`/v1/push/…`, with this client's token). Permission is asked first, before any
  // await: browsers grant it only within the user's gesture (call `subscribe` from a click).

  /** `{supported, permission, subscribed}`: what this browser has now; asks nothing. */
  async #pushState(options = {}) {
    if (!pushSupported()) return { supported: false, permission: 'denied', subscribed: false };
    const registration = await pushRegistration(options);
    const subscription = await registration?.pushManager.getSubscription();
    return { supported: true, permission: Notification.permission, subscribed: Boolean(subscription) };
  }

  /**
   * Asks permission, registers the service worker, subscribes with the server's VAPID key (again
   * when the key changed) and posts the subscription: resolves to the server's `{id,
   * created_at}`.
   */
  async #pushSubscribe({ serviceWorker = SERVICE_WORKER, scope } = {}) {
    if (!pushSupported()) {
      throw new HeraldError(0, 'push_unsupported', 'this browser has no Web Push (service workers, PushManager and Notification are needed, on a secure origin)');
    }
    const permission = await Notification.requestPermission();
    if (permission !== 'granted') {
      throw new HeraldError(0, 'push_permission_denied', `notifications are not allowed (permission: ${permission})`);
    }
    // The key first: a server without push (404 `push_not_configured`) leaves nothing registered.
    const { public_key: publicKey } = await this.#request('GET', '/v1/push/vapid-public-key');
    const applicationServerKey = base64UrlBytes(publicKey);
    const registration = await activated(await navigator.serviceWorker.register(serviceWorker, scope === undefined ? undefined : { scope }));
    let subscription = await registration.pushManager.getSubscription();
    if (subscription && !sameBytes(subscription.options?.applicationServerKey, applicationServerKey)) {
      // Made with another VAPID key (the server's changed): its pushes would be refused.
      await this.#request('DELETE', '/v1/push/subscriptions', { endpoint: subscription.endpoint }).catch(() => {});
      await subscription.unsubscribe();
      subscription = null;
    }
    subscription ??= await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey });
    return this.#request('POST', '/v1/push/subscriptions', subscription.toJSON());
  }

  /**
   * The server forgets this browser's subscription, then the browser drops it. Resolves to
   * whether there was one (the server having forgotten it already is no error).
   */
  async #pushUnsubscribe(options = {}) {
    if (!pushSupported()) return false;
    const registration = await pushRegistration(options);
    const subscription = await registration?.pushManager.getSubscription();
    if (!subscription) return false;
    try {
      await this.#request('DELETE', '/v1/push/subscriptions', { endpoint: subscription.endpoint });
    } catch (error) {
      if (!(error instanceof HeraldError && error.code === 'no_such_subscription')) throw error;
    }
    await subscription.unsubscribe();
    return true;
  }

  // ---- topics ----
  // A listen or unlisten is an operation queued on #topicChain, so that they reach the server in
  // call order and each answer is the newest. At session or user scope (the server keeps those
  // in its store; no tab is needed) it is sent at once. At client scope it is sent at once when
  // connected; otherwise (or when the server no longer knows the tab: 404 `client_not_found`)
  // it is held: it changes #wanted at once, so the next connection's `?topics=` applies a
  // listen, and after that connection's `hello` each held one is sent if the server's list does
  // not show it done yet (an unlisten must be: the server keeps the client id's listens across
  // reconnects).

  #topicOp(kind, topics, scope) {
    return new Promise((resolve, reject) => {
      const op = { kind, topics, scope, resolve, reject };
      this.#topicChain = this.#topicChain.then(() => this.#runTopicOp(op));
    });
  }

  #connected() {
    return this.#status === 'open' && this.#client !== null;
  }

  async #runTopicOp(op) {
    if (this.#stopped) return op.reject(closedError());
    if (op.scope === 'client' && (!this.#connected() || this.#held.length)) return this.#hold(op); // after those held: in order
    if (await this.#sendTopicOp(op, op.topics, false) === 'again') this.#hold(op);
  }

  /** `POST /v1/listen` or `/v1/unlisten` for `topics`; settles `op` unless it answers 'again'. */
  async #sendTopicOp(op, topics, held) {
    const tab = op.scope === 'client';
    const positioned = new Set(this.#positions.keys());
    let answer;
    try {
      answer = await this.#request('POST', `/v1/${op.kind}`, { topics, scope: op.scope }, tab);
    } catch (error) {
      // The server forgot the tab (it is between connections), or, for a held change (already in
      // #wanted), the request did not get through: the next connection settles it.
      const lost = tab && (error instanceof HeraldError ? error.code === 'client_not_found' : held);
      if (lost && !this.#stopped) return 'again';
      if (held && op.kind === 'listen') this.#forget(op.topics);
      op.reject(error);
      return 'done';
    }
    const listed = Array.isArray(answer?.topics) ? answer.topics : [];
    if (op.kind === 'listen') this.#startListened(answer?.positions, positioned);
    if (!tab) {
      // The answer lists the session's or the user's topics, not the tab's: the tab's list
      // (the next `hello` or poll answer brings it whole) loses those unlistened that no other
      // scope gives it, and has every topic of that scope (those other tabs listened to
      // meanwhile too). The server made this node's tabs follow before it answered.
      this.#stored[op.scope] = new Set(listed);
      if (this.#serverTopics !== null) {
        const kept = op.kind === 'listen'
          ? this.#serverTopics
          : this.#serverTopics.filter((topic) => !op.topics.includes(topic) || this.#keeps(topic, op.scope));
        this.#serverTopics = [...new Set([...kept, ...listed])];
      }
      if (op.kind === 'unlisten') this.#dropPositions(op.topics.filter((topic) => !this.#keeps(topic, op.scope)));
      op.resolve(listed);
      return 'done';
    }
    for (const topic of op.topics) {
      if (op.kind === 'listen') this.#wanted.add(topic);
      else this.#wanted.delete(topic);
    }
    this.#serverTopics = listed;
    // The answer lists every topic the tab listens to.
    this.#keepPositionsOf(listed);
    op.resolve(this.topics);
    return 'done';
  }

  /** Holds a client-scope `op` until the next connection (see above). */
  #hold(op) {
    if (op.kind === 'listen') {
      // Not into the next connection's URL if the token does not allow it: the server would
      // refuse the whole connection.
      const refused = op.topics.find((topic) => !this.#claimAllows(topic));
      if (refused !== undefined) {
        return op.reject(new HeraldError(403, 'topic_forbidden', `the token's \`topics\` claim does not allow listening to ${JSON.stringify(refused)}`));
      }
      for (const topic of op.topics) this.#wanted.add(topic);
    } else {
      for (const topic of op.topics) this.#wanted.delete(topic);
    }
    this.#held.push(op);
  }

  /** After a connection opened (`hello`, or a poll answer): sends the held changes. */
  #afterOpen() {
    if (!this.#held.length) return;
    this.#topicChain = this.#topicChain.then(() => this.#sendHeld());
  }

  async #sendHeld() {
    while (this.#held.length && this.#connected()) {
      const op = this.#held[0];
      // What the server's list (this connection's `hello`) does not show done yet.
      const listed = new Set(this.#serverTopics ?? []);
      const topics = op.kind === 'listen'
        ? op.topics.filter((topic) => this.#wanted.has(topic) && !listed.has(topic))
        : op.topics.filter((topic) => !this.#wanted.has(topic) && listed.has(topic));
      if (topics.length && await this.#sendTopicOp(op, topics, true) === 'again') return;
      const at = this.#held.indexOf(op);
      if (at >= 0) this.#held.splice(at, 1);
      op.resolve(this.topics); // no effect if already settled
    }
  }

  /**
   * A connection refused for its `?topics=` (e.g. 403 `topic_forbidden`: the token's claim did
   * not allow a listen held meanwhile): rejects the held listens, leaves their topics out, and
   * answers true (connect again at once). False when no held listen can be the cause.
   */
  #topicsRefused(httpStatus, errorCode, message) {
    if (!httpStatus || !TOPIC_REFUSALS.has(errorCode)) return false;
    const refused = this.#held.filter((op) => op.kind === 'listen');
    if (!refused.length) return false;
    this.#held = this.#held.filter((op) => op.kind !== 'listen');
    for (const op of refused) {
      this.#forget(op.topics);
      op.reject(new HeraldError(httpStatus, errorCode, message ?? `HTTP ${httpStatus}`));
    }
    return true;
  }

  /**
   * Whether the tab still listens to `topic` once it stopped at `scope`, as far as this tab
   * knows: its own wish (client scope), or the other stored scope's list as last answered here.
   * (Listens made elsewhere, by another tab or the app's backend, show at the next connection.)
   */
  #keeps(topic, scope) {
    return (scope !== 'client' && this.#wanted.has(topic))
      || (scope !== 'session' && this.#stored.session?.has(topic) === true)
      || (scope !== 'user' && this.#stored.user?.has(topic) === true);
  }

  /** Takes back the wish for `topics`, but for those the server said the tab listens to. */
  #forget(topics) {
    const listed = new Set(this.#serverTopics ?? []);
    for (const topic of topics) if (!listed.has(topic)) this.#wanted.delete(topic);
  }

  /** Whether the token's `topics` claim lets this tab listen to `topic` (unknown: yes). */
  #claimAllows(topic) {
    if (this.#claimTopics === null) return true;
    return this.#claimTopics.some((p) => (p.endsWith('*') ? topic.startsWith(p.slice(0, -1)) : p === topic));
  }

  /**
   * A `topic` event: handed to the app without the WebSocket frame's `event`. A durable one
   * (with `tseq`) moves its topic's position, and is dropped if its tseq was handed already.
   */
  #onTopic(event) {
    if (event === null || typeof event !== 'object' || typeof event.topic !== 'string') return;
    if (event.tseq !== undefined) {
      if (!Number.isSafeInteger(event.tseq)) return;
      if (event.tseq <= (this.#handed.get(event.topic) ?? -1)) return;
      this.#handed.set(event.topic, event.tseq);
      this.#positions.set(event.topic, Math.max(event.tseq, this.#positions.get(event.topic) ?? 0));
    }
    const { event: _event, ...topicEvent } = event;
    this.#emit('topic', topicEvent);
  }

  /**
   * A `topic_reset`: the topic's events after the position this tab had were lost to it; it
   * goes on after `last_tseq` (lower than before when the server's log is another, shorter one).
   */
  #onTopicReset(event) {
    if (event === null || typeof event !== 'object' || typeof event.topic !== 'string' || !Number.isSafeInteger(event.last_tseq)) return;
    this.#positions.set(event.topic, event.last_tseq);
    this.#handed.set(event.topic, event.last_tseq);
    this.#emit('topic_reset', { topic: event.topic, last_tseq: event.last_tseq });
  }

  /** A durable topic event the browser could not parse (`{"topic":T,"tseq":N…`): moves past it. */
  #undecodableTopic(text) {
    const head = /^\{"topic":("(?:[^"\\]|\\.)*"),"tseq":(\d+)/.exec(text);
    if (!head) return;
    try {
      this.#advancePositions({ [JSON.parse(head[1])]: Number(head[2]) });
    } catch { /* not even the topic's name */ }
  }

  /** Raises positions (and what was handed) to `{topic: tseq}`'s, from the server. */
  #advancePositions(positions) {
    if (positions === null || typeof positions !== 'object') return;
    for (const [topic, tseq] of Object.entries(positions)) {
      if (!Number.isSafeInteger(tseq)) continue;
      this.#positions.set(topic, Math.max(tseq, this.#positions.get(topic) ?? 0));
      this.#handed.set(topic, Math.max(tseq, this.#handed.get(topic) ?? -1));
    }
  }

  /**
   * A listen's answer: each topic's last tseq once listened to. A topic this tab had no position
   * in before the listen starts there (unless its events took it further meanwhile); the others
   * keep theirs (events of theirs may still be on their way).
   */
  #startListened(positions, positioned) {
    if (positions === null || typeof positions !== 'object') return;
    for (const [topic, tseq] of Object.entries(positions)) {
      if (!Number.isSafeInteger(tseq) || positioned.has(topic)) continue;
      this.#positions.set(topic, Math.max(tseq, this.#positions.get(topic) ?? 0));
    }
  }

  /** Keeps the positions of `topics` only (the tab listens to no other, the server said). */
  #keepPositionsOf(topics) {
    const kept = new Set(topics);
    this.#dropPositions([...this.#positions.keys()].filter((topic) => !kept.has(topic)));
  }

  #dropPositions(topics) {
    for (const topic of topics) {
      this.#positions.delete(topic);
      this.#handed.delete(topic);
    }
  }

  /** The server lost the log we resumed in (400: our seq is ahead of it): start from now. */
  #forgetPositions() {
    this.#lastSeq = null;
    this.#epoch = null;
    this.#positions = new Map();
    this.#handed = new Map();
  }

  // ---- events ----

  #setStatus(status) {
    if (this.#status === status || (this.#status === 'closed' && status !== 'closed')) return;
    this.#status = status;
    this.#emit('status', status);
  }

  #emit(event, value) {
    for (const listener of [...(this.#listeners.get(event) ?? [])]) {
      try {
        listener(value);
      } catch (error) {
        // A failing listener must not break the client (nor the other listeners).
        (globalThis.reportError ?? console.error)(error);
      }
    }
  }
}

/**
 * An error answer of the server to an inbox, listen, unlisten or push request: `status` (HTTP),
 * `code` (e.g. `invalid_seq`, `topic_forbidden`). A refusal of the browser's has `status` 0
 * (`push_unsupported`, `push_permission_denied`).
 */
export class HeraldError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = 'HeraldError';
    this.status = status;
    this.code = code;
  }
}

/** Whether this browser has what Web Push needs (a secure context has all three). */
function pushSupported() {
  return typeof navigator === 'object' && 'serviceWorker' in navigator
    && typeof globalThis.PushManager === 'function' && typeof globalThis.Notification === 'function';
}

/**
 * The registration of the push service worker: the one for `scope` if given, else the one
 * whose script is `serviceWorker`; undefined if there is none.
 */
async function pushRegistration({ serviceWorker = SERVICE_WORKER, scope } = {}) {
  if (scope !== undefined) return navigator.serviceWorker.getRegistration(scope);
  const script = new URL(serviceWorker, globalThis.location?.href).href;
  const registrations = await navigator.serviceWorker.getRegistrations();
  return registrations.find((r) => [r.active, r.waiting, r.installing].some((worker) => worker?.scriptURL === script));
}

/** The registration once its worker is active (`pushManager.subscribe` needs an active one). */
async function activated(registration) {
  if (registration.active) return registration;
  const worker = registration.installing ?? registration.waiting;
  await new Promise((resolve, reject) => {
    const check = () => {
      if (worker.state === 'activated') resolve();
      else if (worker.state === 'redundant') reject(new Error('Herald: the service worker failed to install'));
    };
    worker.addEventListener('statechange', check);
    check();
  });
  return registration;
}

/** The bytes of URL-safe base64 (padded or not). */
function base64UrlBytes(text) {
  const base64 = text.replace(/-/g, '+').replace(/_/g, '/');
  return Uint8Array.from(atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, '=')), (c) => c.charCodeAt(0));
}

/** Whether an `ArrayBuffer` (or view) holds exactly `bytes`. */
function sameBytes(buffer, bytes) {
  if (buffer == null) return false;
  const held = ArrayBuffer.isView(buffer) ? new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength) : new Uint8Array(buffer);
  return held.length === bytes.length && held.every((byte, i) => byte === bytes[i]);
}

/** The body members for `[seq, …]` or `{allUpTo: N}` (also `{all_up_to: N}`). */
function selection(target) {
  if (Array.isArray(target)) {
    if (!target.length || !target.every((seq) => Number.isSafeInteger(seq) && seq >= 0)) {
      throw new TypeError('Herald: give a non-empty list of seqs');
    }
    return { seqs: target };
  }
  const upTo = target?.allUpTo ?? target?.all_up_to;
  if (Number.isSafeInteger(upTo) && upTo >= 0) return { all_up_to: upTo };
  throw new TypeError('Herald: give [seq, …] or {allUpTo: seq}');
}

/** The topics of `listen(topic | [topic, …])`, each checked; a TypeError names a bad one. */
function topicList(topics) {
  const list = typeof topics === 'string' ? [topics] : topics;
  if (!Array.isArray(list) || !list.length) throw new TypeError('Herald: give a topic or a non-empty list of topics');
  for (const topic of list) {
    if (typeof topic !== 'string' || !TOPIC_PATTERN.test(topic)) {
      throw new TypeError(`Herald: ${JSON.stringify(topic)} is not a topic (1 to 128 of A-Z a-z 0-9 _ . : @ / -)`);
    }
  }
  return [...new Set(list)];
}

function scopeOf(scope) {
  if (!['client', 'session', 'user'].includes(scope)) {
    throw new TypeError(`Herald: a listen's scope is client, session or user, not ${JSON.stringify(scope)}`);
  }
  return scope;
}

function closedError() {
  return new Error('Herald: the client is closed');
}

/** Exponential back-off with jitter: half fixed, half random, capped at 30 s. */
function backoff(failures) {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.min(failures, 16));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

/** The claims of a JWT, read without checking it (the server does); `null` if unreadable. */
function decodeJwt(token) {
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(payload.padEnd(Math.ceil(payload.length / 4) * 4, '=')), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

export default Herald;
