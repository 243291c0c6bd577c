//! The console's charts: samples of the outbox taken at a steady pace and
//! kept for a while, so a page opened now shows the last hour at once.

use std::collections::VecDeque;
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::source::ConsoleSource;

/// Changes counted behind each export consumer, at most.
pub(crate) const LAG_COUNTED: i64 = 10_000;

/// One look at the outbox.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sample {
    pub(crate) at: DateTime<Utc>,
    pub(crate) pending: i64,
    pub(crate) ready: i64,
    pub(crate) dead_letters: i64,
    pub(crate) oldest_pending_seconds: f64,
    /// Messages that left the outbox published per second since the
    /// sample before: positions assigned, less the growth of pending and
    /// of the dead letters. `None` for the first sample, or where the
    /// backend does not tell its positions.
    pub(crate) published_per_second: Option<f64>,
    /// The largest lag of an export consumer, in changes (counted up to
    /// [`LAG_COUNTED`]); `None` without consumers.
    pub(crate) consumer_lag: Option<u64>,
    #[serde(skip)]
    last_position: Option<i64>,
}

/// The samples, oldest first, and what went wrong with the last one.
#[derive(Debug)]
pub(crate) struct History {
    samples: VecDeque<Sample>,
    keep: usize,
    pub(crate) error: Option<String>,
    taken: Option<Instant>,
}

impl History {
    pub(crate) fn new(keep: usize) -> Self {
        History {
            samples: VecDeque::with_capacity(keep),
            keep: keep.max(2),
            error: None,
            taken: None,
        }
    }

    pub(crate) fn samples(&self) -> Vec<Sample> {
        self.samples.iter().cloned().collect()
    }

    /// Whether the last sample is older than `every` (or there is none).
    pub(crate) fn stale(&self, every: Duration) -> bool {
        self.taken.is_none_or(|t| t.elapsed() >= every)
    }

    fn push(&mut self, mut s: Sample) {
        if let Some(prev) = self.samples.back() {
            let seconds = (s.at - prev.at).num_milliseconds() as f64 / 1000.0;
            if let (Some(now), Some(then), true) =
                (s.last_position, prev.last_position, seconds > 0.0)
            {
                let left = (now - then)
                    - (s.pending - prev.pending)
                    - (s.dead_letters - prev.dead_letters).max(0);
                s.published_per_second = Some(left.max(0) as f64 / seconds);
            }
        }
        if self.samples.len() == self.keep {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
        self.taken = Some(Instant::now());
        self.error = None;
    }
}

/// Takes one sample and adds it to `history`; a failure is kept to be
/// shown instead.
pub(crate) async fn sample(source: &dyn ConsoleSource, history: &Mutex<History>) {
    let taken = async {
        let stats = source.stats().await?;
        let consumers = source.export_consumers(LAG_COUNTED).await?;
        Ok::<_, crate::Error>(Sample {
            at: Utc::now(),
            pending: stats.pending,
            ready: stats.ready,
            dead_letters: stats.dead_letters,
            oldest_pending_seconds: stats.oldest_pending_age.map_or(0.0, |a| a.as_secs_f64()),
            published_per_second: None,
            consumer_lag: consumers.iter().map(|c| c.behind).max(),
            last_position: stats.last_position,
        })
    }
    .await;
    let mut h = history.lock().unwrap_or_else(|e| e.into_inner());
    match taken {
        Ok(s) => h.push(s),
        Err(e) => {
            h.error = Some(e.to_string());
            h.taken = Some(Instant::now());
        }
    }
}

/// Samples every `every` for as long as the console lives.
pub(crate) async fn run(state: Weak<super::State>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else {
            return;
        };
        sample(state.source.as_ref(), &state.history).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64, pending: i64, dead: i64, position: i64) -> Sample {
        Sample {
            at: DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap(),
            pending,
            ready: pending,
            dead_letters: dead,
            oldest_pending_seconds: 0.0,
            published_per_second: None,
            consumer_lag: None,
            last_position: Some(position),
        }
    }

    #[test]
    fn published_per_second_is_what_left_less_what_died() {
        let mut h = History::new(3);
        h.push(at(0, 10, 0, 100));
        // 40 enqueued, pending up by 10, 2 dead-lettered: 28 published
        // in 2 s.
        h.push(at(2, 20, 2, 140));
        // A replay takes dead letters back: it never counts as negative.
        h.push(at(4, 22, 0, 140));
        h.push(at(5, 0, 0, 140));
        let rates: Vec<Option<f64>> = h.samples().iter().map(|s| s.published_per_second).collect();
        assert_eq!(
            rates,
            vec![Some(14.0), Some(0.0), Some(22.0)],
            "the oldest went"
        );
    }
}
