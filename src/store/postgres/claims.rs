//! The claim of a relay that holds some of the buckets: `claim_buckets.sql`
//! with its scan repeated once per bucket held (one statement text per
//! number of buckets, rendered on first use and then reused, so each
//! connection prepares at most one per count).

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

#[cfg(test)]
mod tests {
    use super::super::Sql;
    use super::*;
    use crate::store::TableNames;

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
