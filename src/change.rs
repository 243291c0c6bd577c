//! Change events: row-level inserts, updates and deletes of an entity,
//! where an update carries only what changed.
//!
//! Updates are [RFC 7386] JSON merge patches computed from the entity's
//! before and after values: a changed field appears with its new value,
//! nested objects recurse, a removed field appears as `null`, and arrays
//! are replaced whole. Merge patches cannot tell a field set to `null` from
//! a removed field: consumers treat both as "no value", which is what a SQL
//! column does.
//!
//! ```
//! use outbox::change::{Change, ChangeKind};
//! use serde_json::json;
//!
//! let before = json!({"name": "Ada", "status": "interviewing", "address": {"city": "London", "zip": "N1"}});
//! let after = json!({"name": "Ada", "status": "hired", "address": {"city": "London", "zip": "N7"}});
//! let change = Change::update("candidate", "42", &before, &after)?.expect("something changed");
//! assert_eq!(change.kind(), ChangeKind::Update);
//! assert_eq!(change.data(), Some(&json!({"status": "hired", "address": {"zip": "N7"}})));
//!
//! // An update that changes nothing is no change at all.
//! assert!(Change::update("candidate", "42", &after, &after)?.is_none());
//! # Ok::<(), outbox::Error>(())
//! ```
//!
//! [RFC 7386]: https://www.rfc-editor.org/rfc/rfc7386

use std::fmt;
use std::sync::OnceLock;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::message::{check_json, check_name, NewMessage};

/// What happened to the entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// Created; `data` is the whole entity. Consumers apply an insert as a
    /// replace (upsert), since a coalesced delete-then-insert is an insert.
    Insert,
    /// Changed; `data` is a merge patch of the changed fields.
    Update,
    /// Deleted (a tombstone); no `data`.
    Delete,
}

impl ChangeKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Insert => "insert",
            ChangeKind::Update => "update",
            ChangeKind::Delete => "delete",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "insert" => Some(ChangeKind::Insert),
            "update" => Some(ChangeKind::Update),
            "delete" => Some(ChangeKind::Delete),
            _ => None,
        }
    }
}

/// A row-level change of one entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    entity_type: String,
    key: String,
    kind: ChangeKind,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    data: Option<Doc>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    before: Option<Doc>,
}

/// A JSON document of a change: a value, or the text a change log holds
/// (PostgreSQL's `jsonb` output, valid JSON by construction), parsed the
/// first time it is looked at. A page a consumer forwards without reading
/// its documents is never parsed.
#[derive(Clone)]
pub(crate) struct Doc {
    /// The logged text, if the document came from a log; `value` is then
    /// parsed from it on first access.
    text: Option<Box<str>>,
    value: OnceLock<Value>,
}

impl Doc {
    fn value(&self) -> &Value {
        self.value.get_or_init(|| match &self.text {
            // The text came from a column whose type admits valid JSON
            // only (see `from_valid_text`).
            Some(t) => serde_json::from_str(t).expect("a logged JSON document is valid JSON"),
            None => unreachable!("a document without text is built with its value"),
        })
    }

    /// The document from text a database vouches is valid JSON (a
    /// PostgreSQL `jsonb` column's output); parsed on first access.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn from_valid_text(text: &str) -> Self {
        Doc {
            text: Some(text.into()),
            value: OnceLock::new(),
        }
    }
}

impl From<Value> for Doc {
    fn from(v: Value) -> Self {
        Doc {
            text: None,
            value: OnceLock::from(v),
        }
    }
}

impl PartialEq for Doc {
    fn eq(&self, other: &Self) -> bool {
        self.value() == other.value()
    }
}

impl fmt::Debug for Doc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value().fmt(f)
    }
}

impl Serialize for Doc {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.value().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Value::deserialize(d).map(Doc::from)
    }
}

fn to_value<T: Serialize + ?Sized>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(Error::Serialize)
}

impl Change {
    /// An insert carrying the whole entity.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] if `data` cannot be serialized as JSON.
    pub fn insert<T: Serialize + ?Sized>(
        entity_type: impl Into<String>,
        key: impl Into<String>,
        after: &T,
    ) -> Result<Self> {
        Ok(Self {
            entity_type: entity_type.into(),
            key: key.into(),
            kind: ChangeKind::Insert,
            data: Some(to_value(after)?.into()),
            before: None,
        })
    }

    /// An update carrying the merge patch from `before` to `after`, or
    /// `None` if nothing changed.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] if `before` or `after` cannot be
    /// serialized as JSON.
    pub fn update<T: Serialize + ?Sized>(
        entity_type: impl Into<String>,
        key: impl Into<String>,
        before: &T,
        after: &T,
    ) -> Result<Option<Self>> {
        let (b, a) = (to_value(before)?, to_value(after)?);
        Ok(diff(&b, &a).map(|patch| Self {
            entity_type: entity_type.into(),
            key: key.into(),
            kind: ChangeKind::Update,
            data: Some(patch.into()),
            before: None,
        }))
    }

    /// A delete (tombstone).
    pub fn delete(entity_type: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            entity_type: entity_type.into(),
            key: key.into(),
            kind: ChangeKind::Delete,
            data: None,
            before: None,
        }
    }

    /// Also carries the entity's values before the change (the whole
    /// entity, for audit or for consumers that check their state).
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] if `before` cannot be serialized as JSON.
    pub fn with_before<T: Serialize + ?Sized>(mut self, before: &T) -> Result<Self> {
        self.before = Some(to_value(before)?.into());
        Ok(self)
    }

    /// Checks everything a database could refuse, before anything is
    /// sent: a refused statement would abort the caller's transaction.
    pub(crate) fn validate(&self) -> Result<()> {
        check_name("entity type", &self.entity_type)?;
        check_name("entity key", &self.key)?;
        if let Some(d) = self.data() {
            check_json("change data", d)?;
        }
        if let Some(b) = self.before() {
            check_json("change before values", b)?;
        }
        Ok(())
    }

    /// The entity type (for example `candidate`).
    pub fn entity_type(&self) -> &str {
        &self.entity_type
    }

    /// The entity's key within its type.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Insert, update or delete.
    pub fn kind(&self) -> ChangeKind {
        self.kind
    }

    /// The whole entity (insert) or the merge patch (update).
    ///
    /// A change read from a PostgreSQL change log holds its documents as
    /// the text the database returned and parses each the first time it
    /// is looked at, here or by [`before`](Self::before), comparing or
    /// serializing: a page whose documents are never looked at costs no
    /// JSON parsing.
    pub fn data(&self) -> Option<&Value> {
        self.data.as_ref().map(Doc::value)
    }

    /// The values before the change, if recorded.
    pub fn before(&self) -> Option<&Value> {
        self.before.as_ref().map(Doc::value)
    }

    /// The values before the change, as they are held (not parsed).
    pub(crate) fn before_doc(&self) -> Option<&Doc> {
        self.before.as_ref()
    }

    /// Replaces the values before the change.
    pub(crate) fn set_before_doc(&mut self, before: Option<Doc>) {
        self.before = before;
    }

    /// The partition key used for this change's message and its ordering:
    /// `entity_type:key`.
    pub fn partition_key(&self) -> String {
        format!("{}:{}", self.entity_type, self.key)
    }

    /// A message carrying this change as its JSON payload, keyed by
    /// [`partition_key`](Self::partition_key), with event type
    /// `<entity_type>.<kind>` (e.g. `candidate.update`).
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] if the change cannot be serialized (it
    /// always can, being JSON already).
    pub fn to_message(&self, topic: impl Into<String>) -> Result<NewMessage> {
        Ok(NewMessage::json(topic, self)?
            .with_partition_key(self.partition_key())
            .with_event_type(format!("{}.{}", self.entity_type, self.kind.as_str())))
    }

    /// Applies this change to a replica's copy of the entity (`None` if the
    /// replica does not have it): an insert replaces, an update merges, a
    /// delete removes. Applying the same change twice gives the same result.
    pub fn apply_to(&self, entity: &mut Option<Value>) {
        match self.kind {
            ChangeKind::Insert => *entity = self.data().cloned(),
            ChangeKind::Delete => *entity = None,
            ChangeKind::Update => {
                let mut v = entity.take().unwrap_or_else(|| Value::Object(Map::new()));
                if let Some(p) = self.data() {
                    apply_patch(&mut v, p);
                }
                *entity = Some(v);
            }
        }
    }

    pub(crate) fn from_parts(
        entity_type: String,
        key: String,
        kind: ChangeKind,
        data: Option<Doc>,
        before: Option<Doc>,
    ) -> Self {
        Self {
            entity_type,
            key,
            kind,
            data,
            before,
        }
    }
}

/// The RFC 7386 merge patch that turns `before` into `after`, or `None` if
/// they are equal.
pub fn diff(before: &Value, after: &Value) -> Option<Value> {
    // Null and absent fields mean the same to a merge patch's reader.
    diff_normalized(&without_nulls(before), &without_nulls(after))
}

fn diff_normalized(before: &Value, after: &Value) -> Option<Value> {
    if before == after {
        return None;
    }
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let mut patch = Map::new();
            for (k, av) in a {
                match b.get(k) {
                    None => {
                        patch.insert(k.clone(), without_nulls(av));
                    }
                    Some(bv) if bv != av => {
                        let p = match (bv, av) {
                            (Value::Object(_), Value::Object(_)) => {
                                diff_normalized(bv, av).expect("values differ")
                            }
                            _ => without_nulls(av),
                        };
                        patch.insert(k.clone(), p);
                    }
                    Some(_) => {}
                }
            }
            for k in b.keys() {
                if !a.contains_key(k) {
                    patch.insert(k.clone(), Value::Null);
                }
            }
            Some(Value::Object(patch))
        }
        _ => Some(after.clone()),
    }
}

/// Inside a merge patch a `null` means "remove"; a new object value cannot
/// carry nulls, so they are dropped (absent and null are the same to the
/// patch's reader).
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Applies an RFC 7386 merge patch to `target`.
pub fn apply_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            let entry = t.entry(k.clone()).or_insert(Value::Null);
            apply_patch(entry, v);
        }
    }
}

/// One patch with the effect of applying `first` then `second`, when merge
/// patches can express it (`None` when a field turns from a non-object into
/// an object across the two, which a single merge patch cannot say).
pub fn compose(first: &Value, second: &Value) -> Option<Value> {
    let Value::Object(s) = second else {
        return Some(second.clone());
    };
    let Value::Object(f) = first else {
        return None;
    };
    let mut out = f.clone();
    for (k, sv) in s {
        match (f.get(k), sv) {
            (Some(Value::Object(_)), Value::Object(_)) => {
                let c = compose(&f[k], sv)?;
                out.insert(k.clone(), c);
            }
            (Some(_), Value::Object(_)) => return None,
            _ => {
                out.insert(k.clone(), sv.clone());
            }
        }
    }
    Some(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_logged_document_reads_as_the_value_it_holds() {
        let value = json!({"status": "hired", "n": 7, "address": {"zip": "N7"}, "tags": [1, null]});
        let text = value.to_string();
        let logged = || {
            Change::from_parts(
                "candidate".into(),
                "42".into(),
                ChangeKind::Update,
                Some(Doc::from_valid_text(&text)),
                Some(Doc::from_valid_text("{\"status\": \"interviewing\"}")),
            )
        };
        let built = Change::update(
            "candidate",
            "42",
            &json!({"status": "interviewing"}),
            &json!({"status": "hired", "n": 7, "address": {"zip": "N7"}, "tags": [1, null]}),
        )
        .unwrap()
        .unwrap()
        .with_before(&json!({"status": "interviewing"}))
        .unwrap();
        // Compared, serialized and printed before and after a look at the
        // document, and cloned unparsed: always the same change.
        let fresh = logged();
        assert_eq!(fresh, built);
        assert_eq!(
            serde_json::to_string(&logged()).unwrap(),
            serde_json::to_string(&built).unwrap()
        );
        assert_eq!(format!("{:?}", logged()), format!("{built:?}"));
        let unparsed = logged();
        let copy = unparsed.clone();
        assert_eq!(copy.data(), Some(&value));
        assert_eq!(unparsed.before(), Some(&json!({"status": "interviewing"})));
        let back: Change = serde_json::from_str(&serde_json::to_string(&copy).unwrap()).unwrap();
        assert_eq!(back, built);
        let mut replica = Some(json!({"status": "interviewing", "n": 1}));
        logged().apply_to(&mut replica);
        let mut expected = Some(json!({"status": "interviewing", "n": 1}));
        built.apply_to(&mut expected);
        assert_eq!(replica, expected);
    }

    #[test]
    fn changes_a_database_would_refuse_fail_validation() {
        let ok = Change::insert("candidate", "42", &json!({"name": "Ada"})).unwrap();
        assert!(ok.validate().is_ok());
        let bad = [
            Change::insert("candidate", "4\u{0}2", &json!({})).unwrap(),
            Change::insert("cand\0idate", "42", &json!({})).unwrap(),
            Change::insert("candidate", "", &json!({})).unwrap(),
            Change::insert("candidate", "42", &json!({"name": "A\u{0}da"})).unwrap(),
            Change::update("candidate", "42", &json!({"a": 1}), &json!({"a\u{0}": 2}))
                .unwrap()
                .unwrap(),
            Change::delete("candidate", "42")
                .with_before(&json!({"n": "\u{0}"}))
                .unwrap(),
        ];
        for c in bad {
            assert!(
                matches!(c.validate(), Err(Error::InvalidMessage(_))),
                "{c:?} passed"
            );
        }
    }

    fn roundtrip(before: Value, after: Value) {
        match diff(&before, &after) {
            None => assert_eq!(before, after),
            Some(p) => {
                let mut t = before.clone();
                apply_patch(&mut t, &p);
                assert_eq!(strip_nulls(&t), strip_nulls(&after), "patch {p}");
            }
        }
    }

    /// `v` without the nulls of its objects: as a merge patch applied to
    /// nothing, where a null means "absent".
    fn strip_nulls(v: &Value) -> Value {
        let mut t = Value::Object(serde_json::Map::new());
        apply_patch(&mut t, v);
        t
    }

    #[test]
    fn diff_of_nested_fields_names_only_what_changed() {
        let b = json!({"a": 1, "n": {"x": 1, "y": {"deep": true, "other": 1}}, "gone": 5});
        let a = json!({"a": 1, "n": {"x": 1, "y": {"deep": false, "other": 1}}, "new": [1]});
        assert_eq!(
            diff(&b, &a).unwrap(),
            json!({"n": {"y": {"deep": false}}, "gone": null, "new": [1]})
        );
        roundtrip(b, a);
    }

    #[test]
    fn arrays_are_replaced_whole() {
        let b = json!({"tags": ["a", "b", "c"]});
        let a = json!({"tags": ["a", "c"]});
        assert_eq!(diff(&b, &a).unwrap(), json!({"tags": ["a", "c"]}));
        roundtrip(b, a);
    }

    #[test]
    fn nulls_read_as_absent() {
        // Setting a field to null removes it.
        let b = json!({"phone": "123", "email": null});
        let a = json!({"phone": null, "email": null});
        assert_eq!(diff(&b, &a).unwrap(), json!({"phone": null}));
        roundtrip(b, a);
        // A field that goes from absent to null is no change.
        assert_eq!(diff(&json!({"a": 1}), &json!({"a": 1, "b": null})), None);
        // A new nested object drops its nulls.
        let p = diff(&json!({}), &json!({"n": {"x": null, "y": 1}})).unwrap();
        assert_eq!(p, json!({"n": {"y": 1}}));
    }

    #[test]
    fn unchanged_update_is_no_change() {
        let v = json!({"a": [1, {"b": null}], "c": {"d": "e"}});
        assert_eq!(diff(&v, &v.clone()), None);
        assert!(Change::update("t", "1", &v, &v).unwrap().is_none());
    }

    #[test]
    fn scalar_object_transitions_roundtrip() {
        roundtrip(json!({"a": 1}), json!({"a": {"b": 2}}));
        roundtrip(json!({"a": {"b": 2}}), json!({"a": 1}));
        roundtrip(json!({"a": {"b": 2, "c": 3}}), json!({"a": {"b": 2}}));
        roundtrip(json!(1), json!({"x": 1}));
    }

    #[test]
    fn compose_matches_sequential_application_or_declines() {
        let x = json!({"a": 1, "n": {"p": 1, "q": 2}, "s": "v"});
        let p1 = json!({"a": 2, "n": {"p": null}});
        let p2 = json!({"n": {"r": 3}, "s": null});
        let c = compose(&p1, &p2).unwrap();
        let (mut seq, mut once) = (x.clone(), x.clone());
        apply_patch(&mut seq, &p1);
        apply_patch(&mut seq, &p2);
        apply_patch(&mut once, &c);
        assert_eq!(seq, once);
        // Scalar then object: not expressible as one merge patch.
        assert_eq!(compose(&json!({"a": 5}), &json!({"a": {"b": 1}})), None);
    }

    #[test]
    fn apply_to_is_idempotent() {
        let mut e = None;
        let ins = Change::insert("c", "1", &json!({"a": 1, "b": {"c": 2}})).unwrap();
        let upd = Change::update(
            "c",
            "1",
            &json!({"a": 1, "b": {"c": 2}}),
            &json!({"a": 1, "b": {"c": 3}}),
        )
        .unwrap()
        .unwrap();
        for _ in 0..2 {
            ins.apply_to(&mut e);
            upd.apply_to(&mut e);
            upd.apply_to(&mut e);
        }
        assert_eq!(e, Some(json!({"a": 1, "b": {"c": 3}})));
        Change::delete("c", "1").apply_to(&mut e);
        assert_eq!(e, None);
    }
}
