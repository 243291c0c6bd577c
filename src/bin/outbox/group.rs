//! The outboxes of a group, named by `--outbox NAME=URL` and `--outboxes
//! FILE`: `outbox group status` and the group's console.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::format::{human, table};
use crate::status::{report, Report};
use crate::{open, redact, ConsoleArgs, Failure, Outcome, Settings};

/// Outboxes read at once: a group of hundreds must not open hundreds of
/// connections together.
const AT_ONCE: usize = 8;

/// An outbox of the group.
#[derive(Debug, Clone)]
pub(crate) struct Named {
    pub(crate) name: String,
    pub(crate) url: String,
}

/// The outboxes `--outbox` and `--outboxes` name, in that order; none if
/// neither is given. A bad name, a name given twice or a line of the file
/// without a URL is an error naming it.
pub(crate) fn named_outboxes(options: &[String], file: Option<&Path>) -> Outcome<Vec<Named>> {
    let mut named = Vec::new();
    for given in options {
        let Some((name, url)) = given.split_once('=') else {
            return Err(Failure(format!(
                "--outbox {:?}: write NAME=URL",
                redact(given)
            )));
        };
        named.push((
            format!("--outbox {name:?}"),
            Named {
                name: name.to_owned(),
                url: url.trim().to_owned(),
            },
        ));
    }
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| Failure(format!("cannot read {}: {e}", file.display())))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("{} line {}", file.display(), n + 1);
            let Some((name, url)) = line.rsplit_once(char::is_whitespace) else {
                return Err(Failure(format!(
                    "{at}: write the outbox's name, then its URL (NAME URL)"
                )));
            };
            named.push((
                at,
                Named {
                    name: name.trim().to_owned(),
                    url: url.to_owned(),
                },
            ));
        }
    }
    let mut seen: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for (at, n) in &named {
        check_name(&n.name).map_err(|reason| Failure(format!("{at}: the name {reason}")))?;
        if n.url.is_empty() {
            return Err(Failure(format!("{at}: no URL for {:?}", n.name)));
        }
        if let Some(first) = seen.insert(&n.name, at) {
            return Err(Failure(format!(
                "the outbox name {:?} is given twice ({first}, {at}): each outbox needs a \
                 name of its own",
                n.name
            )));
        }
    }
    Ok(named.into_iter().map(|(_, n)| n).collect())
}

/// A name as a relay group takes it; the reason it is refused otherwise.
fn check_name(name: &str) -> std::result::Result<(), String> {
    outbox::RelayGroup::validate_name(name).map_err(|e| match e {
        outbox::Error::InvalidConfig { reason, .. } => reason,
        other => other.to_string(),
    })
}

/// What was found of one outbox.
struct Row {
    named: Named,
    found: Outcome<Report>,
}

impl Row {
    fn verdict(&self) -> &'static str {
        match &self.found {
            Ok(r) if r.attention.is_empty() => "ok",
            Ok(_) => "needs attention",
            Err(_) => "unreachable",
        }
    }
}

/// Reads every outbox, [`AT_ONCE`] at a time, each within `timeout`; in
/// the order they were named.
async fn read_all(
    named: Vec<Named>,
    settings: Arc<Settings>,
    max_age: Duration,
    timeout: Duration,
) -> Vec<Row> {
    futures_util::stream::iter(named)
        .map(|n| {
            let settings = settings.clone();
            async move {
                let read = async {
                    let outbox = open(&n.url, &settings, false).await?;
                    report(&outbox, max_age).await
                };
                let found = match tokio::time::timeout(timeout, read).await {
                    Ok(found) => found,
                    Err(_) => Err(Failure(format!(
                        "{} did not answer within {}",
                        redact(&n.url),
                        human(timeout)
                    ))),
                };
                Row { named: n, found }
            }
        })
        .buffered(AT_ONCE)
        .collect()
        .await
}

/// `outbox group status`.
pub(crate) async fn status(
    named: Vec<Named>,
    settings: Arc<Settings>,
    json: bool,
    max_age: Duration,
    timeout: Duration,
) -> Outcome<ExitCode> {
    if named.is_empty() {
        return Err(no_outboxes());
    }
    let rows = read_all(named, settings, max_age, timeout).await;
    let read: Vec<&Report> = rows.iter().filter_map(|r| r.found.as_ref().ok()).collect();
    let pending: i64 = read.iter().map(|r| r.stats.pending).sum();
    let oldest = read.iter().filter_map(|r| r.stats.oldest_pending_age).max();
    let dead: i64 = read.iter().map(|r| r.stats.dead_letters).sum();
    let blocked: usize = read.iter().map(|r| r.blocked.len()).sum();
    let live: usize = read.iter().map(|r| live_relays(r)).sum();
    let count = |verdict: &str| rows.iter().filter(|r| r.verdict() == verdict).count();
    let (ok, attention, unreachable) =
        (count("ok"), count("needs attention"), count("unreachable"));
    if json {
        let value = json!({
            "outboxes": rows.iter().map(row_json).collect::<Vec<_>>(),
            "totals": {
                "outboxes": rows.len(),
                "ok": ok,
                "needs_attention": attention,
                "unreachable": unreachable,
                "pending": pending,
                "oldest_pending_age_seconds": oldest.map(|d| d.as_secs_f64()),
                "dead_letters": dead,
                "blocked_keys": blocked,
                "live_relays": live,
            },
        });
        println!("{value}");
    } else {
        let mut lines: Vec<Vec<String>> = rows
            .iter()
            .map(|row| match &row.found {
                Ok(r) => vec![
                    row.named.name.clone(),
                    r.stats.pending.to_string(),
                    r.stats
                        .oldest_pending_age
                        .map_or_else(|| "-".to_owned(), human),
                    r.stats.dead_letters.to_string(),
                    r.blocked.len().to_string(),
                    live_relays(r).to_string(),
                    row.verdict().to_owned(),
                ],
                Err(_) => {
                    let mut cells = vec![row.named.name.clone()];
                    cells.extend(std::iter::repeat_n("-".to_owned(), 5));
                    cells.push(row.verdict().to_owned());
                    cells
                }
            })
            .collect();
        lines.push(vec![
            "TOTAL".to_owned(),
            pending.to_string(),
            oldest.map_or_else(|| "-".to_owned(), human),
            dead.to_string(),
            blocked.to_string(),
            live.to_string(),
            format!("{ok} ok, {attention} need attention, {unreachable} unreachable"),
        ]);
        table(
            &[
                "OUTBOX", "PENDING", "OLDEST", "DEAD", "BLOCKED", "RELAYS", "STATUS",
            ],
            lines,
        );
        let mut said = false;
        for row in &rows {
            let reasons = match &row.found {
                Ok(r) => r.attention.clone(),
                Err(Failure(e)) => vec![format!("unreachable: {e}")],
            };
            for reason in reasons {
                if !said {
                    println!();
                    said = true;
                }
                println!("{}: {reason}", row.named.name);
            }
        }
    }
    Ok(if ok == rows.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn live_relays(r: &Report) -> usize {
    r.relays.iter().filter(|r| r.alive).count()
}

fn row_json(row: &Row) -> Value {
    let mut value = json!({
        "name": row.named.name,
        "url": redact(&row.named.url),
        "verdict": row.verdict(),
    });
    match &row.found {
        Ok(r) => {
            value["pending"] = json!(r.stats.pending);
            value["oldest_pending_age_seconds"] =
                json!(r.stats.oldest_pending_age.map(|d| d.as_secs_f64()));
            value["dead_letters"] = json!(r.stats.dead_letters);
            value["blocked_keys"] = json!(r.blocked.len());
            value["live_relays"] = json!(live_relays(r));
            value["attention"] = json!(r.attention);
        }
        Err(Failure(e)) => value["error"] = json!(e),
    }
    value
}

fn no_outboxes() -> Failure {
    Failure(
        "no outboxes: name them with --outbox NAME=URL (repeated) or --outboxes FILE \
         (a line `NAME URL` each)"
            .into(),
    )
}

/// `outbox console` over several outboxes: an index of them, each one's
/// console under it. Every outbox must open; one that does not is an
/// error naming it.
pub(crate) async fn serve_console(
    named: Vec<Named>,
    settings: Arc<Settings>,
    args: ConsoleArgs,
) -> Outcome<()> {
    use outbox::console::ConsoleGroup;
    let mut group = ConsoleGroup::new();
    for n in named {
        let outbox = open(&n.url, &settings, false)
            .await
            .map_err(|Failure(e)| Failure(format!("outbox {:?}: {e}", n.name)))?;
        let console = crate::configured(outbox, &args);
        group = group.add(&n.name, console)?;
    }
    let group = match crate::console_credentials(&args)? {
        Some(crate::Credentials::Basic(user, password)) => group.basic_auth(user, password),
        Some(crate::Credentials::Bearer(token)) => group.bearer_token(token),
        None => group,
    };
    let listener = crate::listen(&args).await?;
    group.read_only(args.read_only).serve(listener).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("outboxes-{}", uuid::Uuid::now_v7()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn outboxes_are_named_by_option_and_file() {
        let path = file("# tenants\n\neu west  postgres://relay@db-eu/app\nus sqlite:us.db\n");
        let named = named_outboxes(&["apac=sqlite:a.db?mode=ro".to_owned()], Some(&path)).unwrap();
        let pairs: Vec<_> = named.iter().map(|n| (&*n.name, &*n.url)).collect();
        assert_eq!(
            pairs,
            [
                ("apac", "sqlite:a.db?mode=ro"),
                ("eu west", "postgres://relay@db-eu/app"),
                ("us", "sqlite:us.db"),
            ]
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn bad_and_repeated_names_are_refused_by_name() {
        let err = |options: &[&str], text: &str| {
            let path = file(text);
            let options: Vec<String> = options.iter().map(|o| (*o).to_owned()).collect();
            let Failure(e) = named_outboxes(&options, Some(&path)).unwrap_err();
            std::fs::remove_file(path).unwrap();
            e
        };
        let e = err(&["eu=sqlite:a.db"], "eu sqlite:b.db\n");
        assert!(e.contains("\"eu\" is given twice"), "{e}");
        let e = err(&[], "lonely\n");
        assert!(e.contains("line 1"), "{e}");
        let e = err(&["=sqlite:a.db"], "");
        assert!(e.contains("is empty"), "{e}");
        let e = err(&[&format!("{}=sqlite:a.db", "n".repeat(129))], "");
        assert!(e.contains("longer than 128"), "{e}");
        let e = err(&["postgres://u:pw@h/db"], "");
        assert!(!e.contains("pw@"), "{e}");
    }
}
