// Type-checks clients/js/herald.d.ts the way an app uses it (`npm run typecheck`, run by
// scripts/browser-tests.sh): the declarations must compile under `strict`, and the calls below
// must type-check. Lines marked @ts-expect-error must NOT type-check: each proves that a wrong
// use is refused (if the declarations stopped refusing it, tsc fails on the unused directive).
import Herald, {
  HeraldError,
  type HeraldInboxChange,
  type HeraldInboxCounts,
  type HeraldInboxPage,
  type HeraldListenOptions,
  type HeraldNotification,
  type HeraldReset,
  type HeraldPositions,
  type HeraldPushOptions,
  type HeraldPushState,
  type HeraldPushSubscription,
  type HeraldStatus,
  type HeraldTopicEvent,
  type HeraldTopicReset,
  type HeraldUndecodable,
} from '../../../clients/js/herald.js';

interface Message {
  text: string;
}

async function app(): Promise<void> {
  const herald = new Herald({
    url: '/herald',
    token: async () => 'token',
    transport: 'ws',
    fallback: true,
    lastSeq: null,
    epoch: null,
    inbox: true,
  });
  new Herald({ token: 'fixed' });

  const stop: () => void = herald.on('notification', (n: HeraldNotification) => {
    const seq: number | undefined = n.seq;
    const message = n.data as Message;
    console.log(seq, n.type, n.created_at, message.text);
  });
  stop();
  herald.on('reset', (r) => console.log(r.last_seq ?? 'unknown'));
  herald.on('closed', (c) => {
    if (c.reason === 'session_closed' || c.reason === 'token_expired') console.log('signed out');
  });
  herald.on('status', (s: HeraldStatus) => console.log(s));
  herald.on('undecodable', (u: HeraldUndecodable) => console.log(u.seq ?? 'no seq', u.error, u.raw.length));
  herald.on('counts', (c: HeraldInboxCounts) => console.log(c.unread, c.unseen, c.total, c.archived, c.version));
  herald.on('inbox', (change: HeraldInboxChange) => console.log(change.op, change.seqs, change.all_up_to, change.counts));

  const status: HeraldStatus | 'idle' = herald.status;
  const client: string | null = herald.client;
  const lastSeq: number | null = herald.lastSeq;
  const epoch: string | null = herald.epoch;
  console.log(status, client, lastSeq, epoch, herald.transport, herald.inbox.following);
  new Herald({ token: 'fixed', lastSeq: 42, epoch: 'e1' });

  const page: HeraldInboxPage = await herald.inbox.list({ status: 'unread', type: 'message.new', before: 10, limit: 20 });
  for (const item of page.notifications) {
    const read: boolean = item.read_at !== null;
    console.log(item.seq + 1, read, item.seen_at, item.archived_at);
  }
  const next: number | null = page.next_before;
  const counts: HeraldInboxCounts | null = herald.inbox.counts;
  console.log(next, counts?.unread, (await herald.inbox.refresh()).version);
  await herald.inbox.mark([1, 2]);
  await herald.inbox.mark({ allUpTo: 9 }, 'archived');
  await herald.inbox.markAll();
  await herald.inbox.markAll('seen', 12);
  const deleted: HeraldInboxChange = await herald.inbox.delete([3]);
  console.log(deleted.changed);
  try {
    await herald.inbox.delete({ allUpTo: 4 });
  } catch (error) {
    if (error instanceof HeraldError) console.log(error.status, error.code, error.message);
  }
  const joined: string[] = await herald.listen('room:1');
  const options: HeraldListenOptions = { scope: 'client' };
  await herald.listen(['room:2', 'post:42'], options);
  const left: string[] = await herald.unlisten(['room:2']);
  await herald.unlisten('post:42', { scope: 'client' });
  const followed: string[] = await herald.listen('post:7', { scope: 'user' });
  await herald.unlisten(['post:7'], { scope: 'session' });
  console.log(followed);
  const topics: readonly string[] = herald.topics;
  console.log(joined.length, left.includes('room:1'), topics[0]);
  herald.on('topic', (e: HeraldTopicEvent) => {
    const message = e.data as Message;
    const tseq: number | undefined = e.tseq;
    console.log(e.topic, tseq ?? 'ephemeral', e.type, e.created_at, message.text);
  });
  herald.on('topic_reset', (r: HeraldTopicReset) => console.log(r.topic, r.last_tseq + 1));
  const positions: HeraldPositions = herald.positions;
  console.log(positions['room:1'] ?? 0);
  new Herald({ token: 'fixed', lastSeq: 42, epoch: 'e1', positions: { 'room:1': 7 } });
  new Herald({ token: 'fixed', lastSeq: 42, epoch: 'e1', positions: herald.positions });
  const typed: HeraldTopicEvent<Message> = { topic: 'room:1', type: 'message', data: { text: 'hi' }, created_at: '' };
  console.log(typed.data.text);
  try {
    await herald.listen('secret:1');
  } catch (error) {
    if (error instanceof HeraldError && error.code === 'topic_forbidden') console.log(error.status);
  }
  const pushOptions: HeraldPushOptions = { serviceWorker: '/sw.js' };
  console.log((await herald.push.state(pushOptions)).subscribed);
  const pushState: HeraldPushState = await herald.push.state();
  if (pushState.supported && pushState.permission !== 'denied' && !pushState.subscribed) {
    try {
      const kept: HeraldPushSubscription = await herald.push.subscribe({ serviceWorker: '/herald-sw.js', scope: '/' });
      console.log(kept.id, kept.created_at);
    } catch (error) {
      if (error instanceof HeraldError && error.code === 'push_permission_denied') console.log(error.status === 0);
    }
  }
  const wasSubscribed: boolean = await herald.push.unsubscribe({ scope: '/' });
  console.log(wasSubscribed);
  herald.close();

  // Wrong uses the declarations refuse:
  // @ts-expect-error: a token is required
  new Herald({});
  // @ts-expect-error: no such transport
  new Herald({ token: 't', transport: 'mqtt' });
  // @ts-expect-error: the service worker is a URL
  await herald.push.subscribe({ serviceWorker: true });
  // @ts-expect-error: state() is a promise
  console.log(herald.push.state().subscribed);
  // @ts-expect-error: no such permission
  const askedAlready: HeraldPushState['permission'] = 'prompt';
  void askedAlready;
  // @ts-expect-error: no such event
  herald.on('message', () => {});
  // @ts-expect-error: a notification listener gets a notification, not counts
  herald.on('notification', (c: HeraldInboxCounts) => console.log(c.unread));
  // @ts-expect-error: no such mark
  await herald.inbox.mark([1], 'starred');
  // @ts-expect-error: no such status
  await herald.inbox.list({ status: 'new' });
  // @ts-expect-error: markAll cannot mark unread
  await herald.inbox.markAll('unread');
  // @ts-expect-error: counts are read-only
  herald.inbox.counts = null;
  // @ts-expect-error: a topic is a string
  await herald.listen(42);
  // @ts-expect-error: no such scope
  await herald.listen('room:1', { scope: 'tab' });
  // @ts-expect-error: the topics are read-only
  herald.topics.push('room:3');
  // @ts-expect-error: positions are read-only
  herald.positions['room:1'] = 3;
  // @ts-expect-error: a position is a number
  new Herald({ token: 'fixed', lastSeq: 1, positions: { 'room:1': '3' } });
  // @ts-expect-error: a topic reset names its last tseq, not a seq
  herald.on('topic_reset', (r: HeraldReset & { last_seq: number }) => console.log(r.last_seq));
  // @ts-expect-error: a topic listener gets a topic event, not a notification with a seq
  herald.on('topic', (e: HeraldNotification & { seq: number }) => console.log(e.seq));
}

void app;
