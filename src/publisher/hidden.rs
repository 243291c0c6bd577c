//! [`Hidden`]: a field a publisher's `Debug` leaves out.

use std::fmt;
use std::ops::{Deref, DerefMut};

/// A value that `Debug` prints as `<hidden>`: a client or a URI whose
/// connection details may hold a password, or a handle with nothing to
/// show. Lets a publisher derive `Debug` without leaking them.
#[derive(Clone, Default)]
pub(crate) struct Hidden<T>(pub(crate) T);

impl<T> fmt::Debug for Hidden<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<hidden>")
    }
}

impl<T> Deref for Hidden<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Hidden<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_neither_the_value_nor_its_credentials() {
        assert_eq!(format!("{:?}", Hidden("hunter2")), "<hidden>");
        #[cfg(feature = "redis")]
        {
            let client = redis::Client::open("redis://:hunter2@127.0.0.1:6379/0").unwrap();
            let shown = format!("{:?}", crate::publisher::RedisStreamsPublisher::new(client));
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("stream_prefix"), "{shown}");
            let cluster = crate::publisher::RedisStreamsPublisher::cluster([
                "redis://:hunter2@127.0.0.1:7101",
            ])
            .unwrap();
            let shown = format!("{cluster:?}");
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("Cluster"), "{shown}");
        }
        #[cfg(feature = "amqp")]
        {
            let p = crate::publisher::RabbitMqPublisher::new(
                "amqp://guest:hunter2@127.0.0.1:5672/%2f",
                "events",
            );
            let shown = format!("{p:?}");
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("events"), "{shown}");
        }
    }
}
