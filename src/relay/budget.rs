//! A relay group's connection budget: each member's store calls hold one of
//! the group's permits while they run, so the members together never use
//! more connections at once than the budget allows.

use std::fmt;
use std::sync::Arc;

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::store::sealed::StoreOps;

/// Forwards every store call of `$ty` to `self.$inner`, holding what
/// `$guard` gives (an expression on `$this`, the store, and `$op`, the
/// operation's name) while the call runs. The wake-up signal and listener
/// are forwarded as they are.
macro_rules! guarded_store_ops {
    ($ty:ty, $inner:ident, |$this:ident, $opname:ident| $guard:expr) => {
        guarded_store_ops!(@impl $ty, $inner, |$this, $opname| $guard;
            check_schema() -> ();
            bucket_count() -> i32;
            heartbeat(p: $crate::store::Heartbeat) -> usize;
            renew(p: $crate::store::Renew<'_>) -> Vec<$crate::store::Lease>;
            acquire(p: $crate::store::Acquire) -> Vec<$crate::store::Lease>;
            release(p: $crate::store::Release<'_>) -> ();
            leave(relay: uuid::Uuid) -> ();
            claim(p: $crate::store::Claim<'_>) -> $crate::store::ClaimedBatch;
            key_sequences(keys: &[String]) -> std::collections::HashMap<String, i64>;
            ack(p: $crate::store::AckBatch<'_>) -> $crate::store::AckReport;
            purge_published(p: $crate::store::Purge) -> u64;
            stats() -> $crate::store::StoreStats;
            topic_stats() -> Vec<$crate::store::TopicStats>;
            vacuum() -> ();
            park(p: $crate::store::Park) -> u64;
        );
    };
    (@impl $ty:ty, $inner:ident, |$this:ident, $opname:ident| $guard:expr;
        $($op:ident($($arg:ident: $arg_ty:ty),*) -> $ret:ty;)*) => {
        #[async_trait::async_trait]
        impl $crate::store::sealed::StoreOps for $ty {
            $(
                async fn $op(&self, $($arg: $arg_ty),*) -> $crate::Result<$ret> {
                    let $this = self;
                    let $opname = stringify!($op);
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

    /// A connection for the store operation `op`, held until dropped.
    async fn permit(&self, op: &str) -> Option<SemaphorePermit<'_>> {
        let permits = match op {
            "heartbeat" | "renew" | "acquire" | "release" | "leave" => &self.leases,
            _ => &self.work,
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
