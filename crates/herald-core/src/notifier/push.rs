//! The Web Push side of a publish (a second `impl Notifier`): the push request a publish carries
//! into its append, the deliveries the append's markers become after the hand-over, and the
//! senders' recovery of markers a publish left behind. The policy's vocabulary is in
//! `crate::push`; sending is herald-server's.

use super::*;
use crate::push::{
    PUSH_MARKER_ORPHANED_AFTER, PUSH_TTL_SECS_DEFAULT, PUSH_USERS_PER_PUBLISH_MAX, PushDelivery,
    PushExpansion, PushMarker, PushRequest, PushSubscription, push_topic_of_kind,
};

impl Notifier {
    /// What `publish` asks of Web Push, if anything is to be pushed: push is on
    /// ([`crate::Limits::push_enabled`]), the policy is not `never`, and an ephemeral publish
    /// is pushed only under `always`.
    pub(super) fn push_request(&self, publish: &Publish, now: i64) -> Option<Arc<PushRequest>> {
        let limits = self.inner.hub.limits();
        let options = &publish.push;
        let offline = match options.policy {
            PushPolicy::Never => return None,
            _ if !limits.push_enabled => return None,
            PushPolicy::Offline if !publish.durable => return None,
            PushPolicy::Offline => true,
            PushPolicy::Always => false,
        };
        let grace_ms = i64::try_from(limits.push_grace.as_millis()).unwrap_or(i64::MAX);
        let due_at_ms = if offline { now.saturating_add(grace_ms) } else { now };
        let orphaned_ms = i64::try_from(PUSH_MARKER_ORPHANED_AFTER.as_millis()).unwrap_or(i64::MAX);
        Some(Arc::new(PushRequest {
            policy: options.policy,
            payload: options.payload.as_ref().map(|payload| payload.get().to_owned()),
            ttl_secs: options.ttl_secs.unwrap_or(PUSH_TTL_SECS_DEFAULT),
            urgency: options.urgency,
            topic: options.topic.clone().unwrap_or_else(|| push_topic_of_kind(&publish.kind)),
            due_at_ms,
            expand_by_ms: due_at_ms.saturating_add(orphaned_ms),
        }))
    }

    /// Puts the pushes of `notifications` (just handed over) into the store's outbox: one per
    /// subscription of each one's user, under `offline` only for sessions with no live tab on
    /// any node, due after the grace period and sent only if still none then.
    ///
    /// Durable notifications have markers (kept by their append): the first
    /// [`PUSH_USERS_PER_PUBLISH_MAX`] are expanded here and their markers removed, in one store
    /// call; the others, and any this call fails to expand, are left to the senders
    /// ([`Notifier::expand_pending_pushes`]). Ephemeral ones (`always`) have none: at most
    /// [`PUSH_USERS_PER_PUBLISH_MAX`] users get their push, and none if this fails. The publish
    /// has succeeded already: a failure here is logged, not returned.
    pub(super) async fn expand_pushes(
        &self,
        request: &PushRequest,
        mut notifications: Vec<Arc<Notification>>,
    ) {
        let outbox = &self.inner.push_outbox;
        let durable = notifications.first().is_some_and(|n| n.seq.is_some());
        let beyond = if notifications.len() > PUSH_USERS_PER_PUBLISH_MAX {
            notifications.split_off(PUSH_USERS_PER_PUBLISH_MAX)
        } else {
            Vec::new()
        };
        let marker_of =
            |n: &Notification| PushMarker { user: n.user.clone(), seq: n.seq.unwrap_or_default() };
        let mut to_senders: Vec<PushMarker> = beyond.iter().map(|n| marker_of(n)).collect();
        if !durable && !beyond.is_empty() {
            tracing::warn!(
                users = notifications.len() + beyond.len(),
                max = PUSH_USERS_PER_PUBLISH_MAX,
                "an ephemeral push to more users than one publish pushes to: the users beyond the bound get none"
            );
            to_senders.clear();
        }
        let offline = request.policy == PushPolicy::Offline;
        let ephemeral_id = if durable { String::new() } else { crate::jobs::random_job_id() };
        let mut expansions = Vec::with_capacity(notifications.len());
        for notification in notifications {
            let user = &notification.user;
            let subscriptions = match self.inner.store.push_subscriptions(user).await {
                Ok(subscriptions) => subscriptions,
                Err(error) => {
                    tracing::warn!(%error, %user, "cannot read the user's push subscriptions: left to the sender");
                    to_senders.push(marker_of(&notification));
                    continue;
                }
            };
            let live: Vec<SessionId> = if offline && !subscriptions.is_empty() {
                match self.presence(user).await {
                    Ok(presence) => presence.sessions.into_iter().map(|s| s.session).collect(),
                    Err(error) => {
                        // Unknown presence: the check when the push is due decides.
                        tracing::warn!(%error, %user, "cannot read presence for the push policy");
                        Vec::new()
                    }
                }
            } else {
                Vec::new()
            };
            let mut deliveries =
                push_deliveries(request, &notification, &subscriptions, &live, &ephemeral_id);
            if outbox.is_full() && !deliveries.is_empty() {
                tracing::warn!(%user, pushes = deliveries.len(), "the push outbox is full: pushes dropped");
                outbox.counters.drop_pushes("outbox_full", deliveries.len() as u64);
                deliveries.clear();
            }
            expansions.push(PushExpansion { marker: marker_of(&notification), deliveries });
        }
        if !durable {
            let deliveries: Vec<_> = expansions.into_iter().flat_map(|e| e.deliveries).collect();
            match self.inner.store.push_enqueue(&deliveries).await {
                Ok(()) => outbox.added(deliveries.len()),
                Err(error) => {
                    tracing::warn!(%error, pushes = deliveries.len(), "cannot put pushes in the outbox: they are lost")
                }
            }
            return;
        }
        match self.inner.store.push_expand(&expansions, &to_senders, now_ms()).await {
            Ok(added) => outbox.added(added),
            Err(error) => {
                // The markers stay: a sender expands them once they are orphaned.
                tracing::warn!(%error, markers = expansions.len(), "cannot expand a publish's pushes: left to the senders");
            }
        }
        if !to_senders.is_empty() {
            outbox.wake();
        }
    }

    /// Expands up to `limit` markers whose publish did not (its process died before, or it had
    /// more than [`PUSH_USERS_PER_PUBLISH_MAX`] users), claimed for `lease`: each becomes one
    /// delivery per subscription its user has now, due at once, sent only if the
    /// subscription's session has no live tab then under `offline` (the presence at publish
    /// time is not known any more: at least once). A marker whose notification is gone (deleted,
    /// pruned) is removed with nothing to push. Called by the push sender; returns how many
    /// markers it took (a failure leaves them to be taken again once the lease ends).
    pub async fn expand_pending_pushes(&self, limit: usize, lease: Duration) -> Result<usize, NotifyError> {
        let store = &self.inner.store;
        let outbox = &self.inner.push_outbox;
        let now = now_ms();
        let pending = store.push_claim_pending(now, limit, lease).await?;
        if pending.is_empty() {
            return Ok(0);
        }
        let mut expansions = Vec::with_capacity(pending.len());
        for crate::push::PushPending { marker, request } in &pending {
            let page = store.read_after(&marker.user, marker.seq.saturating_sub(1), 1).await?;
            let notification = page.notifications.into_iter().find(|n| n.seq == Some(marker.seq));
            let mut deliveries = match notification {
                Some(notification) => {
                    let subscriptions = store.push_subscriptions(&marker.user).await?;
                    push_deliveries(request, &notification, &subscriptions, &[], "")
                }
                None => Vec::new(),
            };
            if outbox.is_full() && !deliveries.is_empty() {
                tracing::warn!(user = %marker.user, pushes = deliveries.len(), "the push outbox is full: pushes dropped");
                outbox.counters.drop_pushes("outbox_full", deliveries.len() as u64);
                deliveries.clear();
            }
            expansions.push(PushExpansion { marker: marker.clone(), deliveries });
        }
        let added = store.push_expand(&expansions, &[], now).await?;
        outbox.added(added);
        tracing::info!(
            markers = pending.len(),
            pushes = added,
            "expanded pushes their publish left to the sender"
        );
        Ok(pending.len())
    }
}

/// The deliveries of `notification` under `request`: one per subscription of its user whose
/// session is not in `live` (the sessions with a tab at publish time; empty when not known),
/// each with an id made of the seq (of `ephemeral_id` for an ephemeral notification), the
/// subscription and the user, so that expanding it again adds nothing.
fn push_deliveries(
    request: &PushRequest,
    notification: &Notification,
    subscriptions: &[PushSubscription],
    live: &[SessionId],
    ephemeral_id: &str,
) -> Vec<PushDelivery> {
    let (user, seq, kind) = (&notification.user, notification.seq, &*notification.kind);
    let body = request.payload.as_deref().unwrap_or(notification.data.get());
    let mut payload = push_body(kind, seq, body, false);
    if payload.len() > PUSH_PAYLOAD_BYTES_MAX {
        payload = push_body(kind, seq, "null", true);
    }
    let offline = request.policy == PushPolicy::Offline;
    subscriptions
        .iter()
        .filter(|subscription| &subscription.user == user && !live.contains(&subscription.session))
        .map(|subscription| PushDelivery {
            id: match seq {
                Some(seq) => format!("{seq}.{}.{}", subscription.id, user),
                None => format!("e{ephemeral_id}.{}.{}", subscription.id, user),
            },
            subscription: subscription.id.clone(),
            user: user.clone(),
            unless_live: offline.then(|| subscription.session.clone()),
            payload: payload.clone(),
            ttl_secs: request.ttl_secs,
            urgency: request.urgency,
            topic: Some(request.topic.clone()),
            due_at_ms: request.due_at_ms,
            attempts: 0,
        })
        .collect()
}
