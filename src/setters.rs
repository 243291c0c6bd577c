//! The builders' plain setters, declared once.

/// Declares setters that each store one value in a field of the builder
/// (or message) and hand it back, `#[must_use]`:
///
/// ```text
/// setters! {
///     /// Its documentation.
///     pub fn table_prefix(prefix: impl Into<String>) => prefix = prefix.into();
/// }
/// ```
///
/// Setters that validate or do more than store are written out.
macro_rules! setters {
    ($(
        $(#[$attr:meta])*
        $vis:vis fn $name:ident($arg:ident: $ty:ty) => $($field:ident).+ = $value:expr;
    )*) => {
        $(
            $(#[$attr])*
            #[must_use]
            $vis fn $name(mut self, $arg: $ty) -> Self {
                self.$($field).+ = $value;
                self
            }
        )*
    };
}
