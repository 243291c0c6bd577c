//! `outbox dead`: dead letters listed, shown, replayed and discarded, one
//! by id or in bulk.

use std::io::{IsTerminal, Write};

use chrono::Utc;
use outbox::{DeadLetter, DeadLetterFilter, OutboxMessage};
use serde_json::{json, Value};

use crate::format::{age_of, first_line, human, table};
use crate::{say, Dead, Failure, Filter, Outbox, Outcome};

pub(crate) async fn dead(outbox: &Outbox, json: bool, command: Dead) -> Outcome<()> {
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
