//! The relay operations of the backends whose leases, claims and
//! acknowledgements live in modules of their own (SQLite, MySQL), forwarded
//! by one macro.

/// Implements `StoreOps` for a backend whose leases,
/// claims and acknowledgements live in its modules `leases`, `claim` and
/// `ack`, each a function taking the outbox and the operation's
/// parameters, and whose `migrate` module tells the version statement and
/// a missing table; the backend's other operations are the macro's body.
/// Also implements `Store` and `Debug`.
macro_rules! store_ops {
    ($outbox:ty; $($rest:tt)*) => {
        impl $crate::store::Store for $outbox {}

        impl std::fmt::Debug for $outbox {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($outbox))
                    .field("messages", &self.inner.names.messages)
                    .finish_non_exhaustive()
            }
        }

        impl $outbox {
            /// The crate's migrations, for this outbox's tables.
            pub(super) fn migrations(&self) -> $crate::store::MigrationSet<'_> {
                let n = &self.inner.names;
                $crate::store::MigrationSet::new(migrate::MIGRATIONS, &n.migrations, None, n)
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::sealed::StoreOps for $outbox {
            async fn check_schema(&self) -> Result<()> {
                let set = self.migrations();
                let read = sqlx::query_scalar(&set.bookkeeping(migrate::VERSION))
                    .fetch_one(self.relay_pool())
                    .await;
                set.check_current(read, migrate::missing_table)
            }

            async fn bucket_count(&self) -> Result<i32> {
                leases::bucket_count(self).await
            }

            async fn heartbeat(&self, p: $crate::store::Heartbeat) -> Result<usize> {
                leases::heartbeat(self, p).await
            }

            async fn renew(&self, p: $crate::store::Renew<'_>) -> Result<Vec<$crate::store::Lease>> {
                leases::renew(self, p).await
            }

            async fn acquire(&self, p: $crate::store::Acquire) -> Result<Vec<$crate::store::Lease>> {
                leases::acquire(self, p).await
            }

            async fn release(&self, p: $crate::store::Release<'_>) -> Result<()> {
                leases::release(self, p).await
            }

            async fn leave(&self, relay: uuid::Uuid) -> Result<()> {
                leases::leave(self, relay).await
            }

            async fn claim(&self, p: $crate::store::Claim<'_>) -> Result<$crate::store::ClaimedBatch> {
                claim::claim(self, p).await
            }

            async fn ack(&self, p: $crate::store::AckBatch<'_>) -> Result<$crate::store::AckReport> {
                ack::ack(self, p).await
            }

            async fn fold_key_sequences(&self, _limit: i64) -> Result<u64> {
                // Acknowledgements upsert the numbers in place.
                Ok(0)
            }

            async fn topic_stats(&self) -> Result<Vec<$crate::store::TopicStats>> {
                self.relay_topic_stats().await
            }

            fn local_signal(&self) -> std::sync::Arc<tokio::sync::Notify> {
                self.inner.signal.clone()
            }

            async fn listen(&self) -> Result<Option<Box<dyn $crate::store::WakeSource>>> {
                // No LISTEN/NOTIFY: relays of other processes poll.
                Ok(None)
            }

            $($rest)*
        }
    };
}
pub(crate) use store_ops;
