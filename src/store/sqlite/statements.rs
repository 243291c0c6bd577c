//! The SQL this backend runs, one statement per file under `sql/`, rendered
//! once from the validated table names.

use crate::store::TableNames;

/// Columns bound per row by an insert.
pub(super) const INSERT_COLUMNS: usize = 9;

/// SQL rendered once from the validated table names. Lists of values are
/// bound as one JSON array and read with `json_each`, so a statement never
/// approaches SQLite's bound-parameter limit.
pub(super) struct Sql {
    pub(super) insert: String,
    /// `insert_batch.sql` with its names rendered; the rows are filled in by
    /// [`Sql::insert_batch`].
    pub(super) insert_batch_template: String,
    pub(super) claim: String,
    pub(super) sweep_gone_blocks: String,
    pub(super) fence: String,
    pub(super) delete_seqs: String,
    pub(super) copy_published: String,
    pub(super) unblock: String,
    pub(super) key_seq_read: String,
    pub(super) key_seq_upsert: String,
    pub(super) retry: String,
    pub(super) copy_dead: String,
    pub(super) block: String,
    pub(super) heartbeat_up: String,
    pub(super) heartbeat_gone: String,
    pub(super) heartbeat_count: String,
    pub(super) renew: String,
    pub(super) acquire: String,
    pub(super) release: String,
    pub(super) leave: String,
    pub(super) bucket_count: String,
    pub(super) stats: String,
    pub(super) purge: String,
    pub(super) migrations_create: String,
    pub(super) migrations_lock: String,
    pub(super) migrations_version: String,
    pub(super) migrations_record: String,
    pub(super) dead_letters: String,
    pub(super) dead_letters_matching: String,
    /// A replay: read the candidates, copy back, unblock, delete.
    pub(super) replay_candidates: String,
    pub(super) replay_insert: String,
    pub(super) replay_unblock: String,
    pub(super) replay_delete: String,
    pub(super) discard_dead_letter: String,
    pub(super) blocked_keys: String,
    pub(super) unblock_key: String,
    pub(super) discard_unblock: String,
    pub(super) pending_count: String,
    pub(super) published: String,
}

impl Sql {
    pub(super) fn new(n: &TableNames) -> Self {
        let r = |file: &str| statement(n, file);
        Self {
            insert: r(include_str!("sql/insert.sql")),
            insert_batch_template: r(include_str!("sql/insert_batch.sql")),
            claim: r(include_str!("sql/claim.sql")),
            sweep_gone_blocks: r(include_str!("sql/sweep_gone_blocks.sql")),
            fence: r(include_str!("sql/fence.sql")),
            delete_seqs: r(include_str!("sql/delete_seqs.sql")),
            copy_published: r(include_str!("sql/copy_published.sql")),
            unblock: r(include_str!("sql/unblock.sql")),
            key_seq_read: r(include_str!("sql/key_seq_read.sql")),
            key_seq_upsert: r(include_str!("sql/key_seq_upsert.sql")),
            retry: r(include_str!("sql/retry.sql")),
            copy_dead: r(include_str!("sql/copy_dead.sql")),
            block: r(include_str!("sql/block.sql")),
            heartbeat_up: r(include_str!("sql/heartbeat_up.sql")),
            heartbeat_gone: r(include_str!("sql/heartbeat_gone.sql")),
            heartbeat_count: r(include_str!("sql/heartbeat_count.sql")),
            renew: r(include_str!("sql/renew.sql")),
            acquire: r(include_str!("sql/acquire.sql")),
            release: r(include_str!("sql/release.sql")),
            leave: r(include_str!("sql/leave.sql")),
            bucket_count: r(include_str!("sql/bucket_count.sql")),
            stats: r(include_str!("sql/stats.sql")),
            purge: r(include_str!("sql/purge.sql")),
            migrations_create: r(include_str!("sql/migrations_create.sql")),
            migrations_lock: r(include_str!("sql/migrations_lock.sql")),
            migrations_version: r(include_str!("sql/migrations_version.sql")),
            migrations_record: r(include_str!("sql/migrations_record.sql")),
            dead_letters: r(include_str!("sql/dead_letters.sql")),
            dead_letters_matching: r(include_str!("sql/dead_letters_matching.sql")),
            replay_candidates: r(include_str!("sql/replay_candidates.sql")),
            replay_insert: r(include_str!("sql/replay_insert.sql")),
            replay_unblock: r(include_str!("sql/replay_unblock.sql")),
            replay_delete: r(include_str!("sql/replay_delete.sql")),
            discard_dead_letter: r(include_str!("sql/discard_dead_letter.sql")),
            blocked_keys: r(include_str!("sql/blocked_keys.sql")),
            unblock_key: r(include_str!("sql/unblock_key.sql")),
            discard_unblock: r(include_str!("sql/discard_unblock.sql")),
            pending_count: r(include_str!("sql/pending_count.sql")),
            published: r(include_str!("sql/published.sql")),
        }
    }

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

/// Renders one statement file. The comment lines that open it are there for
/// its reader and are not sent, nor is the closing `;`, which only ends the
/// statement for a reader who runs the file on its own; comments inside the
/// statement stay with the line they explain.
fn statement(n: &TableNames, file: &str) -> String {
    let body = file
        .lines()
        .skip_while(|l| {
            let l = l.trim_start();
            l.is_empty() || l.starts_with("--")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let body = body.trim_end();
    n.render(body.strip_suffix(';').unwrap_or(body))
}
