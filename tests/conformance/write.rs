//! The write side: what a producer's transaction puts in the outbox, and
//! what of it reaches the publisher.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use outbox::{Enqueued, Error, Event, InMemoryPublisher, MessageId, NewMessage, OutboxMessage};
use serde::Serialize;

use crate::backend::{Backend, TestOutbox};
use crate::messages::{keyed, n_of, numbered, CandidateHired};
use crate::support::{eventually, wait_for};

/// A rolled-back transaction leaves neither its business row nor any of
/// its messages; the committed one publishes its event once, intact.
pub async fn rollback_publishes_nothing<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let mut tx = db.begin_hiring(1).await;
    let rolled_back = outbox
        .publish_event(&mut tx, &CandidateHired { candidate_id: 1 })
        .await
        .unwrap();
    let r = outbox.enqueue(&mut tx, numbered("t", 1)).await.unwrap();
    assert!(matches!(r, Enqueued::Inserted(_)));
    let r = outbox
        .enqueue_batch(&mut tx, (2..5).map(|n| numbered("t", n)).collect())
        .await
        .unwrap();
    assert_eq!(r.inserted.len(), 3);
    tx.rollback().await.unwrap();
    assert_eq!(outbox.pending().await, 0);
    assert_eq!(db.candidates().await, 0);

    // Committed: the change and its event together.
    let mut tx = db.begin_hiring(2).await;
    let committed = outbox
        .publish_event(&mut tx, &CandidateHired { candidate_id: 2 })
        .await
        .unwrap();
    outbox.commit(tx).await.unwrap();
    assert_eq!(outbox.pending().await, 1);
    assert_eq!(db.candidates().await, 1);

    let publisher = InMemoryPublisher::new();
    let relay = outbox.fast_relay(publisher.clone()).spawn().unwrap();
    eventually("one message published", || publisher.len() == 1).await;
    wait_for("the outbox drained", Duration::from_secs(10), || async {
        outbox.pending().await == 0
    })
    .await;
    relay.shutdown().await.unwrap();
    let got = publisher.messages();
    assert_eq!(got.len(), 1, "published exactly once");
    let m = &got[0];
    assert_eq!(m.id(), committed.id());
    assert_ne!(m.id(), rolled_back.id());
    assert_eq!(m.topic(), "recruiting.candidates");
    assert_eq!(m.event_type(), "CandidateHired");
    assert_eq!(m.schema_version(), 3);
    assert_eq!(m.partition_key(), Some("candidate-2"));
    assert_eq!(m.attempt(), 1);
    assert_eq!(
        m.payload_json::<serde_json::Value>().unwrap(),
        serde_json::json!({"candidate_id": 2})
    );
    assert_eq!(outbox.pending().await, 0, "published rows are deleted");
    db.close().await;
}

/// 20 transactions of 5 messages over 7 keys: each published once, in
/// commit order per key, on its first attempt, with its headers.
pub async fn commit_publishes_once<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let publisher = InMemoryPublisher::new();
    let relay = outbox.relay(publisher.clone()).spawn().unwrap();

    let mut expected = Vec::new();
    for t in 0..20u64 {
        let mut tx = db.begin().await;
        for i in 0..5u64 {
            let n = t * 5 + i;
            let m = numbered("orders", n)
                .with_partition_key(format!("key-{}", n % 7))
                .with_header("trace", format!("t{n}"));
            expected.push(m.id());
            let r = outbox.enqueue(&mut tx, m).await.unwrap();
            assert!(matches!(r, Enqueued::Inserted(_)));
        }
        outbox.commit(tx).await.unwrap();
    }

    wait_for(
        "all messages published",
        Duration::from_secs(10),
        || async { publisher.len() >= expected.len() && outbox.pending().await == 0 },
    )
    .await;
    relay.shutdown().await.unwrap();

    let published = publisher.messages();
    assert_eq!(published.len(), expected.len(), "each message exactly once");
    let ids: HashSet<MessageId> = published.iter().map(OutboxMessage::id).collect();
    assert_eq!(ids, expected.iter().copied().collect::<HashSet<_>>());
    let mut last: HashMap<String, i64> = HashMap::new();
    for m in &published {
        let key = m.partition_key().unwrap().to_owned();
        if let Some(prev) = last.insert(key, m.position()) {
            assert!(prev < m.position(), "key order broken");
        }
        assert_eq!(m.attempt(), 1);
        assert_eq!(m.topic(), "orders");
        assert_eq!(m.headers()["trace"], format!("t{}", n_of(m)));
    }
    assert_eq!(outbox.pending().await, 0);
    db.close().await;
}

/// Enqueueing an id twice is reported, never duplicated, and never aborts
/// the caller's transaction; within a batch and across transactions too.
pub async fn duplicate_id_is_reported_and_the_transaction_stays_usable<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let id = MessageId::new();
    let mut tx = db.begin().await;
    let first = outbox
        .enqueue(&mut tx, keyed("t", "k", 1).with_id(id))
        .await
        .unwrap();
    assert_eq!(first, Enqueued::Inserted(id));
    let again = outbox
        .enqueue(&mut tx, keyed("t", "k", 2).with_id(id))
        .await
        .unwrap();
    assert_eq!(again, Enqueued::Duplicate(id));
    // The transaction is not aborted by the duplicate.
    db.insert_candidate(&mut tx, 7, "applied").await.unwrap();
    let other = MessageId::new();
    let batch = outbox
        .enqueue_batch(
            &mut tx,
            vec![
                keyed("t", "k", 3).with_id(other),
                keyed("t", "k", 4).with_id(id),
                keyed("t", "k", 5).with_id(other),
            ],
        )
        .await
        .unwrap();
    assert_eq!(batch.inserted, vec![other]);
    assert_eq!(batch.duplicates, vec![id, other]);
    tx.commit().await.unwrap();
    assert_eq!(outbox.pending().await, 2);
    assert_eq!(db.candidates().await, 1);

    // A producer retrying after a lost commit acknowledgement, from
    // another transaction, is told the same.
    let again = outbox.enqueue_alone(keyed("t", "k", 9).with_id(id)).await;
    assert!(again.unwrap().is_duplicate());
    assert_eq!(outbox.pending().await, 2);

    let (a, b) = (MessageId::new(), MessageId::new());
    let batch = vec![
        numbered("t", 3).with_id(a),
        numbered("t", 4).with_id(id), // already in the outbox
        numbered("t", 5).with_id(b),
        numbered("t", 6).with_id(a), // repeated within the batch
    ];
    let r = outbox.enqueue_batch_alone(batch).await.unwrap();
    assert_eq!(r.inserted, vec![a, b]);
    assert_eq!(r.duplicates, vec![id, a]);
    assert_eq!(outbox.pending().await, 4);

    // Nothing at all inserted.
    let r = outbox
        .enqueue_batch_alone(vec![numbered("t", 7).with_id(b)])
        .await
        .unwrap();
    assert!(r.inserted.is_empty());
    assert_eq!(r.duplicates, vec![b]);
    let r = outbox.enqueue_batch_alone(Vec::new()).await.unwrap();
    assert!(r.inserted.is_empty() && r.duplicates.is_empty());
    assert_eq!(outbox.pending().await, 4);
    db.close().await;
}

/// A payload that cannot serialize and a message the database would refuse
/// are typed errors raised before anything is sent: the caller's
/// transaction lives on, and no part of a refused batch is written.
pub async fn payload_that_cannot_serialize_is_an_error_before_any_write<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    // JSON object keys must be strings: a map keyed by tuples cannot encode.
    let mut bad = HashMap::new();
    bad.insert((1, 2), "x");
    let err = NewMessage::json("t", &bad).unwrap_err();
    assert!(matches!(err, Error::Serialize(_)), "{err:?}");

    // Outside a transaction of the caller's: nothing written.
    let invalid = NewMessage::bytes("", b"x".to_vec());
    assert!(matches!(
        outbox.enqueue_alone(invalid.clone()).await,
        Err(Error::InvalidMessage(_))
    ));
    assert!(matches!(
        outbox
            .enqueue_batch_alone(vec![numbered("t", 1), invalid.clone()])
            .await,
        Err(Error::InvalidMessage(_))
    ));
    assert_eq!(outbox.pending().await, 0);

    #[derive(Serialize)]
    struct Bad {
        map: HashMap<(i32, i32), i32>,
    }
    impl Event for Bad {
        const EVENT_TYPE: &'static str = "Bad";
        fn topic(&self) -> std::borrow::Cow<'_, str> {
            "t".into()
        }
    }
    let mut map = HashMap::new();
    map.insert((1, 1), 1);
    let mut tx = db.begin_hiring(1).await;
    let err = outbox
        .publish_event(&mut tx, &Bad { map })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Serialize(_)), "{err:?}");
    // Invalid messages are typed errors too, and the transaction lives on.
    let err = outbox.enqueue(&mut tx, invalid.clone()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidMessage(_)), "{err:?}");
    let err = outbox
        .enqueue(&mut tx, keyed("t", "k\0", 1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("partition key"), "{err}");
    let err = outbox
        .enqueue_batch(&mut tx, vec![numbered("t", 2), invalid])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidMessage(_)), "{err:?}");
    outbox.enqueue(&mut tx, keyed("t", "k", 1)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(outbox.pending().await, 1);
    assert_eq!(db.candidates().await, 1);
    db.close().await;
}

/// Raw bytes, content type and headers arrive as written; a batch of one
/// key is published in its order.
pub async fn headers_raw_bytes_and_batch_order_survive_the_trip<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let mut tx = db.begin().await;
    let raw = NewMessage::bytes("files", vec![0u8, 159, 146, 150])
        .with_header("traceparent", "00-abc-def-01")
        .with_content_type("application/x-thing");
    outbox.enqueue(&mut tx, raw.clone()).await.unwrap();
    let batch: Vec<_> = (0..300).map(|n| keyed("t", "k", n)).collect();
    let ids: Vec<_> = batch.iter().map(|m| m.id()).collect();
    let r = outbox.enqueue_batch(&mut tx, batch).await.unwrap();
    assert_eq!(r.inserted, ids);
    assert!(r.duplicates.is_empty());
    outbox.commit(tx).await.unwrap();

    let publisher = InMemoryPublisher::new();
    let relay = outbox.fast_relay(publisher.clone()).spawn().unwrap();
    eventually("all published", || publisher.len() == 301).await;
    relay.shutdown().await.unwrap();
    let got = publisher.messages();
    let first = got.iter().find(|m| m.id() == raw.id()).unwrap();
    assert_eq!(first.payload(), &[0u8, 159, 146, 150]);
    assert_eq!(first.content_type(), "application/x-thing");
    assert_eq!(
        first.headers().get("traceparent").map(String::as_str),
        Some("00-abc-def-01")
    );
    let order: Vec<_> = got
        .iter()
        .filter(|m| m.topic() == "t")
        .map(|m| m.id())
        .collect();
    assert_eq!(order, ids, "one key: published in enqueue order");
    db.close().await;
}

/// 5,000 messages in one `enqueue_batch` (on SQLite, more rows than one
/// statement takes, so several statements): inserted and published once
/// each, in enqueue order.
pub async fn large_batch_is_published_once_in_order<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let messages: Vec<NewMessage> = (0..5000).map(|n| numbered("bulk", n)).collect();
    let order: Vec<MessageId> = messages.iter().map(NewMessage::id).collect();

    let mut tx = db.begin().await;
    let r = outbox.enqueue_batch(&mut tx, messages).await.unwrap();
    outbox.commit(tx).await.unwrap();
    assert_eq!(r.inserted, order);
    assert!(r.duplicates.is_empty());
    assert_eq!(outbox.pending().await, 5000);

    let publisher = InMemoryPublisher::new();
    let relay = outbox.relay(publisher.clone()).spawn().unwrap();
    wait_for(
        "5000 messages published",
        Duration::from_secs(20),
        || async { publisher.len() >= 5000 && outbox.pending().await == 0 },
    )
    .await;
    relay.shutdown().await.unwrap();

    let published = publisher.messages();
    let ids: Vec<MessageId> = published.iter().map(OutboxMessage::id).collect();
    assert_eq!(ids, order, "published once each, in enqueue order");
    assert!(published
        .windows(2)
        .all(|w| w[0].position() < w[1].position()));
    assert!(published
        .iter()
        .enumerate()
        .all(|(i, m)| n_of(m) == i as u64));
    db.close().await;
}
