//! Per-key numbering: each keyed message published as 1, 2, 3, ... of its
//! key.

use std::collections::HashMap;

use crate::error::Result;
use crate::store::sealed::StoreOps;
use crate::store::Claimed;

/// Gives each keyed message its per-key sequence number: the last one
/// published for the key, plus its rank among the key's messages in this
/// batch. Only the bucket's owner numbers a key, and a number is stored
/// only with a successful, fenced acknowledgement, so a redelivery gets
/// the same number and numbers stay dense.
/// (A free function: the worker holds the listener, which is not `Sync`.)
pub(super) async fn number_keys(store: &dyn StoreOps, claimed: &mut [Claimed]) -> Result<()> {
    let mut keys: Vec<String> = claimed
        .iter()
        .filter_map(|c| c.message.partition_key.clone())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let last = store.key_sequences(&keys).await?;
    assign_numbers(claimed, last);
    Ok(())
}

/// Numbers each keyed message after the last number `last` holds for its
/// key, in batch order.
fn assign_numbers(claimed: &mut [Claimed], mut last: HashMap<String, i64>) {
    for c in claimed.iter_mut() {
        if let Some(k) = &c.message.partition_key {
            let n = last.entry(k.clone()).or_insert(0);
            *n += 1;
            c.message.key_sequence = Some(*n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::claimed;

    #[test]
    fn numbers_continue_from_the_last_published_one_in_batch_order() {
        let mut batch = vec![
            claimed(1, Some("a"), 0),
            claimed(2, Some("b"), 0),
            claimed(3, None, 0),
            claimed(4, Some("a"), 0),
        ];
        assign_numbers(&mut batch, HashMap::from([("a".to_owned(), 5)]));
        let numbers: Vec<Option<i64>> = batch.iter().map(|c| c.message.key_sequence).collect();
        assert_eq!(numbers, [Some(6), Some(1), None, Some(7)]);
    }
}
