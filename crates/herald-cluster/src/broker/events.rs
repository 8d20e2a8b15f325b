//! [`Events`]: how an adapter hands [`BrokerEvent`]s to its bus through the bounded channel
//! given at connect, and what happens when that channel is full. Shared by both adapters so the
//! overflow rule is written once.
//!
//! **Messages never wait.** They come from the broker client's reader (async-nats's per-subject
//! channels, redis's connection task), and a reader that waits for a slow bus stops the whole
//! connection: pings go unanswered, the broker's own buffers fill and it drops the connection.
//! So a message that finds the channel full is dropped, and the bus is told with one
//! [`BrokerEvent::Lagged`] as soon as there is room: at most one `Lagged` is pending at a time,
//! and until it is in the channel every later message is dropped too (a message must not
//! overtake the `Lagged` that says what was lost before it). The bus then repairs from the store.
//!
//! **Changes of the connection wait.** [`BrokerEvent::Disconnected`] and
//! [`BrokerEvent::Reconnected`] are sent by the adapter's supervising task, which may wait for
//! room: the bus must see every one of them, in order, and nothing else waits on that task.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::BrokerEvent;

/// The sending side of the bus's event channel, with the pending-`Lagged` flag. Cheap to clone:
/// every reader of an adapter holds one.
#[derive(Clone)]
pub(crate) struct Events {
    tx: mpsc::Sender<BrokerEvent>,
    /// A message was dropped and the `Lagged` that says so is not in the channel yet. Whoever
    /// swaps it from `true` to `false` sends that `Lagged` (once).
    lagged: Arc<AtomicBool>,
}

impl Events {
    pub(crate) fn new(tx: mpsc::Sender<BrokerEvent>) -> Self {
        Self { tx, lagged: Arc::new(AtomicBool::new(false)) }
    }

    /// Hands a message on, or drops it (see the module's docs). Never waits.
    pub(crate) fn message(&self, subject: &str, payload: Bytes) {
        if self.lagged.load(Ordering::Acquire) && !self.try_send_lagged() {
            return;
        }
        match self.tx.try_send(BrokerEvent::Message { subject: subject.to_owned(), payload }) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(_)) => self.lagged(),
        }
    }

    /// Messages for this node were lost (the channel was full, or the broker client dropped
    /// some): a `Lagged` is sent as soon as there is room. Never waits. A loss while a `Lagged`
    /// is pending adds nothing; one after it went into the channel is a `Lagged` of its own (the
    /// bus may have read the first already), so the bus may find several in a row.
    pub(crate) fn lagged(&self) {
        if self.lagged.swap(true, Ordering::AcqRel) {
            return; // one is pending already: it covers this loss too
        }
        if self.try_send_lagged() {
            return;
        }
        // No room now: a task waits for room. It is the only one: the flag was false.
        let this = self.clone();
        tokio::spawn(async move {
            // Err: the bus is gone, nothing to tell.
            if let Ok(permit) = this.tx.reserve().await
                && this.lagged.swap(false, Ordering::AcqRel)
            {
                permit.send(BrokerEvent::Lagged);
            }
        });
    }

    /// Sends the pending `Lagged` if there is room; `false` if there is none (it stays pending).
    /// `true` also when another caller sent it meanwhile.
    fn try_send_lagged(&self) -> bool {
        match self.tx.try_reserve() {
            Ok(permit) => {
                if self.lagged.swap(false, Ordering::AcqRel) {
                    permit.send(BrokerEvent::Lagged);
                }
                true
            }
            Err(TrySendError::Closed(())) => true,
            Err(TrySendError::Full(())) => false,
        }
    }

    /// A change of the connection, which the bus must see: waits for room (see the module's
    /// docs). Nothing if the bus is gone.
    pub(crate) async fn connection_changed(&self, event: BrokerEvent) {
        debug_assert!(matches!(event, BrokerEvent::Disconnected { .. } | BrokerEvent::Reconnected));
        let _ = self.tx.send(event).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: u8) -> BrokerEvent {
        BrokerEvent::Message { subject: "s".into(), payload: Bytes::from(vec![n]) }
    }

    /// A full channel drops messages, then delivers one `Lagged` as soon as the bus makes room,
    /// and what comes later after it. Fails if one loss gives two `Lagged`s, or if nothing is
    /// delivered after the `Lagged`.
    #[tokio::test]
    async fn a_full_channel_gives_one_lagged_when_there_is_room() {
        let (tx, mut rx) = mpsc::channel(2);
        let events = Events::new(tx);
        for n in 0..5 {
            events.message("s", Bytes::from(vec![n]));
        }
        assert_eq!(rx.recv().await, Some(message(0)));
        tokio::task::yield_now().await; // the waiting task puts the `Lagged` in the free slot
        assert_eq!(rx.recv().await, Some(message(1)));
        assert_eq!(rx.recv().await, Some(BrokerEvent::Lagged));
        assert!(rx.try_recv().is_err(), "one loss, one Lagged");
        events.message("s", Bytes::from(vec![6]));
        assert_eq!(rx.recv().await, Some(message(6)));
    }

    /// A message that finds room while a `Lagged` is pending puts the `Lagged` there and is
    /// dropped itself (reported by a `Lagged` of its own). Fails if a message overtakes the
    /// `Lagged` that reports what was lost before it.
    #[tokio::test]
    async fn a_message_does_not_overtake_the_pending_lagged() {
        let (tx, mut rx) = mpsc::channel(2);
        let events = Events::new(tx);
        for n in 0..3 {
            events.message("s", Bytes::from(vec![n]));
        }
        assert_eq!(rx.recv().await, Some(message(0)));
        events.message("s", Bytes::from(vec![3]));
        let mut seen = Vec::new();
        while seen.len() < 3 {
            tokio::task::yield_now().await;
            seen.push(rx.recv().await.unwrap());
        }
        assert_eq!(seen, [message(1), BrokerEvent::Lagged, BrokerEvent::Lagged]);
        events.message("s", Bytes::from(vec![4]));
        assert_eq!(rx.recv().await, Some(message(4)));
    }

    /// A loss reported while the channel has room is a `Lagged` at once, before what follows.
    #[tokio::test]
    async fn lagged_with_room_is_sent_at_once() {
        let (tx, mut rx) = mpsc::channel(4);
        let events = Events::new(tx);
        events.lagged();
        events.message("s", Bytes::from(vec![1]));
        assert_eq!(rx.recv().await, Some(BrokerEvent::Lagged));
        assert_eq!(rx.recv().await, Some(message(1)));
        assert!(rx.try_recv().is_err());
    }
}
