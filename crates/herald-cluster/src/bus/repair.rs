//! The repair from the store: passes that compare the store's last seqs with the positions of
//! this node's clients, when asked and while the store must be polled (see the bus's module
//! docs).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use herald_core::bus::RevocationNews;
use herald_core::{CloseReason, InboxEvent, Seq, UserId};

use super::{HEARTBEAT_INTERVAL, Inner, REPAIR_BATCH_USERS, STORE_POLL_INTERVAL};

/// Runs repair passes when asked, and every [`STORE_POLL_INTERVAL`] while the store must be
/// polled.
pub(super) async fn repair_loop(inner: Arc<Inner>) {
    // Whether the revocation cache was told closes may not reach this node.
    let mut unreliable = false;
    loop {
        let poll = inner.must_poll();
        if poll != unreliable {
            inner.revocations_changed(if poll { RevocationNews::Unreliable } else { RevocationNews::All });
            unreliable = poll;
        }
        let wait = async {
            if poll {
                tokio::time::sleep(STORE_POLL_INTERVAL).await;
            } else {
                // Checked again now and then: a peer falls silent without any event.
                tokio::time::sleep(HEARTBEAT_INTERVAL).await;
            }
        };
        // Asked: something may have been missed (the broker came back, dropped messages, a
        // silent node is heard again, a node owed a resync): sign-outs too. Polling: seqs only.
        let (run, asked) = tokio::select! {
            () = inner.stop.cancelled() => return,
            () = inner.repair_now.notified() => (true, true),
            () = wait => (poll, false),
        };
        if run {
            repair_pass(&inner).await;
        }
        if asked && !inner.must_poll() {
            signout_pass(&inner).await;
        }
    }
}

/// For every user this node has clients of: ends the connections of sessions closed (on another
/// node, while the close could not reach this one) after they connected, as the close would
/// have. One store read per user; run only when closes may have been missed.
async fn signout_pass(inner: &Inner) {
    for user in inner.hub.users() {
        if inner.stop.is_cancelled() {
            return;
        }
        let revocations = match inner.store.revocations(&user).await {
            Ok(revocations) => revocations,
            Err(error) => {
                tracing::warn!(%error, "a sign-out pass cannot read the store: trying again later");
                return;
            }
        };
        for revocation in revocations {
            // A token is refused when issued at or before the close's second: so is a connection
            // made up to the end of that second.
            let before_ms = i64::try_from(revocation.closed_at_secs.saturating_add(1).saturating_mul(1000))
                .unwrap_or(i64::MAX);
            let closed = inner.hub.close_connected_before(
                &user,
                revocation.session.as_ref(),
                before_ms,
                CloseReason::SessionClosed,
            );
            if closed > 0 {
                tracing::info!(%user, closed, "closed connections of a session closed while the bus was away");
            }
        }
    }
}

/// For every user this node has connected clients of: when the store has a later seq than the
/// lowest position of its clients, fans out the store's latest notification (the clients behind
/// fill the rest from the store) and the user's counts. Reads the last seqs
/// [`REPAIR_BATCH_USERS`] users at a time.
async fn repair_pass(inner: &Inner) {
    inner.traffic.repair_passes.fetch_add(1, Ordering::Relaxed);
    let users = inner.hub.users();
    for batch in users.chunks(REPAIR_BATCH_USERS) {
        if inner.stop.is_cancelled() {
            return;
        }
        let last_seqs = match inner.store.last_seqs(batch).await {
            Ok(seqs) => seqs,
            Err(error) => {
                tracing::warn!(%error, "a repair pass cannot read the store: trying again later");
                return;
            }
        };
        for (user, last_seq) in batch.iter().zip(last_seqs) {
            let Some(lowest) = inner.hub.lowest_position(user) else { continue };
            if last_seq > lowest && !repair_user(inner, user, lowest, last_seq).await {
                return;
            }
        }
    }
}

/// Brings the clients of `user` from `lowest` to `last_seq`; `false` when the store failed.
async fn repair_user(inner: &Inner, user: &UserId, lowest: Seq, last_seq: Seq) -> bool {
    match inner.store.read_after(user, (last_seq - 1).max(lowest), 1).await {
        Ok(page) => {
            for notification in page.notifications {
                inner.traffic.repaired.fetch_add(1, Ordering::Relaxed);
                inner.hub.fanout(&notification);
            }
        }
        Err(error) => {
            tracing::warn!(%error, "a repair pass cannot read the store: trying again later");
            return false;
        }
    }
    if let Ok(counts) = inner.store.inbox_counts(user).await {
        inner.hub.fanout_inbox(&Arc::new(InboxEvent::appended(user.clone(), &[], counts)));
    }
    true
}
