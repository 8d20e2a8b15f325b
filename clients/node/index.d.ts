// Types of @herald/server (src/index.js), kept by hand; `npm run typecheck` checks them with
// `tsc --strict` against types/usage.ts. The wire shapes are docs/PROTOCOL.md's.

/** How long one request may take by default, in milliseconds. */
export declare const DEFAULT_TIMEOUT_MS: number;
/** Lifetime of a minted token when `ttl` is not given, in seconds. */
export declare const DEFAULT_TOKEN_TTL_SECS: number;
/** Entries a batch publish takes at most. */
export declare const BATCH_LEN_MAX: number;

/** JSON, as `data` is sent and received. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export interface HeraldOptions {
  /** Where Herald answers, with the path prefix it is mounted under, if any. */
  url: string;
  /** HERALD_API_KEY: needed by every call but `mintToken`. */
  apiKey?: string;
  /** HERALD_SECRET: needed by `mintToken` only. */
  secret?: string | Uint8Array;
  /** Default timeout of each request, in milliseconds (10,000). */
  timeoutMs?: number;
}

/** Per call: the caller's signal (aborting rejects with code `aborted`) and this call's timeout. */
export interface CallOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
}

/** The target: exactly one of `user`, `users`, `user` + `session`, `client`, `topic`. */
export type Target =
  | { user: string; session?: string; users?: never; client?: never; topic?: never }
  | { users: string[]; user?: never; session?: never; client?: never; topic?: never }
  | { client: string; user?: never; users?: never; session?: never; topic?: never }
  | { topic: string; user?: never; users?: never; session?: never; client?: never };

export type Notification = Target & {
  /** Default `notification`; 1–128 bytes. */
  type?: string;
  /** Any JSON, at most 64 KiB. */
  data?: unknown;
  /** Default `true`; `false`: only the clients connected now get it, nothing is stored. */
  durable?: boolean;
  /** 1–128 bytes: a repeat within 24 hours gets the first receipt and stores nothing. */
  idempotencyKey?: string;
  /** A client id that must not get it (the tab that caused it). */
  exceptClient?: string;
  /** Topic targets only: no tab of this user gets it (the author). */
  exceptUser?: string;
  /** Topic targets only: a durable notification in the inbox of every user following the topic. */
  inbox?: boolean;
  /** Web Push (a server with a VAPID key): whom to push to; default `offline`. */
  push?: PushPolicy;
  /** What the push carries instead of `data`: any JSON, about 3,800 bytes at most. */
  pushPayload?: unknown;
  /** The push's `TTL`, seconds a push service keeps it for an offline browser (86,400). */
  pushTtl?: number;
  /** The push's `Urgency` (default `normal`). */
  pushUrgency?: PushUrgency;
  /** The push's `Topic` (collapse key): 1–32 of `A-Z a-z 0-9 - _`; default made from `type`. */
  pushTopic?: string;
};

/**
 * A publish's `push`: `offline` pushes a durable notification to each subscription whose
 * session has no live tab (after a 5 s grace), `always` to every subscription at once, `never`
 * to none.
 */
export type PushPolicy = 'offline' | 'always' | 'never';

/** A push's `Urgency` header (RFC 8030). */
export type PushUrgency = 'very-low' | 'low' | 'normal' | 'high';

/** What a publish answers. */
export interface Receipt {
  /** The seqs stored, one per user (empty for an ephemeral publish). */
  notifications: { user: string; seq: number }[];
  /** Clients it was handed to on the node that took it. */
  delivered: number;
  /** A durable topic event: its position in the topic's log. */
  topic?: { topic: string; tseq: number };
  /** In a batch, an `inbox` publish to more followers than are stored at once: its job. */
  job?: string;
}

/** An `inbox` publish to more followers than are stored at once: it goes on as a job. */
export interface JobStarted {
  job: string;
}

export interface BatchEntryError {
  error: { status: number; code: string; message: string };
}

export interface BatchReceipt {
  /** One per entry, in order. */
  results: (Receipt | BatchEntryError)[];
  /** How many entries failed. */
  failed: number;
}

export interface Job {
  job: string;
  topic: string;
  stored: number;
  done: boolean;
  created_at: string;
  finished_at: string | null;
}

export interface MintTokenOptions {
  /** The `sub`: the user id. */
  user: string;
  /** The `sid`: one sign-in. Without it the server derives a session from the token. */
  session?: string;
  /** Seconds until it expires (900 by default). */
  ttl?: number;
  /** The `topics` claim: topics and `prefix*` patterns the tab may listen to by itself. */
  topics?: string[];
  /** The `aud`: only for a server with `--token-audience`. */
  audience?: string;
}

export interface PresenceClient {
  client: string;
  transport: 'sse' | 'ws' | 'poll';
  connected_at: string;
  last_seq: number;
  node: string;
  topics: string[];
}

export interface Presence {
  user: string;
  sessions: { session: string; clients: PresenceClient[] }[];
}

/** A notification as the server streams and stores it. */
export interface StoredNotification<Data = unknown> {
  seq: number;
  type: string;
  data: Data;
  created_at: string;
}

export interface InboxCounts {
  unread: number;
  unseen: number;
  total: number;
  archived: number;
  version: number;
}

export interface InboxItem<Data = unknown> extends StoredNotification<Data> {
  seen_at: string | null;
  read_at: string | null;
  archived_at: string | null;
}

export interface InboxPage<Data = unknown> {
  /** Newest first. */
  notifications: InboxItem<Data>[];
  /** `before` for the next (older) page; `null` on the last. */
  next_before: number | null;
  counts: InboxCounts;
}

export interface InboxListOptions extends CallOptions {
  status?: 'all' | 'unread' | 'unseen' | 'read' | 'archived';
  type?: string;
  before?: number;
  /** 1–100, default 20. */
  limit?: number;
}

export type Mark = 'read' | 'unread' | 'seen' | 'archived' | 'unarchived';

/** The answer to a mark or delete (the `inbox` event of the change). */
export interface InboxChange {
  op: 'mark' | 'delete';
  as?: Mark;
  at?: string;
  seqs?: number[];
  all_up_to?: number;
  changed: number;
  counts: InboxCounts;
}

export interface InboxChangeOptions extends CallOptions {
  /** A client id left out of the `inbox` event (it made the change). */
  exceptClient?: string;
}

/** A user's inbox, with the API key: `herald.inbox(user)`. */
export declare class Inbox {
  private constructor();
  counts(options?: CallOptions): Promise<InboxCounts>;
  list(options?: InboxListOptions): Promise<InboxPage>;
  /** `[seq, …]` or `{allUpTo: seq}`; `as` defaults to `read`. */
  mark(target: number[] | { allUpTo: number }, as?: Mark, options?: InboxChangeOptions): Promise<InboxChange>;
  /** One seq, or `{allUpTo: seq}`. */
  delete(target: number | { allUpTo: number }, options?: InboxChangeOptions): Promise<InboxChange>;
}

/** A listen's scope: a tab, a session, or a user (following). */
export type ListenScope =
  | { client: string; user?: never; session?: never }
  | { user: string; session?: string; client?: never };

export type ListenRequest = ListenScope & { topics: string | string[] };

export interface Listening {
  client?: string;
  user?: string;
  session?: string;
  /** The scope's topics now. */
  topics: string[];
  /** Listen only: each named topic's last tseq, where a tab starts it. */
  positions?: Record<string, number>;
}

export interface TopicListeners {
  topic: string;
  users: string[];
  sessions: { user: string; session: string }[];
  clients: { client: string; user: string; session: string; node: string }[];
  truncated: boolean;
  last_tseq: number;
}

/** One of a user's Web Push subscriptions, as listed (never its endpoint: a capability). */
export interface PushSubscription {
  /** Its id, for `removePushSubscription`. */
  id: string;
  /** The session that registered it. */
  session: string;
  /** The endpoint's origin (`https://fcm.googleapis.com`). */
  push_service: string;
  created_at: string;
}

export interface PushSubscriptions {
  user: string;
  /** Oldest first. */
  subscriptions: PushSubscription[];
}

/** This node's view of its cluster, and its bus traffic since it started. */
export interface Cluster {
  node: string;
  bus: 'local' | 'nats' | 'redis';
  peers: string[];
  subscribed_shards: number;
  subscribed_topic_shards: number;
  envelopes_out: number;
  bytes_out: number;
  envelopes_in: number;
  bytes_in: number;
  echoes: number;
  rejected: number;
  publish_failures: number;
  repair_passes: number;
  repaired: number;
  /** Times the broker connection came back after it was lost. */
  reconnects: number;
}

export interface Health {
  status: 'ok' | 'degraded';
  node: string;
  store: string;
  bus: string;
  reason?: string;
}

/**
 * Herald refused a request or did not answer. `status` is the HTTP status (`null`: no answer);
 * `code` the server's error code, or `timeout`, `aborted`, `unreachable`, `invalid_response`.
 */
export declare class HeraldError extends Error {
  constructor(status: number | null, code: string, message: string, options?: { retryAfter?: number | null; cause?: unknown });
  readonly name: 'HeraldError';
  readonly status: number | null;
  readonly code: string;
  /** `Retry-After` of a 429 or 503, in seconds; `null` without one. */
  readonly retryAfter: number | null;
}

export declare class Herald {
  constructor(options: HeraldOptions);
  readonly url: string;
  /** An `inbox` publish to a topic's followers may answer `{job}` (more than 10,000 of them). */
  notify(notification: Notification & { inbox: true }, options?: CallOptions): Promise<Receipt | JobStarted>;
  notify(notification: Notification, options?: CallOptions): Promise<Receipt>;
  notifyBatch(notifications: Notification[], options?: CallOptions): Promise<BatchReceipt>;
  job(id: string, options?: CallOptions): Promise<Job>;
  mintToken(options: MintTokenOptions): string;
  presence(user: string, options?: CallOptions): Promise<Presence>;
  closeSession(user: string, session: string, options?: CallOptions): Promise<{ closed: number }>;
  closeAllSessions(user: string, options?: CallOptions): Promise<{ closed: number }>;
  notifications(user: string, options?: CallOptions & { after?: number; limit?: number }): Promise<{ notifications: StoredNotification[] }>;
  inbox(user: string): Inbox;
  listen(request: ListenRequest, options?: CallOptions): Promise<Listening>;
  unlisten(request: ListenRequest, options?: CallOptions): Promise<Listening>;
  topic(topic: string, options?: CallOptions): Promise<TopicListeners>;
  pushSubscriptions(user: string, options?: CallOptions): Promise<PushSubscriptions>;
  /** By the `id` listed; 404 `no_such_subscription` for one the user does not have. */
  removePushSubscription(user: string, id: string, options?: CallOptions): Promise<void>;
  /** No API key needed; 404 `push_not_configured` on a server without a VAPID key. */
  vapidPublicKey(options?: CallOptions): Promise<{ public_key: string }>;
  health(options?: CallOptions): Promise<Health>;
  cluster(options?: CallOptions): Promise<Cluster>;
}
