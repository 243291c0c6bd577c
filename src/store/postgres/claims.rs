//! The claim of a relay that holds some of the buckets: `claim_buckets.sql`
//! with its scan repeated once per bucket held (one statement text per
//! number of buckets, rendered on first use and then reused, so each
//! connection prepares at most one per count); and the positions in
//! flight as `claim.sql` leaves them out, by range.

use std::sync::OnceLock;

/// The bucket count `messages_bucket_idx` (migration 10) is built for: the
/// 64 buckets migration 1 creates. Claims under another count walk
/// `messages_ready_idx` (`claim.sql`).
pub(super) const INDEXED_BUCKETS: i32 = 64;

/// Where the scan that is repeated starts and ends in `claim_buckets.sql`.
const SCAN_START: &str = "/* scan */";
const SCAN_END: &str = "/* end scan */";

/// The bucket parameter as the written scan reads it.
const FIRST_BUCKET: &str = "$4[1]";

/// `claim_buckets.sql` for each number of buckets held.
pub(super) struct BucketClaims {
    texts: [OnceLock<String>; INDEXED_BUCKETS as usize],
}

impl Default for BucketClaims {
    fn default() -> Self {
        Self {
            texts: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

impl BucketClaims {
    /// The statement that claims from `buckets` with one scan each, or
    /// `None` where the bucket index cannot serve the claim: another
    /// bucket count than the index's, or no bucket (or all of them) held.
    pub(super) fn statement(
        &self,
        claim_buckets: &str,
        bucket_count: i32,
        buckets: Option<&[i32]>,
    ) -> Option<&str> {
        let n = buckets?.len();
        if bucket_count != INDEXED_BUCKETS || n == 0 || n >= INDEXED_BUCKETS as usize {
            return None;
        }
        Some(self.texts[n - 1].get_or_init(|| repeat_scan(claim_buckets, n)))
    }
}

/// `sql` with its scan written `n` times, the i-th reading bucket `$4[i]`.
fn repeat_scan(sql: &str, n: usize) -> String {
    let (head, rest) = sql
        .split_once(SCAN_START)
        .expect("claim_buckets.sql marks where its scan starts");
    let (scan, tail) = rest
        .split_once(SCAN_END)
        .expect("claim_buckets.sql marks where its scan ends");
    let scans: Vec<String> = (1..=n)
        .map(|i| scan.trim().replace(FIRST_BUCKET, &format!("$4[{i}]")))
        .collect();
    format!("{head}{}{tail}", scans.join("\nUNION ALL\n"))
}

/// The positions in flight as `claim.sql` leaves them out: it reads the
/// positions before `first`, those after `last`, and the gaps between
/// (`gap_firsts[i]` to `gap_lasts[i]`, in order), which together are every
/// position but those in flight.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct InFlight {
    pub(super) first: i64,
    pub(super) last: i64,
    pub(super) gap_firsts: Vec<i64>,
    pub(super) gap_lasts: Vec<i64>,
}

impl InFlight {
    /// The span and gaps of `positions`, in any order, repeats allowed.
    /// With none, the span is empty: `first` is `i64::MAX` and `last` the
    /// value below it, so the reads before and after cover all.
    pub(super) fn of(positions: &[i64]) -> Self {
        let mut sorted = positions.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let (Some(&first), Some(&last)) = (sorted.first(), sorted.last()) else {
            return Self {
                first: i64::MAX,
                last: i64::MAX - 1,
                gap_firsts: Vec::new(),
                gap_lasts: Vec::new(),
            };
        };
        let (mut gap_firsts, mut gap_lasts) = (Vec::new(), Vec::new());
        for pair in sorted.windows(2) {
            // Strictly increasing, so both bounds stay within i64.
            if pair[0] + 1 < pair[1] {
                gap_firsts.push(pair[0] + 1);
                gap_lasts.push(pair[1] - 1);
            }
        }
        Self {
            first,
            last,
            gap_firsts,
            gap_lasts,
        }
    }

    /// Whether `claim.sql` reads `position`: outside the span or in a gap.
    #[cfg(test)]
    fn reads(&self, position: i64) -> bool {
        position < self.first
            || position > self.last
            || self
                .gap_firsts
                .iter()
                .zip(&self.gap_lasts)
                .any(|(a, b)| (*a..=*b).contains(&position))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Sql;
    use super::*;
    use crate::store::TableNames;

    #[test]
    fn the_reads_around_positions_in_flight_cover_every_other_position() {
        assert_eq!(
            InFlight::of(&[9, 4, 5, 5, 12, 6]),
            InFlight {
                first: 4,
                last: 12,
                gap_firsts: vec![7, 10],
                gap_lasts: vec![8, 11],
            }
        );
        // A run of consecutive positions leaves no gap.
        assert!(InFlight::of(&(100..2100).collect::<Vec<_>>())
            .gap_firsts
            .is_empty());
        for seed in 0..200_u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let in_flight: Vec<i64> = (0..rng.usize(0..40)).map(|_| rng.i64(0..60)).collect();
            let reads = InFlight::of(&in_flight);
            for p in -2..64 {
                assert_eq!(
                    reads.reads(p),
                    !in_flight.contains(&p),
                    "{p} of {in_flight:?}"
                );
            }
            // Gaps in order, apart, none empty: each position read once.
            let gaps: Vec<(i64, i64)> = reads
                .gap_firsts
                .iter()
                .copied()
                .zip(reads.gap_lasts.iter().copied())
                .collect();
            assert!(gaps
                .iter()
                .all(|(a, b)| reads.first < *a && a <= b && *b < reads.last));
            assert!(gaps.windows(2).all(|w| w[0].1 < w[1].0));
        }
        // Nothing in flight: all is read, positions at the very end too.
        let none = InFlight::of(&[]);
        assert!([0, i64::MAX - 1, i64::MAX].iter().all(|p| none.reads(*p)));
    }

    #[test]
    fn each_bucket_held_gets_a_scan_of_its_own() {
        let sql = Sql::new(&TableNames::new(Some("outbox"), "").unwrap());
        let claims = BucketClaims::default();
        let three = claims
            .statement(&sql.claim_buckets, 64, Some(&[7, 9, 40]))
            .unwrap();
        assert_eq!(three.matches("UNION ALL").count(), 2);
        for i in 1..=3 {
            // The bucket's test and the bucket column read the same one.
            assert_eq!(three.matches(&format!("$4[{i}]")).count(), 2, "{three}");
        }
        assert!(!three.contains("$4[4]"));
        assert_eq!(three.matches("ORDER BY m.seq)").count(), 3);
        // Rendered once per count.
        let again = claims.statement(&sql.claim_buckets, 64, Some(&[1, 2, 3]));
        assert!(std::ptr::eq(three, again.unwrap()));
        // The index's expression holds for 64 buckets only; all of them, or
        // none, read the whole index in position order.
        assert!(claims
            .statement(&sql.claim_buckets, 32, Some(&[1]))
            .is_none());
        assert!(claims.statement(&sql.claim_buckets, 64, None).is_none());
        assert!(claims
            .statement(&sql.claim_buckets, 64, Some(&[]))
            .is_none());
        let all: Vec<i32> = (0..64).collect();
        assert!(claims
            .statement(&sql.claim_buckets, 64, Some(&all))
            .is_none());
    }
}
