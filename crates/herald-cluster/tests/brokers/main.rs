//! The broker adapters against real brokers: every case in `cases.rs` and `restart.rs` runs for
//! NATS (`nats::…`) and for Redis (`redis::…`), from one body each.
//!
//! Cases that need a broker read `HERALD_TEST_NATS` (`nats://127.0.0.1:4222`) and
//! `HERALD_TEST_REDIS` (`redis://127.0.0.1:6379`), which `.ci/run` sets; without the variable a
//! case says why it skips and passes. Subjects carry the pid, the time and a counter, so runs
//! in parallel do not see each other's messages. The restart case starts a private server of
//! its own (`nats-server`, `redis-server`) on a free port. The URL and connection-bound cases
//! need no broker and always run.

mod cases;
mod restart;
mod support;

/// One `#[tokio::test]` per case, in a module per adapter.
macro_rules! cases_for {
    ($module:ident, $kind:expr, [$($case:path => $name:ident),* $(,)?]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $case($kind).await
                }
            )*
        }
    };
}

/// The case list, once: each adapter runs all of it.
macro_rules! every_case {
    ($module:ident, $kind:expr) => {
        cases_for!($module, $kind, [
            crate::cases::round_trip_between_two_connections => round_trip_between_two_connections,
            crate::cases::own_publishes_come_back_over_redis_only => own_publishes_come_back_over_redis_only,
            crate::cases::one_publishers_order_is_kept => one_publishers_order_is_kept,
            crate::cases::subscribing_twice_is_one_subscription => subscribing_twice_is_one_subscription,
            crate::cases::unsubscribe_stops_delivery => unsubscribe_stops_delivery,
            crate::cases::subscribe_is_in_force_on_return => subscribe_is_in_force_on_return,
            crate::cases::invalid_urls_are_refused => invalid_urls_are_refused,
            crate::cases::unreachable_port_is_unavailable => unreachable_port_is_unavailable,
            crate::cases::silent_server_is_unavailable_within_the_bound
                => silent_server_is_unavailable_within_the_bound,
            crate::cases::a_full_events_channel_gives_lagged => a_full_events_channel_gives_lagged,
            crate::restart::broker_restart => broker_restart,
        ]);
    };
}

every_case!(nats, crate::support::Kind::Nats);
every_case!(redis, crate::support::Kind::Redis);
