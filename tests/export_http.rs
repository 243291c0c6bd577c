//! The change log served over HTTP by a real local server.

mod support;

use outbox::change::Change;
use outbox::export::http::ChangeFeed;
use outbox::SqliteOutbox;
use serde_json::{json, Value};
use support::sqlite::TempDb;

async fn get_json(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = http.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

async fn post_json(http: &reqwest::Client, url: &str, body: &str) -> (u16, Value) {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

async fn put_json(http: &reqwest::Client, url: &str, body: &Value) -> u16 {
    http.put(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Serves `feed`'s change log on a local port; returns the base URL.
async fn serve_feed<F: ChangeFeed>(feed: F) -> String {
    let app = axum::Router::new().nest("/exports", outbox::export::http::router(feed));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/exports")
}

/// Serves the change log of a new database; returns the base URL, the
/// outbox and the database (its files go when it is dropped).
async fn serve() -> (String, SqliteOutbox, TempDb) {
    // sqlx's default pool size.
    let db = TempDb::with_max_connections("outbox-export-http", 10).await;
    let outbox = db.outbox().await;
    (serve_feed(outbox.clone()).await, outbox, db)
}

/// The number of changes [`pull_by_posting`] expects, one per key `0`,
/// `1`, ... logged in that order.
const POSTED_CHANGES: usize = 25;

/// A consumer `crm` that commits each page with `POST /changes` and reads
/// the next in the same answer, from its first page to the last, over
/// [`POSTED_CHANGES`] logged changes of keys `0`, `1`, ...: each key
/// arrives once, in order, and the stored cursor is the last one posted
/// (the last page is read again until its cursor is committed).
async fn pull_by_posting(base: &str) {
    let http = reqwest::Client::new();
    let (status, mut page) =
        get_json(&http, &format!("{base}/changes?consumer=crm&limit=10")).await;
    assert_eq!(status, 200);
    let mut keys: Vec<String> = Vec::new();
    let mut pages = 1;
    loop {
        keys.extend(
            page["changes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["key"].as_str().unwrap().to_owned()),
        );
        if page["has_more"] != true {
            break;
        }
        let committed = page["next_cursor"].clone();
        let (status, next) = post_json(
            &http,
            &format!("{base}/changes?consumer=crm&limit=10"),
            &json!({ "cursor": committed }).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{next}");
        // The cursor posted is stored: reading by consumer gives the page
        // the post answered.
        let (_, stored) = get_json(&http, &format!("{base}/changes?consumer=crm&limit=10")).await;
        assert_eq!(stored, next);
        page = next;
        pages += 1;
    }
    let expected: Vec<String> = (0..POSTED_CHANGES).map(|i| i.to_string()).collect();
    assert_eq!(keys, expected);
    assert_eq!(pages, 3);
    // Committing the last cursor by post answers an empty page, caught up.
    let (status, end) = post_json(
        &http,
        &format!("{base}/changes?consumer=crm"),
        &json!({ "cursor": page["next_cursor"] }).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(end["changes"], json!([]));
    assert_eq!(end["has_more"], false);
    assert_eq!(end["caught_up"], true);
}

/// `POST /changes` requests that must answer 400 with a reason, whatever
/// the backend.
async fn bad_posts_are_400(base: &str) {
    let http = reqwest::Client::new();
    // A valid body: each request below is refused for its query alone (a
    // request let through would store `start` as crm's cursor, which the
    // callers check did not happen).
    let good = json!({"cursor": "start"}).to_string();
    for (url, body) in [
        (format!("{base}/changes"), good.clone()),
        (format!("{base}/changes?consumer="), good.clone()),
        (
            format!("{base}/changes?consumer=crm&cursor=x"),
            good.clone(),
        ),
        (format!("{base}/changes?consumer=crm&limit=0"), good.clone()),
        (
            format!("{base}/changes?consumer=crm&limit=ten"),
            good.clone(),
        ),
        (
            format!("{base}/changes?consumer=crm&consumer=erp"),
            good.clone(),
        ),
        // A cursor of another backend.
        (
            format!("{base}/changes?consumer=crm"),
            json!({"cursor": "my1|5|"}).to_string(),
        ),
        (
            format!("{base}/changes?consumer=crm"),
            json!({"cursor": "garbage"}).to_string(),
        ),
        (
            format!("{base}/changes?consumer=crm"),
            "{not json".to_owned(),
        ),
        (
            format!("{base}/changes?consumer=crm"),
            json!({"position": 3}).to_string(),
        ),
    ] {
        let (status, answer) = post_json(&http, &url, &body).await;
        assert_eq!(status, 400, "{url} {body}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{url} {body}: {answer}"
        );
    }
}

#[tokio::test]
async fn a_consumer_commits_and_reads_on_in_one_request_sqlite() {
    let (base, outbox, _db) = serve().await;
    let pool = outbox.pool().clone();
    for i in 0..POSTED_CHANGES {
        let change = Change::insert("candidate", i.to_string(), &json!({"n": i})).unwrap();
        outbox.log_change(&pool, &change).await.unwrap();
    }
    pull_by_posting(&base).await;
    bad_posts_are_400(&base).await;
    // Nothing a bad request carried was stored: the consumer stands where
    // its last good post left it.
    let page = outbox.changes_since("crm", 10).await.unwrap();
    assert!(page.changes().is_empty() && page.caught_up());
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_consumer_commits_and_reads_on_in_one_request_postgres() {
    let db = support::pg::TestDb::new().await;
    let outbox = outbox::PgOutbox::new(db.pool.clone());
    outbox.migrate().await.unwrap();
    for i in 0..POSTED_CHANGES {
        let change = Change::insert("candidate", i.to_string(), &json!({"n": i})).unwrap();
        outbox.log_change(&db.pool, &change).await.unwrap();
    }
    let base = serve_feed(outbox.clone()).await;
    pull_by_posting(&base).await;
    bad_posts_are_400(&base).await;
    let page = outbox.changes_since("crm", 10).await.unwrap();
    assert!(page.changes().is_empty() && page.caught_up());
    db.drop().await;
}

#[tokio::test]
async fn a_consumer_pulls_pages_and_commits_its_cursor_over_http() {
    let (base, outbox, _db) = serve().await;
    let pool = outbox.pool().clone();
    for (i, change) in [
        Change::insert(
            "candidate",
            "1",
            &json!({"name": "Ada", "status": "applied"}),
        )
        .unwrap(),
        Change::update(
            "candidate",
            "1",
            &json!({"name": "Ada", "status": "applied"}),
            &json!({"name": "Ada", "status": "hired"}),
        )
        .unwrap()
        .unwrap(),
        Change::insert("candidate", "2", &json!({"name": "Alan"})).unwrap(),
    ]
    .into_iter()
    .enumerate()
    {
        let mut tx = pool.begin().await.unwrap();
        outbox.log_change(&mut *tx, &change).await.unwrap();
        tx.commit().await.unwrap();
        let _ = i;
    }
    let http = reqwest::Client::new();
    let (status, page) = get_json(&http, &format!("{base}/changes?consumer=crm&limit=2")).await;
    assert_eq!(status, 200);
    // Two logged changes of candidate 1, coalesced into one insert.
    assert_eq!(page["changes"].as_array().unwrap().len(), 1);
    assert_eq!(page["changes"][0]["kind"], "insert");
    assert_eq!(
        page["changes"][0]["data"],
        json!({"name": "Ada", "status": "hired"})
    );
    assert_eq!(page["changes"][0]["merged"], 2);
    assert_eq!(page["has_more"], true);
    assert_eq!(page["caught_up"], false);

    // Not committed yet: the same page again.
    let (_, again) = get_json(&http, &format!("{base}/changes?consumer=crm&limit=2")).await;
    assert_eq!(again, page);

    let status = put_json(
        &http,
        &format!("{base}/cursors/crm"),
        &json!({"cursor": page["next_cursor"]}),
    )
    .await;
    assert_eq!(status, 204);
    let (_, next) = get_json(&http, &format!("{base}/changes?consumer=crm&limit=2")).await;
    assert_eq!(next["changes"][0]["key"], "2");
    assert_eq!(next["caught_up"], true);
    // An explicit cursor reads without any stored state.
    let cursor = page["next_cursor"].as_str().unwrap().replace('|', "%7C");
    let (_, by_cursor) = get_json(&http, &format!("{base}/changes?cursor={cursor}&limit=2")).await;
    assert_eq!(by_cursor, next);
}

#[tokio::test]
async fn bad_requests_are_400_with_a_reason() {
    let (base, _outbox, _db) = serve().await;
    let http = reqwest::Client::new();
    for url in [
        format!("{base}/changes"),
        format!("{base}/changes?consumer=crm&limit=0"),
        format!("{base}/changes?consumer=crm&limit=1000000"),
        format!("{base}/changes?cursor=not-a-cursor"),
        format!("{base}/changes?cursor=pg1%7C%7C%7C0"), // a PostgreSQL cursor on SQLite
        format!("{base}/changes?consumer=crm&limit=ten"),
    ] {
        let (status, body) = get_json(&http, &url).await;
        assert_eq!(status, 400, "{url}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{url}: {body}"
        );
    }
    let status = put_json(
        &http,
        &format!("{base}/cursors/crm"),
        &json!({"cursor": "garbage"}),
    )
    .await;
    assert_eq!(status, 400);
    // A body that is not JSON, or JSON without its content type: the same
    // shape of answer.
    for (content_type, body, expected) in [
        ("application/json", "{not json", 400),
        ("text/plain", r#"{"cursor": "start"}"#, 415),
    ] {
        let r = http
            .put(format!("{base}/cursors/crm"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), expected, "{content_type} {body}");
        let answer: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{answer}"
        );
    }
}
