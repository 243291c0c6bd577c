//! A recruiting firm, end to end: the candidate-tracking service changes
//! candidate records; payroll consumes the changes through the relay with an
//! inbox (each change applied exactly once, although every message is
//! delivered twice); a CRM sync pulls coalesced delta pages with a cursor.
//!
//! ```text
//! cargo run --example recruiting                  # embedded SQLite, no server
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --example recruiting
//! DATABASE_URL=mysql://root@127.0.0.1:3306/test cargo run --example recruiting
//! ```

use std::time::Duration;

use outbox::change::Change;
use outbox::{
    FnPublisher, MySqlInbox, MySqlOutbox, OutboxMessage, PgInbox, PgOutbox, Receipt, Relay,
    SqliteInbox, SqliteOutbox,
};
use serde_json::{json, Value};

const TOPIC: &str = "recruiting.candidates";

/// The same program for every backend: the outbox and inbox types differ,
/// and the placeholders of the payroll's insert (`$1` or `?`); the calls do
/// not.
macro_rules! recruiting {
    ($run:ident, $Outbox:ty, $Inbox:ty, $Pool:ty, $hire:expr) => {
        async fn $run(
            tracking: $Pool,
            payroll: $Pool,
            outbox: $Outbox,
            inbox: $Inbox,
        ) -> outbox::Result<()> {
            // --- set-up -------------------------------------------------
            outbox.migrate().await?;
            for sql in [
                "CREATE TABLE IF NOT EXISTS recruiting_candidates (id BIGINT PRIMARY KEY, \
                 name TEXT NOT NULL, status TEXT NOT NULL, start_date TEXT)",
                "DELETE FROM recruiting_candidates",
            ] {
                sqlx::query(sql).execute(&tracking).await?;
            }
            inbox.migrate().await?;
            for sql in [
                "CREATE TABLE IF NOT EXISTS recruiting_payroll (candidate_id VARCHAR(64) PRIMARY KEY, \
                 name TEXT NOT NULL, start_date TEXT NOT NULL)",
                "DELETE FROM recruiting_payroll",
            ] {
                sqlx::query(sql).execute(&payroll).await?;
            }

            // --- the relay: a "broker" that delivers every message twice --
            let (deliver, mut deliveries) = tokio::sync::mpsc::unbounded_channel::<OutboxMessage>();
            let publisher = FnPublisher::new(move |m: OutboxMessage| {
                let deliver = deliver.clone();
                async move {
                    let _ = deliver.send(m.clone());
                    let _ = deliver.send(m); // a redelivery
                    Ok(())
                }
            });
            // Numbered keys let payroll's inbox spot a gap, not just a duplicate.
            let relay = Relay::builder(outbox.clone(), publisher)
                .key_sequences(true)
                .spawn()?;

            // --- payroll: applies each change once ------------------------
            let payroll_task = {
                let (payroll, inbox) = (payroll.clone(), inbox.clone());
                tokio::spawn(async move {
                    let (mut applied, mut skipped) = (0, 0);
                    while let Some(m) = deliveries.recv().await {
                        let mut tx = payroll.begin().await?;
                        if inbox.receive(&mut *tx, "payroll", &m).await? == Receipt::Duplicate {
                            skipped += 1;
                            println!("[payroll]  duplicate of {} skipped", m.id());
                            tx.rollback().await?;
                            continue;
                        }
                        let change: Change = m.payload_json()?;
                        let hired = change.data().and_then(|d| d.get("status"))
                            == Some(&json!("hired"));
                        if hired {
                            let data = change.data().cloned().unwrap_or_default();
                            sqlx::query($hire)
                            .bind(change.key())
                            .bind(
                                data["name"]
                                    .as_str()
                                    .or_else(|| change.before()?["name"].as_str())
                                    .unwrap_or("?"),
                            )
                            .bind(data["start_date"].as_str().unwrap_or("?"))
                            .execute(&mut *tx)
                            .await?;
                            println!("[payroll]  candidate {} hired: added to payroll", change.key());
                        } else {
                            println!(
                                "[payroll]  {} #{} of candidate {}: nothing to do",
                                change.kind_str(),
                                m.key_sequence().unwrap_or(0),
                                change.key()
                            );
                        }
                        tx.commit().await?;
                        applied += 1;
                        if applied == 6 {
                            break;
                        }
                    }
                    Ok::<_, outbox::Error>((applied, skipped))
                })
            };

            // --- tracking: each domain change and its change event commit
            // together --------------------------------------------------------
            let ada = json!({"name": "Ada Lovelace", "status": "applied"});
            let ada2 = json!({"name": "Ada Lovelace", "status": "interviewing"});
            let ada3 = json!({"name": "Ada Lovelace", "status": "hired", "start_date": "2027-01-04"});
            let alan = json!({"name": "Alan Turing", "status": "applied"});
            let steps: Vec<(&str, Change)> = vec![
                ("INSERT INTO recruiting_candidates (id, name, status) VALUES (1, 'Ada Lovelace', 'applied')",
                 Change::insert("candidate", "1", &ada)?),
                ("UPDATE recruiting_candidates SET status = 'interviewing' WHERE id = 1",
                 Change::update("candidate", "1", &ada, &ada2)?.expect("changed")),
                ("INSERT INTO recruiting_candidates (id, name, status) VALUES (2, 'Alan Turing', 'applied')",
                 Change::insert("candidate", "2", &alan)?),
                ("UPDATE recruiting_candidates SET status = 'hired', start_date = '2027-01-04' WHERE id = 1",
                 Change::update("candidate", "1", &ada2, &ada3)?
                    .expect("changed")
                    // Payroll needs the name, which this update does not change.
                    .with_before(&ada2)?),
                ("UPDATE recruiting_candidates SET status = 'withdrawn' WHERE id = 2",
                 Change::update("candidate", "2", &alan, &json!({"name": "Alan Turing", "status": "withdrawn"}))?.expect("changed")),
                ("DELETE FROM recruiting_candidates WHERE id = 2", Change::delete("candidate", "2")),
            ];
            for (sql, change) in &steps {
                let mut tx = tracking.begin().await?;
                sqlx::query(sql).execute(&mut *tx).await?;
                outbox.record_change(&mut *tx, TOPIC, change).await?;
                outbox.commit(tx).await?;
                println!(
                    "[tracking] {} candidate {} {}",
                    change.kind_str(),
                    change.key(),
                    change.data().map(Value::to_string).unwrap_or_default()
                );
            }
            // And one that fails half-way: rolled back, no trace anywhere.
            let mut tx = tracking.begin().await?;
            sqlx::query("UPDATE recruiting_candidates SET status = 'fired' WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            outbox
                .record_change(&mut *tx, TOPIC, &Change::update("candidate", "1", &ada3, &json!({"status": "fired"}))?.expect("changed"))
                .await?;
            tx.rollback().await?;
            println!("[tracking] an update of candidate 1 rolled back: no event, no change");

            let (applied, skipped) = tokio::time::timeout(Duration::from_secs(20), payroll_task)
                .await
                .expect("payroll keeps up")
                .expect("payroll task")?;
            relay.shutdown().await?;
            println!("[payroll]  {applied} changes applied, {skipped} redeliveries skipped");

            // --- the CRM cannot subscribe: it pulls deltas -----------------
            loop {
                let page = outbox.changes_since("crm", 100).await?;
                if page.read() == 0 {
                    break;
                }
                println!("[crm]      page of {} logged changes, {} after coalescing:", page.read(), page.changes().len());
                for c in page.changes() {
                    println!(
                        "[crm]        {} candidate {} {} (positions {}..{}, {} merged)",
                        c.change().kind_str(),
                        c.change().key(),
                        c.change().data().map(Value::to_string).unwrap_or_default(),
                        c.first_position(),
                        c.last_position(),
                        c.merged()
                    );
                }
                outbox.commit_cursor("crm", page.next_cursor()).await?;
            }
            let employees: Vec<(String, String, String)> =
                sqlx::query_as("SELECT candidate_id, name, start_date FROM recruiting_payroll")
                    .fetch_all(&payroll)
                    .await?;
            println!("[payroll]  employees: {employees:?}");
            Ok(())
        }
    };
}

const HIRE_NUMBERED: &str =
    "INSERT INTO recruiting_payroll (candidate_id, name, start_date) VALUES ($1, $2, $3)";

recruiting!(
    run_sqlite,
    SqliteOutbox,
    SqliteInbox,
    sqlx::SqlitePool,
    HIRE_NUMBERED
);
recruiting!(run_postgres, PgOutbox, PgInbox, sqlx::PgPool, HIRE_NUMBERED);
recruiting!(
    run_mysql,
    MySqlOutbox,
    MySqlInbox,
    sqlx::MySqlPool,
    "INSERT INTO recruiting_payroll (candidate_id, name, start_date) VALUES (?, ?, ?)"
);

trait KindStr {
    fn kind_str(&self) -> &'static str;
}

impl KindStr for Change {
    fn kind_str(&self) -> &'static str {
        match self.kind() {
            outbox::change::ChangeKind::Insert => "insert",
            outbox::change::ChangeKind::Update => "update",
            outbox::change::ChangeKind::Delete => "delete",
        }
    }
}

#[tokio::main]
async fn main() -> outbox::Result<()> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => {
            println!("Running on PostgreSQL ({url})\n");
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(8)
                .connect(&url)
                .await?;
            // Payroll's database would be its own; one database keeps the
            // demo simple (the inbox has its own tables).
            // A schema of its own, fresh on every run.
            sqlx::query("DROP SCHEMA IF EXISTS recruiting_demo CASCADE")
                .execute(&pool)
                .await?;
            let outbox = PgOutbox::builder(pool.clone())
                .schema("recruiting_demo")
                .build()?;
            let inbox = PgInbox::builder(pool.clone())
                .schema("recruiting_demo")
                .build()?;
            run_postgres(pool.clone(), pool, outbox, inbox).await
        }
        Ok(url) if url.starts_with("mysql") || url.starts_with("mariadb") => {
            println!("Running on MySQL/MariaDB ({url})\n");
            // A database of its own, fresh on every run.
            let admin = sqlx::mysql::MySqlPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await?;
            for sql in [
                "DROP DATABASE IF EXISTS recruiting_demo",
                "CREATE DATABASE recruiting_demo CHARACTER SET utf8mb4",
            ] {
                sqlx::query(sql).execute(&admin).await?;
            }
            admin.close().await;
            let options: sqlx::mysql::MySqlConnectOptions = url.parse()?;
            let pool = sqlx::mysql::MySqlPoolOptions::new()
                .max_connections(8)
                .connect_with(options.database("recruiting_demo"))
                .await?;
            let outbox = MySqlOutbox::new(pool.clone());
            let inbox = MySqlInbox::new(pool.clone());
            run_mysql(pool.clone(), pool, outbox, inbox).await
        }
        _ => {
            let dir = std::env::temp_dir();
            let open = |name: &str| {
                let path = dir.join(format!(
                    "outbox-recruiting-{}-{name}.db",
                    std::process::id()
                ));
                let _ = std::fs::remove_file(&path);
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(5))
            };
            println!(
                "Running on embedded SQLite (set DATABASE_URL=postgres://... for PostgreSQL)\n"
            );
            let tracking = sqlx::sqlite::SqlitePoolOptions::new()
                .connect_with(open("tracking"))
                .await?;
            let payroll = sqlx::sqlite::SqlitePoolOptions::new()
                .connect_with(open("payroll"))
                .await?;
            let (outbox, inbox) = (
                SqliteOutbox::new(tracking.clone()),
                SqliteInbox::new(payroll.clone()),
            );
            let result = run_sqlite(tracking.clone(), payroll.clone(), outbox, inbox).await;
            tracking.close().await;
            payroll.close().await;
            for name in ["tracking", "payroll"] {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(dir.join(format!(
                        "outbox-recruiting-{}-{name}.db{suffix}",
                        std::process::id()
                    )));
                }
            }
            result
        }
    }
}
