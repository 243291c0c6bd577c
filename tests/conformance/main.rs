//! The conformance suite: every behaviour of the outbox and its relay,
//! stated once as a scenario generic over [`backend::Backend`] and run
//! against each backend, so test names read `postgres::<scenario>`,
//! `mysql::<scenario>` and `sqlite::<scenario>`.
//!
//! Each scenario gets a database of its own (PostgreSQL at `OUTBOX_TEST_PG`,
//! default `postgres://postgres@127.0.0.1:5432/postgres`; MySQL or MariaDB
//! at `OUTBOX_TEST_MYSQL`, default `mysql://root@127.0.0.1:3306/test`;
//! SQLite in the temporary directory). A backend is done when it passes
//! every scenario; adding one takes one file under `backend/`: a
//! [`backend::Backend`] impl (its outbox type gets `TestOutbox` from one
//! `test_outbox!` line, its inbox `TestInbox` from one `test_inbox!` line)
//! and the consumer traits of `consumer_backend.rs` for the inbox and
//! export scenarios; then a line in the `conformance!` invocation below and
//! one in `consumer_scenarios!`. Behaviour only one backend has
//! (LISTEN/NOTIFY, SQLite's single writer) is tested in `tests/postgres.rs`
//! and `tests/sqlite.rs`.

// The modules of a test binary share items among themselves with `pub`;
// nothing leaves the binary.
#![allow(unreachable_pub)]

#[path = "../support/mod.rs"]
mod support;

mod backend;
mod bad_input;
mod chaos;
mod config;
mod consumer_backend;
mod dead_letters;
mod export;
mod inbox;
mod messages;
mod ordering;
mod relay;
mod stats;
mod write;

/// Declares one test per scenario per backend: `conformance!(Type, module;
/// ...)`, one line per backend, gives tests named `module::scenario`.
macro_rules! conformance {
    ($($backend:ty, $module:ident);+ $(;)?) => {
        $(
            mod $module {
                // `$` goes in as a token, so that `scenarios!` can define a
                // macro of its own.
                every_backend!(($) $module, $backend);
            }
        )+

        /// The relay process the crash scenarios start (a re-run of this
        /// test binary): does nothing unless started by one of them.
        #[test]
        fn crash_child_relay() {
            let Ok(backend) = std::env::var("OUTBOX_CRASH_CHILD_BACKEND") else {
                return;
            };
            let location =
                std::env::var("OUTBOX_CRASH_CHILD_DB").expect("OUTBOX_CRASH_CHILD_DB is set");
            $(
                if backend == <$backend as crate::backend::Backend>::NAME {
                    return ordering::crash_child_relay::<$backend>(&location);
                }
            )+
            panic!("no backend named {backend}");
        }
    };
}

/// The scenarios, each run on every backend: `group::scenario` names the
/// generic function; `[multi_thread]` before it runs it on two worker
/// threads; `except module ...` after it leaves it out for the backends
/// named, where it truly cannot apply (say why in a comment beside it).
macro_rules! every_backend {
    (($d:tt) $module:ident, $backend:ty) => {
        scenarios!(($d) $module, $backend;
            write::rollback_publishes_nothing,
            write::commit_publishes_once,
            write::duplicate_id_is_reported_and_the_transaction_stays_usable,
            write::payload_that_cannot_serialize_is_an_error_before_any_write,
            write::headers_raw_bytes_and_batch_order_survive_the_trip,
            write::large_batch_is_published_once_in_order,
            bad_input::bad_input_never_costs_the_callers_transaction,
            bad_input::the_payload_limit_is_the_outboxs_own,
            bad_input::negative_listing_limits_are_refused,
            bad_input::a_stored_message_that_cannot_be_read_is_dead_lettered,
            stats::stats_tell_ready_retry_waiting_and_parked_apart,
            stats::topics_and_relays_tell_who_is_behind_and_who_cannot_publish,
            config::bad_identifiers_are_typed_errors,
            config::bad_relay_configuration_is_a_typed_error,
            config::prefix_keeps_outboxes_apart,
            config::migrate_twice_is_fine,
            config::newer_schema_is_rejected,
            config::a_relay_on_unmigrated_tables_says_to_run_migrate,
            relay::transient_failures_back_off_exponentially_in_key_order,
            relay::permanent_failure_is_dead_lettered_then_replayed,
            relay::discard_and_replay_all,
            dead_letters::a_reenqueued_id_keeps_every_dead_letter_and_every_key_moves_again,
            dead_letters::a_block_whose_message_is_gone_no_longer_holds_its_key,
            dead_letters::dead_letters_filter_page_and_replay_by_filter,
            dead_letters::messages_behind_a_blocked_key_are_parked_and_move_again_in_order,
            dead_letters::a_replayed_older_message_lifts_only_its_own_block,
            relay::unordered_topic_parks_the_failure_and_the_key_moves_on,
            relay::a_distant_retry_sleeps_then_wakes_in_time,
            relay::several_relays_never_publish_twice_and_keep_key_order,
            relay::several_relays_share_thousands_without_duplicates,
            relay::standby_takes_over,
            relay::shutdown_during_a_batch_loses_nothing,
            relay::retention_keeps_published_rows_then_purges_them,
            relay::rounds_stop_at_the_byte_budget,
            relay::shutdown_abandons_a_publisher_that_never_returns,
            relay::commit_wakes_the_relay_without_polling,
            [multi_thread] ordering::many_writers_many_relays_random_failures_keep_commit_order,
            [multi_thread] ordering::writers_never_deadlock_with_busy_relays,
            [multi_thread] ordering::prefetched_batches_hold_back_keys_with_a_failed_message,
            [multi_thread] ordering::relay_processes_killed_at_random_lose_nothing_and_keep_order,
            [multi_thread] ordering::a_frozen_relay_is_fenced_and_publishes_nothing_after_it_thaws,
            [multi_thread] ordering::a_slow_publisher_keeps_its_leases,
            [multi_thread] ordering::leases_rebalance_when_relays_join_and_leave,
        );
    };
}

/// One `#[tokio::test]` per scenario of the list for `$backend`, unless its
/// `except` list names `$module`.
macro_rules! scenarios {
    (($d:tt) $module:ident, $backend:ty;
        $($([$flavor:ident])? $group:ident :: $name:ident $(except $($skip:ident)+)?),* $(,)?) => {
        $(
            // A matcher per scenario: the modules of its `except` list
            // expand to nothing, any other to the test.
            macro_rules! unless_skipped {
                $($( ($skip $d($d test:tt)*) => {}; )+)?
                ($d other:ident $d($d test:tt)*) => { $d($d test)* };
            }
            unless_skipped! { $module scenarios!(@test $backend, $($flavor)?, $group, $name); }
        )*
    };
    (@test $backend:ty, , $group:ident, $name:ident) => {
        #[tokio::test]
        async fn $name() {
            crate::$group::$name::<$backend>().await
        }
    };
    (@test $backend:ty, multi_thread, $group:ident, $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            crate::$group::$name::<$backend>().await
        }
    };
}

conformance!(
    crate::backend::Postgres, postgres;
    crate::backend::Sqlite, sqlite;
    crate::backend::MySql, mysql;
    crate::backend::PgBouncerSession, pgbouncer_session;
    crate::backend::PgBouncerTransaction, pgbouncer_transaction;
);
