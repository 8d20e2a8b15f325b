//! [`EventQueue`]: one client's bounded queue of events (notifications, `inbox` and `topic` events),
//! between the hub (which pushes) and the client's subscription (which takes).
//!
//! Why not `tokio::sync::mpsc`: a bounded tokio channel costs about 800 bytes per client before
//! anything is sent (its cache-padded state and a first block of 32 slots), which is more than
//! a third of our budget of 2 KiB per idle client. This queue is a `VecDeque` behind a short
//! `parking_lot` mutex and one waker: about 70 bytes when idle, allocating only while events are
//! waiting, and giving the memory of a burst back once drained.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use crate::inbox::InboxEvent;
use crate::notification::Notification;
use crate::topic::TopicEvent;

/// A drained queue keeps at most this many slots allocated (64 bytes: 4 events); a larger
/// buffer (left by a burst) is freed so that idle clients stay small.
const IDLE_CAPACITY_MAX: usize = 64 / std::mem::size_of::<Queued>();

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The queue holds its maximum: the client is lagging.
    Full,
    /// The queue was closed: the connection is ending.
    Closed,
}

/// One event in a client's queue, shared (`Arc`) with every other client that gets it.
#[derive(Debug, Clone)]
pub(crate) enum Queued {
    Notification(Arc<Notification>),
    Inbox(Arc<InboxEvent>),
    Topic(Arc<TopicEvent>),
}

/// What the receiving side takes from the queue.
#[derive(Debug, Clone)]
pub(crate) enum Received {
    Notification(Arc<Notification>),
    Inbox(Arc<InboxEvent>),
    Topic(Arc<TopicEvent>),
    /// Nothing was queued for a keep-alive period: the transport should show it is alive.
    KeepAlive,
}

#[derive(Debug, Default)]
struct State {
    events: VecDeque<Queued>,
    waker: Option<Waker>,
    /// The task waiting for the close (see [`EventQueue::poll_closed`]): a connection stuck in
    /// a write to a peer that does not read, which must learn that the hub ended it.
    closed_waker: Option<Waker>,
    closed: bool,
    /// Ticks since the last event was queued or the last keep-alive was due.
    quiet_ticks: u32,
    keepalive_due: bool,
}

/// A bounded single-consumer queue of events with an async receiving side.
#[derive(Debug, Default)]
pub(crate) struct EventQueue {
    state: Mutex<State>,
}

impl EventQueue {
    /// An empty queue that counts `quiet_ticks` ticks already: its first keep-alive falls due
    /// that many ticks early (staggering the keep-alives of clients that connect together).
    pub(crate) fn with_quiet_ticks(quiet_ticks: u32) -> Self {
        Self { state: Mutex::new(State { quiet_ticks, ..State::default() }) }
    }

    /// Appends `event` unless the queue is closed or holds `len_max` events already.
    pub(crate) fn push(&self, event: Queued, len_max: usize) -> Result<(), PushError> {
        let waker = {
            let mut state = self.state.lock();
            if state.closed {
                return Err(PushError::Closed);
            }
            if state.events.len() >= len_max {
                return Err(PushError::Full);
            }
            state.events.push_back(event);
            state.quiet_ticks = 0;
            state.waker.take()
        };
        // Woken outside the lock, so the woken task never finds it taken.
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Closes the queue: pushes are refused from now on, what is queued is freed at once (a
    /// client ended for lagging holds a full queue, and its connection may take a while to go),
    /// and the receiver gets `None`.
    pub(crate) fn close(&self) {
        let (waker, closed_waker, events) = {
            let mut state = self.state.lock();
            state.closed = true;
            (state.waker.take(), state.closed_waker.take(), std::mem::take(&mut state.events))
        };
        // Dropped outside the lock: the last reference to a notification frees it.
        drop(events);
        for waker in [waker, closed_waker].into_iter().flatten() {
            waker.wake();
        }
    }

    /// `Ready` once the queue is closed, else `Pending` (the task is woken by the close). Meant
    /// for a task other than the receiver's, or for the receiver while it is not receiving.
    pub(crate) fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.state.lock();
        if state.closed {
            return Poll::Ready(());
        }
        match &mut state.closed_waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Counts one tick of the hub's clock; after `keepalive_ticks` quiet ticks in a row, a
    /// keep-alive is due and the receiver is woken for it. One central clock instead of a timer
    /// per connection keeps idle connections small and their CPU cost nil.
    pub(crate) fn tick(&self, keepalive_ticks: u32) {
        let waker = {
            let mut state = self.state.lock();
            state.quiet_ticks += 1;
            if state.quiet_ticks < keepalive_ticks {
                return;
            }
            state.quiet_ticks = 0;
            state.keepalive_due = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The next event, `Ready(None)` once closed, or `Pending` (the task is woken by
    /// the next push, keep-alive or close).
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Received>> {
        let mut state = self.state.lock();
        if let Some(event) = state.events.pop_front() {
            if state.events.is_empty() && state.events.capacity() > IDLE_CAPACITY_MAX {
                state.events = VecDeque::new();
            }
            return Poll::Ready(Some(match event {
                Queued::Notification(notification) => Received::Notification(notification),
                Queued::Inbox(event) => Received::Inbox(event),
                Queued::Topic(event) => Received::Topic(event),
            }));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        if std::mem::take(&mut state.keepalive_due) {
            return Poll::Ready(Some(Received::KeepAlive));
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Waits for the next event; `None` once closed. Cancel-safe.
    pub(crate) async fn recv(&self) -> Option<Received> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::UserId;
    use crate::notification::Audience;

    fn notification(seq: u64) -> Queued {
        let data = Arc::from(serde_json::value::RawValue::from_string("null".into()).unwrap());
        Queued::Notification(Arc::new(Notification::new(
            UserId::new("u").unwrap(),
            Some(seq),
            Arc::from("t"),
            data,
            0,
            Audience::user(),
        )))
    }

    impl Received {
        fn seq(&self) -> Option<u64> {
            match self {
                Received::Notification(n) => n.seq,
                Received::Inbox(_) | Received::Topic(_) | Received::KeepAlive => None,
            }
        }
    }

    #[tokio::test]
    async fn a_keepalive_is_due_after_the_quiet_ticks_and_an_event_restarts_the_count() {
        let queue = EventQueue::default();
        queue.tick(2);
        queue.push(notification(1), 10).unwrap();
        queue.tick(2);
        assert_eq!(queue.recv().await.unwrap().seq(), Some(1));
        let waiting = std::future::poll_fn(|cx| Poll::Ready(queue.poll_recv(cx).is_pending())).await;
        assert!(waiting, "one quiet tick after an event is not enough");
        queue.tick(2);
        assert!(matches!(queue.recv().await, Some(Received::KeepAlive)));
    }

    #[tokio::test]
    async fn delivers_in_order_refuses_past_the_bound_and_ends_after_close() {
        let queue = EventQueue::default();
        for seq in 1..=3 {
            queue.push(notification(seq), 3).unwrap();
        }
        assert_eq!(queue.push(notification(4), 3), Err(PushError::Full));
        assert_eq!(queue.recv().await.unwrap().seq(), Some(1));
        queue.push(notification(4), 3).unwrap();
        assert_eq!(queue.recv().await.unwrap().seq(), Some(2));
        queue.close();
        assert_eq!(queue.push(notification(5), 3), Err(PushError::Closed));
        assert!(queue.recv().await.is_none(), "a closed queue hands out nothing more");
    }

    /// A client ended by the hub (lagging: a full queue) may keep its connection for a while
    /// (a write stuck on a peer that does not read): its queue must not keep the events.
    #[tokio::test]
    async fn closing_frees_what_is_queued_and_wakes_who_waits_for_the_close() {
        let queue = Arc::new(EventQueue::default());
        let event = notification(1);
        let Queued::Notification(shared) = &event else { unreachable!() };
        let shared = shared.clone();
        queue.push(event, 10).unwrap();
        assert_eq!(Arc::strong_count(&shared), 2);
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { std::future::poll_fn(|cx| queue.poll_closed(cx)).await }
        });
        tokio::task::yield_now().await;
        queue.close();
        assert_eq!(Arc::strong_count(&shared), 1, "the queued event was freed by the close");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_push_from_another_task() {
        let queue = Arc::new(EventQueue::default());
        let receiver = tokio::spawn({
            let queue = queue.clone();
            async move { queue.recv().await.map(|n| n.seq()) }
        });
        tokio::task::yield_now().await;
        queue.push(notification(7), 10).unwrap();
        let received = tokio::time::timeout(std::time::Duration::from_secs(5), receiver).await;
        assert_eq!(received.unwrap().unwrap(), Some(Some(7)));
    }

    #[tokio::test]
    async fn a_drained_queue_gives_back_the_memory_of_a_burst() {
        let queue = EventQueue::default();
        for seq in 0..100 {
            queue.push(notification(seq), 1000).unwrap();
        }
        while !queue.state.lock().events.is_empty() {
            queue.recv().await;
        }
        assert!(queue.state.lock().events.capacity() <= IDLE_CAPACITY_MAX);
    }
}
