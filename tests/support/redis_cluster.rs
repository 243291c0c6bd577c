//! The Redis Cluster that `.ci/run` forms from `.ci/redis-cluster/` on
//! 127.0.0.1:7101-7106 (three masters, one replica each): its nodes as
//! they see each other, and a master killed and brought back as a replica.

use std::time::Duration;

use redis::{AsyncConnectionConfig, RedisResult};

/// The nodes' addresses; a client may start from any.
pub const NODES: &[&str] = &[
    "127.0.0.1:7101",
    "127.0.0.1:7102",
    "127.0.0.1:7103",
    "127.0.0.1:7104",
    "127.0.0.1:7105",
    "127.0.0.1:7106",
];

/// How to start it, for the message of a test that cannot reach it.
pub const START: &str =
    "bash .ci/run (it starts and forms the cluster from .ci/redis-cluster/7101.conf ... 7106.conf)";

const TIMEOUT: Duration = Duration::from_secs(60);

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// Sends one command to the node at `port` alone, on a connection of its
/// own.
pub async fn ask<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    cmd.query_async(&mut conn).await
}

/// A `field:value` line of an `INFO` or `CLUSTER INFO` reply.
fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.trim_end().strip_prefix(name)?.strip_prefix(':'))
}

/// One node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone)]
pub struct Node {
    pub port: u16,
    pub master: bool,
    pub failed: bool,
    /// The slot ranges it serves (a master's), inclusive.
    pub slots: Vec<(u16, u16)>,
}

/// The cluster as the first node that answers among `NODES` (less
/// `except`) sees it.
pub async fn nodes(except: Option<u16>) -> Vec<Node> {
    for addr in NODES {
        let port = port_of(addr);
        if Some(port) == except {
            continue;
        }
        let Ok(text) = ask::<String>(port, redis::cmd("CLUSTER").arg("NODES")).await else {
            continue;
        };
        return text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let parts: Vec<&str> = l.split_whitespace().collect();
                // `127.0.0.1:7101@17101`
                let addr = parts[1].split('@').next().unwrap();
                let flags = parts[2];
                let slots = parts[8..]
                    .iter()
                    .filter(|s| !s.starts_with('['))
                    .map(|s| match s.split_once('-') {
                        Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                        None => (s.parse().unwrap(), s.parse().unwrap()),
                    })
                    .collect();
                Node {
                    port: port_of(addr),
                    master: flags.contains("master"),
                    failed: flags.contains("fail"),
                    slots,
                }
            })
            .collect();
    }
    panic!("no node of the Redis cluster answers CLUSTER NODES; start it with: {START}");
}

/// The hash slot of `key`, as the cluster computes it.
pub async fn slot_of(key: &str) -> u16 {
    ask(
        port_of(NODES[0]),
        redis::cmd("CLUSTER").arg("KEYSLOT").arg(key),
    )
    .await
    .expect("CLUSTER KEYSLOT")
}

/// The port of the live master that serves `slot`, as the node that
/// answers first (less `except`) sees it.
pub async fn master_of(slot: u16, except: Option<u16>) -> Option<u16> {
    nodes(except)
        .await
        .into_iter()
        .find(|n| n.master && !n.failed && n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
        .map(|n| n.port)
}

/// Kills the node at `port` (SIGKILL, by its pid file).
pub fn kill(port: u16) {
    let file = format!("/tmp/outbox-redis-cluster/{port}.pid");
    let pid = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    let killed = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success(), "kill the node at {port}");
}

/// Starts the node at `port` again from its configuration (it daemonizes,
/// as `.ci/run` starts it) and waits until it listens.
pub async fn restart(port: u16) {
    let conf = format!(
        "{}/.ci/redis-cluster/{port}.conf",
        env!("CARGO_MANIFEST_DIR")
    );
    let started = std::process::Command::new("redis-server")
        .arg(&conf)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run redis-server");
    assert!(started.success(), "restart the node at {port}");
    super::wait_for("the restarted node to listen", TIMEOUT, || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
}

/// Waits until a node other than `lost` serves `slot` as master: its
/// replica was promoted. Returns its port.
pub async fn failed_over(slot: u16, lost: u16) -> u16 {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(port) = master_of(slot, Some(lost)).await {
            if port != lost {
                return port;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no replica took over slot {slot} from the node at {lost}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether every node answers and sees every slot served, and each of
/// the three masters has a replica in sync.
pub async fn whole() -> bool {
    for addr in NODES {
        let info = ask::<String>(port_of(addr), redis::cmd("CLUSTER").arg("INFO")).await;
        if !info.is_ok_and(|i| field(&i, "cluster_state") == Some("ok")) {
            return false;
        }
    }
    let nodes = nodes(None).await;
    if nodes.len() != NODES.len() || nodes.iter().any(|n| n.failed) {
        return false;
    }
    let replicas: Vec<u16> = nodes.iter().filter(|n| !n.master).map(|n| n.port).collect();
    if replicas.len() != 3 {
        return false;
    }
    for port in replicas {
        let info = ask::<String>(port, redis::cmd("INFO").arg("replication")).await;
        if !info.is_ok_and(|i| field(&i, "master_link_status") == Some("up")) {
            return false;
        }
    }
    true
}

/// Waits (up to a minute) until the cluster is [`whole`].
pub async fn wait_until_whole(what: &str) {
    super::wait_for(what, TIMEOUT, || async {
        let ok = whole().await;
        if !ok {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        ok
    })
    .await;
}
