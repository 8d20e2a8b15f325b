//! Presence reported to the app (herald-core `presence`, webhooks) in SQL: one transaction per
//! change, serialized per user by the user's `herald_presence_seqs` row, locked first (an
//! upsert locks the row it finds, and two that create it wait on the unique index), so that
//! two nodes recording one user's sessions at once see each other's rows and one of them
//! makes `user.online`. Only one user's rows are locked by any transaction here: no deadlock
//! with another.

use deadpool_postgres::{GenericClient, Transaction};
use herald_core::presence::RowChange;
use herald_core::{PresenceBeat, PresenceChange, PresenceEvent, SessionId, StoreError, UserId};

use super::sql::Error;

/// Records one change of `node` (see `Store::record_presence`) in `tx`.
pub(super) async fn record_presence(
    tx: &Transaction<'_>,
    node: &str,
    change: &PresenceChange,
) -> Result<Vec<PresenceEvent>, Error> {
    let user = change.user.as_str();
    let session = change.session.as_str();
    let lock = tx
        .prepare_cached(
            "INSERT INTO herald_presence_seqs AS p (user_id, last_seq) VALUES ($1, 0)
             ON CONFLICT (user_id) DO UPDATE SET last_seq = p.last_seq RETURNING last_seq",
        )
        .await?;
    let last: i64 = tx.query_one(&lock, &[&user]).await?.get(0);
    let counts = tx
        .prepare_cached(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE session = $2), COUNT(*) FILTER (WHERE session = $2 AND node = $3)
             FROM herald_presence_online WHERE user_id = $1",
        )
        .await?;
    let row = tx.query_one(&counts, &[&user, &session, &node]).await?;
    let (user_rows, session_rows, had_row): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let plan = change.plan(had_row > 0, session_rows as u64, user_rows as u64);
    match plan.row {
        RowChange::Keep => {}
        RowChange::Insert => {
            let insert = tx
                .prepare_cached(
                    "INSERT INTO herald_presence_online (user_id, session, node) VALUES ($1, $2, $3)",
                )
                .await?;
            tx.execute(&insert, &[&user, &session, &node]).await?;
        }
        RowChange::Delete => {
            let delete = tx
                .prepare_cached(
                    "DELETE FROM herald_presence_online WHERE user_id = $1 AND session = $2 AND node = $3",
                )
                .await?;
            tx.execute(&delete, &[&user, &session, &node]).await?;
        }
    }
    if plan.events.is_empty() {
        return Ok(Vec::new());
    }
    let count = plan.events.len() as i64;
    let bump = tx
        .prepare_cached("UPDATE herald_presence_seqs SET last_seq = last_seq + $2 WHERE user_id = $1")
        .await?;
    tx.execute(&bump, &[&user, &count]).await?;
    Ok(plan.numbered(node, change, last as u64 + 1))
}

/// Records that `node` is alive, and names the nodes dead (see `Store::presence_heartbeat`).
pub(super) async fn presence_heartbeat(
    client: &impl GenericClient,
    node: &str,
    now_ms: i64,
    dead_before_ms: i64,
) -> Result<PresenceBeat, Error> {
    // `xmax = 0` only on a row this statement inserted: the node was not registered.
    let beat = client
        .prepare_cached(
            "INSERT INTO herald_presence_nodes AS n (node, last_beat) VALUES ($1, $2)
             ON CONFLICT (node) DO UPDATE SET last_beat = GREATEST(n.last_beat, EXCLUDED.last_beat)
             RETURNING (xmax = 0) AS inserted",
        )
        .await?;
    let inserted: bool = client.query_one(&beat, &[&node, &now_ms]).await?.get(0);
    let dead = client
        .prepare_cached("SELECT node FROM herald_presence_nodes WHERE node <> $1 AND last_beat < $2")
        .await?;
    let dead_nodes = client.query(&dead, &[&node, &dead_before_ms]).await?.iter().map(|r| r.get(0)).collect();
    Ok(PresenceBeat { was_registered: !inserted, dead_nodes })
}

/// Up to `limit` sessions `node` has online, or, with none left, forgets the node and answers
/// an empty list.
pub(super) async fn presence_sessions_of(
    client: &impl GenericClient,
    node: &str,
    limit: usize,
) -> Result<Vec<(UserId, SessionId)>, Error> {
    let select = client
        .prepare_cached("SELECT user_id, session FROM herald_presence_online WHERE node = $1 LIMIT $2")
        .await?;
    let rows = client.query(&select, &[&node, &(limit as i64)]).await?;
    if rows.is_empty() {
        let forget = client.prepare_cached("DELETE FROM herald_presence_nodes WHERE node = $1").await?;
        client.execute(&forget, &[&node]).await?;
    }
    rows.iter()
        .map(|row| {
            let (user, session): (String, String) = (row.get(0), row.get(1));
            match (UserId::new(user), SessionId::new(session)) {
                (Ok(user), Ok(session)) => Ok((user, session)),
                _ => Err(StoreError::Corrupt("a presence row holds an invalid id".into()).into()),
            }
        })
        .collect()
}
