//! [`ResumePoint`]: where a client stands in its user's log (the seq) and in the log of each
//! durable topic it listens to (the tseq of each), with the epoch of both: what a stream or a
//! poll resumes from.
//!
//! On the wire it is one string, the SSE `id:` a stream gives its events and what
//! `?last_event_id=` (or `Last-Event-ID`) takes back: the seq alone (`17`, a client without
//! topics) or the seq followed by each topic's position (`17;post:42=5;room:1=0`). Topic names
//! never hold `;` or `=`, so the text needs no escaping. The epoch travels beside it
//! (`?epoch=`), so it is not part of the text.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::{ClientError, Result};
use crate::token::check_topic;

/// Most topic positions a server takes in one resume point (a tab's topics at its three scopes:
/// 100 + 100 + 1,000); past it the server refuses the id (400 `invalid_last_event_id`).
pub const RESUME_TOPICS_MAX: usize = 1_200;

/// A typed resume point: the user's seq, its epoch, and each durable topic's position (the last
/// tseq handled). See the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumePoint {
    /// Every durable notification of the user up to this seq was handled.
    pub seq: u64,
    /// The epoch of `seq` and of the positions (a `hello`'s or a poll answer's); `None`: taken
    /// as the server's current one.
    pub epoch: Option<String>,
    /// Each durable topic's last tseq handled; `0` for a topic whose log was empty when the
    /// client started listening (its first event is then resumed too).
    pub positions: BTreeMap<String, u64>,
}

impl ResumePoint {
    /// A resume point at `seq` with no epoch and no topic positions.
    pub fn at(seq: u64) -> Self {
        Self { seq, ..Self::default() }
    }

    /// Reads an SSE id (`17` or `17;post:42=5;room:1=0`); the epoch is `None` (it is not part of
    /// the id). A malformed one (not a seq, a position that is not `topic=tseq`, a topic named
    /// twice, more than [`RESUME_TOPICS_MAX`] positions) is [`ClientError::InvalidArgument`].
    pub fn parse(id: &str) -> Result<Self> {
        let invalid = |reason: String| ClientError::invalid("resume point", format!("{id:?}: {reason}"));
        let mut parts = id.split(';');
        let seq_text = parts.next().unwrap_or_default().trim();
        let seq = seq_text.parse().map_err(|_| invalid(format!("{seq_text:?} is not a seq")))?;
        let mut positions = BTreeMap::new();
        for part in parts {
            if positions.len() == RESUME_TOPICS_MAX {
                return Err(invalid(format!("more than {RESUME_TOPICS_MAX} topic positions")));
            }
            let not_a_position = || invalid(format!("{part:?} is not a topic position (topic=tseq)"));
            let (topic, tseq) = part.trim().split_once('=').ok_or_else(not_a_position)?;
            check_topic(topic).map_err(|_| not_a_position())?;
            let tseq = tseq.parse().map_err(|_| not_a_position())?;
            if positions.insert(topic.to_owned(), tseq).is_some() {
                return Err(invalid(format!("topic {topic} is named twice")));
            }
        }
        Ok(Self { seq, epoch: None, positions })
    }

    /// The id to give back (`?last_event_id=`): the seq, then each position, topics sorted.
    pub fn id(&self) -> String {
        self.to_string()
    }

    /// The positions as `?positions=` of a poll takes them: `post:42=5,room:1=0`; `None`
    /// without any.
    pub fn positions_query(positions: &BTreeMap<String, u64>) -> Option<String> {
        if positions.is_empty() {
            return None;
        }
        let parts: Vec<String> = positions.iter().map(|(topic, tseq)| format!("{topic}={tseq}")).collect();
        Some(parts.join(","))
    }
}

/// The id: `17;post:42=5;room:1=0`.
impl fmt::Display for ResumePoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.seq)?;
        for (topic, tseq) in &self.positions {
            write!(f, ";{topic}={tseq}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ResumePoint {
    type Err = ClientError;

    fn from_str(id: &str) -> Result<Self> {
        Self::parse(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seq_alone_or_with_positions_round_trips() {
        assert_eq!(ResumePoint::parse("17").unwrap(), ResumePoint::at(17));
        let point = ResumePoint::parse("17;room:1=0;post:42=5").unwrap();
        assert_eq!(point.seq, 17);
        assert_eq!(point.positions, BTreeMap::from([("post:42".into(), 5), ("room:1".into(), 0)]));
        // Written back with the topics sorted (the server takes them in any order).
        assert_eq!(point.id(), "17;post:42=5;room:1=0");
        assert_eq!(point.id().parse::<ResumePoint>().unwrap(), point);
        assert_eq!(ResumePoint::positions_query(&point.positions).as_deref(), Some("post:42=5,room:1=0"));
        assert_eq!(ResumePoint::positions_query(&BTreeMap::new()), None);
    }

    #[test]
    fn malformed_points_are_refused() {
        for bad in
            ["", "x", "-1", "17;", "17;post", "17;post=", "17;post=x", "17;a b=1", "17;=3", "1;a=1;a=2"]
        {
            let error = ResumePoint::parse(bad).unwrap_err();
            assert!(matches!(error, ClientError::InvalidArgument { .. }), "{bad:?}: {error}");
        }
        let many: String = (0..=RESUME_TOPICS_MAX).map(|i| format!(";t{i}=1")).collect();
        assert!(ResumePoint::parse(&format!("1{many}")).is_err());
    }
}
