//! Delta exports: a change log the crate owns, read page by page from a
//! cursor by systems that cannot subscribe to a broker (CRM imports,
//! nightly jobs, a partner's sync).
//!
//! A producer records [`Change`]s in its own transaction
//! (`log_change`, or `record_change` to also enqueue them for the relay).
//! A consumer pulls pages with `changes_since(consumer, limit)`, applies
//! them, then commits the page's cursor with `commit_cursor`, or commits it
//! and reads the next page in one call with `commit_and_read`. Reading a
//! page again after a crash before the commit is safe: every change applies
//! idempotently ([`Change::apply_to`]).
//!
//! Within a page, the changes of one entity are coalesced into their net
//! effect: several updates merge into one, an insert followed by updates is
//! one insert with the final fields, an update followed by a delete is a
//! delete, and an insert followed by a delete is a bare tombstone (a delete
//! with no data). The tombstone is not dropped: a consumer that crashed
//! after applying part of an earlier read of the same changes (a smaller
//! page, or a page read before more transactions committed) may hold the
//! inserted entity; for one that does not, deleting an absent entity does
//! nothing.
//!
//! **No change is skipped.** On PostgreSQL each change row records its
//! transaction id; a page holds only changes whose transactions were
//! committed as of a snapshot, and the cursor remembers that snapshot, so a
//! transaction that commits after others with higher positions is read in a
//! later page instead of being passed over. Changes of one entity are
//! written under a per-entity lock, so their positions follow commit order.
//! The price: a change becomes readable once its transaction commits, and a
//! page never waits for anything else. On SQLite, the single writer makes
//! positions follow commit order by construction.
//!
//! **Snapshot, then delta.** A new consumer copies the current state with
//! its own query inside one transaction, asks that same transaction for a
//! cursor (`snapshot_cursor`), and continues from it: it sees exactly the
//! changes its copy did not.

#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
mod api;
#[cfg(feature = "export-http")]
pub mod http;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::change::{apply_patch, compose, Change, ChangeKind, Doc};
use crate::error::Error;

/// An export consumer and how far behind it is, from `export_consumers`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ExportConsumer {
    /// The consumer's name.
    pub consumer: String,
    /// Its stored cursor.
    pub cursor: Cursor,
    /// When it last committed that cursor.
    pub committed_at: chrono::DateTime<chrono::Utc>,
    /// Changes logged after its cursor, counted up to the `max` asked for.
    pub behind: u64,
    /// True if there were more than `behind` (the count stopped at `max`).
    pub more: bool,
}

/// Where a pull consumer stands in the change log. Opaque; store it as a
/// string (`to_string` / `parse`).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cursor(pub(crate) CursorState);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum CursorState {
    /// The start of the retained log, on any backend.
    Start,
    /// PostgreSQL: the snapshot everything before which is consumed
    /// (`None`: from the start of the log), the snapshot whose changes are
    /// being read (`None`: take one on the next read), and the last position
    /// read within that generation.
    Pg {
        done: Option<String>,
        reading: Option<String>,
        last: i64,
    },
    /// SQLite: the last position read.
    Sqlite { last: i64 },
    /// MySQL: the last stamp read (the order the sequencer gave committed
    /// changes), and the positions of changes after it that the consumer
    /// has already seen (in its snapshot) and must not read again.
    MySql { stamp: i64, skip: Vec<i64> },
}

impl Cursor {
    /// The start of the retained change log. A consumer that needs the
    /// current state rather than the whole history starts from a snapshot
    /// instead.
    pub fn beginning() -> Self {
        Cursor(CursorState::Start)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            CursorState::Pg {
                done,
                reading,
                last,
            } => write!(
                f,
                "pg1|{}|{}|{last}",
                done.as_deref().unwrap_or(""),
                reading.as_deref().unwrap_or("")
            ),
            CursorState::Sqlite { last } => write!(f, "sq1|{last}"),
            CursorState::MySql { stamp, skip } => {
                write!(f, "my1|{stamp}|")?;
                for (i, s) in skip.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{s}")?;
                }
                Ok(())
            }
            CursorState::Start => f.write_str("start"),
        }
    }
}

impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cursor({self})")
    }
}

fn valid_snapshot(s: &str) -> bool {
    // xmin:xmax:xip,xip,...
    let mut parts = s.split(':');
    let ok_num =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    ok_num(parts.next())
        && ok_num(parts.next())
        && parts
            .next()
            .is_some_and(|x| x.is_empty() || x.split(',').all(|p| ok_num(Some(p))))
        && parts.next().is_none()
}

impl FromStr for Cursor {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::InvalidCursor(s.chars().take(200).collect());
        let parts: Vec<&str> = s.split('|').collect();
        match parts.as_slice() {
            ["pg1", done, reading, last] => {
                let snap = |p: &str| -> Result<Option<String>, Error> {
                    if p.is_empty() {
                        Ok(None)
                    } else if valid_snapshot(p) {
                        Ok(Some(p.to_owned()))
                    } else {
                        Err(bad())
                    }
                };
                Ok(Cursor(CursorState::Pg {
                    done: snap(done)?,
                    reading: snap(reading)?,
                    last: last.parse().map_err(|_| bad())?,
                }))
            }
            ["start"] => Ok(Cursor(CursorState::Start)),
            ["sq1", last] => Ok(Cursor(CursorState::Sqlite {
                last: last.parse().map_err(|_| bad())?,
            })),
            ["my1", stamp, skip] => Ok(Cursor(CursorState::MySql {
                stamp: stamp.parse().map_err(|_| bad())?,
                skip: if skip.is_empty() {
                    Vec::new()
                } else {
                    skip.split(',')
                        .map(|p| p.parse().map_err(|_| bad()))
                        .collect::<Result<_, _>>()?
                },
            })),
            _ => Err(bad()),
        }
    }
}

impl TryFrom<String> for Cursor {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<Cursor> for String {
    fn from(c: Cursor) -> String {
        c.to_string()
    }
}

/// One entity's net change within a page.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedChange {
    change: Change,
    first_position: i64,
    last_position: i64,
    merged: usize,
}

impl ExportedChange {
    /// The net change.
    pub fn change(&self) -> &Change {
        &self.change
    }

    /// Takes the change out.
    pub fn into_change(self) -> Change {
        self.change
    }

    /// Position of the first change merged into this one.
    pub fn first_position(&self) -> i64 {
        self.first_position
    }

    /// Position of the last change merged into this one.
    pub fn last_position(&self) -> i64 {
        self.last_position
    }

    /// How many logged changes this one stands for.
    pub fn merged(&self) -> usize {
        self.merged
    }
}

/// A page of changes and the cursor to commit once it is applied.
#[derive(Debug, Clone)]
pub struct ChangePage {
    pub(crate) changes: Vec<ExportedChange>,
    pub(crate) next: Cursor,
    pub(crate) more: bool,
    pub(crate) caught_up: bool,
    pub(crate) read: usize,
}

impl ChangePage {
    /// The net changes, in the order their entities first changed.
    pub fn changes(&self) -> &[ExportedChange] {
        &self.changes
    }

    /// Takes the changes out.
    pub fn into_changes(self) -> Vec<ExportedChange> {
        self.changes
    }

    /// The cursor to commit after applying this page.
    pub fn next_cursor(&self) -> &Cursor {
        &self.next
    }

    /// True if more changes were ready when the page was read.
    pub fn has_more(&self) -> bool {
        self.more
    }

    /// True if the page ends at what was committed when it was read: a
    /// consumer that applied it is up to date as of then.
    ///
    /// An empty page is not always caught up: on PostgreSQL a page can
    /// finish reading an older snapshot (a generation, see [`Cursor`]),
    /// and changes committed since then come on the next call. Poll until
    /// this is true rather than until a page is empty.
    pub fn caught_up(&self) -> bool {
        self.caught_up
    }

    /// How many logged changes the page read (before coalescing).
    pub fn read(&self) -> usize {
        self.read
    }
}

/// Net effect of a run of changes of one entity, as far as merge patches
/// can say it in one change.
enum Net {
    Change(Change),
    /// Placeholder while a slot is being merged.
    Nothing,
}

/// What merging one more change into a run gives.
enum Merged {
    /// One net change (or nothing) for the run so far.
    Into(Net),
    /// The two cannot be said as one change: keep both, in order.
    Apart(Net, Change),
}

fn merge(acc: Net, next: Change) -> Merged {
    use ChangeKind::*;
    let cur = match acc {
        Net::Nothing => {
            return Merged::Into(match next.kind() {
                Insert | Update | Delete => Net::Change(next),
            })
        }
        Net::Change(c) => c,
    };
    let before = cur.before_doc().cloned();
    let keep_before = |mut c: Change| {
        if before.is_some() {
            c.set_before_doc(before.clone());
        }
        c
    };
    match (cur.kind(), next.kind()) {
        (Insert, Update) => {
            let mut doc = cur.data().cloned().unwrap_or(serde_json::Value::Null);
            if let Some(p) = next.data() {
                apply_patch(&mut doc, p);
            }
            Merged::Into(Net::Change(Change::from_parts(
                cur.entity_type().to_owned(),
                cur.key().to_owned(),
                Insert,
                Some(doc.into()),
                before,
            )))
        }
        // A tombstone, even if the insert came in this page: see the module
        // documentation.
        (Insert, Delete) => Merged::Into(Net::Change(Change::from_parts(
            next.entity_type().to_owned(),
            next.key().to_owned(),
            Delete,
            None,
            None,
        ))),
        (Update, Update) => match (cur.data(), next.data()) {
            (Some(a), Some(b)) => match compose(a, b) {
                Some(p) => Merged::Into(Net::Change(Change::from_parts(
                    cur.entity_type().to_owned(),
                    cur.key().to_owned(),
                    Update,
                    Some(p.into()),
                    before,
                ))),
                None => Merged::Apart(Net::Change(cur), next),
            },
            _ => Merged::Apart(Net::Change(cur), next),
        },
        (Update, Delete) | (Delete, Delete) => Merged::Into(Net::Change(keep_before(next))),
        (Delete, Insert) | (Update, Insert) | (Insert, Insert) => {
            Merged::Into(Net::Change(keep_before(next)))
        }
        // A log that updates a deleted entity: keep both, in order.
        (Delete, Update) => Merged::Apart(Net::Change(cur), next),
    }
}

/// A row of the change log as both backends select it: position, entity
/// type, entity key, kind, and the JSON text of `data` and `before`.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
type LogRow = (i64, String, String, String, Option<String>, Option<String>);

/// Decodes change-log rows into positions and changes.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
fn decode_log(rows: Vec<LogRow>) -> Result<Vec<(i64, Change)>, Error> {
    rows.into_iter()
        .map(|(seq, entity_type, key, kind, data, before)| {
            logged_change(
                seq,
                entity_type,
                key,
                &kind,
                parse_json(data.as_deref())?,
                parse_json(before.as_deref())?,
            )
        })
        .collect()
}

/// One change-log row as a position and a change; the kind and the JSON
/// texts are only read, so a backend can lend them from its row.
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
fn logged_change(
    seq: i64,
    entity_type: String,
    key: String,
    kind: &str,
    data: Option<Doc>,
    before: Option<Doc>,
) -> Result<(i64, Change), Error> {
    let kind = ChangeKind::parse(kind).ok_or_else(|| {
        Error::InvalidMessage(format!("unknown change kind {kind:?} in the change log"))
    })?;
    let change = Change::from_parts(entity_type, key, kind, data, before);
    Ok((seq, change))
}

/// A JSON value as the text the change log stores.
fn json_text(v: Option<&serde_json::Value>) -> Option<String> {
    v.map(|v| v.to_string())
}

#[cfg(any(feature = "sqlite", feature = "mysql"))]
fn parse_json(s: Option<&str>) -> Result<Option<Doc>, Error> {
    s.map(|s| {
        serde_json::from_str::<serde_json::Value>(s)
            .map(Doc::from)
            .map_err(Error::Serialize)
    })
    .transpose()
}

/// Page sizes and purge batches: zero or less would never make progress.
pub(crate) fn at_least_one(field: &'static str, value: i64) -> Result<(), Error> {
    if value < 1 {
        return Err(Error::InvalidConfig {
            field,
            reason: "must be at least 1".to_owned(),
        });
    }
    Ok(())
}

/// Coalesces a position-ordered run of logged changes into net changes per
/// entity, in the order entities first appear.
pub(crate) fn coalesce(rows: Vec<(i64, Change)>) -> Vec<ExportedChange> {
    struct Slot {
        net: Net,
        first: i64,
        last: i64,
        merged: usize,
    }
    // Which entity each row is (numbered in order of first appearance),
    // found with the names the rows hold, not copies of them.
    let (entity, entities) = {
        let mut ids: HashMap<(&str, &str), usize> = HashMap::with_capacity(rows.len());
        let entity: Vec<usize> = rows
            .iter()
            .map(|(_, c)| {
                let next = ids.len();
                *ids.entry((c.entity_type(), c.key())).or_insert(next)
            })
            .collect();
        (entity, ids.len())
    };
    // Entities can need more than one slot when two of their changes do
    // not merge; slots keep their order of first appearance. `open` is
    // each entity's current slot.
    let mut slots: Vec<Slot> = Vec::with_capacity(entities);
    let mut open: Vec<Option<usize>> = vec![None; entities];
    for ((pos, change), e) in rows.into_iter().zip(entity) {
        match open[e] {
            Some(i) => {
                let slot = &mut slots[i];
                let acc = std::mem::replace(&mut slot.net, Net::Nothing);
                match merge(acc, change) {
                    Merged::Into(net) => {
                        slot.net = net;
                        slot.last = pos;
                        slot.merged += 1;
                    }
                    Merged::Apart(acc, next) => {
                        slot.net = acc;
                        slots.push(Slot {
                            net: Net::Change(next),
                            first: pos,
                            last: pos,
                            merged: 1,
                        });
                        open[e] = Some(slots.len() - 1);
                    }
                }
            }
            None => {
                slots.push(Slot {
                    net: Net::Change(change),
                    first: pos,
                    last: pos,
                    merged: 1,
                });
                open[e] = Some(slots.len() - 1);
            }
        }
    }
    slots
        .into_iter()
        .filter_map(|s| match s.net {
            Net::Change(change) => Some(ExportedChange {
                change,
                first_position: s.first,
                last_position: s.last,
                merged: s.merged,
            }),
            Net::Nothing => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn apply_all(changes: &[Change], state: &mut HashMap<String, serde_json::Value>) {
        for c in changes {
            let mut e = state.remove(c.key());
            c.apply_to(&mut e);
            if let Some(v) = e {
                state.insert(c.key().to_owned(), v);
            }
        }
    }

    #[test]
    fn net_changes_per_entity() {
        let ins = Change::insert("c", "1", &json!({"a": 1, "b": 1})).unwrap();
        let up1 = Change::update("c", "1", &json!({"a": 1, "b": 1}), &json!({"a": 2, "b": 1}))
            .unwrap()
            .unwrap();
        let up2 = Change::update("c", "1", &json!({"a": 2, "b": 1}), &json!({"a": 2, "b": 3}))
            .unwrap()
            .unwrap();
        let del = Change::delete("c", "1");

        // insert + updates = one insert with the final fields
        let out = coalesce(vec![(1, ins.clone()), (2, up1.clone()), (3, up2.clone())]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].change().kind(), ChangeKind::Insert);
        assert_eq!(out[0].change().data(), Some(&json!({"a": 2, "b": 3})));
        assert_eq!(
            (
                out[0].first_position(),
                out[0].last_position(),
                out[0].merged()
            ),
            (1, 3, 3)
        );
        // updates merge
        let out = coalesce(vec![(2, up1.clone()), (3, up2.clone())]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].change().data(), Some(&json!({"a": 2, "b": 3})));
        // update then delete = delete
        let out = coalesce(vec![(2, up1.clone()), (4, del.clone())]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].change().kind(), ChangeKind::Delete);
        // insert then delete = a bare tombstone
        let out = coalesce(vec![(1, ins.clone()), (2, up1), (4, del.clone())]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].change().kind(), ChangeKind::Delete);
        assert_eq!(out[0].change().data(), None);
        // delete then insert = insert (replace)
        let out = coalesce(vec![(4, del), (5, ins)]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].change().kind(), ChangeKind::Insert);
    }

    #[test]
    fn coalescing_never_changes_the_outcome() {
        // Random histories over a few keys: applying the coalesced page
        // gives the same state as applying every change.
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..300 {
            let mut truth: HashMap<String, serde_json::Value> = HashMap::new();
            let mut log = Vec::new();
            for pos in 0..40 {
                let key = format!("{}", rng.u8(0..4));
                let value = |rng: &mut fastrand::Rng| {
                    let mut m = serde_json::Map::new();
                    for f in ["a", "b", "c"] {
                        match rng.u8(0..4) {
                            0 => {}
                            1 => {
                                m.insert(f.into(), json!(rng.u8(0..3)));
                            }
                            2 => {
                                m.insert(f.into(), json!({"x": rng.u8(0..2)}));
                            }
                            _ => {
                                m.insert(f.into(), json!({"y": {"z": rng.u8(0..2)}}));
                            }
                        }
                    }
                    serde_json::Value::Object(m)
                };
                let change = match truth.get(&key) {
                    None => Change::insert("c", key.clone(), &value(&mut rng)).unwrap(),
                    Some(cur) if rng.u8(0..5) == 0 => {
                        let _ = cur;
                        Change::delete("c", key.clone())
                    }
                    Some(cur) => {
                        let next = value(&mut rng);
                        match Change::update("c", key.clone(), cur, &next).unwrap() {
                            Some(c) => c,
                            None => continue,
                        }
                    }
                };
                apply_all(std::slice::from_ref(&change), &mut truth);
                log.push((pos, change));
            }
            // Any split into pages works too.
            let split = rng.usize(0..=log.len());
            let mut replica = HashMap::new();
            let (a, b) = log.split_at(split);
            for page in [a.to_vec(), b.to_vec()] {
                let net: Vec<Change> = coalesce(page)
                    .into_iter()
                    .map(|c| c.into_change())
                    .collect();
                apply_all(&net, &mut replica);
            }
            assert_eq!(replica, truth);
        }
    }

    #[test]
    fn a_partial_read_then_a_longer_reread_still_converges() {
        // The consumer applied the first change, crashed before committing,
        // and reads again with a larger page.
        let ins = Change::insert("c", "1", &json!({"a": 1})).unwrap();
        let del = Change::delete("c", "1");
        let mut replica = HashMap::new();
        let first: Vec<Change> = coalesce(vec![(1, ins.clone())])
            .into_iter()
            .map(|c| c.into_change())
            .collect();
        apply_all(&first, &mut replica);
        assert_eq!(replica.len(), 1);
        let again: Vec<Change> = coalesce(vec![(1, ins), (2, del)])
            .into_iter()
            .map(|c| c.into_change())
            .collect();
        apply_all(&again, &mut replica);
        assert!(
            replica.is_empty(),
            "the tombstone removes what the partial read left"
        );
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        for s in [
            "start",
            "pg1|||0",
            "pg1|10:20:12,15|30:30:|99",
            "sq1|42",
            "my1|7|",
            "my1|7|9,12",
        ] {
            let c: Cursor = s.parse().unwrap();
            assert_eq!(c.to_string(), s);
        }
        for s in [
            "",
            "pg1|x|y|1",
            "pg1|1:2:|1:2:|z",
            "sq1|",
            "pg1|1:2:3;DROP|1:2:|1",
            "my1|x|",
            "my1|1|2,,3",
            "my1|1",
            "other",
        ] {
            assert!(
                matches!(s.parse::<Cursor>(), Err(Error::InvalidCursor(_))),
                "{s}"
            );
        }
        let json = serde_json::to_string(&Cursor::beginning()).unwrap();
        assert_eq!(json, "\"start\"");
    }
}
