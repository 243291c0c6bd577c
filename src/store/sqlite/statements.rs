//! The SQL this backend runs, one statement per file under `sql/`, rendered
//! once from the validated table names.

/// Columns bound per row by an insert.
pub(super) const INSERT_COLUMNS: usize = 9;

use crate::store::statements::parameter_rows;

include!(concat!(env!("OUT_DIR"), "/sqlite_statements.rs"));

// Lists of values are bound as one JSON array and read with `json_each`,
// so a statement never approaches SQLite's bound-parameter limit.
impl Sql {
    /// One multi-row insert per chunk, as one multi-statement query. Its
    /// text depends only on the chunks' sizes, never on a value.
    pub(super) fn insert_batch(&self, chunks: impl Iterator<Item = usize>) -> String {
        let mut sql = String::new();
        for rows in chunks {
            let values = parameter_rows(rows, INSERT_COLUMNS);
            sql.push_str(&self.insert_batch_template.replace("{rows}", &values));
            sql.push_str(";\n");
        }
        sql
    }
}
