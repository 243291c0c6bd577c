//! The labels every metric of a relay carries: `outbox="<name>"` when the
//! relay is named (each member of a [`RelayGroup`](super::RelayGroup) is),
//! none otherwise.

use std::sync::Arc;

use metrics::{Label, SharedString};

/// A relay's metric labels; cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Labels(Option<Arc<str>>);

impl Labels {
    /// The labels of a relay named `name`.
    pub(crate) fn named(name: &str) -> Self {
        Self(Some(Arc::from(name)))
    }

    /// The relay's name, if it has one.
    pub(crate) fn name(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// The relay's own labels.
    pub(crate) fn all(&self) -> Vec<Label> {
        match &self.0 {
            Some(name) => vec![Label::new("outbox", name.to_string())],
            None => Vec::new(),
        }
    }

    /// The relay's own labels and `key="value"`.
    pub(crate) fn with(&self, key: &'static str, value: impl Into<SharedString>) -> Vec<Label> {
        let mut labels = self.all();
        labels.push(Label::new(key, value));
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_relay_labels_its_metrics_with_its_outbox() {
        let l = Labels::named("tenant-7");
        assert_eq!(l.all(), vec![Label::new("outbox", "tenant-7")]);
        assert_eq!(
            l.with("topic", "orders"),
            vec![
                Label::new("outbox", "tenant-7"),
                Label::new("topic", "orders")
            ]
        );
        assert!(Labels::default().all().is_empty());
        assert_eq!(
            Labels::default().with("reason", "x"),
            vec![Label::new("reason", "x")]
        );
    }
}
