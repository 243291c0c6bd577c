//! `outbox purge` and `outbox tail`: retained published messages.

use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use outbox::PublishedMessage;
use serde_json::json;

use crate::format::ago;
use crate::{say, Outbox, Outcome};

pub(crate) async fn purge(
    outbox: &Outbox,
    json: bool,
    older_than: Duration,
    changes: bool,
) -> Outcome<()> {
    let before = ago(older_than)?;
    let published = on!(outbox, o => o.purge_published(before, 1000).await)?;
    let mut purged_changes = None;
    if changes {
        purged_changes = Some(on!(outbox, o => o.purge_changes(before, 1000).await)?);
    }
    let mut text = format!("{published} published message(s) purged");
    if let Some(c) = purged_changes {
        text.push_str(&format!(", {c} logged change(s)"));
    }
    text.push('.');
    say(
        json,
        json!({"published": published, "changes": purged_changes}),
        &text,
    );
    Ok(())
}

pub(crate) async fn tail(
    outbox: &Outbox,
    json: bool,
    interval: Duration,
    since: Duration,
    count: Option<usize>,
) -> Outcome<()> {
    // Retained messages in the order they were published, from a moving
    // time. Each read goes back a little (relays' clocks differ), and the
    // positions met in that overlap are kept to skip them: memory stays
    // bounded by what is published within it.
    const OVERLAP: Duration = Duration::from_secs(5);
    const PAGE: i64 = 1000;
    let overlap = chrono::Duration::from_std(OVERLAP)?;
    let mut from = ago(since)?;
    let mut seen: std::collections::HashMap<i64, DateTime<Utc>> = std::collections::HashMap::new();
    let mut shown = 0usize;
    let mut first = true;
    loop {
        let page: Vec<PublishedMessage> =
            on!(outbox, o => o.published_since(from - overlap, PAGE).await)?;
        if first && page.is_empty() && !json {
            eprintln!(
                "(nothing published since {}: the relay keeps published messages only \
                 with retention set; following)",
                from.to_rfc3339()
            );
        }
        first = false;
        let full = page.len() as i64 == PAGE;
        for p in &page {
            let m = &p.message;
            if seen.insert(m.position(), p.published_at).is_some() {
                continue;
            }
            from = from.max(p.published_at);
            if json {
                println!(
                    "{}",
                    json!({
                        "id": m.id().to_string(),
                        "position": m.position(),
                        "topic": m.topic(),
                        "partition_key": m.partition_key(),
                        "event_type": m.event_type(),
                        "created_at": m.created_at(),
                        "published_at": p.published_at,
                    })
                );
            } else {
                println!(
                    "{} #{} {} key={} {} {}",
                    p.published_at.format("%H:%M:%S%.3f"),
                    m.position(),
                    m.topic(),
                    m.partition_key().unwrap_or("-"),
                    m.event_type(),
                    m.id()
                );
            }
            shown += 1;
            if count.is_some_and(|c| shown >= c) {
                return Ok(());
            }
        }
        seen.retain(|_, at| *at >= from - overlap);
        std::io::stdout().flush()?;
        if full && page.iter().any(|p| p.published_at > from - overlap) {
            // More waiting past this page.
            continue;
        }
        tokio::time::sleep(interval).await;
    }
}
