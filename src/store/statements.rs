//! How a backend declares the SQL it runs: one statement per file under
//! its `sql/` folder, named after the field that holds it, rendered once
//! from the validated table names.
//!
//! Table names are configurable, so the statements cannot be checked at
//! compile time; `{messages}`-style placeholders are filled by
//! [`TableNames::render`](super::TableNames::render) from names validated
//! as identifiers, and nothing else is ever spliced in. Values travel as
//! bound parameters.

use super::TableNames;

/// Declares a backend's `Sql`: one field per file `sql/<field>.sql` (the
/// path is relative to the file that invokes the macro), its constructor,
/// and `each()`, so a field cannot drift from the file it is read from and
/// a test can reach every statement.
///
/// A part that several statements must state alike (a filter, a fence)
/// is a fragment, `sql/fragments/<name>.sql`, listed first in
/// `@fragments(...);`; a statement names it as `{name}`.
macro_rules! statements {
    (
        $(@fragments($($fragment:ident),* $(,)?);)?
        $($(#[$doc:meta])* $name:ident,)*
    ) => {
        /// SQL rendered once from the validated table names.
        pub(super) struct Sql {
            $($(#[$doc])* pub(super) $name: String,)*
        }

        impl Sql {
            pub(super) fn new(names: &$crate::store::TableNames) -> Self {
                let fragments: &[(&str, &str)] = &[$($((
                    concat!("{", stringify!($fragment), "}"),
                    include_str!(concat!("sql/fragments/", stringify!($fragment), ".sql")),
                ),)*)?];
                Self {
                    $($name: $crate::store::statements::render(
                        names,
                        fragments,
                        include_str!(concat!("sql/", stringify!($name), ".sql")),
                    ),)*
                }
            }

            /// Each statement with its name, for tests over all of them.
            #[cfg(test)]
            pub(super) fn each(&self) -> Vec<(&'static str, &str)> {
                vec![$((stringify!($name), self.$name.as_str()),)*]
            }
        }
    };
}
pub(crate) use statements;

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
