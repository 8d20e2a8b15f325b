// Compiled by `npm run typecheck` (tsc --strict, noEmit): index.d.ts must accept what the README
// and the guides write, and refuse what the server would refuse.
import { Herald, HeraldError, type Receipt } from '@herald/server';

const herald = new Herald({ url: 'http://127.0.0.1:7300', apiKey: 'key', secret: 'secret', timeoutMs: 5_000 });

export async function usage(): Promise<void> {
  const token: string = herald.mintToken({ user: 'alice', session: 'laptop', ttl: 900, topics: ['room:*'] });
  const receipt = await herald.notify({ user: 'alice', type: 'message.new', data: { text: 'hi' }, idempotencyKey: 'm-1' });
  const seq: number | undefined = receipt.notifications[0]?.seq;
  const followers = await herald.notify({ topic: 'post:1', inbox: true });
  if ('job' in followers) console.log((await herald.job(followers.job)).done);
  // @ts-expect-error: an inbox publish may be a job: narrow first
  console.log(followers.notifications, seq);
  await herald.notify({ user: 'alice', session: 'laptop', durable: false, exceptClient: 'c' }, { timeoutMs: 1_000 });
  await herald.notify({ users: ['alice', 'bob'], type: 't' }, { signal: AbortSignal.timeout(100) });
  await herald.notify({ topic: 'room:1', exceptUser: 'alice', inbox: true });
  await herald.notify({
    user: 'alice', push: 'always', pushPayload: { title: 'hi' }, pushTtl: 60, pushUrgency: 'very-low', pushTopic: 'chat',
  });
  await herald.notifyBatch([{ user: 'alice', push: 'never' }]);
  const { subscriptions } = await herald.pushSubscriptions('alice');
  const removed: void = await herald.removePushSubscription('alice', subscriptions[0]?.id ?? 'x');
  const { public_key: vapidKey }: { public_key: string } = await herald.vapidPublicKey();
  const cluster = await herald.cluster();
  const peers: string[] = cluster.peers;
  console.log(removed, vapidKey, peers, subscriptions[0]?.push_service);
  const batch = await herald.notifyBatch([{ client: 'c1' }, { user: 'bob' }]);
  for (const result of batch.results) {
    if ('error' in result) console.log(result.error.code);
    else console.log((result satisfies Receipt).delivered);
  }
  const presence = await herald.presence('alice');
  console.log(presence.sessions[0]?.clients[0]?.transport, token);
  const { closed }: { closed: number } = await herald.closeSession('alice', 'laptop');
  await herald.closeAllSessions('alice');
  await herald.notifications('alice', { after: 3, limit: 10 });
  const inbox = herald.inbox('alice');
  const counts = await inbox.counts();
  const page = await inbox.list({ status: 'unread', limit: 20 });
  await inbox.mark([1, 2], 'seen');
  await inbox.mark({ allUpTo: counts.version }, 'read', { exceptClient: 'c' });
  await inbox.delete(page.notifications[0]?.seq ?? 1);
  await inbox.delete({ allUpTo: 5 });
  await herald.listen({ topics: ['room:1'], user: 'alice' });
  await herald.unlisten({ topics: 'room:1', client: 'c' });
  await herald.topic('room:1');
  const health = await herald.health();
  console.log(closed, health.status);
  try {
    await herald.notify({ user: 'alice' });
  } catch (error) {
    if (error instanceof HeraldError) console.log(error.status, error.code, error.message, error.retryAfter);
  }

  // @ts-expect-error: two targets at once
  await herald.notify({ user: 'alice', client: 'c' });
  // @ts-expect-error: a session needs its user
  await herald.notify({ session: 'laptop' });
  // @ts-expect-error: a target is required
  await herald.notify({ type: 'x' });
  // @ts-expect-error: the API's snake_case is not the option's name
  await herald.notify({ user: 'alice', idempotency_key: 'k' });
  // @ts-expect-error: `user` is required
  herald.mintToken({ session: 's' });
  // @ts-expect-error: a listen needs a scope
  await herald.listen({ topics: ['a'] });
  // @ts-expect-error: not a mark
  await inbox.mark([1], 'deleted');
  // @ts-expect-error: not a push policy
  await herald.notify({ user: 'alice', push: 'sometimes' });
  // @ts-expect-error: not an urgency
  await herald.notify({ user: 'alice', pushUrgency: 'urgent' });
  // @ts-expect-error: the API's snake_case is not the option's name
  await herald.notify({ user: 'alice', push_ttl: 60 });
}
