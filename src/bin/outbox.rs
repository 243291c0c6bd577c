//! `outbox`: the operator's tool for an outbox on PostgreSQL, SQLite or
//! MySQL/MariaDB (feature `cli`).
//!
//! ```text
//! outbox --database-url postgres://localhost/app status
//! outbox dead list --topic orders --error timeout
//! outbox dead replay --topic orders --yes
//! outbox blocked unblock order-42
//! ```
//!
//! Exit codes: 0 done (and, for `status`, nothing needs attention), 1 an
//! error (named on stderr, with what to do), 2 `status` found something
//! that needs attention (usable as a health check).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use outbox::export::ExportConsumer;
use outbox::sqlx::mysql::MySqlPoolOptions;
use outbox::sqlx::postgres::PgPoolOptions;
use outbox::sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use outbox::{
    BlockedKey, BlockingMessage, DeadLetter, DeadLetterFilter, MessageId, MySqlOutbox,
    OutboxMessage, PgOutbox, PublishedMessage, RelayStatus, SqliteOutbox, StoreStats, TopicStats,
};
use serde_json::{json, Value};

/// Inspect and repair a transactional outbox.
#[derive(Debug, Parser)]
#[command(name = "outbox", version)]
struct Cli {
    /// The database: postgres://..., mysql://... (or mariadb://...),
    /// sqlite:path.
    #[arg(long, env = "DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// The PostgreSQL schema of the outbox tables (default `outbox`, as the
    /// builder's).
    #[arg(long, global = true)]
    schema: Option<String>,
    /// The table prefix, as given to the outbox's builder (default the
    /// builder's: none on PostgreSQL, `outbox_` on SQLite and MySQL).
    #[arg(long, global = true)]
    prefix: Option<String>,
    /// The PostgreSQL URL goes through a pooler in transaction mode
    /// (PgBouncer's `pool_mode = transaction`): no named statements.
    #[arg(long, global = true)]
    transaction_pooling: bool,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Pending messages per topic, dead letters, blocked keys, relays and
    /// their leases; exits with 2 when something needs attention.
    Status {
        /// A pending message older than this needs attention.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        max_age: Duration,
    },
    /// Dead letters: list, show, replay, discard.
    #[command(subcommand)]
    Dead(Dead),
    /// Keys held back behind a failed message.
    #[command(subcommand)]
    Blocked(Blocked),
    /// Creates or upgrades the outbox tables.
    Migrate,
    /// Deletes retained published messages (and, with --changes, logged
    /// changes) older than a given age.
    Purge {
        /// Age of the oldest row kept, e.g. 7d, 12h.
        #[arg(long, value_parser = parse_duration)]
        older_than: Duration,
        /// Also purge the change log of delta exports.
        #[arg(long)]
        changes: bool,
    },
    /// Follows what is published, like `tail -f` (needs the relay's
    /// retention of published messages).
    Tail {
        /// How often to look.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
        /// Start with what was published this long ago.
        #[arg(long, default_value = "1m", value_parser = parse_duration)]
        since: Duration,
        /// Stop after this many messages (default: follow until killed).
        #[arg(long)]
        count: Option<usize>,
    },
}

#[derive(Debug, Subcommand)]
enum Dead {
    /// Lists dead letters, oldest first.
    List(Filter),
    /// Shows one dead letter whole: headers, payload, error.
    Show {
        /// The message id.
        id: MessageId,
    },
    /// Sends dead letters back to the outbox: one by id, or every one that
    /// matches the filters (asks first; --yes for scripts).
    Replay(Bulk),
    /// Deletes dead letters for good: one by id, or every one that matches
    /// the filters (asks first; --yes for scripts).
    Discard(Bulk),
}

#[derive(Debug, Args)]
struct Bulk {
    /// One message id; without it, the filters choose.
    id: Option<MessageId>,
    #[command(flatten)]
    filter: Filter,
    /// Do not ask before a bulk operation.
    #[arg(long)]
    yes: bool,
}

#[derive(Debug, Args, Clone)]
struct Filter {
    /// Only this topic.
    #[arg(long)]
    topic: Option<String>,
    /// Only this partition key.
    #[arg(long)]
    key: Option<String>,
    /// Only dead letters whose error contains this text.
    #[arg(long)]
    error: Option<String>,
    /// Dead-lettered at or after: an RFC 3339 time or an age (1h = an hour ago).
    #[arg(long, value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
    /// Dead-lettered before: an RFC 3339 time or an age.
    #[arg(long, value_parser = parse_time)]
    before: Option<DateTime<Utc>>,
    /// At most this many (a bulk operation without a limit takes all).
    #[arg(long)]
    limit: Option<u32>,
}

#[derive(Debug, Subcommand)]
enum Blocked {
    /// Lists blocked keys and what holds each.
    List,
    /// Lifts the blocks of one key; its next message goes out.
    Unblock {
        /// The partition key.
        key: String,
    },
}

/// An outbox of any backend.
#[derive(Debug)]
enum Outbox {
    Pg(PgOutbox),
    Sqlite(SqliteOutbox),
    MySql(MySqlOutbox),
}

/// Runs the same call on whichever outbox it is.
macro_rules! on {
    ($outbox:expr, $o:ident => $call:expr) => {
        match $outbox {
            Outbox::Pg($o) => $call,
            Outbox::Sqlite($o) => $call,
            Outbox::MySql($o) => $call,
        }
    };
}

/// A failure, told with what to do about it.
#[derive(Debug)]
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

type Outcome<T> = std::result::Result<T, Failure>;

fn main() -> ExitCode {
    // Usage errors exit with 1, like every error: 2 means "needs
    // attention" from `status`.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(Failure(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Outcome<ExitCode> {
    let outbox = connect(&cli).await?;
    let json = cli.json;
    match cli.command {
        Command::Status { max_age } => status(&outbox, json, max_age).await,
        Command::Dead(d) => dead(&outbox, json, d).await.map(|()| ExitCode::SUCCESS),
        Command::Blocked(b) => blocked(&outbox, json, b).await.map(|()| ExitCode::SUCCESS),
        Command::Migrate => {
            on!(&outbox, o => o.migrate().await)?;
            say(
                json,
                json!({"migrated": true}),
                "The outbox tables are up to date.",
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Purge {
            older_than,
            changes,
        } => purge(&outbox, json, older_than, changes)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Tail {
            interval,
            since,
            count,
        } => tail(&outbox, json, interval, since, count)
            .await
            .map(|()| ExitCode::SUCCESS),
    }
}

/// Opens the outbox the URL names. Nothing is created: a SQLite file must
/// exist, except for `migrate`.
async fn connect(cli: &Cli) -> Outcome<Outbox> {
    let Some(url) = cli.database_url.as_deref() else {
        return Err(Failure(
            "no database: pass --database-url or set DATABASE_URL \
             (postgres://..., mysql://..., sqlite:path)"
                .into(),
        ));
    };
    let unreachable = |e: outbox::sqlx::Error| {
        Failure(format!(
            "cannot connect to {}: {e}; check the URL, that the server runs and that it \
             accepts this user",
            redact(url)
        ))
    };
    let wrong_option = |what: &str| {
        Failure(format!(
            "--{what} applies to PostgreSQL only, and {} is not a PostgreSQL URL",
            redact(url)
        ))
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(url)
            .await
            .map_err(unreachable)?;
        let mut b = PgOutbox::builder(pool).transaction_pooling(cli.transaction_pooling);
        if let Some(prefix) = &cli.prefix {
            b = b.table_prefix(prefix.clone());
        }
        if let Some(schema) = &cli.schema {
            b = b.schema(schema.clone());
        }
        return Ok(Outbox::Pg(b.build()?));
    }
    if cli.schema.is_some() {
        return Err(wrong_option("schema"));
    }
    if cli.transaction_pooling {
        return Err(wrong_option("transaction-pooling"));
    }
    if let Some(rest) = url
        .strip_prefix("mysql://")
        .or_else(|| url.strip_prefix("mariadb://"))
    {
        let pool = MySqlPoolOptions::new()
            .max_connections(2)
            .connect(&format!("mysql://{rest}"))
            .await
            .map_err(unreachable)?;
        let mut b = MySqlOutbox::builder(pool);
        if let Some(prefix) = &cli.prefix {
            b = b.table_prefix(prefix.clone());
        }
        let o = b.build()?;
        return Ok(Outbox::MySql(o));
    }
    if url.starts_with("sqlite:") {
        let create = matches!(cli.command, Command::Migrate);
        let options: SqliteConnectOptions = url
            .parse::<SqliteConnectOptions>()
            .map_err(unreachable)?
            .create_if_missing(create)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .map_err(|e| {
                Failure(format!(
                    "cannot open {url}: {e}; check the path (run `outbox migrate` to create it)"
                ))
            })?;
        let mut b = SqliteOutbox::builder(pool);
        if let Some(prefix) = &cli.prefix {
            b = b.table_prefix(prefix.clone());
        }
        let o = b.build()?;
        return Ok(Outbox::Sqlite(o));
    }
    Err(Failure(format!(
        "{} is not a database URL this tool knows: use postgres://, mysql:// (or \
         mariadb://) or sqlite:",
        redact(url)
    )))
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Prints `value` as JSON, or `text` for a person.
fn say(json: bool, value: Value, text: &str) {
    if json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

// ---------------------------------------------------------------- status

async fn status(outbox: &Outbox, json: bool, max_age: Duration) -> Outcome<ExitCode> {
    let stats: StoreStats = on!(outbox, o => o.stats().await).map_err(missing_tables)?;
    let topics: Vec<TopicStats> = on!(outbox, o => o.topic_stats().await)?;
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
            "relays": relays.iter().map(|r| json!({
                "relay": r.relay,
                "alive": r.alive,
                "leases": r.leases,
                "heartbeat_expires_at": r.heartbeat_expires_at,
                "publish_error": r.publish_error,
            })).collect::<Vec<_>>(),
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
        if !topics.is_empty() {
            println!();
            table(
                &["TOPIC", "PENDING", "OLDEST"],
                topics
                    .iter()
                    .map(|t| {
                        vec![
                            t.topic.clone(),
                            t.pending.to_string(),
                            human(age_of(now, t.oldest_created_at)),
                        ]
                    })
                    .collect(),
            );
        }
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
        if !consumers.is_empty() {
            println!();
            table(
                &["EXPORT CONSUMER", "BEHIND", "LAST MOVED"],
                consumers
                    .iter()
                    .map(|c| {
                        vec![
                            c.consumer.clone(),
                            behind_text(c),
                            format!("{} ago", human(age_of(now, c.committed_at))),
                        ]
                    })
                    .collect(),
            );
        }
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

// ---------------------------------------------------------- dead letters

async fn dead(outbox: &Outbox, json: bool, command: Dead) -> Outcome<()> {
    match command {
        Dead::List(f) => {
            let filter = to_filter(&f, Some(f.limit.unwrap_or(50)));
            let letters: Vec<DeadLetter> =
                on!(outbox, o => o.dead_letters_matching(&filter).await)?;
            if json {
                println!(
                    "{}",
                    Value::Array(letters.iter().map(|d| dead_json(d, false)).collect())
                );
            } else if letters.is_empty() {
                println!("no dead letters match");
            } else {
                let now = Utc::now();
                table(
                    &[
                        "ID", "POSITION", "TOPIC", "KEY", "ATTEMPTS", "DEAD", "ERROR",
                    ],
                    letters
                        .iter()
                        .map(|d| {
                            vec![
                                d.id().to_string(),
                                d.message.position().to_string(),
                                d.message.topic().to_owned(),
                                d.message.partition_key().unwrap_or("-").to_owned(),
                                d.attempts.to_string(),
                                format!("{} ago", human(age_of(now, d.dead_at))),
                                first_line(&d.last_error, 60),
                            ]
                        })
                        .collect(),
                );
            }
        }
        Dead::Show { id } => {
            let filter = DeadLetterFilter::new().id(id).limit(1);
            let letters: Vec<DeadLetter> =
                on!(outbox, o => o.dead_letters_matching(&filter).await)?;
            let Some(d) = letters.first() else {
                return Err(Failure(format!(
                    "no dead letter with id {id}: `outbox dead list` shows them"
                )));
            };
            if json {
                println!("{}", dead_json(d, true));
            } else {
                let m = &d.message;
                println!("id            {}", m.id());
                println!("position      {}", m.position());
                println!("topic         {}", m.topic());
                println!("key           {}", m.partition_key().unwrap_or("-"));
                println!("event type    {} v{}", m.event_type(), m.schema_version());
                println!("content type  {}", m.content_type());
                println!("created at    {}", m.created_at().to_rfc3339());
                println!("dead at       {}", d.dead_at.to_rfc3339());
                println!("attempts      {}", d.attempts);
                for (k, v) in m.headers() {
                    println!("header        {k}: {v}");
                }
                println!("error\n  {}", d.last_error.replace('\n', "\n  "));
                println!("payload\n{}", payload_text(m));
            }
        }
        Dead::Replay(bulk) => {
            if let Some(id) = bulk.id {
                on!(outbox, o => o.replay_dead_letter(id).await)?;
                say(
                    json,
                    json!({"replayed": 1}),
                    &format!("{id} is pending again."),
                );
                return Ok(());
            }
            let matching = count_matching(outbox, &bulk.filter).await?;
            if matching == 0 {
                say(json, json!({"replayed": 0}), "no dead letters match");
                return Ok(());
            }
            confirm(bulk.yes, &format!("Replay {matching} dead letter(s)?"))?;
            let mut replayed = 0u64;
            let mut not_replayed = Vec::new();
            let mut after: Option<i64> = None;
            let mut left = bulk.filter.limit.map(u64::from);
            while let Some(filter) = next_page(&bulk.filter, after, left) {
                let report = on!(outbox, o => o.replay_dead_letters(&filter).await)?;
                let met = report.replayed + report.not_replayed.len() as u64;
                if met == 0 {
                    break;
                }
                // The replay's candidates went back or stayed (listed);
                // every matching dead letter left up to the last of them
                // is one that stayed: go on past those.
                if let Some(p) = report.not_replayed.iter().map(|n| n.position).max() {
                    after = Some(after.map_or(p, |a| a.max(p)));
                }
                replayed += report.replayed;
                not_replayed.extend(report.not_replayed);
                left = left.map(|l| l.saturating_sub(met));
                progress(json, "replayed", replayed, matching);
            }
            end_progress(json);
            let value = json!({
                "replayed": replayed,
                "not_replayed": not_replayed.iter().map(|n| json!({
                    "id": n.id.to_string(), "position": n.position
                })).collect::<Vec<_>>(),
            });
            let mut text = format!("{replayed} dead letter(s) pending again.");
            if !not_replayed.is_empty() {
                text.push_str(&format!(
                    " {} stayed: their id is pending again already.",
                    not_replayed.len()
                ));
            }
            say(json, value, &text);
        }
        Dead::Discard(bulk) => {
            if let Some(id) = bulk.id {
                on!(outbox, o => o.discard_dead_letter(id).await)?;
                say(json, json!({"discarded": 1}), &format!("{id} discarded."));
                return Ok(());
            }
            let matching = count_matching(outbox, &bulk.filter).await?;
            if matching == 0 {
                say(json, json!({"discarded": 0}), "no dead letters match");
                return Ok(());
            }
            confirm(
                bulk.yes,
                &format!("Discard {matching} dead letter(s) for good?"),
            )?;
            let mut discarded = 0u64;
            let mut kept = 0u64;
            let mut after: Option<i64> = None;
            let mut left = bulk.filter.limit.map(u64::from);
            while let Some(filter) = next_page(&bulk.filter, after, left) {
                let page: Vec<DeadLetter> =
                    on!(outbox, o => o.dead_letters_matching(&filter).await)?;
                let Some(last) = page.last().map(|d| d.message.position()) else {
                    break;
                };
                for d in &page {
                    // Discarding an id takes its oldest dead letter: only
                    // when that is the one met, so nothing outside the
                    // filter goes.
                    let oldest = DeadLetterFilter::new().id(d.id()).limit(1);
                    let first: Vec<DeadLetter> =
                        on!(outbox, o => o.dead_letters_matching(&oldest).await)?;
                    if first.first().map(|f| f.message.position()) != Some(d.message.position()) {
                        kept += 1;
                        continue;
                    }
                    match on!(outbox, o => o.discard_dead_letter(d.id()).await) {
                        Ok(()) => discarded += 1,
                        Err(outbox::Error::DeadLetterNotFound(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                after = Some(last);
                left = left.map(|l| l - page.len() as u64);
                progress(json, "discarded", discarded, matching);
            }
            end_progress(json);
            let mut text = format!("{discarded} dead letter(s) discarded.");
            if kept > 0 {
                text.push_str(&format!(
                    " {kept} kept: an older dead letter of the same id, which the filter \
                     leaves out, goes first (`outbox dead show ID` shows it)."
                ));
            }
            say(json, json!({"discarded": discarded, "kept": kept}), &text);
        }
    }
    Ok(())
}

/// Dead letters handled per page of a bulk operation.
const PAGE: u64 = 500;

/// The filter of a bulk operation's next page: past `after`, at most
/// [`PAGE`] and what is `left` of its limit; `None` once the limit is met.
fn next_page(f: &Filter, after: Option<i64>, left: Option<u64>) -> Option<DeadLetterFilter> {
    let chunk = left.map_or(PAGE, |l| l.min(PAGE));
    if chunk == 0 {
        return None;
    }
    let filter = to_filter(f, Some(chunk as u32));
    Some(match after {
        Some(a) => filter.after_position(a),
        None => filter,
    })
}

/// How many dead letters a bulk operation will meet (at most its limit).
async fn count_matching(outbox: &Outbox, f: &Filter) -> Outcome<u64> {
    let mut n = 0u64;
    let mut after = None;
    loop {
        let mut filter = to_filter(f, Some(PAGE as u32));
        if let Some(a) = after {
            filter = filter.after_position(a);
        }
        let page: Vec<DeadLetter> = on!(outbox, o => o.dead_letters_matching(&filter).await)?;
        n += page.len() as u64;
        match page.last() {
            Some(d) if page.len() as u64 == PAGE => after = Some(d.message.position()),
            _ => break,
        }
        if f.limit.is_some_and(|l| n >= u64::from(l)) {
            break;
        }
    }
    Ok(f.limit.map_or(n, |l| n.min(u64::from(l))))
}

fn to_filter(f: &Filter, limit: Option<u32>) -> DeadLetterFilter {
    let mut filter = DeadLetterFilter::new();
    if let Some(t) = &f.topic {
        filter = filter.topic(t.clone());
    }
    if let Some(k) = &f.key {
        filter = filter.partition_key(k.clone());
    }
    if let Some(e) = &f.error {
        filter = filter.error_contains(e.clone());
    }
    if let Some(t) = f.since {
        filter = filter.dead_since(t);
    }
    if let Some(t) = f.before {
        filter = filter.dead_before(t);
    }
    if let Some(l) = limit {
        filter = filter.limit(l);
    }
    filter
}

/// Asks before a bulk change; refuses without a terminal unless `yes`.
fn confirm(yes: bool, question: &str) -> Outcome<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure(format!(
            "{question} Not without a confirmation: add --yes to run it from a script"
        )));
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Failure("cancelled; nothing was changed".into()))
    }
}

/// A progress line on a terminal's stderr.
fn progress(json: bool, what: &str, done: u64, total: u64) {
    if json || !std::io::stderr().is_terminal() {
        return;
    }
    let width = 30u64;
    let filled = (done.min(total) * width / total.max(1)) as usize;
    eprint!(
        "\r[{}{}] {what} {done}/{total}",
        "#".repeat(filled),
        " ".repeat(width as usize - filled)
    );
}

fn end_progress(json: bool) {
    if !json && std::io::stderr().is_terminal() {
        eprintln!();
    }
}

fn dead_json(d: &DeadLetter, whole: bool) -> Value {
    let m = &d.message;
    let mut v = json!({
        "id": m.id().to_string(),
        "position": m.position(),
        "topic": m.topic(),
        "partition_key": m.partition_key(),
        "event_type": m.event_type(),
        "attempts": d.attempts,
        "last_error": d.last_error,
        "dead_at": d.dead_at,
        "created_at": m.created_at(),
    });
    if whole {
        v["schema_version"] = json!(m.schema_version());
        v["content_type"] = json!(m.content_type());
        v["headers"] = json!(m.headers());
        v["payload"] = match serde_json::from_slice::<Value>(m.payload()) {
            Ok(p) => p,
            Err(_) => json!(String::from_utf8_lossy(m.payload())),
        };
    }
    v
}

fn payload_text(m: &OutboxMessage) -> String {
    match serde_json::from_slice::<Value>(m.payload()) {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(m.payload()).into_owned(),
    }
}

// ---------------------------------------------------------- blocked keys

async fn blocked(outbox: &Outbox, json: bool, command: Blocked) -> Outcome<()> {
    match command {
        Blocked::List => {
            let keys: Vec<BlockedKey> = on!(outbox, o => o.blocked_keys().await)?;
            if json {
                println!("{}", Value::Array(keys.iter().map(blocked_json).collect()));
            } else if keys.is_empty() {
                println!("no blocked keys");
            } else {
                let now = Utc::now();
                table(
                    &["KEY", "POSITION", "SINCE", "HELD BY"],
                    keys.iter()
                        .map(|k| {
                            vec![
                                k.partition_key.clone(),
                                k.position.to_string(),
                                format!("{} ago", human(age_of(now, k.since))),
                                holder(k.message).to_owned(),
                            ]
                        })
                        .collect(),
                );
            }
        }
        Blocked::Unblock { key } => {
            let lifted = on!(outbox, o => o.unblock(&key).await)?;
            if !lifted {
                return Err(Failure(format!(
                    "key {key:?} is not blocked: `outbox blocked list` shows the blocked keys"
                )));
            }
            say(
                json,
                json!({"unblocked": key}),
                &format!("{key} unblocked: its next message goes out."),
            );
        }
    }
    Ok(())
}

fn holder(m: BlockingMessage) -> &'static str {
    match m {
        BlockingMessage::Retrying => "a message being retried",
        BlockingMessage::Dead => "a dead letter",
        BlockingMessage::Gone => "nothing (swept soon)",
        _ => "unknown",
    }
}

fn blocked_json(k: &BlockedKey) -> Value {
    json!({
        "key": k.partition_key,
        "position": k.position,
        "since": k.since,
        "held_by": match k.message {
            BlockingMessage::Retrying => "retrying",
            BlockingMessage::Dead => "dead",
            BlockingMessage::Gone => "gone",
            _ => "unknown",
        },
    })
}

// --------------------------------------------------------- purge and tail

async fn purge(outbox: &Outbox, json: bool, older_than: Duration, changes: bool) -> Outcome<()> {
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

async fn tail(
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

// ------------------------------------------------------------- formatting

/// Prints rows under a header, in columns as wide as their widest cell.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        line(r);
    }
}

fn age_of(now: DateTime<Utc>, then: DateTime<Utc>) -> Duration {
    (now - then).to_std().unwrap_or(Duration::ZERO)
}

/// A duration for a person: the two largest units.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A size for a person.
fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    if line.chars().count() > max {
        format!("{}...", line.chars().take(max).collect::<String>())
    } else {
        line.to_owned()
    }
}

/// `90s`, `5m`, `12h`, `7d` (or a number of seconds).
fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: write 90s, 5m, 12h or 7d"))?;
    let unit_secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?} is not a duration: write 90s, 5m, 12h or 7d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(unit_secs)))
}

/// An RFC 3339 time, or an age (`1h`: an hour ago).
fn parse_time(s: &str) -> std::result::Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let age = parse_duration(s)
        .map_err(|_| format!("{s:?} is neither an RFC 3339 time nor an age like 1h"))?;
    ago(age).map_err(|Failure(e)| e)
}

/// The time `age` ago; an age beyond the calendar is an error.
fn ago(age: Duration) -> Outcome<DateTime<Utc>> {
    chrono::Duration::from_std(age)
        .ok()
        .and_then(|d| Utc::now().checked_sub_signed(d))
        .ok_or_else(|| Failure(format!("{} is too long ago", human(age))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(12)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("").is_err());
        let t = parse_time("2026-01-02T03:04:05Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-01-02T03:04:05+00:00");
        let hour_ago = parse_time("1h").unwrap();
        let age = Utc::now() - hour_ago;
        assert!((3599..=3601).contains(&age.num_seconds()));
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn passwords_are_left_out_of_messages() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/app"),
            "postgres://app:***@db:5432/app"
        );
        assert_eq!(
            redact("mysql://root@127.0.0.1/test"),
            "mysql://root@127.0.0.1/test"
        );
        assert_eq!(redact("sqlite:app.db"), "sqlite:app.db");
    }

    #[test]
    fn durations_read_for_people() {
        assert_eq!(human(Duration::from_millis(20)), "20ms");
        assert_eq!(human(Duration::from_secs(75)), "1m 15s");
        assert_eq!(human(Duration::from_secs(2 * 3600 + 120)), "2h 2m");
        assert_eq!(human(Duration::from_secs(3 * 86_400 + 3600)), "3d 1h");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
    }
}
