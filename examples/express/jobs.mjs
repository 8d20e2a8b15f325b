// The background job of the Express example: a queue of data exports, worked one at a time, each
// announced to its user with a Herald notification when it is ready.
//
// A real app would use its job system (BullMQ, a database table, …); what matters for Herald is
// the last step: `herald.notify` with an idempotency key made from the job's id, so that a retry
// after a failure that left it unknown whether Herald stored it (a timeout, a 503) stores it once.

import { randomUUID } from 'node:crypto';

import { HeraldError } from '@herald/server';

/** Exports waiting at most; one more is refused (the route answers 503). */
export const EXPORTS_QUEUED_MAX = 100;
/** Tries of one notification before the job gives up on it (and logs it). */
export const NOTIFY_TRIES_MAX = 5;

export class ExportQueue {
  #herald;
  #delayMs;
  #waiting = [];
  #running = null;
  #stopped = false;

  constructor(herald, { delayMs }) {
    this.#herald = herald;
    this.#delayMs = delayMs;
  }

  /** Queues an export of `user`'s data; its id, or null when the queue is full. */
  enqueue(user) {
    if (this.#stopped || this.#waiting.length >= EXPORTS_QUEUED_MAX) return null;
    const id = randomUUID();
    this.#waiting.push({ id, user });
    this.#running ??= this.#work();
    return id;
  }

  /** Takes no more jobs; resolves once the one running has finished. */
  async stop() {
    this.#stopped = true;
    this.#waiting.length = 0;
    await this.#running;
  }

  async #work() {
    while (this.#waiting.length) {
      const job = this.#waiting.shift();
      await new Promise((resolve) => setTimeout(resolve, this.#delayMs)); // "building" the export
      await this.#announce(job);
    }
    this.#running = null;
  }

  async #announce({ id, user }) {
    for (let attempt = 1; ; attempt += 1) {
      try {
        await this.#herald.notify({
          user,
          type: 'export.ready',
          data: { text: 'Your export is ready', url: `/exports/${id}` },
          idempotencyKey: `export-${id}`,
        });
        return;
      } catch (error) {
        // No answer, or Herald unavailable: worth another try (same key). A 4xx is a bug here.
        const retryable = error instanceof HeraldError && (error.status === null || error.status >= 500);
        if (!retryable || attempt === NOTIFY_TRIES_MAX) {
          console.error(`export ${id}: cannot notify ${user}: ${error.message}`);
          return;
        }
        await new Promise((resolve) => setTimeout(resolve, 500 * 2 ** attempt));
      }
    }
  }
}
