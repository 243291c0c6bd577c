//! The advisory-lock classes of an outbox: stable numbers derived from its
//! table names, so every process using the same tables takes the same locks
//! and outboxes with other names never contend.

use crate::store::TableNames;

/// The advisory-lock class of the per-key commit-order locks an enqueue
/// takes (see [`commit_order_lock`](super::PgOutboxBuilder::commit_order_lock)).
pub(super) fn commit_order_lock_class(names: &TableNames) -> i32 {
    fnv1a32(names.messages.as_bytes())
}

/// The advisory-lock class of an outbox's per-key locks: changes of an
/// entity take the same lock as messages of its partition key.
pub(crate) fn change_lock_class(names: &TableNames) -> i32 {
    commit_order_lock_class(names)
}

/// The advisory-lock class that serializes migrations of one outbox.
pub(super) fn migration_lock_class(names: &TableNames) -> i32 {
    fnv1a32(names.migrations.as_bytes())
}

fn fnv1a32(bytes: &[u8]) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h as i32
}
