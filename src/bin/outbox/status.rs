//! `outbox status`: what needs attention, as a table, JSON and an exit code.

use std::process::ExitCode;
use std::time::Duration;

use chrono::Utc;
use outbox::export::ExportConsumer;
use outbox::{BlockedKey, RelayStatus, StoreStats, TopicStats};
use serde_json::json;

use crate::blocked::blocked_json;
use crate::format::{age_of, bytes, first_line, human, section, table};
use crate::{Failure, Outbox, Outcome};

/// What `status` reads of one outbox, and what of it needs attention.
pub(crate) struct Report {
    pub(crate) stats: StoreStats,
    pub(crate) topics: Vec<TopicStats>,
    pub(crate) blocked: Vec<BlockedKey>,
    pub(crate) relays: Vec<RelayStatus>,
    pub(crate) consumers: Vec<ExportConsumer>,
    /// Each thing that needs attention, said for a person.
    pub(crate) attention: Vec<String>,
    now: chrono::DateTime<Utc>,
}

/// Reads the outbox's state and judges it: a pending message older than
/// `max_age` needs attention, as does a consumer idle that long.
pub(crate) async fn report(outbox: &Outbox, max_age: Duration) -> Outcome<Report> {
    let (stats, topics): (StoreStats, Vec<TopicStats>) =
        on!(outbox, o => o.stats_and_topics().await).map_err(missing_tables)?;
    let blocked: Vec<BlockedKey> = on!(outbox, o => o.blocked_keys().await)?;
    let relays: Vec<RelayStatus> = on!(outbox, o => o.relays().await)?;
    let mut attention = Vec::new();
    // Reading how far consumers are behind runs the export's reads (on
    // MySQL its sequencer writes): a user or replica that cannot still
    // gets the rest of the status.
    let consumers: Vec<ExportConsumer> = match on!(outbox, o => o.export_consumers(LAG_COUNTED).await)
    {
        Ok(c) => c,
        Err(e) => {
            attention.push(format!("export consumers could not be read: {e}"));
            Vec::new()
        }
    };
    let now = Utc::now();

    if stats.dead_letters > 0 {
        attention.push(format!(
            "{} dead letter(s): `outbox dead list`",
            stats.dead_letters
        ));
    }
    if !blocked.is_empty() {
        attention.push(format!(
            "{} blocked key(s): `outbox blocked list`",
            blocked.len()
        ));
    }
    if let Some(age) = stats.oldest_pending_age.filter(|a| *a > max_age) {
        attention.push(format!(
            "the oldest pending message waited {} (more than {})",
            human(age),
            human(max_age)
        ));
    }
    for r in relays.iter().filter(|r| r.alive) {
        if let Some(e) = &r.publish_error {
            attention.push(format!("relay {} cannot publish ({e})", r.relay));
        }
    }
    if stats.pending > 0 && !relays.iter().any(|r| r.alive) {
        attention.push(format!(
            "{} message(s) pending and no relay alive",
            stats.pending
        ));
    }
    for c in &consumers {
        let idle = age_of(now, c.committed_at);
        if c.behind > 0 && idle > max_age {
            attention.push(format!(
                "export consumer {} is {} change(s) behind and last moved {} ago",
                c.consumer,
                behind_text(c),
                human(idle)
            ));
        }
    }
    if let Some(age) = stats.oldest_xmin_age.filter(|a| *a > max_age) {
        attention.push(format!(
            "a transaction open for {} holds back vacuum",
            human(age)
        ));
    }

    Ok(Report {
        stats,
        topics,
        blocked,
        relays,
        consumers,
        attention,
        now,
    })
}

pub(crate) async fn status(outbox: &Outbox, json: bool, max_age: Duration) -> Outcome<ExitCode> {
    let Report {
        stats,
        topics,
        blocked,
        relays,
        consumers,
        attention,
        now,
    } = report(outbox, max_age).await?;
    if json {
        let value = json!({
            "pending": stats.pending,
            "ready": stats.ready,
            "retry_waiting": stats.retry_waiting,
            "parked": stats.parked,
            "oldest_pending_age_seconds": stats.oldest_pending_age.map(|d| d.as_secs_f64()),
            "dead_letters": stats.dead_letters,
            "dead_tuples": stats.dead_tuples,
            "table_bytes": stats.table_bytes,
            "oldest_xmin_age_seconds": stats.oldest_xmin_age.map(|d| d.as_secs_f64()),
            "topics": topics.iter().map(|t| json!({
                "topic": t.topic,
                "pending": t.pending,
                "oldest_age_seconds": age_of(now, t.oldest_created_at).as_secs_f64(),
            })).collect::<Vec<_>>(),
            "blocked_keys": blocked.iter().map(blocked_json).collect::<Vec<_>>(),
            "relays": relays,
            "export_consumers": consumers.iter().map(|c| json!({
                "consumer": c.consumer,
                "behind": c.behind,
                "behind_at_least": c.more,
                "committed_at": c.committed_at,
                "idle_seconds": age_of(now, c.committed_at).as_secs_f64(),
            })).collect::<Vec<_>>(),
            "attention": attention,
        });
        println!("{value}");
    } else {
        let oldest = stats
            .oldest_pending_age
            .map_or_else(|| "-".to_owned(), human);
        println!(
            "pending       {} (ready {}, retry waiting {}, parked {}), oldest {}",
            stats.pending, stats.ready, stats.retry_waiting, stats.parked, oldest
        );
        println!("dead letters  {}", stats.dead_letters);
        println!("blocked keys  {}", blocked.len());
        if let Some(b) = stats.table_bytes {
            println!("table size    {}", bytes(b));
        }
        if let Some(d) = stats.dead_tuples {
            println!("dead tuples   {d}");
        }
        if let Some(a) = stats.oldest_xmin_age {
            println!("oldest open transaction  {}", human(a));
        }
        section(&["TOPIC", "PENDING", "OLDEST"], &topics, |t| {
            vec![
                t.topic.clone(),
                t.pending.to_string(),
                human(age_of(now, t.oldest_created_at)),
            ]
        });
        println!();
        if relays.is_empty() {
            println!("no relay has recorded a heartbeat");
        } else {
            table(
                &["RELAY", "ALIVE", "LEASES", "HEARTBEAT", "PUBLISHING"],
                relays
                    .iter()
                    .map(|r| {
                        let beat = if r.alive {
                            format!("expires in {}", human(age_of(r.heartbeat_expires_at, now)))
                        } else {
                            format!("expired {} ago", human(age_of(now, r.heartbeat_expires_at)))
                        };
                        let publishing = match &r.publish_error {
                            Some(e) => format!("failing: {}", first_line(e, 60)),
                            None => "ok".to_owned(),
                        };
                        vec![
                            r.relay.to_string(),
                            if r.alive { "yes" } else { "no" }.to_owned(),
                            r.leases.to_string(),
                            beat,
                            publishing,
                        ]
                    })
                    .collect(),
            );
        }
        section(
            &["EXPORT CONSUMER", "BEHIND", "LAST MOVED"],
            &consumers,
            |c| {
                vec![
                    c.consumer.clone(),
                    behind_text(c),
                    format!("{} ago", human(age_of(now, c.committed_at))),
                ]
            },
        );
        println!();
        if attention.is_empty() {
            println!("ok");
        } else {
            for a in &attention {
                println!("attention: {a}");
            }
        }
    }
    Ok(if attention.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Changes counted behind an export consumer, at most.
const LAG_COUNTED: i64 = 10_000;

/// How far behind a consumer is, "10000+" past the count.
fn behind_text(c: &ExportConsumer) -> String {
    if c.more {
        format!("{}+", c.behind)
    } else {
        c.behind.to_string()
    }
}

/// A database error that most likely means the tables are not there.
fn missing_tables(e: outbox::Error) -> Failure {
    let text = e.to_string();
    let lower = text.to_lowercase();
    if lower.contains("does not exist")
        || lower.contains("no such table")
        || lower.contains("doesn't exist")
    {
        Failure(format!(
            "{text}; no outbox tables with this prefix/schema here: check --prefix and \
             --schema, or run `outbox migrate`"
        ))
    } else {
        Failure(text)
    }
}
