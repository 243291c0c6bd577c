//! The web console, in a real browser (Debian's headless Chromium through
//! `chromedriver`) and over plain HTTP for what a browser would not try:
//! the pending count moves on the overview, a dead letter is found,
//! opened and replayed and then published; a change without the CSRF
//! token, a read-only console, credentials and loopback are refused as
//! they should be; the console of a group of outboxes ([`group`]).
//! Screenshots of each page go to `target/tmp/console-screenshots/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outbox::console::Console;
use outbox::publisher::Publisher;
use outbox::{
    DeadLetterFilter, MessageId, NewMessage, OutboxMessage, PublishError, Relay, SqliteOutbox,
};
use serde_json::{json, Value};

mod group;
#[path = "../support/mod.rs"]
mod support;
mod webdriver;

use support::sqlite::TempDb;
use support::wait_for;
use webdriver::Browser;

/// Fails `payments` permanently while `fail` is set; records the rest.
#[derive(Clone, Default)]
struct Payments {
    fail: Arc<AtomicBool>,
    published: Arc<Mutex<Vec<MessageId>>>,
}

#[async_trait]
impl Publisher for Payments {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        batch
            .iter()
            .map(|m| {
                if m.topic() == "payments" && self.fail.load(Ordering::SeqCst) {
                    Err(PublishError::permanent(std::io::Error::other(
                        "card processor rejected the schema",
                    )))
                } else {
                    self.published.lock().unwrap().push(m.id());
                    Ok(())
                }
            })
            .collect()
    }
}

/// A migrated outbox in a fresh SQLite file, deleted when the handle
/// drops.
async fn outbox() -> (TempDb, SqliteOutbox) {
    let db = TempDb::new("outbox-console").await;
    let outbox = SqliteOutbox::new(db.pool.clone());
    outbox.migrate().await.unwrap();
    (db, outbox)
}

/// Enqueues a payment that a relay rejects for good: its id, once it is
/// a dead letter.
async fn dead_payment(outbox: &SqliteOutbox, body: Value) -> MessageId {
    let publisher = Payments::default();
    publisher.fail.store(true, Ordering::SeqCst);
    let relay = Relay::builder(outbox.clone(), publisher)
        .poll_interval(Duration::from_millis(50))
        .spawn()
        .unwrap();
    let id = enqueue(outbox, "payments", "account-9", body).await;
    let its_own = DeadLetterFilter::new().id(id);
    wait_for(
        "the payment dead-lettered",
        Duration::from_secs(30),
        || async {
            !outbox
                .dead_letters_matching(&its_own)
                .await
                .unwrap()
                .is_empty()
        },
    )
    .await;
    relay.shutdown().await.unwrap();
    id
}

async fn enqueue(outbox: &SqliteOutbox, topic: &str, key: &str, body: Value) -> MessageId {
    let m = NewMessage::json(topic, &body)
        .unwrap()
        .with_partition_key(key);
    outbox.enqueue(outbox.pool(), m).await.unwrap().id()
}

/// Serves `console` on a loopback port; its base URL.
async fn serve(console: Console) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { console.serve(listener).await.unwrap() });
    format!("http://{addr}")
}

/// Serves `router` nested at `prefix` on a loopback port; the base URL
/// with the prefix.
async fn serve_nested(prefix: &str, router: axum::Router) -> String {
    let app = axum::Router::new().nest(prefix, router);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    format!("http://{addr}{prefix}")
}

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < Duration::from_secs(30), "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The body of a GET of `url`.
async fn body(http: &reqwest::Client, url: &str) -> String {
    let answer = http.get(url).send().await.expect("reach the console");
    answer.text().await.unwrap()
}

/// The CSRF token of the console's page.
async fn csrf(http: &reqwest::Client, base: &str) -> String {
    let page = body(http, &format!("{base}/")).await;
    let at = page
        .find("name=\"csrf-token\" content=\"")
        .expect("a CSRF token")
        + 27;
    page[at..at + 32].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sees_the_queue_move_and_replays_a_dead_letter_in_a_browser() {
    let (_db, outbox) = outbox().await;
    for i in 0..3 {
        enqueue(&outbox, "orders", &format!("order-{i}"), json!({ "n": i })).await;
    }
    let base = serve(Console::new(outbox.clone()).sample_every(Duration::from_secs(1))).await;
    let browser = Browser::start().await;
    let shots = screenshots();

    browser.goto(&format!("{base}/")).await;
    browser
        .wait_text("#pending", "three pending at first", |t| t == "3")
        .await;
    browser.screenshot(&shots, "1-overview-pending").await;
    for i in 3..5 {
        enqueue(&outbox, "orders", &format!("order-{i}"), json!({ "n": i })).await;
    }
    // The overview refreshes itself: the count moves without a reload.
    browser
        .wait_text("#pending", "five pending once two more are enqueued", |t| {
            t == "5"
        })
        .await;

    // A relay publishes everything but the payment, which goes dead.
    let publisher = Payments::default();
    publisher.fail.store(true, Ordering::SeqCst);
    let relay = Relay::builder(outbox.clone(), publisher.clone())
        .poll_interval(Duration::from_millis(50))
        .spawn()
        .unwrap();
    let payment = enqueue(
        &outbox,
        "payments",
        "account-7",
        json!({ "amount": 4200, "currency": "EUR", "memo": "console-test-payload" }),
    )
    .await;
    browser
        .wait_text("#dead_letters", "the payment dead-lettered", |t| t == "1")
        .await;
    browser
        .wait_text("#pending", "the orders published", |t| t == "0")
        .await;
    browser.screenshot(&shots, "2-overview-dead-letter").await;

    // Find it among the dead letters and open it.
    browser.click("nav a[data-view=dead]").await;
    let row = format!("#dead-table tr[data-id=\"{payment}\"]");
    browser
        .wait_text(&row, "the dead letter listed", |t| t.contains("payments"))
        .await;
    browser.screenshot(&shots, "3-dead-letters").await;
    browser.click(&row).await;
    browser
        .wait_text("#letter-payload", "the payload shown", |t| {
            t.contains("console-test-payload")
        })
        .await;
    let fields = browser.text("#letter-fields").await.unwrap();
    assert!(
        fields.contains("card processor rejected the schema"),
        "{fields}"
    );
    browser.screenshot(&shots, "4-dead-letter").await;

    // Fixed downstream; replay it from the page: it is published.
    publisher.fail.store(false, Ordering::SeqCst);
    browser.click("#replay").await;
    browser
        .wait_text("#flash", "the replay confirmed", |t| {
            t.starts_with("Replayed")
        })
        .await;
    wait_until("the replayed payment published", || {
        publisher.published.lock().unwrap().contains(&payment)
    })
    .await;
    browser
        .wait_text("#dead-empty", "no dead letter left", |t| {
            t.contains("No dead letter")
        })
        .await;
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
    browser.screenshot(&shots, "5-replayed").await;

    browser.click("nav a[data-view=blocked]").await;
    browser
        .wait_text("#blocked-empty", "no blocked key", |t| t.contains("No key"))
        .await;
    browser.screenshot(&shots, "6-blocked-keys").await;
    browser.click("nav a[data-view=consumers]").await;
    browser
        .wait_text("#consumers-empty", "no consumer", |t| {
            t.contains("No export consumer")
        })
        .await;
    browser.click("nav a[data-view=overview]").await;
    browser
        .wait_text("#dead_letters", "the overview back", |t| t == "0")
        .await;
    browser.screenshot(&shots, "7-overview-after").await;
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_change_without_the_csrf_token_is_refused_and_changes_nothing() {
    let (_db, outbox) = outbox().await;
    let id = dead_payment(&outbox, json!({})).await;
    let base = serve(Console::new(outbox.clone())).await;
    let http = reqwest::Client::new();
    let discard = format!("{base}/api/dead/{id}/discard");

    let bare = http.post(&discard).send().await.unwrap();
    assert_eq!(bare.status(), 403);
    assert!(bare.text().await.unwrap().contains("CSRF"));
    let wrong = http
        .post(&discard)
        .header("x-csrf-token", "0".repeat(32))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    assert_eq!(
        outbox.dead_letters(10).await.unwrap().len(),
        1,
        "nothing discarded"
    );

    // The page's own token is accepted.
    let token = csrf(&http, &base).await;
    let done = http
        .post(&discard)
        .header("x-csrf-token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn read_only_credentials_loopback_and_hidden_payloads_hold() {
    let (_db, outbox) = outbox().await;
    enqueue(&outbox, "orders", "k", json!({ "n": 1 })).await;
    let http = reqwest::Client::new();

    // Read-only: even with the page's token, no change.
    let base = serve(Console::new(outbox.clone()).read_only(true)).await;
    let token = csrf(&http, &base).await;
    let refused = http
        .post(format!("{base}/api/blocked/unblock"))
        .header("x-csrf-token", token)
        .header("content-type", "application/json")
        .body(r#"{"key":"k"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("read-only"));

    // Another site's name for this machine is refused without credentials.
    let rebound = http
        .get(format!("{base}/api/overview"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);

    // Basic auth: asked for, then let in.
    let base = serve(Console::new(outbox.clone()).basic_auth("oncall", "s3cret")).await;
    let asked = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(asked.status(), 401);
    assert!(asked.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    let with = |password: &'static str| {
        http.get(format!("{base}/api/overview"))
            .basic_auth("oncall", Some(password))
            .send()
    };
    assert_eq!(with("guess").await.unwrap().status(), 401);
    let right = with("s3cret").await.unwrap();
    assert_eq!(right.status(), 200);
    let overview: Value = serde_json::from_str(&right.text().await.unwrap()).unwrap();
    assert_eq!(overview["stats"]["pending"], json!(1));

    // Bearer.
    let base = serve(Console::new(outbox.clone()).bearer_token("t0ken")).await;
    let bearer = |t: &'static str| {
        http.get(format!("{base}/api/overview"))
            .header("authorization", format!("Bearer {t}"))
            .send()
    };
    assert_eq!(bearer("nope").await.unwrap().status(), 401);
    assert_eq!(bearer("t0ken").await.unwrap().status(), 200);

    // No credentials: it will not listen beyond loopback.
    let wide = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err = Console::new(outbox.clone()).serve(wide).await.unwrap_err();
    assert!(matches!(err, outbox::Error::InvalidConfig { .. }), "{err}");

    // Hidden payloads: the page's API leaves them out.
    let payment = dead_payment(&outbox, json!({ "secret": "card-number" })).await;
    let base = serve(Console::new(outbox.clone()).hide_payloads(true)).await;
    let letter = body(&http, &format!("{base}/api/dead/{payment}")).await;
    assert!(!letter.contains("card-number"), "{letter}");
    assert!(letter.contains("\"payload_hidden\":true"), "{letter}");
}

#[tokio::test]
async fn mounted_under_a_prefix_the_page_finds_its_script_and_api() {
    let (_db, outbox) = outbox().await;
    enqueue(&outbox, "orders", "k", json!({ "n": 1 })).await;
    let base = serve_nested("/outbox", Console::new(outbox.clone()).router()).await;
    let http = reqwest::Client::new();
    let page = body(&http, &base).await;
    assert!(page.contains("<base href=\"/outbox/\">"), "{page}");
    // What the page asks for, resolved against its base.
    for asset in ["console.js", "console.css", "api/overview"] {
        let answer = http.get(format!("{base}/{asset}")).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{asset}");
    }
    // A request a proxy passed on is not local, whatever its address.
    let proxied = http
        .get(format!("{base}/api/overview"))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), 403);
    // Empty credentials are refused before anything is served.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = Console::new(outbox.clone())
        .basic_auth("oncall", "")
        .serve(listener)
        .await
        .unwrap_err();
    assert!(matches!(err, outbox::Error::InvalidConfig { .. }), "{err}");
}

/// What every backend must answer: the overview with the pending message,
/// each listing, and a change made with the page's token.
async fn answers_on_its_backend(base: &str) {
    let http = reqwest::Client::new();
    let overview: Value = serde_json::from_str(&body(&http, &format!("{base}/api/overview")).await)
        .expect("the overview is JSON");
    assert_eq!(overview["stats"]["pending"], json!(1), "{overview}");
    assert_eq!(
        overview["topics"][0]["topic"],
        json!("orders"),
        "{overview}"
    );
    for list in ["dead", "blocked", "consumers"] {
        let answer = http.get(format!("{base}/api/{list}")).send().await.unwrap();
        assert_eq!(
            answer.status(),
            200,
            "{list}: {}",
            answer.text().await.unwrap()
        );
    }
    let token = csrf(&http, base).await;
    let unblock = http
        .post(format!("{base}/api/blocked/unblock"))
        .header("x-csrf-token", token)
        .header("content-type", "application/json")
        .body(r#"{"key":"never-blocked"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(unblock.status(), 200);
    assert!(unblock
        .text()
        .await
        .unwrap()
        .contains("\"unblocked\":false"));
}

fn order() -> NewMessage {
    NewMessage::json("orders", &json!({ "n": 1 }))
        .unwrap()
        .with_partition_key("order-1")
}

#[tokio::test]
async fn the_console_answers_on_postgresql() {
    let db = support::pg::TestDb::new().await;
    let outbox = outbox::PgOutbox::new(db.pool.clone());
    outbox.migrate().await.unwrap();
    outbox.enqueue(&db.pool, order()).await.unwrap();
    answers_on_its_backend(&serve(Console::new(outbox)).await).await;
    db.drop().await;
}

#[tokio::test]
async fn the_console_answers_on_mysql() {
    use sqlx::{ConnectOptions, Connection};
    let admin: sqlx::mysql::MySqlConnectOptions = std::env::var("OUTBOX_TEST_MYSQL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
        .parse()
        .unwrap();
    let mut conn = admin.connect().await.unwrap_or_else(|e| {
        panic!("MariaDB/MySQL is not reachable at 127.0.0.1:3306 ({e}); start mariadbd")
    });
    let name = format!("outbox_test_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(&format!("CREATE DATABASE `{name}`"))
        .execute(&mut conn)
        .await
        .unwrap();
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .connect_with(admin.clone().database(&name))
        .await
        .unwrap();
    let outbox = outbox::MySqlOutbox::new(pool.clone());
    outbox.migrate().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue(&mut tx, order()).await.unwrap();
    outbox.commit(tx).await.unwrap();
    answers_on_its_backend(&serve(Console::new(outbox)).await).await;
    pool.close().await;
    sqlx::query(&format!("DROP DATABASE `{name}`"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
}
