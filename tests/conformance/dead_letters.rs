//! Dead letters and key blocks: a message id enqueued again after its first
//! message was dead-lettered, replays that never abort, blocks whose message
//! is gone, the operator's view of blocked keys, and dead letters filtered,
//! paged and replayed by filter, and the messages parked behind blocked
//! keys.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::{
    BlockedKey, BlockingMessage, DeadLetter, DeadLetterFilter, Error, InMemoryPublisher, MessageId,
    PublishError, Publisher, ReplayReport, RetryPolicy,
};

use crate::backend::{Backend, TestOutbox};
use crate::messages::{judged, keyed, n_of, numbered};
use crate::support::wait_for;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Long enough for a polling relay to have claimed anything it could.
const SETTLE: Duration = Duration::from_millis(300);

/// Rejects for good every message whose id is in `rejected`; forwards the
/// rest to `published`.
fn rejecting(
    rejected: Arc<Mutex<HashSet<MessageId>>>,
    published: InMemoryPublisher,
) -> impl Publisher {
    judged(&published, move |m| {
        rejected
            .lock()
            .unwrap()
            .contains(&m.id())
            .then(|| PublishError::permanent("rejected by the broker"))
    })
}

/// Replays the dead letters that match `filter`.
async fn replay<O: TestOutbox>(outbox: &O, filter: DeadLetterFilter) -> ReplayReport {
    outbox.replay_dead_letters(&filter).await.expect("replay")
}

fn ids(published: &InMemoryPublisher) -> Vec<MessageId> {
    published.messages().iter().map(|m| m.id()).collect()
}

/// `field` of each key `outbox` holds blocked.
async fn blocks<T>(outbox: &impl TestOutbox, field: impl FnMut(BlockedKey) -> T) -> Vec<T> {
    outbox
        .blocked_keys()
        .await
        .unwrap()
        .into_iter()
        .map(field)
        .collect()
}

/// (key, position) of each dead letter.
fn keys_and_positions(dead: &[DeadLetter]) -> Vec<(String, i64)> {
    dead.iter()
        .map(|d| {
            (
                d.message.partition_key().unwrap_or("").to_owned(),
                d.message.position(),
            )
        })
        .collect()
}

/// One message id, enqueued again each time its message was dead-lettered,
/// dead-lettered under three keys: three dead letters, none overwritten,
/// each blocking its own key. A replay of them all sends back the oldest
/// and leaves (and reports) the two whose id is now pending, without an
/// error; `replay_dead_letter` says the id is pending; discarding and
/// unblocking release the other two keys; every key moves again, and the
/// last dead letter goes back once its id is free.
pub async fn a_reenqueued_id_keeps_every_dead_letter_and_every_key_moves_again<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let x = MessageId::new();
    let published = InMemoryPublisher::new();
    let rejected = Arc::new(Mutex::new(HashSet::from([x])));
    let relay = outbox
        .fast_relay(rejecting(rejected.clone(), published.clone()))
        .spawn()
        .unwrap();
    let mut behind = Vec::new();
    for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
        let again = outbox
            .enqueue_alone(keyed("t", key, 1).with_id(x))
            .await
            .unwrap();
        assert!(
            !again.is_duplicate(),
            "{x} is not pending when enqueued under {key}"
        );
        behind.push(outbox.enqueue_id(keyed("t", key, 2)).await);
        outbox.wake();
        wait_for(&format!("the dead letter under {key}"), TIMEOUT, || async {
            outbox.dead_letters(10).await.unwrap().len() == i + 1
        })
        .await;
    }
    tokio::time::sleep(SETTLE).await;
    relay.shutdown().await.unwrap();
    assert!(
        published.is_empty(),
        "each key waits behind its dead letter: {:?}",
        ids(&published)
    );

    let dead = outbox.dead_letters(10).await.unwrap();
    assert!(dead.iter().all(|d| d.id() == x));
    let dead_at = keys_and_positions(&dead);
    assert_eq!(
        dead_at.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"],
        "no dead letter overwritten: {dead_at:?}"
    );
    let blocked = blocks(&outbox, |b| (b.partition_key, b.position, b.message)).await;
    let expected: Vec<(String, i64, BlockingMessage)> = dead_at
        .iter()
        .map(|(k, p)| (k.clone(), *p, BlockingMessage::Dead))
        .collect();
    assert_eq!(blocked, expected, "each block names its own dead letter");

    // The relay is stopped, so what goes back stays pending.
    let report = replay(&outbox, DeadLetterFilter::new()).await;
    assert_eq!(report.replayed, 1, "one message per id can be pending");
    let left: Vec<(MessageId, i64)> = report
        .not_replayed
        .iter()
        .map(|n| (n.id, n.position))
        .collect();
    assert_eq!(left, vec![(x, dead_at[1].1), (x, dead_at[2].1)]);
    assert_eq!(
        outbox.replay_all_dead_letters().await.unwrap(),
        0,
        "a pending id leaves its dead letters in place, without an error"
    );
    assert!(matches!(
        outbox.replay_dead_letter(x).await,
        Err(Error::DeadLetterIdPending(id)) if id == x
    ));
    assert_eq!(
        keys_and_positions(&outbox.dead_letters(10).await.unwrap()),
        dead_at[1..]
    );
    let still = blocks(&outbox, |b| b.partition_key).await;
    assert_eq!(still, ["b", "c"], "the replay lifted a's block only");

    // Discard takes the oldest dead letter of the id: b's.
    outbox.discard_dead_letter(x).await.unwrap();
    assert_eq!(
        keys_and_positions(&outbox.dead_letters(10).await.unwrap()),
        dead_at[2..]
    );
    // Unblocking c leaves its dead letter where it is.
    assert!(outbox.unblock("c").await.unwrap());
    assert!(!outbox.unblock("c").await.unwrap(), "nothing left to lift");
    assert!(outbox.blocked_keys().await.unwrap().is_empty());
    assert_eq!(
        keys_and_positions(&outbox.dead_letters(10).await.unwrap()),
        dead_at[2..]
    );

    rejected.lock().unwrap().clear();
    let relay = outbox.fast_relay(published.clone()).spawn().unwrap();
    wait_for("every key to move again", TIMEOUT, || async {
        outbox.pending().await == 0
    })
    .await;
    let got = published.messages();
    let key_a: Vec<MessageId> = got
        .iter()
        .filter(|m| m.partition_key() == Some("a"))
        .map(|m| m.id())
        .collect();
    assert_eq!(key_a, vec![x, behind[0]], "the replay keeps a's order");
    for (key, id) in ["b", "c"].into_iter().zip(&behind[1..]) {
        let on_key: Vec<MessageId> = got
            .iter()
            .filter(|m| m.partition_key() == Some(key))
            .map(|m| m.id())
            .collect();
        assert_eq!(on_key, vec![*id], "{key} moved past its released block");
    }

    // The id is free again: c's dead letter goes back too.
    assert_eq!(outbox.replay_all_dead_letters().await.unwrap(), 1);
    wait_for("c's dead letter published", TIMEOUT, || async {
        outbox.pending().await == 0
            && published
                .messages()
                .iter()
                .any(|m| m.id() == x && m.partition_key() == Some("c"))
    })
    .await;
    relay.shutdown().await.unwrap();
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
    assert!(outbox.blocked_keys().await.unwrap().is_empty());
    assert_eq!(published.len(), 5, "{:?}", ids(&published));
    db.close().await;
}

/// A block holds only while the message it names exists: a block left with
/// no message at its position, or one whose dead letter was deleted outside
/// the crate, is shown as gone and swept away by the relay, and its key
/// moves; a new failure of the key then blocks it again at the new
/// position.
pub async fn a_block_whose_message_is_gone_no_longer_holds_its_key<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    // Position 0 comes before every message and holds none.
    db.insert_block("orphan", 0).await;
    let blocked = outbox.blocked_keys().await.unwrap();
    assert_eq!(blocked.len(), 1);
    assert_eq!(
        (blocked[0].partition_key.as_str(), blocked[0].position),
        ("orphan", 0)
    );
    assert_eq!(blocked[0].message, BlockingMessage::Gone);

    let first = keyed("t", "k", 1);
    let again = keyed("t", "k", 3);
    let (first_id, again_id) = (first.id(), again.id());
    let rejected = Arc::new(Mutex::new(HashSet::from([first_id, again_id])));
    let published = InMemoryPublisher::new();
    let relay = outbox
        .fast_relay(rejecting(rejected.clone(), published.clone()))
        .spawn()
        .unwrap();
    let orphan = outbox.enqueue_id(keyed("t", "orphan", 1)).await;
    let first_at = outbox.enqueue_alone(first).await.unwrap();
    let second = outbox.enqueue_id(keyed("t", "k", 2)).await;
    outbox.wake();
    wait_for("the orphaned block's key to move", TIMEOUT, || async {
        published.messages().iter().any(|m| m.id() == orphan)
    })
    .await;
    outbox.dead_letters_when(1).await;
    tokio::time::sleep(SETTLE).await;
    assert!(
        !ids(&published).contains(&second),
        "k waits behind its dead letter"
    );
    let dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(dead[0].id(), first_at.id());
    let position = dead[0].message.position();
    let k_block = |blocked: &[outbox::BlockedKey]| {
        blocked
            .iter()
            .find(|b| b.partition_key == "k")
            .map(|b| (b.position, b.message))
    };
    assert_eq!(
        k_block(&outbox.blocked_keys().await.unwrap()),
        Some((position, BlockingMessage::Dead))
    );

    // An operator deletes the dead letter by hand, leaving its block, while
    // no relay runs (a running relay would sweep the block at once).
    relay.shutdown().await.unwrap();
    let dead_letters = B::table(B::DEFAULT_PREFIX, "dead_letters");
    db.execute(&format!(
        "DELETE FROM {dead_letters} WHERE seq = {position}"
    ))
    .await;
    assert_eq!(
        k_block(&outbox.blocked_keys().await.unwrap()),
        Some((position, BlockingMessage::Gone))
    );
    let relay = outbox
        .fast_relay(rejecting(rejected, published.clone()))
        .spawn()
        .unwrap();
    wait_for("k to move past the gone block", TIMEOUT, || async {
        ids(&published).contains(&second)
    })
    .await;
    assert_eq!(k_block(&outbox.blocked_keys().await.unwrap()), None);
    assert!(outbox
        .blocked_keys()
        .await
        .unwrap()
        .iter()
        .all(|b| b.message != BlockingMessage::Gone));

    // The key fails again: the new failure blocks it, the gone block does
    // not stand in for it.
    let again_at = outbox.enqueue_alone(again).await.unwrap();
    assert_eq!(again_at.id(), again_id);
    let fourth = outbox.enqueue_id(keyed("t", "k", 4)).await;
    outbox.wake();
    wait_for("the second dead letter", TIMEOUT, || async {
        outbox
            .dead_letters(10)
            .await
            .unwrap()
            .iter()
            .any(|d| d.id() == again_id)
    })
    .await;
    tokio::time::sleep(SETTLE).await;
    relay.shutdown().await.unwrap();
    assert!(
        !ids(&published).contains(&fourth),
        "k waits behind its new dead letter"
    );
    let new_position = outbox.dead_letters(10).await.unwrap()[0].message.position();
    assert!(new_position > position);
    assert_eq!(
        k_block(&outbox.blocked_keys().await.unwrap()),
        Some((new_position, BlockingMessage::Dead))
    );
    db.close().await;
}

/// Six dead letters over two topics: filters by topic, key, error text and
/// time select the right ones (alone and together), keyset pages of two
/// walk them all once in position order, `dead_letters(limit)` still
/// works, and a filtered replay sends back only what matches.
pub async fn dead_letters_filter_page_and_replay_by_filter<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let fail = Arc::new(AtomicBool::new(true));
    let published = InMemoryPublisher::new();
    let publisher = {
        let fail = fail.clone();
        judged(&published, move |m| {
            fail.load(Ordering::SeqCst)
                .then(|| PublishError::permanent(format!("rejected {} #{}", m.topic(), n_of(m))))
        })
    };
    let relay = outbox.fast_relay(publisher).spawn().unwrap();
    // Distinct keys: a dead letter blocks its key, and each must fail on
    // its own. Two batches, dead-lettered at two moments.
    outbox
        .enqueue_batch_alone(vec![
            keyed("orders", "k1", 1),
            keyed("orders", "k2", 2),
            numbered("orders", 3),
        ])
        .await
        .unwrap();
    outbox.wake();
    outbox.dead_letters_when(3).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    outbox
        .enqueue_batch_alone(vec![
            keyed("mail", "m1", 4),
            numbered("mail", 5),
            numbered("mail", 6),
        ])
        .await
        .unwrap();
    outbox.wake();
    outbox.dead_letters_when(6).await;

    let ns = |dead: &[DeadLetter]| dead.iter().map(|d| n_of(&d.message)).collect::<Vec<_>>();
    let matching = |filter: DeadLetterFilter| {
        let outbox = outbox.clone();
        async move { outbox.dead_letters_matching(&filter).await.unwrap() }
    };
    let all = matching(DeadLetterFilter::new()).await;
    assert_eq!(ns(&all), [1, 2, 3, 4, 5, 6]);
    assert!(all
        .windows(2)
        .all(|w| w[0].message.position() < w[1].message.position()));
    assert_eq!(
        ns(&matching(DeadLetterFilter::new().topic("orders")).await),
        [1, 2, 3]
    );
    assert_eq!(
        ns(&matching(DeadLetterFilter::new().partition_key("k2")).await),
        [2]
    );
    assert_eq!(
        ns(&matching(DeadLetterFilter::new().error_contains("mail #5")).await),
        [5]
    );
    assert!(matching(DeadLetterFilter::new().error_contains("MAIL #5"))
        .await
        .is_empty());
    assert_eq!(
        ns(&matching(DeadLetterFilter::new().topic("mail").error_contains("#6")).await),
        [6]
    );
    assert_eq!(
        ns(&matching(DeadLetterFilter::new().id(all[3].id())).await),
        [4]
    );
    assert!(
        matching(DeadLetterFilter::new().topic("orders").partition_key("m1"))
            .await
            .is_empty()
    );

    // Time: the second batch died after the first.
    let cut = all[3].dead_at;
    assert!(all[2].dead_at < cut);
    assert_eq!(
        ns(&matching(DeadLetterFilter::new().dead_since(cut)).await),
        [4, 5, 6]
    );
    assert_eq!(
        ns(&matching(DeadLetterFilter::new().dead_before(cut)).await),
        [1, 2, 3]
    );
    assert!(
        matching(DeadLetterFilter::new().dead_before(all[0].dead_at))
            .await
            .is_empty()
    );
    assert_eq!(
        ns(&matching(
            DeadLetterFilter::new()
                .dead_since(all[0].dead_at)
                .dead_before(cut)
                .partition_key("k2")
        )
        .await),
        [2]
    );

    // Keyset pages of two.
    let mut pages = Vec::new();
    let mut page_filter = DeadLetterFilter::new().limit(2);
    loop {
        let page = matching(page_filter.clone()).await;
        let Some(last) = page.last() else { break };
        page_filter = page_filter.after_position(last.message.position());
        pages.push(ns(&page));
    }
    assert_eq!(pages, [vec![1, 2], vec![3, 4], vec![5, 6]]);
    assert_eq!(ns(&outbox.dead_letters(1).await.unwrap()), [1]);

    // A filtered replay sends back only what matches.
    fail.store(false, Ordering::SeqCst);
    let report = replay(&outbox, DeadLetterFilter::new().topic("orders")).await;
    assert_eq!(report.replayed, 3);
    assert!(report.not_replayed.is_empty());
    assert_eq!(ns(&outbox.dead_letters(10).await.unwrap()), [4, 5, 6]);
    let report = replay(
        &outbox,
        DeadLetterFilter::new().topic("mail").error_contains("#5"),
    )
    .await;
    assert_eq!(report.replayed, 1);
    let nothing = replay(&outbox, DeadLetterFilter::new().topic("no such topic")).await;
    assert_eq!(nothing.replayed, 0);
    assert!(nothing.not_replayed.is_empty());
    wait_for("the replayed messages", TIMEOUT, || async {
        outbox.pending().await == 0 && published.len() == 4
    })
    .await;
    relay.shutdown().await.unwrap();
    let mut sent: Vec<u64> = published.messages().iter().map(n_of).collect();
    sent.sort_unstable();
    assert_eq!(sent, [1, 2, 3, 5]);
    assert_eq!(ns(&outbox.dead_letters(10).await.unwrap()), [4, 6]);
    db.close().await;
}

/// The messages of `key` that `published` received, in order.
fn published_on(published: &InMemoryPublisher, key: &str) -> Vec<MessageId> {
    published
        .messages()
        .iter()
        .filter(|m| m.partition_key() == Some(key))
        .map(|m| m.id())
        .collect()
}

/// Messages held behind a blocked key leave the claims' path (they are
/// parked) a moment after the block, while other keys keep moving; every
/// way a block lifts sends them on, in their order: a head that goes
/// through after retrying, a replayed dead letter, a discarded one, an
/// operator's unblock. Parking is bookkeeping only: nothing is published
/// out of order before, during or after it.
pub async fn messages_behind_a_blocked_key_are_parked_and_move_again_in_order<B: Backend>() {
    const BEHIND: usize = 5;
    let db = B::fresh().await;
    let outbox = db.outbox();
    let messages = B::table(B::DEFAULT_PREFIX, "messages");
    let parked = |key: &str| {
        format!("SELECT count(*) FROM {messages} WHERE parked = true AND partition_key = '{key}'")
    };
    let published = InMemoryPublisher::new();
    let rejected = Arc::new(Mutex::new(HashSet::new()));
    let down = Arc::new(AtomicBool::new(true));
    let retrying = Arc::new(Mutex::new(None::<MessageId>));
    let publisher = {
        let (rejected, down, retrying) = (rejected.clone(), down.clone(), retrying.clone());
        judged(&published, move |m| {
            if rejected.lock().unwrap().contains(&m.id()) {
                return Some(PublishError::permanent("rejected by the broker"));
            }
            let is_retrying = *retrying.lock().unwrap() == Some(m.id());
            (is_retrying && down.load(Ordering::SeqCst))
                .then(|| PublishError::transient("the broker is away"))
        })
    };
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(50))
        .max_delay(Duration::from_millis(100))
        .max_attempts(10_000);

    // Four keys, each a head that fails and messages behind it; r's head
    // fails for as long as the broker is away, the others' for good.
    let mut heads = Vec::new();
    let mut expected = Vec::new();
    for key in ["r", "a", "d", "u"] {
        let head = MessageId::new();
        if key == "r" {
            *retrying.lock().unwrap() = Some(head);
        } else {
            rejected.lock().unwrap().insert(head);
        }
        outbox
            .enqueue_alone(keyed("t", key, 0).with_id(head))
            .await
            .unwrap();
        let mut order = vec![head];
        for n in 1..=BEHIND {
            order.push(outbox.enqueue_id(keyed("t", key, n as u64)).await);
        }
        heads.push(head);
        expected.push((key, order));
    }
    let relay = outbox.fast_relay(publisher).retry(retry).spawn().unwrap();
    outbox.dead_letters_when(3).await;
    for key in ["r", "a", "d", "u"] {
        wait_for(
            &format!("the messages behind {key} parked"),
            TIMEOUT,
            || async { db.count(&parked(key)).await == BEHIND as i64 },
        )
        .await;
    }
    // Other keys move meanwhile.
    let free = outbox.enqueue_id(keyed("t", "free", 1)).await;
    outbox.wake();
    wait_for("a free key published", TIMEOUT, || async {
        published_on(&published, "free") == [free]
    })
    .await;
    for (key, _) in &expected {
        let on_key = published_on(&published, key);
        assert!(on_key.is_empty(), "{key} moved past its block: {on_key:?}");
    }

    // The broker is back: r's head goes through, and its messages follow.
    down.store(false, Ordering::SeqCst);
    // The dead letters go: a's replayed, d's discarded, u's left in place
    // and its key unblocked.
    rejected.lock().unwrap().clear();
    outbox.replay_dead_letter(heads[1]).await.unwrap();
    outbox.discard_dead_letter(heads[2]).await.unwrap();
    assert!(outbox.unblock("u").await.unwrap());
    outbox.wake();
    for (key, order) in &expected {
        let want: Vec<MessageId> = match *key {
            // The discarded head and the one left dead are not published.
            "d" | "u" => order[1..].to_vec(),
            _ => order.clone(),
        };
        wait_for(&format!("{key} moving again"), TIMEOUT, || async {
            published_on(&published, key).len() >= want.len()
        })
        .await;
        assert_eq!(published_on(&published, key), want, "{key} in order");
        assert_eq!(db.count(&parked(key)).await, 0, "{key} unparked");
    }
    relay.shutdown().await.unwrap();
    assert_eq!(outbox.pending().await, 0);
}

/// A key blocked twice stays blocked until each block is dealt with: an
/// older dead letter replayed while a newer one blocks its key fails again
/// (blocking the key at its own, earlier position), then goes through,
/// which lifts its own block only; the newer dead letter still holds the
/// rest of the key until it is replayed in turn.
pub async fn a_replayed_older_message_lifts_only_its_own_block<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let published = InMemoryPublisher::new();
    let rejected = Arc::new(Mutex::new(HashSet::new()));
    let flaky = Arc::new(Mutex::new(HashSet::new()));
    let publisher = {
        let (rejected, flaky) = (rejected.clone(), flaky.clone());
        judged(&published, move |m| {
            if rejected.lock().unwrap().contains(&m.id()) {
                return Some(PublishError::permanent("rejected by the broker"));
            }
            // A flaky message fails its next attempt, once.
            flaky
                .lock()
                .unwrap()
                .remove(&m.id())
                .then(|| PublishError::transient("the broker is away"))
        })
    };
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(50));
    let relay = outbox.fast_relay(publisher).retry(retry).spawn().unwrap();
    let enqueue = |n: u64, reject: bool| {
        let (outbox, rejected) = (&outbox, &rejected);
        async move {
            let m = keyed("t", "k", n);
            if reject {
                rejected.lock().unwrap().insert(m.id());
            }
            let id = outbox.enqueue_id(m).await;
            outbox.wake();
            id
        }
    };
    let older = enqueue(1, true).await;
    outbox.dead_letters_when(1).await;
    // The operator lets the key move on past the first dead letter.
    assert!(outbox.unblock("k").await.unwrap());
    let second = enqueue(2, false).await;
    let newer = enqueue(3, true).await;
    outbox.dead_letters_when(2).await;
    let last = enqueue(4, false).await;
    // The older one goes back, fails once more, then goes through.
    rejected.lock().unwrap().remove(&older);
    flaky.lock().unwrap().insert(older);
    outbox.replay_dead_letter(older).await.unwrap();
    outbox.wake();
    wait_for("the older message published", TIMEOUT, || async {
        published_on(&published, "k").contains(&older)
    })
    .await;
    // Its acknowledgement lifts the block its failure put on the key; only
    // the last message, behind the newer dead letter, stays pending.
    wait_for("the older message acknowledged", TIMEOUT, || async {
        outbox.pending().await == 1
    })
    .await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        published_on(&published, "k"),
        [second, older],
        "the newer dead letter still holds the key"
    );
    let blocked = blocks(&outbox, |b| b.position).await;
    let newer_position = outbox.dead_letters(10).await.unwrap()[0].message.position();
    assert_eq!(blocked, [newer_position]);

    rejected.lock().unwrap().clear();
    outbox.replay_dead_letter(newer).await.unwrap();
    outbox.wake();
    wait_for("the key drained", TIMEOUT, || async {
        published_on(&published, "k").len() == 4
    })
    .await;
    relay.shutdown().await.unwrap();
    assert_eq!(published_on(&published, "k"), [second, older, newer, last]);
}
