//! Every statement the PostgreSQL backend runs, each in its own file under
//! `sql/` (named after the field that holds it) so it can be read and
//! EXPLAINed on its own; see [`statements`] for how they are rendered.

use crate::store::statements::statements;

statements! {
    @fragments(dead_letter_filter, ack_fence);

    // Enqueue. Given a channel, both carry a `pg_notify` in the caller's
    // transaction (see `WakeUp`).
    /// One message.
    insert,
    /// Many messages in one statement.
    insert_batch,

    // Wake-up.
    /// A `NOTIFY` of its own, outside any enqueue.
    notify,

    // Leases.
    /// Records a relay as alive; counts the live relays.
    heartbeat,
    /// Extends leases still held with the same epoch.
    renew,
    /// Takes free or expired buckets.
    acquire,
    /// Gives buckets back.
    release,
    /// Removes a relay's heartbeat.
    leave,
    /// Number of buckets.
    bucket_count,

    // Claims.
    /// Due messages of some buckets, or of all.
    claim,
    /// Deletes key blocks whose message is gone.
    sweep_gone_blocks,
    /// Parks messages held behind blocked keys.
    park,
    /// Unparks the keys of the blocks an acknowledgement lifted.
    unpark,
    /// Unparks the keys no block holds any longer.
    unpark_lifted,
    /// Wakes the messages whose retry is about due.
    wake_sleeping,

    // Acknowledgements: the common case (everything published, nothing
    // retried) in one statement...
    /// Fences, records key sequences and deletes published messages.
    ack_delete,
    /// Fences, records key sequences and moves published messages to the
    /// published table.
    ack_retain,
    // ... and the general case, one statement per kind of outcome, in one
    // transaction after the fence.
    /// The buckets still held with the same epoch.
    fence,
    /// Deletes published messages.
    delete_published,
    /// Moves published messages to the published table.
    move_published,
    /// Records published per-key sequence numbers.
    key_seq_upsert,
    /// Lifts key blocks.
    unblock,
    /// Schedules retries.
    retry,
    /// Moves messages to the dead letters.
    dead,
    /// Blocks keys behind failing heads.
    block,

    // Key sequences and maintenance.
    /// The last published sequence number of keys.
    key_seq_read,
    /// Deletes old retained messages.
    purge,
    /// Gauges for metrics.
    stats,
    /// Vacuums the messages table.
    vacuum,

    // Administration.
    /// Dead letters that match a filter, oldest first.
    dead_letters_matching,
    /// Replays the dead letters that match a filter.
    replay_dead_letters,
    /// Deletes one dead letter.
    discard_dead_letter,
    /// Blocked keys and where their blocking messages are.
    blocked_keys,
    /// Lifts one key's block.
    unblock_key,
    /// Number of pending messages.
    pending_count,
    /// Retained published messages, oldest first.
    published,
    published_since,
    topic_stats,
    relays,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TableNames;

    /// Every placeholder in every statement is filled: a misspelt one would
    /// reach the server as a syntax error only when its statement first
    /// runs.
    #[test]
    fn statements_hold_no_placeholder_after_rendering() {
        let names = TableNames::new(Some("outbox"), "p_").unwrap();
        let sql = Sql::new(&names);
        for (name, s) in sql.each() {
            let code: String = s
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect();
            assert!(!code.contains('{') && !code.contains('}'), "{name}: {code}");
        }
    }
}
