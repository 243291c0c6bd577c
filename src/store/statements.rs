//! How a backend declares the SQL it runs: one statement per file under
//! its `sql/` folder, named after the field that holds it, rendered once
//! from the validated table names. `build.rs` declares each backend's
//! `Sql` from those files (and from `store/sql/`, the statements every
//! dialect writes alike); a part that several statements must state alike
//! (a filter, a fence) is a fragment, `sql/fragments/<name>.sql`, which a
//! statement names as `{name}`.
//!
//! Table names are configurable, so the statements cannot be checked at
//! compile time; `{messages}`-style placeholders are filled by
//! [`TableNames::render`](super::TableNames::render) from names validated
//! as identifiers, and nothing else is ever spliced in. Values travel as
//! bound parameters.

use super::TableNames;

/// Renders one statement file: its fragments placed, its table names
/// filled. The comment lines that open a file are there for its reader and
/// are not sent, nor is the closing `;`, which only ends the statement for
/// a reader who runs the file on its own; comments inside the statement
/// stay with the line they explain.
pub(crate) fn render(names: &TableNames, fragments: &[(&str, &str)], file: &str) -> String {
    let mut sql = body(file);
    for (placeholder, fragment) in fragments {
        sql = sql.replace(placeholder, &body(fragment));
    }
    names.render(&sql)
}

/// A statement file without its opening comment lines and closing `;`.
pub(crate) fn body(file: &str) -> String {
    let body = file
        .lines()
        .skip_while(|l| {
            let l = l.trim_start();
            l.is_empty() || l.starts_with("--")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let body = body.trim_end();
    body.strip_suffix(';').unwrap_or(body).to_owned()
}

/// `n` rows of `columns` parameters each, `(?, ?), (?, ?)`, for a
/// multi-row insert. The text depends only on the two numbers.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) fn parameter_rows(n: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row.as_str(); n].join(", ")
}
