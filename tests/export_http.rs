//! The change log served over HTTP by a real local server.

mod support;

use outbox::change::Change;
use outbox::SqliteOutbox;
use serde_json::{json, Value};
use support::sqlite::TempDb;

async fn get_json(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = http.get(url).send().await.unwrap();
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

/// Serves the change log of a new database; returns the base URL, the
/// outbox and the database (its files go when it is dropped).
async fn serve() -> (String, SqliteOutbox, TempDb) {
    // sqlx's default pool size.
    let db = TempDb::with_max_connections("outbox-export-http", 10).await;
    let outbox = db.outbox().await;
    let app = axum::Router::new().nest("/exports", outbox::export::http::router(outbox.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/exports"), outbox, db)
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
}
