//! The connections the relay's claims run on.

use std::sync::OnceLock;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

/// The relay's claims read the messages table in position order through
/// its primary key, and must keep doing so when the table's statistics
/// mislead the planner: after a large backlog drains, the table keeps
/// its size with a few live rows, and the planner then prefers a
/// sequential scan and a sort (measured: 20-40 ms per claim on a
/// 250 MB table, against 0.3 ms through the index), or a parallel plan.
/// So claims run on connections of their own (the pool's connect
/// options, at most four, closed after a minute idle) with sequential
/// scans and parallel workers turned off.
#[derive(Default)]
pub(super) struct ClaimPool {
    pool: OnceLock<PgPool>,
}

impl ClaimPool {
    /// The claim connections, opened lazily from the application pool's
    /// connect options.
    pub(super) fn get(&self, app: &PgPool) -> &PgPool {
        self.pool.get_or_init(|| {
            let options = app.connect_options().as_ref().clone().options([
                ("enable_seqscan", "off"),
                ("max_parallel_workers_per_gather", "0"),
            ]);
            // No liveness ping before each claim: a broken connection fails
            // its claim, the relay backs off and the pool replaces it.
            PgPoolOptions::new()
                .max_connections(4)
                .min_connections(0)
                .test_before_acquire(false)
                .idle_timeout(Duration::from_secs(60))
                .connect_lazy_with(options)
        })
    }

    /// Closes the claim connections, if any were opened.
    pub(super) async fn close(&self) {
        if let Some(p) = self.pool.get() {
            p.close().await;
        }
    }
}
