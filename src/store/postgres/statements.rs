//! Every statement the PostgreSQL backend runs, each in its own file under
//! `sql/` (named after the field that holds it) so it can be read and
//! EXPLAINed on its own; see [`statements`] for how they are rendered.

include!(concat!(env!("OUT_DIR"), "/postgres_statements.rs"));

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
