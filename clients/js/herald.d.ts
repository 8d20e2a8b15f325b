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
 * - `evicted`: the user opened one session or tab too many and this one was the least active;
 * - `replaced`: another connection took this client id;
 * - `session_closed`: the app's backend closed this session (e.g. the user signed out);
 * - `token_expired` / `unauthorized`: the token (a fixed string) expired or was refused; with a
 *   token function the client gets a new token instead and goes on.
 */
export type HeraldCloseReason = 'evicted' | 'replaced' | 'session_closed' | 'token_expired' | 'unauthorized';

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

/** Notifications were lost to this client (it was away longer than they are kept, or the
 * server lost its data): the app should reload its state. `last_seq` is where the stream goes
 * on from, or `null` when unknown. */
export interface HeraldReset {
  last_seq: number | null;
}

export interface HeraldClosed {
  reason: HeraldCloseReason;
}

export interface HeraldEvents {
  notification: HeraldNotification;
  reset: HeraldReset;
  closed: HeraldClosed;
  status: HeraldStatus;
}

export interface HeraldOptions {
  /** Base URL of the Herald server, e.g. `''` (this origin), `'/herald'` or
   * `'https://app.example.com/herald'`. It must be on the page's origin: Herald sends no CORS
   * headers. Default `''`. */
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
  /** The transport in use now (it may be `poll` after a fallback). */
  readonly transport: HeraldTransport;
  /** Adds a listener; returns a function that removes it. */
  on<E extends keyof HeraldEvents>(event: E, listener: (value: HeraldEvents[E]) => void): () => void;
  /** Removes a listener added with `on`. */
  off<E extends keyof HeraldEvents>(event: E, listener: (value: HeraldEvents[E]) => void): void;
  /** Closes the connection for good (status `closed`, no `closed` event). */
  close(): void;
}

export default Herald;
