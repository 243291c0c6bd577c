//! Test support shared by the integration tests: a TCP proxy that can cut
//! a client off from a real service and let it back in, polling helpers, a
//! fast retry policy and a probing publisher; per backend, a fresh database
//! per test ([`pg`], [`sqlite`]); the scenarios every broker publisher
//! passes ([`broker`]); the local Redis Cluster ([`redis_cluster`]).
#![allow(dead_code, unreachable_pub)]

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "sqlite")]
pub mod broker;
pub mod pg;
pub mod probe;
#[cfg(feature = "redis")]
pub mod redis_cluster;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use outbox::{NewMessage, RetryPolicy};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Forwards a local port to `target`. While cut, it refuses new connections
/// and drops open ones, as a broker that went away would.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: Arc<Notify>,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        Proxy::switched(
            target,
            Arc::new(AtomicBool::new(true)),
            Arc::new(Notify::new()),
        )
        .await
    }

    /// Another port forwarded to `target`, cut and restored together with
    /// this one (the nodes of one cluster).
    pub async fn beside(&self, target: &str) -> Proxy {
        Proxy::switched(target, self.up.clone(), self.cut.clone()).await
    }

    async fn switched(target: &str, up: Arc<AtomicBool>, cut: Arc<Notify>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = target.to_owned();
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let cut = cut2.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        Proxy { addr, up, cut }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }
}

/// Fails with a message naming the service if nothing listens at `addr`.
pub async fn require_service(name: &str, addr: &str, how_to_start: &str) {
    if TcpStream::connect(addr).await.is_err() {
        panic!("{name} is not reachable at {addr}; start it with: {how_to_start}");
    }
}

/// Waits (real time, bounded) until `cond` holds.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut cond: F) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls the async `cond` every 10 ms until it holds; panics naming `what`
/// once `timeout` (real time) has passed.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    while !cond().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Retries after 20 ms, backing off to at most 200 ms (the default number
/// of attempts: chain `.max_attempts(n)` for another).
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(200))
}

/// Candidate `n`'s status change on `topic`, under the partition key `key`,
/// with an event type and a schema version.
pub fn keyed_candidate(topic: &str, n: u32, key: &str) -> NewMessage {
    NewMessage::json(topic, &serde_json::json!({ "n": n, "candidate": key }))
        .unwrap()
        .with_partition_key(key)
        .with_event_type("CandidateStatusChanged")
        .with_schema_version(2)
}
