//! `outbox blocked`: keys held back behind a failed message.

use chrono::Utc;
use outbox::{BlockedKey, BlockingMessage};
use serde_json::{json, Value};

use crate::format::{age_of, human, table};
use crate::{say, Blocked, Failure, Outbox, Outcome};

pub(crate) async fn blocked(outbox: &Outbox, json: bool, command: Blocked) -> Outcome<()> {
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

pub(crate) fn blocked_json(k: &BlockedKey) -> Value {
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
