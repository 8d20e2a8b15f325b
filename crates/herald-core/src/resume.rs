//! [`ResumePoint`]: where a client's stream stands, as one string a transport can carry (an SSE
//! event's `id:`, so a browser's `Last-Event-ID`).
//!
//! A tab follows its user's log (seqs) and the logs of the durable topics it listens to
//! (tseqs, one sequence per topic). A stream resumes exactly only if one id names all of them,
//! because an `EventSource` that reconnects by itself sends back only the last `id:` it saw.
//! So the id is the user's seq alone (`17`, what it was before topics had logs, what every
//! client without topics still gets), or the seq followed by each topic's position:
//!
//! ```text
//! 17;post:42=5;room:1=0
//! ```
//!
//! Topic names never hold `;` or `=` (see [`Topic`]), so the text needs no escaping, and it stays
//! readable in logs. A topic at `0` is one the tab listens to whose log was empty when it
//! started: listed so that its first event is resumed too, not skipped as "before the start".

use std::fmt::Write as _;

use crate::ids::{Seq, Topic};

/// Most topic positions one resume point may name: a tab's topics at all three scopes
/// ([`crate::Limits`]' defaults: 100 + 100 + 1,000). More is refused as malformed.
pub const RESUME_TOPICS_MAX: usize = 1_200;

/// A stream's resume point: the user's seq and, for each durable topic, the last tseq handled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumePoint {
    pub seq: Seq,
    /// In the order given; each topic at most once.
    pub topics: Vec<(Topic, Seq)>,
}

/// A resume point that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidResumePoint {
    #[error("{0:?} is not a seq (a whole number)")]
    Seq(String),
    #[error("{0:?} is not a topic position (topic=tseq)")]
    Position(String),
    #[error("topic {0} is named twice")]
    Repeated(Topic),
    #[error("more than {RESUME_TOPICS_MAX} topic positions")]
    TooMany,
}

impl ResumePoint {
    /// Reads `17` or `17;post:42=5;room:1=0`.
    pub fn parse(text: &str) -> Result<Self, InvalidResumePoint> {
        let mut parts = text.split(';');
        let seq_text = parts.next().unwrap_or_default().trim();
        let seq = seq_text.parse::<Seq>().map_err(|_| InvalidResumePoint::Seq(seq_text.to_owned()))?;
        let mut topics: Vec<(Topic, Seq)> = Vec::new();
        for part in parts {
            if topics.len() == RESUME_TOPICS_MAX {
                return Err(InvalidResumePoint::TooMany);
            }
            let position = || InvalidResumePoint::Position(part.to_owned());
            let (name, tseq) = part.trim().split_once('=').ok_or_else(position)?;
            let topic = Topic::new(name).map_err(|_| position())?;
            let tseq = tseq.parse::<Seq>().map_err(|_| position())?;
            if topics.iter().any(|(t, _)| *t == topic) {
                return Err(InvalidResumePoint::Repeated(topic));
            }
            topics.push((topic, tseq));
        }
        Ok(Self { seq, topics })
    }

    /// The position given for `topic`, if any.
    pub fn topic(&self, topic: &Topic) -> Option<Seq> {
        self.topics.iter().find(|(t, _)| t == topic).map(|&(_, tseq)| tseq)
    }
}

/// Writes the resume id of `seq` and `topics` (see the module docs) into `out`.
pub fn write_resume_id<'a>(out: &mut String, seq: Seq, topics: impl IntoIterator<Item = (&'a Topic, Seq)>) {
    // Writing to a String cannot fail.
    let _ = write!(out, "{seq}");
    for (topic, tseq) in topics {
        let _ = write!(out, ";{topic}={tseq}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str) -> Topic {
        Topic::new(name).unwrap()
    }

    #[test]
    fn a_seq_alone_or_with_topic_positions_round_trips() {
        assert_eq!(ResumePoint::parse("17").unwrap(), ResumePoint { seq: 17, topics: vec![] });
        let point = ResumePoint::parse("17;post:42=5;room:1=0").unwrap();
        assert_eq!(point.topics, vec![(topic("post:42"), 5), (topic("room:1"), 0)]);
        assert_eq!(point.topic(&topic("room:1")), Some(0));
        assert_eq!(point.topic(&topic("room:2")), None);
        let mut id = String::new();
        write_resume_id(&mut id, point.seq, point.topics.iter().map(|(t, s)| (t, *s)));
        assert_eq!(id, "17;post:42=5;room:1=0");
    }

    #[test]
    fn malformed_points_are_refused() {
        for bad in ["", "x", "-1", "17;", "17;post", "17;post=", "17;post=x", "17;a b=1", "17;=3"] {
            assert!(ResumePoint::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(ResumePoint::parse("1;a=1;a=2"), Err(InvalidResumePoint::Repeated(topic("a"))));
        let many: String = (0..=RESUME_TOPICS_MAX).map(|i| format!(";t{i}=1")).collect();
        assert_eq!(ResumePoint::parse(&format!("1{many}")), Err(InvalidResumePoint::TooMany));
    }
}
