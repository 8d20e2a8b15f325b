//! [`Health`]: whether a part of a node that reaches outside the process (its [`crate::Store`],
//! its [`crate::Bus`]) can do its job now, as far as that part knows.
//!
//! Each part reports its own ([`crate::Store::health`], [`crate::Bus::health`]), from the outcome
//! of its last operations and of its own checks, without doing any I/O to answer: the server's
//! `/healthz` reads them on every request, and a load balancer may ask often. A part that cannot
//! fail (a store in memory, the single node's bus) is always [`Health::Ok`].

/// How a store or a bus is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Working, as far as its last operations and checks tell.
    Ok,
    /// Cannot be reached, or its operations fail for want of it: why, in one line, for
    /// `/healthz` and the logs (the cause only, e.g. `PostgreSQL: … Connection refused`: the
    /// reader knows which part it is about; never a password).
    Degraded { reason: String },
}

impl Health {
    pub fn is_ok(&self) -> bool {
        matches!(self, Health::Ok)
    }

    /// Why it is degraded; `None` when it is not.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Health::Ok => None,
            Health::Degraded { reason } => Some(reason),
        }
    }
}
