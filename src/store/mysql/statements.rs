//! The SQL this backend runs, one statement per file under `sql/`, rendered
//! once from the validated table names.

/// Columns bound per row by an insert.
pub(super) const INSERT_COLUMNS: usize = 9;

crate::store::statements::statements! {
    @fragments(dead_letter_filter);

    lock_slot,
    /// The locks of a batch, whose `{slots}` are filled in by
    /// [`Sql::lock_slots`].
    lock_slots_template,
    insert,
    /// A multi-row insert whose `{rows}` are filled in by
    /// [`Sql::insert_batch`].
    insert_batch_template,
    /// The same on MariaDB, returning the ids written.
    insert_batch_returning,
    present_ids,
    claim,
    sweep_gone_blocks,
    park_candidates,
    park,
    unpark,
    lifted_keys,
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
    renewed,
    acquire_free,
    acquire,
    acquired,
    release,
    leave,
    bucket_count,
    stats,
    purge,
    dead_letters_matching,
    /// A replay: read the candidates, copy back, see which went back,
    /// unblock (`replay_blocks` read, `unblock` run), delete.
    replay_candidates,
    replay_insert,
    replay_back,
    replay_blocks,
    replay_delete,
    discard_candidate,
    discard_dead_letter,
    discard_unblock,
    blocked_keys,
    unblock_key,
    pending_count,
    published,
    published_since,
    topic_stats,
    relays,
}

impl Sql {
    /// One multi-row insert of `rows` messages (`returning`: the MariaDB
    /// form). Its text depends only on the number of rows, never on a
    /// value.
    pub(super) fn insert_batch(&self, rows: usize, returning: bool) -> String {
        let row = format!("({})", ["?"; INSERT_COLUMNS].join(", "));
        let mut values = String::with_capacity(rows * (row.len() + 2));
        for i in 0..rows {
            if i > 0 {
                values.push_str(", ");
            }
            values.push_str(&row);
        }
        let template = if returning {
            &self.insert_batch_returning
        } else {
            &self.insert_batch_template
        };
        template.replace("{rows}", &values)
    }
}

/// `statement` with its `{list}` filled with `n` parameters (at least
/// one). Lists of positions or keys go to the server as parameters of an
/// `IN` list, which it reads as ranges of an index, where a list joined
/// from `JSON_TABLE` could have it scan the table (and, in a write, wait
/// for every producer's uncommitted row it meets). The text depends only on
/// `n`: run it with `persistent(false)`.
pub(crate) fn with_list(statement: &str, n: usize) -> String {
    statement.replace("{list}", &vec!["?"; n.max(1)].join(", "))
}

/// `statement` with its `{pairs}` filled with `n` row constructors
/// `(?, ?)` (at least one), for a composite primary key read as ranges
/// the way [`with_list`] reads a simple one. Run it with
/// `persistent(false)`.
pub(crate) fn with_pairs(statement: &str, n: usize) -> String {
    statement.replace("{pairs}", &vec!["(?, ?)"; n.max(1)].join(", "))
}

impl Sql {
    /// The commit-order locks of `n` slots in one statement.
    pub(super) fn lock_slots(&self, n: usize) -> String {
        self.lock_slots_template
            .replace("{slots}", &vec!["?"; n].join(", "))
    }
}
