//! [`TopicPositions`]: where a [`super::Subscription`] stands in each durable topic's log (the
//! last tseq decided and the last handed out, per topic), the topics it is behind in, and its
//! `type` filter, kept small because an idle listening tab holds it for hours.

use crate::ids::{Seq, Topic};
use crate::topic::TopicEvent;

/// Where a subscription stands in each topic's log: 24 bytes in the subscription, the
/// positions in one exact-size slice (32 bytes a topic: a 48-byte malloc chunk for one), and
/// what only a resume or a `type` filter needs in a second box, allocated only while either is
/// in use. An idle tab keeps this for hours: issue 13's memory per listening tab (the `Vec`s
/// and the box this replaces cost a tab listening to one topic 128 bytes).
#[derive(Debug, Default)]
pub(super) struct TopicPositions {
    /// Sorted by topic (a `BTreeMap`'s first node would cost a tab ~400 bytes). Rebuilt one
    /// topic longer on each insert: tabs listen to few topics, so the copies cost nothing.
    pub(super) positions: Box<[(Topic, TopicPosition)]>,
    /// `None` while no topic is behind and there is no `type` filter (most tabs).
    pub(super) more: Option<Box<MorePositions>>,
}

#[derive(Debug, Default)]
pub(super) struct MorePositions {
    /// Topics whose logs may hold tseqs after `accepted` that were not read yet (a resume, or a
    /// gap in the live events), read one page at a time after the user's log.
    pub(super) behind: Vec<Topic>,
    /// The tab's filter of topic events by `type` prefix (empty: none).
    pub(super) types: Box<[Box<str>]>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct TopicPosition {
    /// Every tseq up to here was decided (queued in `pending`, or not for this tab).
    pub(super) accepted: Seq,
    /// Every tseq up to here was handed out by `next` (or skipped): what the resume id names.
    pub(super) given: Seq,
}

/// Whether the `type` filter `types` (empty: none) lets `event` through.
pub(super) fn wants_type(types: &[Box<str>], event: &TopicEvent) -> bool {
    types.is_empty() || types.iter().any(|prefix| event.kind.starts_with(&**prefix))
}

impl TopicPositions {
    /// The state of a tab that filters its topic events by `types` (`None` without a filter).
    pub(super) fn filtering(types: &[Box<str>]) -> Option<Self> {
        (!types.is_empty()).then(|| Self {
            positions: Box::default(),
            more: Some(Box::new(MorePositions { behind: Vec::new(), types: types.into() })),
        })
    }

    pub(super) fn types(&self) -> &[Box<str>] {
        self.more.as_ref().map_or(&[], |more| &more.types)
    }

    pub(super) fn wants(&self, event: &TopicEvent) -> bool {
        wants_type(self.types(), event)
    }

    pub(super) fn behind(&self) -> &[Topic] {
        self.more.as_ref().map_or(&[], |more| &more.behind)
    }

    pub(super) fn get_mut(&mut self, topic: &Topic) -> Option<&mut TopicPosition> {
        let at = self.positions.binary_search_by(|(t, _)| t.cmp(topic)).ok()?;
        Some(&mut self.positions[at].1)
    }

    pub(super) fn insert(&mut self, topic: Topic, position: TopicPosition) {
        match self.positions.binary_search_by(|(t, _)| t.cmp(&topic)) {
            Ok(at) => self.positions[at].1 = position,
            Err(at) => {
                // Exactly one more: the boxed slice's length is its capacity, so going back to
                // a box does not reallocate.
                let mut positions = std::mem::take(&mut self.positions).into_vec();
                positions.reserve_exact(1);
                positions.insert(at, (topic, position));
                self.positions = positions.into_boxed_slice();
            }
        }
    }

    /// No longer behind in `topic`; with nothing behind and no filter, the second box is given
    /// back (an idle tab keeps this state for hours).
    pub(super) fn caught_up(&mut self, topic: &Topic) {
        if let Some(more) = &mut self.more {
            more.behind.retain(|t| t != topic);
            if more.behind.is_empty() {
                more.behind = Vec::new();
                if more.types.is_empty() {
                    self.more = None;
                }
            }
        }
    }

    pub(super) fn start(&mut self, topic: Topic, tseq: Seq) {
        self.insert(topic, TopicPosition { accepted: tseq, given: tseq });
    }

    pub(super) fn given(&self) -> impl Iterator<Item = (&Topic, Seq)> {
        self.positions.iter().map(|(t, p)| (t, p.given))
    }

    pub(super) fn mark_behind(&mut self, topic: &Topic) {
        let more = self.more.get_or_insert_default();
        if !more.behind.contains(topic) {
            more.behind.reserve_exact(1);
            more.behind.push(topic.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str) -> Topic {
        Topic::new(name).unwrap()
    }

    /// Issue 13's memory per listening tab: the positions stay sorted and exactly as long as the
    /// topics, and the second box (behind, filter) exists only while it holds something. Fails
    /// if a position is lost or misplaced on insert, or if an idle tab keeps the second box.
    #[test]
    fn topic_positions_stay_sorted_exact_and_free_what_they_no_longer_need() {
        assert_eq!(std::mem::size_of::<Option<TopicPositions>>(), 24, "what every subscription holds");
        let mut state = TopicPositions::default();
        state.start(topic("b"), 5);
        assert_eq!(state.positions.len(), 1);
        state.start(topic("c"), 7);
        state.start(topic("a"), 3);
        state.insert(topic("b"), TopicPosition { accepted: 6, given: 4 });
        let given: Vec<(Topic, Seq)> = state.given().map(|(t, tseq)| (t.clone(), tseq)).collect();
        assert_eq!(given, [(topic("a"), 3), (topic("b"), 4), (topic("c"), 7)]);
        assert_eq!(state.get_mut(&topic("b")).map(|p| p.accepted), Some(6));
        assert!(state.get_mut(&topic("d")).is_none());

        state.mark_behind(&topic("b"));
        state.mark_behind(&topic("b"));
        state.mark_behind(&topic("a"));
        assert_eq!(state.behind(), [topic("b"), topic("a")], "each once, in order");
        state.caught_up(&topic("b"));
        assert!(state.more.is_some(), "a is still behind");
        state.caught_up(&topic("a"));
        assert!(state.more.is_none() && state.behind().is_empty(), "nothing kept once caught up");

        let filtering = TopicPositions::filtering(&["chat.".into()]);
        let mut filtering = filtering.expect("a filter is state");
        filtering.mark_behind(&topic("a"));
        filtering.caught_up(&topic("a"));
        assert_eq!(filtering.types(), [Box::<str>::from("chat.")], "the filter outlives the catch-up");
        assert!(TopicPositions::filtering(&[]).is_none());
    }
}
