//! The metrics a relay and the export record, read back from a recorder
//! installed for this test binary alone: per-topic gauges (a topic that
//! empties reads 0), claim, publish and acknowledgement durations, export
//! lag, inbox lag, and the `outbox` label of a relay group's members.

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::CompositeKey;
use outbox::change::Change;
use outbox::sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use outbox::{
    FnPublisher, NewMessage, OutboxMessage, PublishError, Publisher, Relay, SqliteInbox,
    SqliteOutbox,
};

/// A metric read back: name, labels, value.
type Metric = (String, Vec<(String, String)>, DebugValue);

/// Every metric of the last snapshot.
fn read(s: &Snapshotter) -> Vec<Metric> {
    s.snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, _, _, v): (CompositeKey, _, _, DebugValue)| {
            let key = k.key();
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            (key.name().to_owned(), labels, v)
        })
        .collect()
}

fn gauge(all: &[Metric], name: &str, label: (&str, &str)) -> Option<f64> {
    all.iter().find_map(|(n, labels, v)| match v {
        DebugValue::Gauge(g)
            if n == name && labels.iter().any(|(k, l)| k == label.0 && l == label.1) =>
        {
            Some(g.into_inner())
        }
        _ => None,
    })
}

/// A gauge of one outbox (and topic), by its labels.
fn tenant_gauge(all: &[Metric], name: &str, outbox: &str, topic: Option<&str>) -> Option<f64> {
    all.iter().find_map(|(n, labels, v)| {
        let topic_matches = labels
            .iter()
            .find(|(k, _)| k == "topic")
            .map(|(_, t)| t.as_str())
            == topic;
        match v {
            DebugValue::Gauge(g)
                if n == name
                    && labels.contains(&("outbox".into(), outbox.into()))
                    && topic_matches =>
            {
                Some(g.into_inner())
            }
            _ => None,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_and_exports_record_their_gauges_and_durations() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let dir =
        std::env::temp_dir().join(format!("outbox-metrics-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let options = SqliteConnectOptions::new()
        .filename(dir.join("app.db"))
        .create_if_missing(true);
    let pool = SqlitePoolOptions::new()
        .connect_with(options)
        .await
        .unwrap();
    let outbox = SqliteOutbox::new(pool.clone());
    outbox.migrate().await.unwrap();

    // Two orders go through; the mail waits an hour for its retry.
    let mut tx = pool.begin().await.unwrap();
    for (topic, n) in [("orders", 1), ("orders", 2), ("mail", 3)] {
        let m = NewMessage::json(topic, &serde_json::json!({ "n": n })).unwrap();
        outbox.enqueue(&mut *tx, m).await.unwrap();
    }
    for key in ["1", "2", "3"] {
        let c = Change::insert("candidate", key, &serde_json::json!({"status": "new"})).unwrap();
        outbox.log_change(&mut *tx, &c).await.unwrap();
    }
    tx.commit().await.unwrap();
    let delivered = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = delivered.clone();
    // Orders wait, inside the publisher call, until a stats pass has gauged
    // them pending: the gauges move while a call hangs, and the test sees
    // the gauge go from 2 to 0 rather than never set.
    let (open_gate, gate) = tokio::sync::watch::channel(false);
    let publisher = FnPublisher::new(move |m: OutboxMessage| {
        let kept = kept.clone();
        let mut gate = gate.clone();
        async move {
            if m.topic() == "mail" {
                return Err(PublishError::transient("mail server down")
                    .with_retry_after(Duration::from_secs(3600)));
            }
            gate.wait_for(|open| *open)
                .await
                .expect("the test holds the gate");
            kept.lock().unwrap().push(m);
            Ok(())
        }
    });
    let relay = Relay::builder(outbox.clone(), publisher)
        .poll_interval(Duration::from_millis(50))
        .stats_interval(Duration::from_millis(100))
        .spawn()
        .unwrap();

    // Gauges are read as they are last set: wait for orders to read 2 while
    // held back, then 0 (it emptied) and mail 1.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let orders = gauge(
            &read(&snapshotter),
            "outbox_topic_pending",
            ("topic", "orders"),
        );
        if orders == Some(2.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "orders never gauged pending: {orders:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    open_gate.send(true).unwrap();
    let mut seen_histograms = std::collections::HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let all = read(&snapshotter);
        for (name, _, v) in &all {
            if let DebugValue::Histogram(h) = v {
                if !h.is_empty() {
                    seen_histograms.insert(name.clone());
                }
            }
        }
        let orders = gauge(&all, "outbox_topic_pending", ("topic", "orders"));
        let mail = gauge(&all, "outbox_topic_pending", ("topic", "mail"));
        if orders == Some(0.0) && mail == Some(1.0) && seen_histograms.len() == 3 {
            let age = gauge(
                &all,
                "outbox_topic_oldest_pending_age_seconds",
                ("topic", "mail"),
            );
            assert!(age.is_some_and(|a| a >= 0.0), "{age:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gauges never settled: orders {orders:?}, mail {mail:?}, histograms {seen_histograms:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for h in [
        "outbox_claim_duration_seconds",
        "outbox_publish_duration_seconds",
        "outbox_ack_duration_seconds",
    ] {
        assert!(seen_histograms.contains(h), "{h}: {seen_histograms:?}");
    }
    relay.shutdown().await.unwrap();

    // An export consumer one change in, two behind.
    let page = outbox.changes_since("crm", 1).await.unwrap();
    outbox
        .commit_cursor("crm", page.next_cursor())
        .await
        .unwrap();
    let consumers = outbox.record_export_lag(100).await.unwrap();
    assert_eq!(consumers.len(), 1);
    let all = read(&snapshotter);
    assert_eq!(
        gauge(&all, "outbox_export_behind_changes", ("consumer", "crm")),
        Some(2.0)
    );
    let idle = gauge(&all, "outbox_export_idle_seconds", ("consumer", "crm"));
    assert!(idle.is_some_and(|s| (0.0..60.0).contains(&s)), "{idle:?}");

    // An inbox records how long a message took from its enqueue to a
    // fresh receipt, per consumer; a duplicate adds nothing.
    let inbox = SqliteInbox::new(pool.clone());
    inbox.migrate().await.unwrap();
    let order = delivered.lock().unwrap()[0].clone();
    for _ in 0..2 {
        let mut tx = pool.begin().await.unwrap();
        inbox.receive(&mut *tx, "billing", &order).await.unwrap();
        tx.commit().await.unwrap();
    }
    let lags: Vec<f64> = read(&snapshotter)
        .into_iter()
        .filter(|(n, labels, _)| {
            n == "outbox_inbox_lag_seconds"
                && labels.contains(&("consumer".into(), "billing".into()))
        })
        .flat_map(|(_, _, v)| match v {
            DebugValue::Histogram(h) => h.into_iter().map(|x| x.into_inner()).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(lags.len(), 1, "one fresh receipt: {lags:?}");
    assert!((0.0..60.0).contains(&lags[0]), "{lags:?}");

    // A relay group's members label every metric with their outbox: three
    // SQLite outboxes, two and three messages published, and one that
    // waits an hour for its retry.
    let group = outbox::RelayGroup::builder().build().unwrap();
    let publisher = std::sync::Arc::new(outbox::InMemoryPublisher::new());
    let down: std::sync::Arc<dyn Publisher> =
        std::sync::Arc::new(FnPublisher::new(|_: OutboxMessage| async {
            Err(PublishError::transient("broker down").with_retry_after(Duration::from_secs(3600)))
        }));
    let mut tenants = Vec::new();
    for (tenant, n) in [("tenant-a", 2), ("tenant-b", 3), ("tenant-c", 1)] {
        let options = SqliteConnectOptions::new()
            .filename(dir.join(format!("{tenant}.db")))
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .connect_with(options)
            .await
            .unwrap();
        let outbox = SqliteOutbox::new(pool.clone());
        outbox.migrate().await.unwrap();
        for i in 0..n {
            let m = NewMessage::json("orders", &i).unwrap();
            outbox.enqueue(&pool, m).await.unwrap();
        }
        let to: std::sync::Arc<dyn Publisher> = if tenant == "tenant-c" {
            down.clone()
        } else {
            publisher.clone()
        };
        let relay = Relay::builder(outbox, to)
            .poll_interval(Duration::from_millis(50))
            .stats_interval(Duration::from_millis(100));
        group.add(tenant, relay).unwrap();
        tenants.push(pool);
    }
    let counter = |all: &[Metric], tenant: &str| {
        all.iter().find_map(|(n, labels, v)| match v {
            DebugValue::Counter(c)
                if n == "outbox_published_total"
                    && labels.contains(&("outbox".into(), tenant.into())) =>
            {
                Some(*c)
            }
            _ => None,
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let all = read(&snapshotter);
        let (a, b) = (counter(&all, "tenant-a"), counter(&all, "tenant-b"));
        let pending_a = tenant_gauge(&all, "outbox_pending", "tenant-a", None);
        let pending_c = tenant_gauge(&all, "outbox_pending", "tenant-c", None);
        let topic_c = tenant_gauge(&all, "outbox_topic_pending", "tenant-c", Some("orders"));
        if a == Some(2)
            && b == Some(3)
            && pending_a.is_some()
            && pending_c == Some(1.0)
            && topic_c == Some(1.0)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "published per outbox: tenant-a {a:?}, tenant-b {b:?}; pending gauges of \
             tenant-a {pending_a:?}, tenant-c {pending_c:?} (orders {topic_c:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A member taken out of the group zeroes its gauges: alerts on an
    // outbox relayed elsewhere now must not fire on its last readings.
    assert!(group.remove("tenant-c").await.unwrap());
    let all = read(&snapshotter);
    assert_eq!(
        tenant_gauge(&all, "outbox_pending", "tenant-c", None),
        Some(0.0)
    );
    assert_eq!(
        tenant_gauge(&all, "outbox_topic_pending", "tenant-c", Some("orders")),
        Some(0.0)
    );
    group.shutdown().await.unwrap();
    for pool in tenants {
        pool.close().await;
    }

    pool.close().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
