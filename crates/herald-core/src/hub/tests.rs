//! The hub's unit tests (the lock-taking code they exercise is in `hub.rs`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use super::*;
use crate::queue::Received;

/// What a multi-node bus hears from the hub: a user gained once and lost once (whether its
/// last session is closed or swept), new clients as `joined`, taken-over ids as `claimed`.
#[derive(Default)]
struct Recorder(parking_lot::Mutex<Vec<String>>);

impl Interest for Recorder {
    fn gained(&self, user: &UserId) {
        self.0.lock().push(format!("gained {user}"));
    }
    fn lost(&self, user: &UserId) {
        self.0.lock().push(format!("lost {user}"));
    }
    fn ready(&self, _: &UserId) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        Box::pin(std::future::ready(()))
    }
    fn claimed(&self, user: &UserId, session: &SessionId, _: &ClientId, _: i64) {
        self.0.lock().push(format!("claimed {user} {session}"));
    }
    fn joined(&self, user: &UserId, session: &SessionId, _: &ClientId) {
        self.0.lock().push(format!("joined {user} {session}"));
    }
}

#[test]
fn closing_one_tab_leaves_the_others_and_counts_follow() {
    let hub = Hub::new(Limits::default(), ClientIdMinter::new(b"key"));
    let (alice, alfred) = (UserId::new("alice").unwrap(), UserId::new("alfred").unwrap());
    let (s1, s2) = (SessionId::new("s1").unwrap(), SessionId::new("s2").unwrap());
    let one = hub.attach(&alice, &s1, None, Transport::Sse, &[]).unwrap();
    let two = hub.attach(&alice, &s1, None, Transport::Ws, &[]).unwrap();
    let three = hub.attach(&alice, &s2, None, Transport::Sse, &[]).unwrap();
    let _other = hub.attach(&alfred, &s1, None, Transport::Sse, &[]).unwrap();
    assert_eq!(hub.census(), Census { users: 2, sessions: 3, tabs: [3, 0, 1] });

    assert!(hub.close_client(&alice, &s1, &one.info().client, CloseReason::Evicted));
    assert_eq!(one.shared.close_reason(), Some(CloseReason::Evicted));
    assert_eq!((two.shared.close_reason(), three.shared.close_reason()), (None, None));
    assert!(!hub.close_client(&alice, &s1, &one.info().client, CloseReason::Evicted), "closed already");
    assert!(!hub.close_client(&alice, &s2, &one.info().client, CloseReason::Evicted), "not in that session");
    assert_eq!(hub.census(), Census { users: 2, sessions: 3, tabs: [2, 0, 1] });
    assert_eq!(hub.locate(&one.info().client), Some((alice.clone(), s1.clone())), "kept until the sweep");

    assert_eq!(hub.users_with_prefix("al", 10), [alfred.clone(), alice.clone()]);
    assert_eq!(hub.users_with_prefix("al", 1), [alfred]);
    assert_eq!(hub.users_with_prefix("alic", 10), [alice]);
    assert!(hub.users_with_prefix("bob", 10).is_empty());
}

#[test]
fn the_interest_hears_of_users_and_clients() {
    let limits = Limits { client_linger: std::time::Duration::ZERO, ..Limits::default() };
    let hub = Hub::new(limits, ClientIdMinter::new(b"key"));
    let recorder = Arc::new(Recorder::default());
    let (alice, bob) = (UserId::new("alice").unwrap(), UserId::new("bob").unwrap());
    let (s1, s2) = (SessionId::new("s1").unwrap(), SessionId::new("s2").unwrap());
    let early = hub.attach(&alice, &s1, None, Transport::Sse, &[]).unwrap();
    assert!(hub.set_interest(recorder.clone()));
    assert!(!hub.set_interest(recorder.clone()), "once");
    let second = hub.attach(&alice, &s2, None, Transport::Sse, &[]).unwrap();
    let again = hub.attach(&alice, &s2, Some(second.info().client.as_str()), Transport::Ws, &[]).unwrap();
    let other = hub.attach(&bob, &s1, None, Transport::Sse, &[]).unwrap();
    assert_eq!(
        std::mem::take(&mut *recorder.0.lock()),
        ["gained alice", "joined alice s2", "claimed alice s2", "gained bob", "joined bob s1"],
    );
    assert_eq!(second.shared.close_reason(), Some(CloseReason::Replaced));

    hub.close_sessions(&alice, Some(&s1), CloseReason::SessionClosed);
    assert!(recorder.0.lock().is_empty(), "alice still has s2");
    assert!(hub.evict_client(&alice, &s2, &again.info().client));
    assert_eq!(again.shared.close_reason(), Some(CloseReason::Evicted));
    assert_eq!(std::mem::take(&mut *recorder.0.lock()), ["lost alice"]);
    assert!(hub.locate(&again.info().client).is_none(), "evicted: forgotten");

    hub.detach(other.info(), other.attachment, false);
    hub.sweep();
    assert_eq!(std::mem::take(&mut *recorder.0.lock()), ["lost bob"]);
    drop(early);
}

/// What the presence tracker hears: each tab's connected / gone, as `+client` / `-client`.
#[derive(Default)]
struct Tabs(parking_lot::Mutex<Vec<String>>);

impl PresenceHook for Tabs {
    fn tab_changed(&self, _: &UserId, session: &SessionId, client: &ClientId, connected: bool) {
        let sign = if connected { '+' } else { '-' };
        self.0.lock().push(format!("{sign}{session}/{}", &client.as_str()[..4]));
    }
}

impl Tabs {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock())
    }
}

/// The presence hook hears of every tab that connects and of every way a tab stops being
/// connected, once each: a connection that ends, a reconnect that replaces it, eviction,
/// a closed session, an expired token; a poller between polls is still connected until
/// its linger ends. Fails if a path that ends a connection does not tell the hook (the
/// tracker would keep the user online for ever).
#[test]
fn the_presence_hook_hears_every_tab_come_and_go() {
    let limits = Limits {
        clients_per_session_max: 1,
        client_linger: std::time::Duration::from_millis(30),
        ..Limits::default()
    };
    let hub = Hub::new(limits, ClientIdMinter::new(b"key"));
    let (user, s1, s2) =
        (UserId::new("u").unwrap(), SessionId::new("s1").unwrap(), SessionId::new("s2").unwrap());
    let before = hub.attach(&user, &s1, None, Transport::Sse, &[]).unwrap();
    let tabs = Arc::new(Tabs::default());
    assert!(hub.set_presence_hook(tabs.clone()));
    assert!(!hub.set_presence_hook(tabs.clone()), "once");
    let b = &before.info().client.as_str()[..4];
    assert_eq!(tabs.take(), [format!("+s1/{b}")], "the tabs connected already");

    hub.detach(before.info(), before.attachment, false);
    hub.detach(before.info(), before.attachment, false);
    assert_eq!(tabs.take(), [format!("-s1/{b}")], "once");

    let again = hub.attach(&user, &s1, Some(before.info().client.as_str()), Transport::Sse, &[]).unwrap();
    let replacing = hub.attach(&user, &s1, Some(before.info().client.as_str()), Transport::Ws, &[]).unwrap();
    assert_eq!(tabs.take(), [format!("+s1/{b}"), format!("-s1/{b}"), format!("+s1/{b}")]);
    hub.detach(again.info(), again.attachment, false);
    assert!(tabs.take().is_empty(), "a replaced connection's detach changes nothing");

    let evicting = hub.attach(&user, &s1, None, Transport::Sse, &[]).unwrap();
    let e = &evicting.info().client.as_str()[..4];
    assert_eq!(tabs.take(), [format!("-s1/{b}"), format!("+s1/{e}")], "evicted: one client per session");
    drop(replacing);

    let poller = hub.attach(&user, &s2, None, Transport::Poll, &[]).unwrap();
    let p = &poller.info().client.as_str()[..4];
    hub.detach(poller.info(), poller.attachment, true);
    assert_eq!(tabs.take(), [format!("+s2/{p}")], "parked: still connected");
    std::thread::sleep(std::time::Duration::from_millis(40));
    hub.sweep();
    assert_eq!(tabs.take(), [format!("-s2/{p}")], "its linger is over");

    evicting.shared.expire_at(1);
    hub.tick(2, 10);
    assert_eq!(tabs.take(), [format!("-s1/{e}")], "token expired");
    let last = hub.attach(&user, &s2, None, Transport::Sse, &[]).unwrap();
    let l = &last.info().client.as_str()[..4];
    hub.close_sessions(&user, None, CloseReason::SessionClosed);
    assert_eq!(tabs.take(), [format!("+s2/{l}"), format!("-s2/{l}")]);
}

/// Another node took a client over at some time: the connection here ends with `replaced`
/// only if it is older than that.
#[test]
fn a_remote_takeover_replaces_only_older_connections() {
    let hub = Hub::new(Limits::default(), ClientIdMinter::new(b"key"));
    let (user, session) = (UserId::new("alice").unwrap(), SessionId::new("s").unwrap());
    let tab = hub.attach(&user, &session, None, Transport::Sse, &[]).unwrap();
    let id = tab.info().client.clone();
    assert!(!hub.replace_client(&user, &session, &id, now_ms() - 60_000), "taken over before it connected");
    assert_eq!(tab.shared.close_reason(), None);
    assert!(hub.replace_client(&user, &session, &id, now_ms() + 1));
    assert_eq!(tab.shared.close_reason(), Some(CloseReason::Replaced));
    assert!(!hub.replace_client(&user, &session, &id, now_ms() + 1), "once");
    assert_eq!(hub.lowest_position(&user), None, "no connected client");
}

/// A poller's entry parks between polls: its queue still takes what is fanned out, its next
/// poll takes the queue back only from where the last poll ended, and the sweep ends it once
/// the linger is over. Other transports never park.
#[test]
fn a_parked_poller_keeps_its_queue_until_the_linger_ends() {
    let limits = Limits { client_linger: std::time::Duration::from_millis(50), ..Limits::default() };
    let hub = Hub::new(limits, ClientIdMinter::new(b"key"));
    let (user, session) = (UserId::new("alice").unwrap(), SessionId::new("s").unwrap());
    let data = Arc::from(serde_json::value::RawValue::from_string("1".into()).unwrap());
    let ephemeral = Arc::new(Notification::new(
        user.clone(),
        None,
        Arc::from("t"),
        data,
        0,
        crate::notification::Audience::user(),
    ));
    let first = hub.attach(&user, &session, None, Transport::Poll, &[]).unwrap();
    let id = first.info().client.as_str().to_owned();
    first.shared.last_seq.store(3, Ordering::Relaxed);
    hub.detach(first.info(), first.attachment, true);
    assert_eq!(hub.fanout(&ephemeral), 1, "parked: still a recipient");

    assert!(hub.resume_parked(&user, &session, &id, 2).is_none(), "not from another position");
    let second = hub.resume_parked(&user, &session, &id, 3).expect("resumed from where it ended");
    assert!(Arc::ptr_eq(&first.shared, &second.shared), "the same queue");
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(second.shared.queue.poll_recv(&mut cx), Poll::Ready(Some(Received::Notification(_)))));
    assert!(hub.resume_parked(&user, &session, &id, 3).is_none(), "taken: not twice");

    hub.detach(second.info(), second.attachment, true);
    std::thread::sleep(std::time::Duration::from_millis(60));
    assert_eq!(hub.sweep(), 1);
    assert_eq!(hub.fanout(&ephemeral), 0, "swept: no longer a recipient");
    assert!(hub.resume_parked(&user, &session, &id, 3).is_none());

    let sse = hub.attach(&user, &session, None, Transport::Sse, &[]).unwrap();
    hub.detach(sse.info(), sse.attachment, true);
    assert_eq!(hub.fanout(&ephemeral), 0, "only pollers park");
}

/// Clients that connect together (a restart, a benchmark) fall due for their keep-alives on
/// different ticks, not all on the same one.
#[test]
fn keepalives_of_clients_that_connect_together_are_staggered() {
    let hub = Hub::new(Limits::default(), ClientIdMinter::new(b"key"));
    let keepalive_ticks = 10;
    hub.tick(0, keepalive_ticks);
    let user = UserId::new("alice").unwrap();
    let clients: Vec<Attachment> = (0..10)
        .map(|i| {
            hub.attach(&user, &SessionId::new(format!("s{i}")).unwrap(), None, Transport::Sse, &[]).unwrap()
        })
        .collect();
    let mut cx = Context::from_waker(Waker::noop());
    let mut due_per_tick = Vec::new();
    for _ in 0..2 * keepalive_ticks {
        hub.tick(0, keepalive_ticks);
        let due = clients
            .iter()
            .filter(|c| matches!(c.shared.queue.poll_recv(&mut cx), Poll::Ready(Some(Received::KeepAlive))))
            .count();
        due_per_tick.push(due);
    }
    // Each client once per period; the first after 6 to 10 quiet ticks, two of the ten on
    // each of those ticks (not all ten on the tenth).
    assert_eq!(due_per_tick, [0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2]);
}

fn topic(name: &str) -> Topic {
    Topic::new(name).unwrap()
}

fn topic_event(
    name: &str,
    except_user: Option<&UserId>,
    except_client: Option<&ClientId>,
) -> Arc<TopicEvent> {
    let data = Arc::from(serde_json::value::RawValue::from_string("1".into()).unwrap());
    Arc::new(TopicEvent::new(
        topic(name),
        Arc::from("t"),
        data,
        0,
        except_user.cloned(),
        except_client.cloned(),
    ))
}

/// The topic index follows the tabs: listens add (once each), unlistens remove, a reconnect
/// points the listens at the new queue, and a tab forgotten in any way leaves every topic.
#[test]
fn the_topic_index_follows_its_tabs() {
    let limits = Limits { topics_per_client_max: 3, ..Limits::default() };
    let hub = Hub::new(limits, ClientIdMinter::new(b"key"));
    let (alice, bob) = (UserId::new("alice").unwrap(), UserId::new("bob").unwrap());
    let session = SessionId::new("s").unwrap();
    let room = topic("room:1");
    let tab = hub.attach(&alice, &session, None, Transport::Sse, std::slice::from_ref(&room)).unwrap();
    assert_eq!(&*tab.topics, std::slice::from_ref(&room));
    let other = hub.attach(&bob, &session, None, Transport::Sse, &[]).unwrap();
    let listening = hub.listen(&bob, &session, &other.info().client, &[room.clone(), room.clone()]).unwrap();
    assert_eq!(listening, std::slice::from_ref(&room), "a topic named twice is listened to once");
    assert_eq!(hub.fanout_topic(&topic_event("room:1", None, None)), 2);
    assert_eq!(hub.fanout_topic(&topic_event("room:1", Some(&alice), None)), 1, "except_user");
    assert_eq!(
        hub.fanout_topic(&topic_event("room:1", None, Some(&other.info().client))),
        1,
        "except_client"
    );
    assert_eq!(hub.fanout_topic(&topic_event("room:2", None, None)), 0);

    // Over the bound: refused whole.
    let more = [topic("a"), topic("b"), topic("c")];
    assert_eq!(
        hub.listen(&alice, &session, &tab.info().client, &more),
        Err(ListenError::TooManyTopics { count: 4, max: 3 })
    );
    assert_eq!(hub.topics_of(tab.info()).unwrap(), std::slice::from_ref(&room));
    assert_eq!(
        hub.listen(&alice, &session, &ClientId::new("nobody").unwrap(), &more[..1]),
        Err(ListenError::ClientNotFound(ClientId::new("nobody").unwrap()))
    );

    // A reconnect keeps the listens, on the new connection's queue; the old one gets nothing.
    let again =
        hub.attach(&alice, &session, Some(tab.info().client.as_str()), Transport::Ws, &[topic("a")]).unwrap();
    assert_eq!(&*again.topics, [room.clone(), topic("a")]);
    assert_eq!(hub.fanout_topic(&topic_event("room:1", Some(&bob), None)), 1);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(again.shared.queue.poll_recv(&mut cx), Poll::Ready(Some(Received::Topic(_)))));
    assert!(matches!(tab.shared.queue.poll_recv(&mut cx), Poll::Ready(None)), "the replaced queue is closed");
    // Away (not parked): its queue takes nothing.
    hub.detach(again.info(), again.attachment, false);
    assert_eq!(hub.fanout_topic(&topic_event("a", None, None)), 0);

    assert_eq!(hub.unlisten(&bob, &session, &other.info().client, &[room.clone(), topic("z")]).unwrap(), []);
    assert_eq!(hub.topic_listeners(&room), [(alice.clone(), again.info().client.clone())]);
    hub.close_sessions(&alice, None, CloseReason::SessionClosed);
    assert!(hub.topic_listeners(&room).is_empty() && hub.topic_listeners(&topic("a")).is_empty());

    // Evicted with its session, or its client: its listens go too.
    let limits = Limits { sessions_per_user_max: 1, clients_per_session_max: 1, ..Limits::default() };
    let hub = Hub::new(limits, ClientIdMinter::new(b"key"));
    let first = hub.attach(&alice, &session, None, Transport::Sse, std::slice::from_ref(&room)).unwrap();
    let second = hub.attach(&alice, &session, None, Transport::Sse, &[topic("b")]).unwrap();
    assert_eq!(hub.topic_listeners(&room), [], "{:?} was evicted", first.info().client);
    let other_session = SessionId::new("s2").unwrap();
    hub.attach(&alice, &other_session, None, Transport::Sse, &[]).unwrap();
    assert_eq!(
        hub.topic_listeners(&topic("b")),
        [],
        "{:?} was evicted with its session",
        second.info().client
    );
    assert!(
        hub.inner.topics.iter().all(|shard| shard.lock().is_empty()),
        "no topic is kept without listeners"
    );
}

/// Keeps alice's, drops bob's, rewrites carol's; counts its calls.
struct Censor(std::sync::atomic::AtomicUsize);

impl Prepare for Censor {
    fn prepare(&self, user: &UserId, _event: &TopicEvent) -> Prepared {
        self.0.fetch_add(1, Ordering::Relaxed);
        match user.as_str() {
            "bob" => Prepared::Drop,
            "carol" => Prepared::Rewrite(Arc::from(
                serde_json::value::RawValue::from_string("\"[hidden]\"".into()).unwrap(),
            )),
            "dave" => Prepared::Rewrite(Arc::from(
                serde_json::value::RawValue::from_string("1e999".into()).unwrap(),
            )),
            _ => Prepared::Keep,
        }
    }
}

/// A `Prepare` hook decides per user, once per user however many tabs it has here.
#[test]
fn a_prepare_hook_runs_once_per_user_and_keeps_drops_or_rewrites() {
    let hub = Hub::new(Limits::default(), ClientIdMinter::new(b"key"));
    let censor = Arc::new(Censor(std::sync::atomic::AtomicUsize::new(0)));
    assert!(hub.set_prepare(censor.clone()));
    assert!(!hub.set_prepare(censor.clone()), "once per hub");
    let session = SessionId::new("s").unwrap();
    let room = topic("room:1");
    let mut tabs = Vec::new();
    for user in ["alice", "alice", "bob", "bob", "carol", "carol", "dave"] {
        let user = UserId::new(user).unwrap();
        tabs.push(hub.attach(&user, &session, None, Transport::Sse, std::slice::from_ref(&room)).unwrap());
    }
    assert_eq!(hub.fanout_topic(&topic_event("room:1", None, None)), 4, "alice's 2 tabs and carol's 2");
    assert_eq!(censor.0.load(Ordering::Relaxed), 4, "once per user: alice, bob, carol, dave");
    let mut cx = Context::from_waker(Waker::noop());
    let data_of = |tab: &Attachment, cx: &mut Context<'_>| match tab.shared.queue.poll_recv(cx) {
        Poll::Ready(Some(Received::Topic(event))) => Some(event.data.get().to_owned()),
        _ => None,
    };
    let got: Vec<Option<String>> = tabs.iter().map(|tab| data_of(tab, &mut cx)).collect();
    let kept = Some("1".to_owned());
    let hidden = Some("\"[hidden]\"".to_owned());
    assert_eq!(
        got,
        [kept.clone(), kept, None, None, hidden.clone(), hidden, None],
        "dave's rewrite is not valid data"
    );
}

/// Issue 13's memory per listening tab: the tabs of a room share the index's one copy of its
/// name (each request parses its own), a tab's own topics are held inline while it listens to
/// one and boxed beyond, and the index, which holds only each tab's connection, still knows who
/// each listener is. Fails if a tab keeps its request's copy of a name, or if the topics of a
/// tab and the index part ways as it goes from none to one, two, one and none.
#[test]
fn the_tabs_of_a_room_share_its_name_and_hold_one_topic_inline() {
    let hub = Hub::new(Limits::default(), ClientIdMinter::new(b"key"));
    let session = SessionId::new("s").unwrap();
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|u| UserId::new(u).unwrap());
    let name = |t: &Topic| t.as_str().as_ptr();
    let a = hub.attach(&alice, &session, None, Transport::Sse, &[topic("room")]).unwrap();
    let b = hub.attach(&bob, &session, None, Transport::Sse, &[topic("room")]).unwrap();
    assert_eq!(name(&a.topics[0]), name(&b.topics[0]), "one copy of the name");
    assert_eq!(name(&hub.topics_of(b.info()).unwrap()[0]), name(&a.topics[0]));
    let own_topics = |user: &UserId| -> Vec<Topic> {
        let users = hub.users_shard(user).lock();
        let entry = &users[user].sessions[0].1.clients[0];
        match &entry.topics {
            TabTopics::One(topic) => vec![topic.clone()],
            TabTopics::Many(topics) => {
                assert_ne!(topics.len(), 1, "one topic is held inline");
                topics.to_vec()
            }
        }
    };
    assert_eq!(name(&own_topics(&bob)[0]), name(&a.topics[0]));

    let c = hub.attach(&carol, &session, None, Transport::Sse, &[]).unwrap();
    let client = &c.info().client;
    assert_eq!(own_topics(&carol), []);
    let listening = hub.listen(&carol, &session, client, &[topic("room")]).unwrap();
    assert_eq!(name(&listening[0]), name(&a.topics[0]), "a listen shares the name too");
    assert_eq!(hub.listen(&carol, &session, client, &[topic("x")]).unwrap(), [topic("room"), topic("x")]);
    assert_eq!(own_topics(&carol), [topic("room"), topic("x")]);
    assert_eq!(hub.fanout_topic(&topic_event("room", None, None)), 3);
    assert_eq!(hub.fanout_topic(&topic_event("x", None, None)), 1);
    assert_eq!(hub.unlisten(&carol, &session, client, &[topic("room")]).unwrap(), [topic("x")]);
    assert_eq!(own_topics(&carol), [topic("x")]);
    assert_eq!(hub.fanout_topic(&topic_event("room", None, None)), 2);
    assert_eq!(hub.unlisten(&carol, &session, client, &[topic("x")]).unwrap(), []);
    assert_eq!(own_topics(&carol), []);
    assert_eq!(hub.fanout_topic(&topic_event("x", None, None)), 0);
    assert!(hub.inner.topics.iter().all(|shard| !shard.lock().contains_key(&topic("x"))), "x is forgotten");

    // Who each listener is, read from its connection.
    assert_eq!(
        hub.topic_listeners(&topic("room")),
        [(alice.clone(), a.info().client.clone()), (bob.clone(), b.info().client.clone())]
    );
    assert_eq!(hub.fanout_topic(&topic_event("room", Some(&alice), Some(&b.info().client))), 0);
    // A reconnect's new connection names the same tab.
    let again = hub.attach(&bob, &session, Some(b.info().client.as_str()), Transport::Ws, &[]).unwrap();
    assert_eq!(hub.topic_listeners(&topic("room"))[1], (bob.clone(), again.info().client.clone()));
    assert_eq!(hub.fanout_topic(&topic_event("room", Some(&alice), None)), 1);
}

/// The connection state's packed fields (a byte for the close reason, four for the expiry, to
/// keep every tab's state in a 176-byte malloc chunk): each reason reads back as set, the first
/// one wins, and an expiry past `u32` is clamped rather than wrapped to an earlier time.
#[test]
fn a_connections_close_reason_and_expiry_read_back_as_set() {
    let info = |client: &str| ClientInfo {
        user: UserId::new("alice").unwrap(),
        session: SessionId::new("s").unwrap(),
        client: ClientId::new(client).unwrap(),
        transport: Transport::Sse,
    };
    for reason in CloseReason::ALL {
        let shared = ClientShared::new(info("c"), EventQueue::default());
        assert_eq!(shared.close_reason(), None);
        shared.close(reason);
        shared.close(if reason == CloseReason::Error { CloseReason::Evicted } else { CloseReason::Error });
        assert_eq!(shared.close_reason(), Some(reason), "the first reason wins");
    }
    let shared = ClientShared::new(info("c"), EventQueue::default());
    assert_eq!(shared.expires_at_secs(), 0, "never");
    shared.expire_at(0);
    assert_eq!(shared.expires_at_secs(), 1, "0 would mean never");
    shared.expire_at(u64::from(u32::MAX) + 5);
    assert_eq!(shared.expires_at_secs(), u64::from(u32::MAX), "clamped, not wrapped");
    assert!(
        std::mem::size_of::<ClientShared>() <= 152,
        "within its 176-byte malloc chunk with the Arc's counts"
    );
}
