//! The [`Interest`] hook: what the hub tells a multi-node bus about the users, tabs and topics
//! it holds. Called by `hub.rs` with a shard locked; the rules for implementers are below.

use std::future::Future;
use std::pin::Pin;

use crate::ids::{ClientId, SessionId, Topic, UserId};

/// What a hub tells a multi-node bus about the users it has clients for, so that the bus hears
/// only of those users from the other nodes (interest-based routing), and about client ids
/// taken over here that another node may still hold. One node needs none.
///
/// [`Interest::gained`], [`Interest::lost`], [`Interest::claimed`], [`Interest::topic_gained`]
/// and [`Interest::topic_lost`] are called with a hub shard locked: they must only record and
/// wake, never block or await.
pub trait Interest: Send + Sync + 'static {
    /// `user` has an entry in this hub now (it had none).
    fn gained(&self, user: &UserId);

    /// `user` has no entry in this hub any more.
    fn lost(&self, user: &UserId);

    /// Resolves once what other nodes publish for `user` reaches this node. A subscription
    /// waits for it before it reads the store, so that nothing stored after that read can pass
    /// it by. Bounded by the implementation (it resolves, degraded, when the broker is away).
    fn ready(&self, user: &UserId) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

    /// A connection for `client` of `user` in `session` attached here at `at_ms` with an id it
    /// already had (a reconnect, a reload): another node's connection for it must end with
    /// `replaced` (see [`Hub::replace_client`]).
    fn claimed(&self, user: &UserId, session: &SessionId, client: &ClientId, at_ms: i64);

    /// A new client (a freshly minted id) of `user` in `session` attached here: the user's
    /// sessions and the session's clients on all nodes together may now be over the limits.
    fn joined(&self, user: &UserId, session: &SessionId, client: &ClientId);

    /// A tab here listens to `topic` now (none did): what other nodes publish to it must reach
    /// this node. Called with a topic shard locked, like the others. By default nothing (a bus
    /// that sends every topic's events to every node needs no interest).
    fn topic_gained(&self, _topic: &Topic) {}

    /// No tab here listens to `topic` any more.
    fn topic_lost(&self, _topic: &Topic) {}

    /// Resolves once what other nodes publish to `topic` reaches this node: a listen is answered
    /// (and a stream that listens says `hello`) only then, so that a publish made after it
    /// reaches the tab. Bounded by the implementation. By default at once.
    fn topic_ready(&self, _topic: &Topic) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        Box::pin(std::future::ready(()))
    }
}
