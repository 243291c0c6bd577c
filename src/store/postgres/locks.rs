//! Lock identities of an outbox. Commit-order locks are row locks on the
//! outbox's own `key_slots` table (see `sql/insert.sql`), so outboxes with
//! other names never contend; the class below only says whether an
//! enqueue takes one. Migrations serialize on an advisory lock whose class
//! is a stable number derived from the table names, so every process using
//! the same tables takes the same lock.

use crate::store::TableNames;

/// The value bound to say "take the commit-order lock" (see
/// [`commit_order_lock`](super::PgOutboxBuilder::commit_order_lock)); any
/// non-NULL value would do.
pub(super) fn commit_order_lock_class(names: &TableNames) -> i32 {
    fnv1a32(names.messages.as_bytes())
}

/// The same for the change log: changes of an entity take the same lock as
/// messages of its partition key.
pub(crate) fn change_lock_class(names: &TableNames) -> i32 {
    commit_order_lock_class(names)
}

/// A stable 32-bit hash (FNV-1a) of a name: the advisory-lock class that
/// serializes migrations of one set of tables is that of the name of its
/// table of versions.
pub(crate) fn fnv1a32(bytes: &[u8]) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h as i32
}
