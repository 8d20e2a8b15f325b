// Types of herald.js, the browser client of Herald.

/** How the client talks to the server. */
export type HeraldTransport = 'sse' | 'ws' | 'poll';

/**
 * - `connecting`: the first connection is being made;
 * - `open`: connected (a stream said `hello`, or a long-poll answered);
 * - `reconnecting`: the connection ended; waiting (back-off) or connecting again;
 * - `offline`: the browser says it has no network; waiting for it to come back;
 * - `closed`: for good (`close()` was called, or a `closed` event with a terminal reason).
 */
export type HeraldStatus = 'connecting' | 'open' | 'reconnecting' | 'offline' | 'closed';

/**
 * Why the client stopped for good:
 * - `evicted`: the user opened one session or tab too many and this one was the least active, or
 *   an operator closed this tab from Herald's admin page;
 * - `replaced`: another connection took this client id;
 * - `session_closed`: the app's backend closed this session (e.g. the user signed out);
 * - `token_expired` / `unauthorized`: the token (a fixed string) expired or was refused; with a
 *   token function the client gets a new token instead and goes on;
 * - `forbidden`: the server refused with 403, whatever the token; `code` says why (e.g.
 *   `forbidden_origin`: this page's origin may not use the server, see `--allowed-origins`;
 *   `topic_forbidden`: a new token's `topics` claim no longer allows a topic the tab listens to).
 */
export type HeraldCloseReason =
  | 'evicted'
  | 'replaced'
  | 'session_closed'
  | 'token_expired'
  | 'unauthorized'
  | 'forbidden';

/** A notification, as the publisher sent it. */
export interface HeraldNotification<Data = unknown> {
  /** The user's sequence number; absent for an ephemeral notification. */
  seq?: number;
  /** The publisher's `type` (default `"notification"`). */
  type: string;
  /** The publisher's `data`, as sent. */
  data: Data;
  /** When it was published, RFC 3339 in UTC. */
  created_at: string;
}

/** An event of a topic the tab listens to (`herald.listen`). A durable one (the default
 * publish) has a `tseq`, its place in the topic's log (1, 2, … per topic): the client resumes
 * each topic after the last tseq it handed over, on every transport and across server
 * restarts, so each reaches the app once, in tseq order (a `topic_reset` says when some were
 * lost). An ephemeral one (`"durable": false`) has none: it reaches only the tabs listening
 * while it is published, and is never replayed. Topic events never move `lastSeq`. */
export interface HeraldTopicEvent<Data = unknown> {
  /** The topic, e.g. `"room:1"`. */
  topic: string;
  /** The event's sequence number in its topic's log; absent for an ephemeral event. */
  tseq?: number;
  /** The publisher's `type` (default `"notification"`). */
  type: string;
  /** The publisher's `data`, as sent. */
  data: Data;
  /** When it was published, RFC 3339 in UTC. */
  created_at: string;
}

/** Options of `herald.listen` and `herald.unlisten`. */
export interface HeraldListenOptions {
  /** Who listens:
   * - `client` (default): this tab, until it unlistens or the server forgets it (about a minute
   *   after it disconnects for good); herald.js names these topics on every reconnection;
   * - `session`: every tab of this token's session, those opened later too, kept by the server
   *   until the session is closed;
   * - `user`: every tab of the user on every device, kept by the server until unlistened.
   * A tab listens to the union of the three; unlistening at one scope leaves the others. */
  scope?: 'client' | 'session' | 'user';
}

/** Notifications were lost to this client (it was away longer than they are kept, or the
 * server lost its data: its log is of another epoch now): the app should reload its state.
 * `last_seq` is where the stream goes on from (lower than before when the server's new log is
 * shorter), or `null` when unknown. */
export interface HeraldReset {
  last_seq: number | null;
}

/** A topic's events were lost to this tab: the position it had in the topic is older than
 * what the server keeps of the topic's log, or of another epoch (the server's data was put back
 * or lost). The app should reload what it shows of the topic. The topic goes on after
 * `last_tseq` (lower than before when the server's log is another, shorter one). */
export interface HeraldTopicReset {
  topic: string;
  last_tseq: number;
}

/** Each durable topic's position: the last tseq handled, by topic. */
export type HeraldPositions = Readonly<Record<string, number>>;

export interface HeraldClosed {
  reason: HeraldCloseReason;
  /** With `forbidden`: the server's error code, e.g. `forbidden_origin`. */
  code?: string;
}

/** The user's inbox counts. Of two, the one with the higher `version` is newer. */
export interface HeraldInboxCounts {
  /** Not archived and not read: the badge. */
  unread: number;
  /** Not archived and not seen (`unseen` ≤ `unread` ≤ `total`). */
  unseen: number;
  /** Stored and not archived. */
  total: number;
  /** Stored and archived. */
  archived: number;
  /** Grows with every change of the user's inbox. */
  version: number;
}

/** What a notification can be marked as. */
export type HeraldMark = 'read' | 'unread' | 'seen' | 'archived' | 'unarchived';

/** Which notifications a mark or delete is for: a list of seqs, or every stored one up to a seq. */
export type HeraldInboxTarget = number[] | { allUpTo: number };

/** A change of the user's inbox (the server's `inbox` event, or the answer to this tab's own
 * mark or delete). */
export interface HeraldInboxChange {
  op: 'mark' | 'delete' | 'append' | 'prune';
  /** `mark`: the mark. */
  as?: HeraldMark;
  /** `mark`: when, RFC 3339 (the new `seen_at` / `read_at` / `archived_at`). */
  at?: string;
  /** `mark`, `delete` by seqs, `append`: the seqs changed, deleted or new, ascending. */
  seqs?: number[];
  /** `mark`, `delete` by `allUpTo`: every stored notification up to it now has that state (or is gone). */
  all_up_to?: number;
  /** `prune`: every notification up to this seq is gone (retention). */
  through?: number;
  /** How many notifications changed (all but `prune`). */
  changed?: number;
  /** The counts right after the change. */
  counts: HeraldInboxCounts;
}

/** A stored notification with its inbox state. */
export interface HeraldInboxItem<Data = unknown> extends HeraldNotification<Data> {
  seq: number;
  seen_at: string | null;
  read_at: string | null;
  archived_at: string | null;
}

export interface HeraldInboxPage<Data = unknown> {
  /** Newest first. */
  notifications: HeraldInboxItem<Data>[];
  /** Give it as `before` for the next (older) page; `null` on the last page. */
  next_before: number | null;
  counts: HeraldInboxCounts;
}

export interface HeraldInboxListOptions {
  /** `all` (default: every one not archived), `unread`, `unseen`, `read`, `archived`. */
  status?: 'all' | 'unread' | 'unseen' | 'read' | 'archived';
  /** Only this type. */
  type?: string;
  /** Only seqs below this one: the previous page's `next_before`. */
  before?: number;
  /** 1–100, default 20. */
  limit?: number;
}

/** `herald.inbox`: the user's inbox, with this client's token. Every method rejects with a
 * `HeraldError` when the server refuses, or a `TypeError` when the network fails. */
export interface HeraldInbox {
  /** The newest counts this tab knows (highest `version`), or `null` before the first ones.
   * Kept live with the option `inbox: true`; without it, new notifications do not update them. */
  readonly counts: HeraldInboxCounts | null;
  /** Whether the connection follows the counts (the option `inbox`). */
  readonly following: boolean;
  /** `GET /v1/inbox`: a page, newest first. Its counts are taken if newer. */
  list(options?: HeraldInboxListOptions): Promise<HeraldInboxPage>;
  /** Reads the counts again; resolves to the newest known. */
  refresh(): Promise<HeraldInboxCounts>;
  /** Marks `[seq, …]` or `{allUpTo: seq}` (default `'read'`; `unread` and `unarchived` only take
   * seqs). The other tabs and sessions get an `inbox` event; this tab applies the answer at once
   * (emitting `inbox` and `counts` too) and resolves to it. */
  mark(target: HeraldInboxTarget, as?: HeraldMark): Promise<HeraldInboxChange>;
  /** "Mark all read": `mark({allUpTo: upTo}, as)`, by default up to the newest seq this tab has
   * heard of, so that one arriving meanwhile stays unread. */
  markAll(as?: 'read' | 'seen' | 'archived', upTo?: number): Promise<HeraldInboxChange>;
  /** Deletes `[seq, …]` (one request each) or `{allUpTo: seq}`; resolves to one change for all. */
  delete(target: HeraldInboxTarget): Promise<HeraldInboxChange>;
}

/** Options of `herald.push`'s methods: which service worker (give the same to all three). */
export interface HeraldPushOptions {
  /** The service worker's URL, on the page's origin (a service worker must be): default
   * `'/herald-sw.js'`, which Herald serves (an app on another origin than Herald serves a copy,
   * or proxies that path to Herald); an app's own worker that `importScripts` Herald's. */
  serviceWorker?: string;
  /** The service worker's scope (default: the directory of its URL). `state` and `unsubscribe`
   * find the registration by its scope when given, else by its script. */
  scope?: string;
}

/** What this browser has for Web Push, read without asking anything. */
export interface HeraldPushState {
  /** Whether the browser has Web Push (service workers, `PushManager`, `Notification`; a secure
   * origin: `https://` or `localhost`). */
  supported: boolean;
  /** The notification permission: `default` (not asked yet, or dismissed), `granted`, `denied`
   * (also when unsupported). */
  permission: NotificationPermission;
  /** Whether the service worker (found as the options say) has a push subscription in this
   * browser. */
  subscribed: boolean;
}

/** The server's answer to a subscription. */
export interface HeraldPushSubscription {
  /** The subscription's id (`/v1/users/{user}/push-subscriptions/{id}` on the publisher API). */
  id: string;
  /** When it was kept, RFC 3339 in UTC. */
  created_at: string;
}

/** `herald.push`: Web Push, which reaches this browser when none of its tabs is open. */
export interface HeraldPush {
  /** What the browser has now; asks no permission and changes nothing. */
  state(options?: HeraldPushOptions): Promise<HeraldPushState>;
  /** Asks the notification permission (call it from a user's gesture, e.g. a click: browsers
   * refuse otherwise), registers the service worker, subscribes with the server's VAPID key
   * (again if this browser's subscription was made with another key) and gives the
   * subscription to the server for this token's user and session. Rejects with a `HeraldError`:
   * `push_unsupported` or `push_permission_denied` (status 0: nothing was sent),
   * `push_not_configured` (404: the server has no VAPID key; nothing registered),
   * `invalid_push_endpoint` (400: the browser's push service is not one the server sends to);
   * with the browser's own error when the service worker cannot be registered (e.g. its URL
   * answers 404) or the browser's push service refuses to subscribe. */
  subscribe(options?: HeraldPushOptions): Promise<HeraldPushSubscription>;
  /** The server forgets this browser's subscription, then the browser drops it. Resolves to
   * whether there was one. */
  unsubscribe(options?: HeraldPushOptions): Promise<boolean>;
}

/** The server refused an inbox, listen, unlisten or push request, or the browser refused Web
 * Push (`status` 0). */
export declare class HeraldError extends Error {
  /** The HTTP status; 0 for a refusal of the browser's (`push_unsupported`,
   * `push_permission_denied`). */
  readonly status: number;
  /** The error code, e.g. `invalid_seq`, `topic_forbidden` (the token's `topics` claim does not
   * allow the topic), `too_many_topics` (at most 100 topics per tab and per session, 1,000 per
   * user, by default), `push_not_configured`. */
  readonly code: string | null;
}

/** A notification this browser could not parse (it was stored before the server checked
 * `data`, or a proxy broke it). The connection goes on, past its seq. */
export interface HeraldUndecodable {
  /** Its seq, when it could be read; `null` otherwise (then, for a long-poll answer, `raw` is the
   * whole answer and the client went on after the answer's `last_seq`). */
  seq: number | null;
  /** The parser's message. */
  error: string;
  /** The text as it arrived. */
  raw: string;
}

export interface HeraldEvents {
  notification: HeraldNotification;
  /** A notification that could not be parsed; see {@link HeraldUndecodable}. */
  undecodable: HeraldUndecodable;
  reset: HeraldReset;
  closed: HeraldClosed;
  status: HeraldStatus;
  /** The inbox counts changed (newer ones arrived): e.g. show `counts.unread` as the badge. */
  counts: HeraldInboxCounts;
  /** The inbox changed: another tab or session (or this tab) marked or deleted notifications,
   * retention removed some, or (with `inbox: true`) new ones were stored. */
  inbox: HeraldInboxChange;
  /** An event of a topic this tab listens to. */
  topic: HeraldTopicEvent;
  /** A topic's events were lost to this tab; see {@link HeraldTopicReset}. */
  topic_reset: HeraldTopicReset;
}

export interface HeraldOptions {
  /** Base URL of the Herald server, e.g. `''` (this origin), `'/herald'` or
   * `'https://app.example.com/herald'`. On another origin, the server must list the page's
   * origin in `--allowed-origins` (it then answers with CORS headers). Default `''`. */
  url?: string;
  /** A subscriber token, or a function returning one (sync or async). The function is called
   * again whenever the token expires or is refused. */
  token: string | (() => string | Promise<string>);
  /** `sse` (default), `ws` (WebSocket) or `poll` (long-polling). */
  transport?: HeraldTransport;
  /** Fall back to long-polling when streams keep failing while the server is up (default
   * `true`; never for `transport: 'poll'`). */
  fallback?: boolean;
  /** Start after this seq (e.g. the last one the app's own state includes) instead of now. */
  lastSeq?: number | null;
  /** The epoch of `lastSeq` (`herald.epoch` when the app kept `herald.lastSeq`): a server whose
   * log is another history now answers `reset` rather than replaying after a seq that means
   * something else there. Without it, the seq is taken as one of the server's epoch. */
  epoch?: string | null;
  /** With `lastSeq`: each durable topic's position to start after (`herald.positions` when
   * the app kept `herald.lastSeq`), for the topics the tab listens to from its first
   * connection. A topic not named starts at its newest event. */
  positions?: HeraldPositions | null;
  /** Follow the inbox counts (default `false`): the connection is opened with `inbox=1` (an
   * `inbox` event after each new notification), and the counts are read after every
   * (re)connection, so that `herald.inbox.counts` and the `counts` event stay right. */
  inbox?: boolean;
}

export declare class Herald {
  constructor(options: HeraldOptions);
  /** The current status. */
  readonly status: HeraldStatus | 'idle';
  /** This tab's client id once the server gave one: use it as `except_client`, or to target
   * this tab with `{"client": id}`. */
  readonly client: string | null;
  /** The last seq handed to the app (or where the stream started). */
  readonly lastSeq: number | null;
  /** The epoch of `lastSeq`, as the server named it; keep it with `lastSeq`. */
  readonly epoch: string | null;
  /** Each durable topic's position (the last tseq handled), for the topics the tab listens
   * to; keep it with `lastSeq` and `epoch` (option `positions`). A copy: it does not change. */
  readonly positions: HeraldPositions;
  /** The transport in use now (it may be `poll` after a fallback). */
  readonly transport: HeraldTransport;
  /** The user's inbox: counts, pages, marks. */
  readonly inbox: HeraldInbox;
  /** Web Push: subscribe this browser, so that it is reached when no tab is open. */
  readonly push: HeraldPush;
  /** The topics this tab listens to, at any scope: as the server last said (`hello`, a poll
   * answer, the answer to a client-scope change), with this tab's own changes since applied
   * (those held while disconnected too). Changes made by another tab or the app's backend at
   * session or user scope show here from the next connection (or poll). */
  readonly topics: readonly string[];
  /** Listens to a topic (or several) too. At client scope (the default): connected, it asks
   * the server at once; otherwise the next connection does, and the promise waits for it; the
   * client names the topics on every reconnection, so they outlive dropped connections and
   * server restarts; resolves to the topics the tab listens to after the change. At `session`
   * or `user` scope (kept by the server): sent at once, connected or not, and resolves to that
   * scope's topics (sorted). Rejects with a `HeraldError` when refused (`topic_forbidden`,
   * `too_many_topics`, …: nothing changed), a `TypeError` when the network fails (a
   * client-scope change held for the next connection waits for it instead); throws a
   * `TypeError` at once for a name that is not a topic (1 to 128 of `A-Z a-z 0-9 _ . : @ / -`)
   * or a scope that is none of the three. */
  listen(topics: string | readonly string[], options?: HeraldListenOptions): Promise<string[]>;
  /** Stops listening to a topic (or several) at that scope (the others are left: a topic the
   * session or the user still listens to still reaches the tab); resolves and rejects like
   * `listen`. */
  unlisten(topics: string | readonly string[], options?: HeraldListenOptions): Promise<string[]>;
  /** Adds a listener; returns a function that removes it. */
  on<E extends keyof HeraldEvents>(event: E, listener: (value: HeraldEvents[E]) => void): () => void;
  /** Removes a listener added with `on`. */
  off<E extends keyof HeraldEvents>(event: E, listener: (value: HeraldEvents[E]) => void): void;
  /** Closes the connection for good (status `closed`, no `closed` event). */
  close(): void;
}

export default Herald;
