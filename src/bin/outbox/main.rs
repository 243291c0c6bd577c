//! `outbox`: the operator's tool for an outbox on PostgreSQL, SQLite or
//! MySQL/MariaDB (feature `cli`).
//!
//! ```text
//! outbox --database-url postgres://localhost/app status
//! outbox dead list --topic orders --error timeout
//! outbox dead replay --topic orders --yes
//! outbox blocked unblock order-42
//! outbox --outboxes tenants.txt group status
//! ```
//!
//! Exit codes: 0 done (and, for `status`, nothing needs attention), 1 an
//! error (named on stderr, with what to do), 2 `status` found something
//! that needs attention (usable as a health check).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use outbox::sqlx::mysql::MySqlPoolOptions;
use outbox::sqlx::postgres::PgPoolOptions;
use outbox::sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use outbox::{MessageId, MySqlOutbox, PgOutbox, SqliteOutbox};
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
    /// One outbox of a group, as NAME=URL (the name ends at the first
    /// `=`); repeat it for each. Read by `group status` and `console`.
    /// A password in a command line is visible to other users of the
    /// machine: prefer --outboxes.
    #[arg(long = "outbox", value_name = "NAME=URL", global = true)]
    outbox: Vec<String>,
    /// A file naming a group's outboxes, one per line: the name, then
    /// the URL as the line's last word (so a name may hold spaces, e.g.
    /// `eu west  postgres://relay@db-eu/app`). Blank lines and lines
    /// starting with `#` are skipped. Names are 1 to 128 characters, no
    /// control characters, each used once (with the --outbox ones). The
    /// global --schema, --prefix and --transaction-pooling apply to every
    /// outbox.
    #[arg(long, value_name = "FILE", global = true)]
    outboxes: Option<std::path::PathBuf>,
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
    /// Serves the web console (overview, dead letters, blocked keys,
    /// export consumers) until killed; given --outbox or --outboxes, an
    /// index of those outboxes with each one's console under it.
    Console(ConsoleArgs),
    /// The outboxes named by --outbox and --outboxes, together.
    #[command(subcommand)]
    Group(Group),
}

#[derive(Debug, Subcommand)]
enum Group {
    /// One line per outbox (pending, oldest, dead letters, blocked keys,
    /// live relays, verdict) and totals; exits with 2 when an outbox needs
    /// attention or cannot be read.
    Status {
        /// A pending message older than this needs attention.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        max_age: Duration,
        /// An outbox that has not answered within this is unreachable.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

#[derive(Debug, Args)]
struct ConsoleArgs {
    /// The address to listen on. Without credentials only a loopback
    /// address is accepted (reach it through an SSH tunnel).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Require basic auth with this user; the password comes from the
    /// environment variable OUTBOX_CONSOLE_PASSWORD (never the command
    /// line, which other users of the machine can read).
    #[arg(long, conflicts_with = "bearer")]
    user: Option<String>,
    /// Require `Authorization: Bearer` with the token in the environment
    /// variable OUTBOX_CONSOLE_TOKEN (as a proxy in front adds it).
    #[arg(long)]
    bearer: bool,
    /// Refuse every change: no replay, discard or unblock.
    #[arg(long)]
    read_only: bool,
    /// Keep payloads off the page.
    #[arg(long)]
    hide_payloads: bool,
    /// How often the charts are sampled.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    sample_every: Duration,
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

mod blocked;
mod dead;
mod format;
mod group;
mod published;
mod status;

use self::format::{parse_duration, parse_time};

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
    let named = group::named_outboxes(&cli.outbox, cli.outboxes.as_deref())?;
    let settings = Arc::new(Settings::of(&cli));
    match cli.command {
        Command::Group(Group::Status { max_age, timeout }) => {
            return group::status(named, settings, cli.json, max_age, timeout).await;
        }
        Command::Console(args) if !named.is_empty() => {
            return group::serve_console(named, settings, args)
                .await
                .map(|()| ExitCode::SUCCESS);
        }
        _ => {}
    }
    let outbox = connect(&cli, !named.is_empty()).await?;
    let json = cli.json;
    match cli.command {
        Command::Status { max_age } => status::status(&outbox, json, max_age).await,
        Command::Dead(d) => dead::dead(&outbox, json, d)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Blocked(b) => blocked::blocked(&outbox, json, b)
            .await
            .map(|()| ExitCode::SUCCESS),
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
        } => published::purge(&outbox, json, older_than, changes)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Tail {
            interval,
            since,
            count,
        } => published::tail(&outbox, json, interval, since, count)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Console(args) => serve_console(outbox, args)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Group(_) => unreachable!("answered above"),
    }
}

/// `outbox console`: serves until killed.
async fn serve_console(outbox: Outbox, args: ConsoleArgs) -> Outcome<()> {
    let console = configured(outbox, &args);
    let console = match console_credentials(&args)? {
        Some(Credentials::Basic(user, password)) => console.basic_auth(user, password),
        Some(Credentials::Bearer(token)) => console.bearer_token(token),
        None => console,
    };
    let listener = listen(&args).await?;
    console.serve(listener).await?;
    Ok(())
}

/// The console of `outbox` with the options of `outbox console`,
/// credentials aside.
fn configured(outbox: Outbox, args: &ConsoleArgs) -> outbox::console::Console {
    use outbox::console::Console;
    on!(outbox, o => Console::new(o))
        .read_only(args.read_only)
        .hide_payloads(args.hide_payloads)
        .sample_every(args.sample_every)
}

/// What a console asks of its users.
enum Credentials {
    Basic(String, String),
    Bearer(String),
}

/// The console's credentials, from the environment as the options name.
fn console_credentials(args: &ConsoleArgs) -> Outcome<Option<Credentials>> {
    let secret = |var: &str| {
        std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Failure(format!("set {var}: the console's credentials come from it")))
    };
    Ok(if let Some(user) = &args.user {
        Some(Credentials::Basic(
            user.clone(),
            secret("OUTBOX_CONSOLE_PASSWORD")?,
        ))
    } else if args.bearer {
        Some(Credentials::Bearer(secret("OUTBOX_CONSOLE_TOKEN")?))
    } else {
        None
    })
}

/// The console's listener, announced on stderr.
async fn listen(args: &ConsoleArgs) -> Outcome<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Failure(format!("cannot listen on {}: {e}", args.listen)))?;
    eprintln!("outbox console on http://{}/", args.listen);
    Ok(listener)
}

/// How every outbox is opened: the global options but the URL.
#[derive(Debug, Clone)]
struct Settings {
    schema: Option<String>,
    prefix: Option<String>,
    transaction_pooling: bool,
}

impl Settings {
    fn of(cli: &Cli) -> Settings {
        Settings {
            schema: cli.schema.clone(),
            prefix: cli.prefix.clone(),
            transaction_pooling: cli.transaction_pooling,
        }
    }
}

/// Opens the outbox of `--database-url`; `named` says that outboxes were
/// named for a group, which this command does not read.
async fn connect(cli: &Cli, named: bool) -> Outcome<Outbox> {
    let Some(url) = cli.database_url.as_deref() else {
        let also = if named {
            "; --outbox and --outboxes name outboxes for `group status` and `console` only"
        } else {
            ""
        };
        return Err(Failure(format!(
            "no database: pass --database-url or set DATABASE_URL \
             (postgres://..., mysql://..., sqlite:path){also}"
        )));
    };
    open(
        url,
        &Settings::of(cli),
        matches!(cli.command, Command::Migrate),
    )
    .await
}

/// Opens the outbox the URL names. Nothing is created unless `create`
/// (for `migrate`): a SQLite file must exist.
async fn open(url: &str, settings: &Settings, create: bool) -> Outcome<Outbox> {
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
        let mut b = PgOutbox::builder(pool).transaction_pooling(settings.transaction_pooling);
        if let Some(prefix) = &settings.prefix {
            b = b.table_prefix(prefix.clone());
        }
        if let Some(schema) = &settings.schema {
            b = b.schema(schema.clone());
        }
        return Ok(Outbox::Pg(b.build()?));
    }
    if settings.schema.is_some() {
        return Err(wrong_option("schema"));
    }
    if settings.transaction_pooling {
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
        if let Some(prefix) = &settings.prefix {
            b = b.table_prefix(prefix.clone());
        }
        let o = b.build()?;
        return Ok(Outbox::MySql(o));
    }
    if url.starts_with("sqlite:") {
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
        if let Some(prefix) = &settings.prefix {
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
pub(crate) fn say(json: bool, value: Value, text: &str) {
    if json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
