//! The relay's metrics in Prometheus' text format, with
//! `metrics-exporter-prometheus`: install a recorder once at start-up, and
//! every gauge, counter and histogram of the crate lands in it.
//!
//! ```text
//! cargo run --example metrics_prometheus
//! ```
//!
//! A service serves `handle.render()` on its own `/metrics` route (or lets
//! the exporter listen: `PrometheusBuilder::new().with_http_listener(addr)`
//! with the exporter's `http-listener` feature). The README's "What to
//! alert on" has rules for these series.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use outbox::change::Change;
use outbox::sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use outbox::{FnPublisher, NewMessage, OutboxMessage, PublishError, Relay, SqliteOutbox};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let handle = PrometheusBuilder::new()
        // Seconds-long histograms: claims, publishes, acknowledgements.
        .set_buckets(&[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])?
        // An inbox's lag, from enqueue to receipt: up to minutes.
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("outbox_inbox_lag_seconds".into()),
            &[0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0],
        )?
        .install_recorder()?;

    let dir = std::env::temp_dir().join(format!("outbox-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let options = SqliteConnectOptions::new()
        .filename(dir.join("app.db"))
        .create_if_missing(true);
    let pool = SqlitePoolOptions::new().connect_with(options).await?;
    let outbox = SqliteOutbox::new(pool.clone());
    outbox.migrate().await?;

    let mut tx = pool.begin().await?;
    for (topic, n) in [("orders", 1), ("orders", 2), ("mail", 3)] {
        outbox
            .enqueue(
                &mut *tx,
                NewMessage::json(topic, &serde_json::json!({ "n": n }))?,
            )
            .await?;
    }
    for key in ["1", "2"] {
        let change = Change::insert("candidate", key, &serde_json::json!({"status": "new"}))?;
        outbox.log_change(&mut *tx, &change).await?;
    }
    outbox.commit(tx).await?;
    // An export consumer that read one change of two.
    let page = outbox.changes_since("crm", 1).await?;
    outbox.commit_cursor("crm", page.next_cursor()).await?;

    // The mail server is down: its message waits for a retry.
    let publisher = FnPublisher::new(|m: OutboxMessage| async move {
        if m.topic() == "mail" {
            return Err(PublishError::transient("mail server down"));
        }
        Ok(())
    });
    let relay = Relay::builder(outbox.clone(), publisher)
        .stats_interval(Duration::from_millis(200))
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Export lag: one process sets these gauges now and then.
    outbox.record_export_lag(10_000).await?;
    relay.shutdown().await?;

    for line in handle.render().lines() {
        if line.starts_with("outbox_") && !line.contains("_bucket{") {
            println!("{line}");
        }
    }
    pool.close().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
