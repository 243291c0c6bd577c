//! A relay group's connection budget: each member's store calls hold one of
//! the group's permits while they run, so the members together never use
//! more connections at once than the budget allows.

use std::fmt;
use std::sync::Arc;

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::store::sealed::StoreOps;

/// Forwards every store call of `$ty` to `self.$inner`, holding what
/// `$guard` gives (an expression on `$this`, the store, and `$opname`, the
/// call's [`Calls`] kind) while the call runs. The wake-up signal and listener
/// are forwarded as they are.
macro_rules! guarded_store_ops {
    ($ty:ty, $inner:ident, |$this:ident, $opname:ident| $guard:expr) => {
        guarded_store_ops!(@impl $ty, $inner, |$this, $opname| $guard;
            Work check_schema() -> ();
            Work bucket_count() -> i32;
            Lease heartbeat(p: $crate::store::Heartbeat) -> usize;
            Lease renew(p: $crate::store::Renew<'_>) -> Vec<$crate::store::Lease>;
            Lease acquire(p: $crate::store::Acquire) -> Vec<$crate::store::Lease>;
            Lease release(p: $crate::store::Release<'_>) -> ();
            Lease leave(relay: uuid::Uuid) -> ();
            Work claim(p: $crate::store::Claim<'_>) -> $crate::store::ClaimedBatch;
            Work key_sequences(keys: &[String]) -> std::collections::HashMap<String, i64>;
            Work ack(p: $crate::store::AckBatch<'_>) -> $crate::store::AckReport;
            Work fold_key_sequences(limit: i64) -> u64;
            Work purge_published(p: $crate::store::Purge) -> u64;
            Work stats() -> $crate::store::StoreStats;
            Work topic_stats() -> Vec<$crate::store::TopicStats>;
            Work figures() -> ($crate::store::StoreStats, Vec<$crate::store::TopicStats>);
            Work vacuum() -> ();
            Work park(p: $crate::store::Park) -> u64;
        );
    };
    (@impl $ty:ty, $inner:ident, |$this:ident, $opname:ident| $guard:expr;
        $($kind:ident $op:ident($($arg:ident: $arg_ty:ty),*) -> $ret:ty;)*) => {
        #[async_trait::async_trait]
        impl $crate::store::sealed::StoreOps for $ty {
            $(
                async fn $op(&self, $($arg: $arg_ty),*) -> $crate::Result<$ret> {
                    let $this = self;
                    let $opname = $crate::relay::budget::Calls::$kind;
                    let _held = $guard;
                    $this.$inner.$op($($arg),*).await
                }
            )*

            fn local_signal(&self) -> std::sync::Arc<tokio::sync::Notify> {
                self.$inner.local_signal()
            }

            async fn listen(
                &self,
            ) -> $crate::Result<Option<Box<dyn $crate::store::WakeSource>>> {
                self.$inner.listen().await
            }
        }
    };
}
#[cfg(test)]
pub(super) use guarded_store_ops;

/// The kinds of store calls a budget tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Calls {
    /// Lease calls: heartbeats, renewals, acquisitions, releases.
    Lease,
    /// Every other call: claims, acknowledgements, passes.
    Work,
}

/// A group's connection budget: a quarter of it (at least one) kept for
/// lease calls, so renewals never queue behind claims and
/// acknowledgements, and the rest for all other calls.
#[derive(Debug)]
pub(super) struct Budget {
    size: usize,
    leases: Semaphore,
    work: Semaphore,
}

impl Budget {
    /// A budget of `size` connections, at least 2.
    pub(super) fn new(size: usize) -> Self {
        let leases = (size / 4).max(1);
        Self {
            size,
            leases: Semaphore::new(leases),
            work: Semaphore::new(size - leases),
        }
    }

    pub(super) fn size(&self) -> usize {
        self.size
    }

    /// How many calls hold a connection of the budget now.
    pub(super) fn in_use(&self) -> usize {
        self.size - self.leases.available_permits() - self.work.available_permits()
    }

    /// A connection for a call of kind `calls`, held until dropped.
    async fn permit(&self, calls: Calls) -> Option<SemaphorePermit<'_>> {
        let permits = match calls {
            Calls::Lease => &self.leases,
            Calls::Work => &self.work,
        };
        // The budget's semaphores are never closed, so this cannot fail;
        // if it ever did, the call would run unbudgeted rather than fail.
        permits.acquire().await.ok()
    }
}

/// A member's store, its calls counted against the group's budget.
pub(super) struct Budgeted {
    inner: Arc<dyn StoreOps>,
    budget: Arc<Budget>,
}

impl Budgeted {
    pub(super) fn new(inner: Arc<dyn StoreOps>, budget: Arc<Budget>) -> Self {
        Self { inner, budget }
    }
}

impl fmt::Debug for Budgeted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

guarded_store_ops!(Budgeted, inner, |this, op| this.budget.permit(op).await);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lease_calls_keep_a_quarter_of_the_budget_whatever_the_rounds_hold() {
        let budget = Budget::new(8);
        let mut held = Vec::new();
        for _ in 0..6 {
            held.push(budget.permit(Calls::Work).await.unwrap());
        }
        assert_eq!(budget.in_use(), 6);
        assert!(
            budget.work.try_acquire().is_err(),
            "work holds its six of eight"
        );
        let lease = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            (
                budget.permit(Calls::Lease).await,
                budget.permit(Calls::Lease).await,
            )
        })
        .await
        .expect("lease calls do not wait behind rounds");
        assert_eq!(budget.in_use(), 8);
        drop((lease, held));
        assert_eq!(budget.in_use(), 0);
        assert_eq!(Budget::new(2).leases.available_permits(), 1, "at least one");
    }
}
