//! Configuration: names validated before any SQL is built from them, relay
//! settings checked at spawn, migrations that are safe to repeat and refuse
//! a schema newer than the crate.

use std::time::Duration;

use outbox::{Error, InMemoryPublisher, RelayBuilder, Retention, RetryPolicy};

use crate::backend::{Backend, TestOutbox};
use crate::messages::{keyed, numbered};

/// A table prefix that is not a plain lowercase identifier, or too long
/// for PostgreSQL's 63 bytes once a table name is appended, is refused
/// with a typed error, and nothing reaches the database.
pub async fn bad_identifiers_are_typed_errors<B: Backend>() {
    let db = B::fresh().await;
    let before = db.tables().await;
    let too_long = "p".repeat(60);
    for bad in [
        "bad-prefix",
        "x; DROP TABLE",
        "outbox\"; DROP TABLE x; --",
        "Upper",
        "1abc",
        "pre fix",
        too_long.as_str(),
    ] {
        match db.outbox_with_prefix(bad) {
            Err(Error::InvalidIdentifier { what, value, .. }) => {
                assert_eq!(value, bad);
                assert_eq!(what, "table prefix");
            }
            Err(other) => panic!("{bad:?}: expected InvalidIdentifier, got {other:?}"),
            Ok(_) => panic!("{bad:?}: expected InvalidIdentifier, got an outbox"),
        }
    }
    assert_eq!(db.tables().await, before, "nothing was created");
    db.close().await;
}

/// Relay settings that cannot work are refused at spawn, naming the field.
pub async fn bad_relay_configuration_is_a_typed_error<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let builder = || outbox.relay(InMemoryPublisher::new());
    let bad: Vec<(&str, RelayBuilder)> = vec![
        ("batch_size", builder().batch_size(0)),
        ("max_batch_bytes", builder().max_batch_bytes(0)),
        ("poll_interval", builder().poll_interval(Duration::ZERO)),
        ("lease_ttl", builder().lease_ttl(Duration::from_millis(1))),
        (
            "retry.max_attempts",
            builder().retry(RetryPolicy::new().max_attempts(0)),
        ),
        (
            "retention",
            builder().retention(Retention::Keep(Duration::ZERO)),
        ),
    ];
    for (field, builder) in bad {
        match builder.spawn().unwrap_err() {
            Error::InvalidConfig { field: f, .. } => assert_eq!(f, field),
            other => panic!("expected InvalidConfig for {field}, got {other:?}"),
        }
    }
    db.close().await;
}

/// Outboxes with different table prefixes share a database without seeing
/// each other's messages.
pub async fn prefix_keeps_outboxes_apart<B: Backend>() {
    let db = B::fresh().await;
    let a = db.outbox_with_prefix("billing_").unwrap();
    let b = db.outbox_with_prefix("crm_").unwrap();
    let plain = db.outbox_with_prefix("").unwrap();
    a.migrate().await.unwrap();
    a.migrate().await.unwrap(); // idempotent
    b.migrate().await.unwrap();
    plain.migrate().await.unwrap();
    a.enqueue_alone(keyed("t", "k", 1)).await.unwrap();
    assert_eq!(a.pending().await, 1);
    assert_eq!(b.pending().await, 0);
    assert_eq!(plain.pending().await, 0);
    assert_eq!(db.outbox().pending().await, 0);
    assert_eq!(db.message_rows("billing_").await, 1);
    assert_eq!(db.message_rows("crm_").await, 0);
    let tables = db.tables().await;
    assert!(
        tables.contains(&"billing_messages".to_owned()),
        "{tables:?}"
    );
    assert!(tables.contains(&"crm_messages".to_owned()), "{tables:?}");
    db.close().await;
}

/// Migrating an up-to-date outbox applies nothing and loses nothing.
pub async fn migrate_twice_is_fine<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    outbox.enqueue_alone(numbered("t", 1)).await.unwrap();
    let first = db.migrations().await;
    assert!(first >= 1);
    outbox.migrate().await.expect("second migrate");
    assert_eq!(outbox.pending().await, 1, "the pending message survives");
    assert_eq!(db.migrations().await, first, "nothing applied twice");
    db.close().await;
}

/// A schema migrated by a newer release of the crate is refused: running
/// against it could corrupt data.
pub async fn newer_schema_is_rejected<B: Backend>() {
    let db = B::fresh().await;
    db.record_migration(999).await;
    match db.outbox().migrate().await {
        Err(Error::SchemaTooNew { found, supported }) => {
            assert_eq!(found, 999);
            assert!(supported < found);
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    db.close().await;
}

/// A relay on tables that were never migrated (or migrated by an older
/// version of the crate) does not start: its health says `Degraded` with
/// an error naming `migrate()`, and it starts once they are migrated.
pub async fn a_relay_on_unmigrated_tables_says_to_run_migrate<B: Backend>() {
    let db = B::fresh().await;
    let old = db.outbox_with_prefix("old_").unwrap();
    let relay = old
        .fast_relay(outbox::InMemoryPublisher::new())
        .spawn()
        .unwrap();
    let health = relay.watch_health();
    crate::support::eventually("the relay to report the old schema", || {
        health
            .borrow()
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("run migrate()"))
    })
    .await;
    assert_eq!(health.borrow().state, outbox::RelayState::Degraded);
    old.migrate().await.unwrap();
    crate::support::eventually("the relay to start once migrated", || {
        health.borrow().leased_buckets > 0
    })
    .await;
    relay.shutdown().await.unwrap();
    db.close().await;
}
