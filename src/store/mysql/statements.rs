//! The SQL this backend runs, one statement per file under `sql/`, rendered
//! once from the validated table names.

/// Columns bound per row by an insert.
pub(super) const INSERT_COLUMNS: usize = 9;

use crate::store::statements::parameter_rows;

include!(concat!(env!("OUT_DIR"), "/mysql_statements.rs"));

impl Sql {
    /// One multi-row insert of `rows` messages (`returning`: the MariaDB
    /// form). Its text depends only on the number of rows, never on a
    /// value.
    pub(super) fn insert_batch(&self, rows: usize, returning: bool) -> String {
        let values = parameter_rows(rows, INSERT_COLUMNS);
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
    statement.replace("{pairs}", &parameter_rows(n.max(1), 2))
}

impl Sql {
    /// The commit-order locks of `n` slots in one statement.
    pub(super) fn lock_slots(&self, n: usize) -> String {
        self.lock_slots_template
            .replace("{slots}", &vec!["?"; n].join(", "))
    }
}
