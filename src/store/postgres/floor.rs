//! The claims' low-water mark (migration 8): the position below which no
//! message can be claimed, so claims skip what was deleted below it. While
//! a long transaction elsewhere holds back the horizon, vacuum keeps every
//! deleted row, and a claim walking from the first entry of the ready
//! index would visit each of them.
//!
//! The relays' upkeep raises the mark in two steps a second apart. A mark
//! is the sequence's last position, then an id given to the marking
//! transaction (`floor_xid.sql`), newer than the id of every transaction
//! that holds a position up to the mark, because an insert gives its
//! transaction an id before it draws a position (`insert.sql`). Once no
//! transaction with an id up to the mark's is running (the oldest running
//! one is newer), every position up to the mark is committed or gone, and
//! `floor_advance.sql` raises the mark to just past it, or to the first
//! message still in the claims' path if that is lower. (The in-progress
//! list of a snapshot taken after the position would not do: it leaves out
//! running transactions with ids at or above its `xmax`, one past the
//! newest finished id.) Whatever puts a message back below the mark
//! lowers it in its own statement (`fragments/lower_floor.sql`).
//!
//! Every [`REPAIR_EVERY`] passes, starting with the first, the upkeep also
//! looks below the mark for a message in the claims' path that a statement
//! put back without lowering it (`floor_repair.sql`): a relay built before
//! migration 8 still running beside newer ones, or an UPDATE by hand. Such
//! a message waits at most that many passes, instead of for ever.
//!
//! What keeps the mark down: a message in the claims' path (one retried
//! soon, one held behind its key's failure), and a transaction with an id
//! that stays open. A read-only transaction, such as a report or a dump,
//! has no id and keeps nothing down, which is the case the mark is for.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

use super::begin;
use super::relay_ops::CLAIM_BEGIN_JOINS;
use super::PgOutbox;
use crate::error::{error_chain, Result};

/// How many passes (about a second each) apart the mark is checked for a
/// message left below it (`floor_repair.sql`, which reads the dead rows
/// below the mark that the claims skip).
pub(super) const REPAIR_EVERY: u32 = 10;

/// A mark waiting for its transactions to end, the passes so far, and
/// whether a failure was reported already.
#[derive(Debug, Default)]
pub(super) struct Floor {
    /// The position and the marking transaction's id, as text.
    mark: Mutex<Option<(i64, String)>>,
    passes: AtomicU32,
    warned: AtomicBool,
}

/// Whether a pass of the mark has anything to do: the look below it is
/// due, or the mark (`floor`) is not yet past the sequence's `last`
/// position.
fn pass_due(last: Option<i64>, floor: Option<i64>, repair_due: bool) -> bool {
    repair_due
        || match (last, floor) {
            (None, _) => false,
            (Some(last), Some(floor)) => floor <= last,
            (Some(_), None) => true,
        }
}

impl PgOutbox {
    /// Raises the mark if the pending one has settled, then takes the next
    /// one. A failure (a role that may not read the sequence, say) leaves
    /// the mark where it is, which is always safe, and is reported once.
    ///
    /// `last` and `floor` are the sequence's last position and the mark,
    /// read just before: once the mark is past every position handed out,
    /// there is nothing to raise, and the pass is skipped (a quiet
    /// outbox's upkeep then takes no transaction id) unless the look below
    /// the mark is due. A skipped pass never raises the mark, so skipping
    /// on stale figures is safe; the next pass that runs takes a mark.
    pub(super) async fn advance_floor(&self, last: Option<i64>, floor: Option<i64>) {
        let repair_due = self
            .inner
            .floor
            .passes
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(REPAIR_EVERY);
        if !pass_due(last, floor, repair_due) {
            return;
        }
        match self.try_advance_floor(repair_due).await {
            Ok(()) => {}
            Err(e) => {
                if !self.inner.floor.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %error_chain(&e),
                        "outbox relay: cannot raise the claims' low-water mark; claims \
                         read from the first message, which is slower while a long \
                         transaction holds back vacuum"
                    );
                }
            }
        }
    }

    /// One transaction a pass: the next mark first, while the transaction
    /// has no id (floor_xid.sql gives it one), then the look below the
    /// mark when it is due, then the raise to the pending mark. A lowering
    /// by the look is seen by the raise that follows it in this
    /// transaction, which then stops at the message it found.
    async fn try_advance_floor(&self, repair_due: bool) -> Result<()> {
        let sql = &self.inner.sql;
        let mut tx = begin(self.relay_pool(), Some(CLAIM_BEGIN_JOINS)).await?;
        // In this order, in two statements: the id must be newer than the
        // position (floor_xid.sql).
        let seq: Option<i64> = sqlx::query_scalar(&sql.floor_mark)
            .persistent(self.named())
            .bind(&self.inner.names.messages)
            .fetch_one(&mut *tx)
            .await?;
        let next = match seq {
            Some(seq) => {
                let xid: String = sqlx::query_scalar(&sql.floor_xid)
                    .persistent(self.named())
                    .fetch_one(&mut *tx)
                    .await?;
                Some((seq, xid))
            }
            None => None,
        };
        let lowered: Option<i64> = if repair_due {
            sqlx::query_scalar(&sql.floor_repair)
                .persistent(self.named())
                .fetch_one(&mut *tx)
                .await?
        } else {
            None
        };
        let pending = self.inner.floor.mark.lock().expect("not poisoned").clone();
        let settled = match pending {
            Some((seq, xid)) => {
                let (settled, _raised): (bool, Option<i64>) = sqlx::query_as(&sql.floor_advance)
                    .persistent(self.named())
                    .bind(seq)
                    .bind(xid)
                    .fetch_one(&mut *tx)
                    .await?;
                settled
            }
            None => true,
        };
        tx.commit().await?;
        if let Some(seq) = lowered {
            tracing::warn!(
                seq,
                "outbox relay: a message below the claims' low-water mark was put \
                 back in their path without lowering it (a relay older than \
                 migration 8, or a change by hand); the mark is lowered to it"
            );
        }
        // The pending mark stays until its transactions have ended; the
        // one taken now is dropped meanwhile.
        if settled {
            *self.inner.floor.mark.lock().expect("not poisoned") = next;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::pass_due;

    #[test]
    fn a_pass_runs_while_the_mark_trails_the_sequence_or_the_look_is_due() {
        assert!(!pass_due(None, Some(0), false), "no message ever");
        assert!(
            !pass_due(Some(41), Some(42), false),
            "the mark is past the last"
        );
        assert!(
            pass_due(Some(42), Some(42), false),
            "the last may still rise it"
        );
        assert!(pass_due(Some(100), Some(42), false));
        assert!(pass_due(Some(41), Some(42), true), "the look below is due");
        assert!(pass_due(None, None, true));
        assert!(
            pass_due(Some(1), None, false),
            "no mark row: run and find out"
        );
    }
}
