//! Bad input never costs the caller's transaction: every write API checks
//! what the database could refuse before it sends anything, so a refused
//! call leaves the caller's transaction usable and its business rows
//! commit. On PostgreSQL a refusal by the server would abort the whole
//! transaction (and a later `commit` would silently roll back).

use outbox::change::Change;
use outbox::{Error, NewMessage, DEFAULT_MAX_PAYLOAD_BYTES, MAX_HEADER_VALUE_LEN, MAX_NAME_LEN};
use serde_json::json;

use crate::backend::{Backend, TestOutbox};
use crate::messages::{keyed, numbered};

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Messages the outbox must refuse at enqueue, each with what the error
/// must name.
fn bad_messages() -> Vec<(NewMessage, &'static str)> {
    let ok = || NewMessage::bytes("t", b"x".to_vec());
    vec![
        (NewMessage::bytes("", b"x".to_vec()), "topic"),
        (NewMessage::bytes("t\0", b"x".to_vec()), "topic"),
        (ok().with_partition_key("k\0y"), "partition key"),
        (
            ok().with_partition_key("k".repeat(MAX_NAME_LEN + 1)),
            "partition key",
        ),
        (ok().with_event_type("Hired\0"), "event type"),
        (ok().with_content_type("text/\0plain"), "content type"),
        (ok().with_header("x-ok", "a\0b"), "header"),
        (ok().with_header("x-split", "a\r\nInjected: yes"), "header"),
        (ok().with_header("x-bell", "a\u{7}"), "header"),
        (ok().with_header("bad name", "v"), "header"),
        (ok().with_header("bad:name", "v"), "header"),
        (
            ok().with_header("x-long", "v".repeat(MAX_HEADER_VALUE_LEN + 1)),
            "header",
        ),
        (
            NewMessage::bytes("t", vec![0u8; DEFAULT_MAX_PAYLOAD_BYTES + 1]),
            "payload",
        ),
    ]
}

/// Changes the change log must refuse, each with what the error must name.
fn bad_changes() -> Vec<(Change, &'static str)> {
    vec![
        (
            Change::insert("candidate", "4\u{0}2", &json!({})).unwrap(),
            "entity key",
        ),
        (
            Change::insert("cand\u{0}", "42", &json!({})).unwrap(),
            "entity type",
        ),
        (
            Change::insert("candidate", "", &json!({})).unwrap(),
            "entity key",
        ),
        (
            Change::insert("candidate", "42", &json!({"name": "A\u{0}da"})).unwrap(),
            "change data",
        ),
        (
            Change::insert("candidate", "42", &json!({"k\u{0}": 1})).unwrap(),
            "change data",
        ),
        (
            Change::update("candidate", "42", &json!({"a": 1}), &json!({"a": "\u{0}"}))
                .unwrap()
                .unwrap(),
            "change data",
        ),
        (
            Change::delete("candidate", "42")
                .with_before(&json!({"n": "x\u{0}"}))
                .unwrap(),
            "before",
        ),
    ]
}

fn assert_refused(what: &str, err: &Error, names: &str) {
    match err {
        Error::InvalidMessage(m) => assert!(m.contains(names), "{what}: {m:?} should name {names}"),
        Error::PayloadTooLarge { size, limit } => {
            assert_eq!(names, "payload", "{what}");
            assert!(size > limit, "{what}");
        }
        other => panic!("{what}: expected a refusal before any write, got {other:?}"),
    }
}

/// A business row, then every write API with every bad input, then a good
/// message, then commit: the business row and the good message are there,
/// nothing of the refused calls is.
pub async fn bad_input_never_costs_the_callers_transaction<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let mut tx = db.begin_hiring(1).await;

    for (message, names) in bad_messages() {
        let what = format!("enqueue of {:?}", message.topic());
        let err = outbox.enqueue(&mut tx, message.clone()).await.unwrap_err();
        assert_refused(&what, &err, names);
        let err = outbox
            .enqueue_batch(&mut tx, vec![numbered("t", 1), message])
            .await
            .unwrap_err();
        assert_refused(&format!("batch with {what}"), &err, names);
    }
    for (change, names) in bad_changes() {
        let what = format!("{change:?}");
        let err = outbox.log_change(&mut tx, &change).await.unwrap_err();
        assert_refused(&format!("log_change {what}"), &err, names);
        let err = outbox
            .record_change(&mut tx, "t", &change)
            .await
            .unwrap_err();
        assert_refused(&format!("record_change {what}"), &err, names);
    }

    // The transaction is still usable: the database saw none of the above.
    outbox.enqueue(&mut tx, keyed("t", "k", 1)).await.unwrap();
    let good = Change::insert("candidate", "1", &json!({"status": "hired"})).unwrap();
    outbox.record_change(&mut tx, "t", &good).await.unwrap();
    tx.commit().await.unwrap();

    assert_eq!(db.candidates().await, 1, "the business row committed");
    assert_eq!(
        outbox.pending().await,
        2,
        "only the good messages were written"
    );
    let changes = db
        .count(&format!(
            "SELECT count(*) FROM {}",
            B::table(B::DEFAULT_PREFIX, "changes")
        ))
        .await;
    assert_eq!(changes, 1, "only the good change was logged");
    db.close().await;
}

/// A negative limit on a listing is a typed error on every backend, not
/// "no limit" on one and a database error on another.
pub async fn negative_listing_limits_are_refused<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    for (what, err) in [
        ("dead_letters", outbox.dead_letters(-1).await.unwrap_err()),
        ("published", outbox.published(-5).await.unwrap_err()),
    ] {
        match err {
            Error::InvalidConfig { field, reason } => {
                assert_eq!(field, "limit", "{what}");
                assert!(reason.contains("negative"), "{what}: {reason}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    assert!(outbox.dead_letters(0).await.unwrap().is_empty());
    db.close().await;
}

/// A payload limit of the outbox's own is applied, and a bad limit is a
/// typed error at build time.
pub async fn the_payload_limit_is_the_outboxs_own<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let mut tx = db.begin().await;
    let big = NewMessage::bytes("t", vec![7u8; DEFAULT_MAX_PAYLOAD_BYTES]);
    outbox
        .enqueue(&mut tx, big)
        .await
        .expect("exactly at the limit");
    let over = NewMessage::bytes("t", vec![7u8; DEFAULT_MAX_PAYLOAD_BYTES + 1]);
    match outbox.enqueue(&mut tx, over).await {
        Err(Error::PayloadTooLarge { size, limit }) => {
            assert_eq!(
                (size, limit),
                (DEFAULT_MAX_PAYLOAD_BYTES + 1, DEFAULT_MAX_PAYLOAD_BYTES)
            );
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    tx.commit().await.unwrap();
    assert_eq!(outbox.pending().await, 1);

    let small = db.outbox_with_payload_limit(16).unwrap();
    let err = small
        .enqueue_alone(NewMessage::bytes("t", vec![0u8; 17]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::PayloadTooLarge {
                size: 17,
                limit: 16
            }
        ),
        "{err:?}"
    );
    small
        .enqueue_alone(NewMessage::bytes("t", vec![0u8; 16]))
        .await
        .unwrap();
    assert_eq!(outbox.pending().await, 2);
    for bad in [0, (1 << 30) + 1] {
        let Err(err) = db.outbox_with_payload_limit(bad) else {
            panic!("a payload limit of {bad} was accepted");
        };
        assert!(
            matches!(
                err,
                Error::InvalidConfig {
                    field: "max_payload_bytes",
                    ..
                }
            ),
            "{err:?}"
        );
    }
    db.close().await;
}

/// A stored message the relay cannot read whole (its headers were changed
/// by hand into something this crate never writes) is dead-lettered with
/// the reason instead of being published without them or failing every
/// claim; under the ordered policy it holds back its key, and other keys
/// flow.
pub async fn a_stored_message_that_cannot_be_read_is_dead_lettered<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let broken = outbox
        .enqueue_id(keyed("t", "k", 1).with_header("x-trace", "abc"))
        .await;
    let behind = outbox.enqueue_id(keyed("t", "k", 2)).await;
    let other = outbox.enqueue_id(keyed("t", "j", 1)).await;
    let messages = B::table(B::DEFAULT_PREFIX, "messages");
    db.execute(&format!(
        // The subquery through a derived table: MySQL refuses a subquery
        // on the table being updated (error 1093) unless it is materialized.
        "UPDATE {messages} SET headers = '[1, 2]' \
         WHERE seq = (SELECT s FROM (SELECT min(seq) AS s FROM {messages}) AS first)"
    ))
    .await;

    let publisher = outbox::InMemoryPublisher::new();
    let relay = outbox.fast_relay(publisher.clone()).spawn().unwrap();
    crate::support::wait_for("the unreadable message's dead letter", TIMEOUT, || async {
        !outbox.dead_letters(10).await.unwrap().is_empty()
    })
    .await;
    crate::support::eventually("the other key flows", || {
        publisher.messages().iter().any(|m| m.id() == other)
    })
    .await;
    relay.shutdown().await.unwrap();

    let dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id(), broken);
    assert!(
        dead[0].last_error.contains("headers"),
        "the dead letter says why: {}",
        dead[0].last_error
    );
    let sent: Vec<_> = publisher.messages().iter().map(|m| m.id()).collect();
    assert!(
        !sent.contains(&broken),
        "never published without its headers"
    );
    assert!(!sent.contains(&behind), "its key is held back behind it");
    assert_eq!(outbox.pending().await, 1);
    db.close().await;
}
