//! The SQL this backend runs, one statement per file under `sql/`, rendered
//! once from the validated table names.

/// Columns bound per row by an insert.
pub(super) const INSERT_COLUMNS: usize = 9;

crate::store::statements::statements! {
    @fragments(dead_letter_filter);

    insert,
    /// A multi-row insert whose `{rows}` are filled in by
    /// [`Sql::insert_batch`].
    insert_batch_template,
    claim,
    sweep_gone_blocks,
    park,
    unpark,
    unpark_lifted,
    wake_sleeping,
    fence,
    delete_seqs,
    copy_published,
    unblock,
    key_seq_read,
    key_seq_upsert,
    retry,
    copy_dead,
    block,
    heartbeat_up,
    heartbeat_gone,
    heartbeat_count,
    renew,
    acquire,
    release,
    leave,
    bucket_count,
    stats,
    purge,
    dead_letters_matching,
    /// A replay: read the candidates, copy back, unblock, delete.
    replay_candidates,
    replay_insert,
    replay_unblock,
    replay_delete,
    discard_dead_letter,
    blocked_keys,
    unblock_key,
    discard_unblock,
    pending_count,
    published,
    published_since,
    topic_stats,
    relays,
}

// Lists of values are bound as one JSON array and read with `json_each`,
// so a statement never approaches SQLite's bound-parameter limit.
impl Sql {
    /// One multi-row insert per chunk, as one multi-statement query. Its
    /// text depends only on the chunks' sizes, never on a value.
    pub(super) fn insert_batch(&self, chunks: impl Iterator<Item = usize>) -> String {
        let row = format!("({})", ["?"; INSERT_COLUMNS].join(", "));
        let mut sql = String::new();
        for rows in chunks {
            let mut values = String::with_capacity(rows * (row.len() + 2));
            for i in 0..rows {
                if i > 0 {
                    values.push_str(", ");
                }
                values.push_str(&row);
            }
            sql.push_str(&self.insert_batch_template.replace("{rows}", &values));
            sql.push_str(";\n");
        }
        sql
    }
}
