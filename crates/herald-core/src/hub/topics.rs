//! The hub's topic index: topic → the tabs of this node listening to it, each tab under the
//! union of its own listens, its session's and its user's (those kept in the store). A topic's
//! fan-out walks its entry without taking any user's shard; listening and unlistening change a
//! tab's entry under its user's shard, then the index under the topics' shards (the lock order
//! is in `super`'s opening comment). The node's map of users → sessions → clients, which the
//! index points into, is `super`.

// A second `impl Hub`: it needs the hub's own types and imports, as `super` has them.
use super::*;

/// One shard of the index of topics: who listens to each, as the tabs' connection state
/// (`Arc<ClientShared>`, 8 bytes per topic per tab: issue 13's memory per listening tab). That
/// is what a topic's fan-out needs (the queue, and who the tab is, `info`, for `except_user`,
/// `except_client` and [`Prepare`]) without taking any user's shard. It is the queue of the
/// tab's current connection, or of its last one (closed) while the tab is away. A topic nobody
/// listens to any more is removed (Eliom never forgets its keys).
pub(super) type TopicIndex = HashMap<Topic, Vec<Arc<ClientShared>>>;

/// The topics a tab listens to at client scope (its entry's own; its user's and session's are
/// in [`UserEntry`]). One topic is held inline and many in a boxed slice: a tab that listens to
/// one topic, the common case, then allocates nothing for it (a one-element box was a 32-byte
/// malloc chunk per tab, issue 13's memory per listening tab); none is an empty box, which
/// allocates nothing either. 24 bytes.
#[derive(Clone)]
pub(super) enum TabTopics {
    One(Topic),
    Many(Box<[Topic]>),
}

impl Default for TabTopics {
    fn default() -> Self {
        TabTopics::Many(Box::default())
    }
}

impl std::ops::Deref for TabTopics {
    type Target = [Topic];

    fn deref(&self) -> &[Topic] {
        match self {
            TabTopics::One(topic) => std::slice::from_ref(topic),
            TabTopics::Many(topics) => topics,
        }
    }
}

impl FromIterator<Topic> for TabTopics {
    fn from_iter<I: IntoIterator<Item = Topic>>(topics: I) -> Self {
        let mut topics: Vec<Topic> = topics.into_iter().collect();
        match topics.len() {
            1 => TabTopics::One(topics.pop().expect("one topic")),
            _ => TabTopics::Many(topics.into_boxed_slice()),
        }
    }
}

impl Hub {
    pub(super) fn topics_shard(&self, topic: &Topic) -> &Mutex<TopicIndex> {
        &self.inner.topics[self.shard_of(topic)]
    }

    /// `topics`, each as the index names it when some tab here listens to it already: the tabs
    /// of a room then share one copy of its name (an `Arc`) instead of each keeping the one
    /// its request parsed (a 32-byte malloc chunk per tab and topic). Takes each topic's shard
    /// alone (no user's shard may be held: the lock order is user, then topic).
    pub(super) fn interned(&self, topics: &[Topic]) -> Vec<Topic> {
        topics
            .iter()
            .map(|topic| {
                let index = self.topics_shard(topic).lock();
                index.get_key_value(topic).map_or_else(|| topic.clone(), |(name, _)| name.clone())
            })
            .collect()
    }

    /// Removes `tab` from the listeners of `topics` (the tab is forgotten, or stops listening).
    /// Found by its queue, a pointer compare per listener (the index always holds the queue
    /// that the tab's entry holds), not by its id: a string compare each, which made 15,000 tabs
    /// leaving one topic cost 10^8 of them.
    pub(super) fn forget_listens(&self, tab: &ClientEntry, topics: &[Topic]) {
        for topic in topics {
            let mut index = self.topics_shard(topic).lock();
            if let Some(listeners) = index.get_mut(topic) {
                // `remove`, not `swap_remove`: the listeners stay in the order they listened.
                match listeners.iter().position(|l| Arc::ptr_eq(l, &tab.shared)) {
                    Some(at) => {
                        listeners.remove(at);
                    }
                    None => listeners.retain(|l| l.info.client != *tab.id()),
                }
                if listeners.is_empty() {
                    index.remove(topic);
                    if let Some(interest) = self.inner.interest.get() {
                        interest.topic_lost(topic);
                    }
                }
            }
        }
    }

    /// Adds the tab to the listeners of `topics`, none of which it listens to yet (a new tab, or
    /// topics new to it): appended without looking for it, so that 15,000 tabs joining one
    /// topic cost 15,000 pushes, not a scan of the listeners each (quadratic: the connect rate
    /// of a room's tabs was a quarter of plain tabs').
    pub(super) fn add_listens(&self, shared: &Arc<ClientShared>, topics: &[Topic]) {
        for topic in topics {
            let mut index = self.topics_shard(topic).lock();
            let listeners = index.entry(topic.clone()).or_insert_with(|| {
                if let Some(interest) = self.inner.interest.get() {
                    interest.topic_gained(topic);
                }
                Vec::new()
            });
            debug_assert!(
                !listeners.iter().any(|l| l.info.client == shared.info.client),
                "{} listens to {topic} once",
                shared.info.client
            );
            listeners.push(shared.clone());
        }
    }

    /// Points the tab's listens to `topics` at its new connection's queue (a reconnect). Found
    /// by its previous queue, a pointer compare per listener: the index always holds the queue
    /// that the tab's entry holds. One that is not found (none should be) is added.
    pub(super) fn repoint_listens(
        &self,
        previous: &Arc<ClientShared>,
        shared: &Arc<ClientShared>,
        topics: &[Topic],
    ) {
        let mut missing = Vec::new();
        for topic in topics {
            let mut index = self.topics_shard(topic).lock();
            match index
                .get_mut(topic)
                .and_then(|listeners| listeners.iter_mut().find(|l| Arc::ptr_eq(l, previous)))
            {
                Some(listener) => *listener = shared.clone(),
                None => missing.push(topic.clone()),
            }
        }
        if !missing.is_empty() {
            self.add_listens(shared, &missing);
        }
    }

    /// Hands a `topic` event to the queues of this node's tabs that listen to its topic (all but
    /// its `except_user`'s and its `except_client`), and returns how many it was handed to. Like
    /// an ephemeral notification it is not kept for tabs that are away; a full queue closes its
    /// tab with `lagging`. Takes only the topic's shard, never a user's.
    ///
    /// With a [`Prepare`] hook, each user's tabs get what it makes of the event for that user,
    /// asked once per user (the answers of one fan-out are kept in a map that lives as long
    /// as the call).
    pub fn fanout_topic(&self, event: &Arc<TopicEvent>) -> u64 {
        let index = self.topics_shard(&event.topic).lock();
        let Some(listeners) = index.get(&event.topic) else { return 0 };
        let queue_len_max = self.inner.limits.client_queue_len_max;
        let prepare = self.inner.prepare.get();
        let mut prepared: HashMap<&UserId, Option<Arc<TopicEvent>>> = HashMap::new();
        let mut delivered = 0;
        for listener in listeners {
            let who = &listener.info;
            if !event.is_for(&who.user, &who.client) {
                continue;
            }
            let for_user = match prepare {
                None => event.clone(),
                Some(prepare) => {
                    let decided = prepared
                        .entry(&who.user)
                        .or_insert_with(|| self.prepared(&**prepare, &who.user, event));
                    match decided {
                        Some(for_user) => for_user.clone(),
                        None => continue,
                    }
                }
            };
            match listener.queue.push(Queued::Topic(for_user), queue_len_max) {
                Ok(()) => delivered += 1,
                // The entry's `connected` is left to the connection, which ends now and detaches.
                Err(PushError::Full) => listener.close(CloseReason::Lagging),
                Err(PushError::Closed) => {}
            }
        }
        delivered
    }

    /// What the tabs of `user` get of `event`, as a fan-out would hand it to them: `None` when
    /// the [`Prepare`] hook drops it. For events read from a topic's log (a resume or a gap
    /// fill), which reach one tab without a fan-out.
    pub fn prepare_for(&self, user: &UserId, event: &Arc<TopicEvent>) -> Option<Arc<TopicEvent>> {
        match self.inner.prepare.get() {
            None => Some(event.clone()),
            Some(prepare) => self.prepared(&**prepare, user, event),
        }
    }

    /// What `prepare` makes of `event` for `user`: `None` to drop it.
    pub(super) fn prepared(
        &self,
        prepare: &dyn Prepare,
        user: &UserId,
        event: &Arc<TopicEvent>,
    ) -> Option<Arc<TopicEvent>> {
        match prepare.prepare(user, event) {
            Prepared::Keep => Some(event.clone()),
            Prepared::Drop => None,
            Prepared::Rewrite(data) => {
                let max = self.inner.limits.data_bytes_max;
                if data.get().len() > max || check_data(data.get()).is_err() {
                    tracing::warn!(%user, topic = %event.topic, "a Prepare hook's rewrite is not data every client can decode (or is over the data bound): dropped");
                    return None;
                }
                Some(Arc::new(TopicEvent::with_tseq(
                    event.tseq,
                    event.topic.clone(),
                    event.kind.clone(),
                    data,
                    event.created_at_ms,
                    event.except_user.clone(),
                    event.except_client.clone(),
                )))
            }
        }
    }

    /// Makes the tab `client` of `user` in `session` listen to `topics` too (Eliom's `listen`),
    /// until it unlistens or is forgotten (its entry outlives a reconnect by
    /// [`Limits::client_linger`]). Returns the topics it listens to now. Refused, changing
    /// nothing, if that would be over [`Limits::topics_per_client_max`] or the tab is not here.
    pub fn listen(
        &self,
        user: &UserId,
        session: &SessionId,
        client: &ClientId,
        topics: &[Topic],
    ) -> Result<Vec<Topic>, ListenError> {
        let max = self.inner.limits.topics_per_client_max;
        let topics = &self.interned(topics);
        self.change_listens(user, session, client, |c| {
            c.topics = union_of_topics(&c.topics, topics, max)?;
            Ok(())
        })
    }

    /// Makes the tab stop listening to `topics` (those it does not listen to are ignored).
    /// Returns the topics it listens to now.
    pub fn unlisten(
        &self,
        user: &UserId,
        session: &SessionId,
        client: &ClientId,
        topics: &[Topic],
    ) -> Result<Vec<Topic>, ListenError> {
        self.change_listens(user, session, client, |c| {
            c.topics = c.topics.iter().filter(|t| !topics.contains(t)).cloned().collect();
            Ok(())
        })
    }

    pub(super) fn change_listens(
        &self,
        user: &UserId,
        session: &SessionId,
        client: &ClientId,
        change: impl FnOnce(&mut ClientEntry) -> Result<(), ListenError>,
    ) -> Result<Vec<Topic>, ListenError> {
        let mut users = self.users_shard(user).lock();
        let not_found = || ListenError::ClientNotFound(client.clone());
        let entry = users.get_mut(user).ok_or_else(not_found)?;
        let tab = entry
            .sessions
            .iter_mut()
            .find(|(s, _)| s == session)
            .and_then(|(_, s)| s.clients.iter_mut().find(|c| c.id() == client))
            .ok_or_else(not_found)?;
        let before = effective_topics(&entry.stored, session, &tab.topics);
        change(tab)?;
        let after = effective_topics(&entry.stored, session, &tab.topics);
        self.apply_difference(tab, &before, &after);
        Ok(after)
    }

    /// Makes the index follow a tab whose topics went from `before` to `after`.
    pub(super) fn apply_difference(&self, tab: &ClientEntry, before: &[Topic], after: &[Topic]) {
        let gone: Vec<Topic> = before.iter().filter(|t| !after.contains(t)).cloned().collect();
        let new: Vec<Topic> = after.iter().filter(|t| !before.contains(t)).cloned().collect();
        self.forget_listens(tab, &gone);
        self.add_listens(&tab.shared, &new);
    }

    /// Asks for a fresh read of `user`'s listens kept in the store: its number, to give to
    /// [`Hub::apply_stored_listens`] with what the read found; `None` when no tab of the user is
    /// here (there is nothing to apply it to).
    pub fn ask_stored_listens(&self, user: &UserId) -> Option<u64> {
        let mut users = self.users_shard(user).lock();
        let entry = users.get_mut(user)?;
        entry.listens_asked += 1;
        Some(entry.listens_asked)
    }

    /// Applies the `asked`-th read of `user`'s listens kept in the store (see
    /// [`Hub::ask_stored_listens`]), unless a read asked for after it was applied already: each
    /// tab of the user then listens to its scope's topics too, and no longer to those its scope
    /// lost. Returns the topics some tab here listens to now that none did before (to wait for
    /// with [`Hub::topics_ready`]).
    pub fn apply_stored_listens(&self, user: &UserId, asked: u64, stored: Vec<StoredListen>) -> Vec<Topic> {
        let mut users = self.users_shard(user).lock();
        let Some(entry) = users.get_mut(user) else { return Vec::new() };
        if asked <= entry.listens_applied {
            return Vec::new();
        }
        entry.listens_applied = asked;
        let stored = stored.into_boxed_slice();
        let mut gained = Vec::new();
        for (session, s) in &entry.sessions {
            for tab in &s.clients {
                let before = effective_topics(&entry.stored, session, &tab.topics);
                let after = effective_topics(&stored, session, &tab.topics);
                gained.extend(after.iter().filter(|t| !before.contains(t)).cloned());
                self.apply_difference(tab, &before, &after);
            }
        }
        entry.stored = stored;
        gained.sort();
        gained.dedup();
        gained
    }

    /// The topics the tab of `info` listens to, if it is here.
    pub(crate) fn topics_of(&self, info: &ClientInfo) -> Option<Vec<Topic>> {
        let users = self.users_shard(&info.user).lock();
        let entry = users.get(&info.user)?;
        let (_, session) = entry.sessions.iter().find(|(s, _)| *s == info.session)?;
        let tab = session.clients.iter().find(|c| *c.id() == info.client)?;
        Some(effective_topics(&entry.stored, &info.session, &tab.topics))
    }

    /// At most `max` of this node's tabs listening to `topic` (connected ones, and tabs that are
    /// away but not forgotten yet), in the order they listened, and how many there are in all.
    pub fn topic_tabs(&self, topic: &Topic, max: usize) -> (Vec<TopicTab>, usize) {
        let listeners = self.topic_listeners(topic);
        let total = listeners.len();
        let tabs = listeners
            .into_iter()
            .filter_map(|(user, client)| {
                let (_, session) = self.locate(&client)?;
                Some(TopicTab { user, session, client, node: None })
            })
            .take(max)
            .collect();
        (tabs, total)
    }

    /// The tabs of this node listening to `topic`: (user, client), in the order they listened.
    pub fn topic_listeners(&self, topic: &Topic) -> Vec<(UserId, ClientId)> {
        let index = self.topics_shard(topic).lock();
        index
            .get(topic)
            .map(|listeners| listeners.iter().map(|l| (l.info.user.clone(), l.info.client.clone())).collect())
            .unwrap_or_default()
    }
}

/// What a tab of `session` whose own (client-scope) topics are `topics` listens to: those,
/// then its user's and its session's kept in the store, each once.
pub(super) fn effective_topics(stored: &[StoredListen], session: &SessionId, topics: &[Topic]) -> Vec<Topic> {
    let mut all = topics.to_vec();
    if stored.is_empty() {
        return all;
    }
    let mut seen: std::collections::HashSet<&Topic> = topics.iter().collect();
    for listen in stored {
        if listen.session.as_ref().is_none_or(|s| s == session) && seen.insert(&listen.topic) {
            all.push(listen.topic.clone());
        }
    }
    all
}

/// `kept` followed by those of `added` not in it (each once), or `TooManyTopics` over `max`.
pub(super) fn union_of_topics(kept: &[Topic], added: &[Topic], max: usize) -> Result<TabTopics, ListenError> {
    let mut union = kept.to_vec();
    for topic in added {
        if !union.contains(topic) {
            union.push(topic.clone());
        }
    }
    if union.len() > max && union.len() > kept.len() {
        return Err(ListenError::TooManyTopics { count: union.len(), max });
    }
    Ok(union.into_iter().collect())
}
