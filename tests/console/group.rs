//! The console of a group of outboxes: the index lists each with its
//! counts, each outbox's console answers under `/o/<name>` and takes
//! changes with its own page's token, and the index is guarded as a
//! console is.

use std::net::SocketAddr;

use outbox::console::{Console, ConsoleGroup};
use serde_json::{json, Value};

use super::{body, csrf, dead_payment, enqueue, outbox, screenshots, webdriver::Browser};

/// Serves `group` on a loopback port; its base URL.
async fn serve(group: ConsoleGroup) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { group.serve(listener).await.unwrap() });
    format!("http://{addr}")
}

async fn json_of(http: &reqwest::Client, url: &str) -> Value {
    let text = body(http, url).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}: {text}"))
}

/// The name of an outbox that can no longer be read, written to break a
/// page that would not escape it.
const HOSTILE: &str = "<img src=x onerror=alert(1)> {csrf}";

#[tokio::test]
async fn the_index_lists_each_outbox_and_each_console_works_under_it() {
    let (_eu_db, eu) = outbox().await;
    for i in 0..2 {
        enqueue(&eu, "orders", &format!("order-{i}"), json!({ "n": i })).await;
    }
    let (_us_db, us) = outbox().await;
    let payment = dead_payment(&us, json!({ "amount": 1 })).await;
    let blocked = us.blocked_keys().await.unwrap().len();
    // Its pool closed: every read fails.
    let (gone_db, gone) = outbox().await;
    gone_db.pool.close().await;

    let group = ConsoleGroup::new()
        .add("eu west", Console::new(eu.clone()))
        .unwrap()
        .add("us/east", Console::new(us.clone()))
        .unwrap()
        .add(HOSTILE, Console::new(gone))
        .unwrap();
    assert_eq!(group.names(), ["eu west", "us/east", HOSTILE]);
    let base = serve(group).await;
    let http = reqwest::Client::new();

    let index = json_of(&http, &format!("{base}/api/outboxes")).await;
    let list = index["outboxes"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{index}");
    let (eu_row, us_row, gone_row) = (&list[0], &list[1], &list[2]);
    assert_eq!(eu_row["name"], "eu west", "{index}");
    assert_eq!(eu_row["path"], "o/eu%20west", "{index}");
    assert_eq!(eu_row["pending"], 2, "{index}");
    assert_eq!(eu_row["dead_letters"], 0, "{index}");
    assert_eq!(eu_row["blocked_keys"], 0, "{index}");
    assert!(
        eu_row["oldest_pending_seconds"].as_f64().is_some(),
        "{index}"
    );
    // Pending and no relay alive.
    assert_eq!(eu_row["status"], "attention", "{index}");
    assert_eq!(us_row["name"], "us/east", "{index}");
    assert_eq!(us_row["path"], "o/us%2Feast", "{index}");
    assert_eq!(us_row["pending"], 0, "{index}");
    assert_eq!(us_row["dead_letters"], 1, "{index}");
    assert_eq!(us_row["blocked_keys"], json!(blocked), "{index}");
    assert_eq!(us_row["status"], "attention", "{index}");
    assert!(
        us_row["attention"][0]
            .as_str()
            .unwrap()
            .contains("1 dead letter"),
        "{index}"
    );
    assert_eq!(gone_row["name"], HOSTILE, "{index}");
    assert_eq!(gone_row["status"], "unreachable", "{index}");
    assert!(gone_row["error"].as_str().is_some(), "{index}");

    // Each console under its name: its API, and its page with the name
    // escaped and a way back.
    let overview = json_of(&http, &format!("{base}/o/eu%20west/api/overview")).await;
    assert_eq!(overview["stats"]["pending"], 2, "{overview}");
    let dead = json_of(&http, &format!("{base}/o/us%2Feast/api/dead")).await;
    assert_eq!(dead["dead_letters"][0]["id"], json!(payment), "{dead}");
    let page = body(
        &http,
        &format!(
            "{base}/o/{}",
            "%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E%20%7Bcsrf%7D"
        ),
    )
    .await;
    assert!(!page.contains("<img"), "{page}");
    assert!(
        page.contains("&lt;img src=x onerror=alert(1)&gt; &#123;csrf}"),
        "{page}"
    );
    assert!(page.contains("href=\"../../\">All outboxes"), "{page}");
    // With a trailing slash, sent to the console's own address.
    let slashed = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{base}/o/eu%20west/"))
        .send()
        .await
        .unwrap();
    assert_eq!(slashed.status(), 303);
    assert_eq!(slashed.headers()["location"], "../eu%20west");

    // A change through a nested console, with that console's token; the
    // token of another outbox's page does not do.
    let us_base = format!("{base}/o/us%2Feast");
    let replay = format!("{us_base}/api/dead/{payment}/replay");
    let eu_token = csrf(&http, &format!("{base}/o/eu%20west")).await;
    let us_token = csrf(&http, &us_base).await;
    assert_ne!(eu_token, us_token);
    let other = http
        .post(&replay)
        .header("x-csrf-token", eu_token)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 403);
    assert_eq!(us.dead_letters(10).await.unwrap().len(), 1);
    let done = http
        .post(&replay)
        .header("x-csrf-token", us_token)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200, "{}", done.text().await.unwrap());
    assert!(us.dead_letters(10).await.unwrap().is_empty());
    let index = json_of(&http, &format!("{base}/api/outboxes")).await;
    assert_eq!(index["outboxes"][1]["dead_letters"], 0, "{index}");
    assert_eq!(index["outboxes"][1]["pending"], 1, "{index}");
}

#[tokio::test]
async fn the_index_is_guarded_as_a_console_is() {
    let (_db, a) = outbox().await;
    let (_db2, b) = outbox().await;
    let http = reqwest::Client::new();
    let two = || {
        ConsoleGroup::new()
            .add("a", Console::new(a.clone()))
            .unwrap()
            .add("b", Console::new(b.clone()))
            .unwrap()
    };

    // Names refused: repeated, a dot segment, a control character.
    for (bad, why) in [
        ("a", "already"),
        ("..", "path segment"),
        ("x\ny", "control"),
    ] {
        let err = two().add(bad, Console::new(a.clone())).unwrap_err();
        assert!(
            matches!(
                &err,
                outbox::Error::InvalidConfig {
                    field: "outbox_name",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(why), "{bad:?}: {err}");
    }

    // Loopback only: a proxied request or another site's Host is refused,
    // on the index, its API and every console under it.
    let base = serve(two()).await;
    for path in ["/", "/api/outboxes", "/o/a/api/overview"] {
        let proxied = http
            .get(format!("{base}{path}"))
            .header("forwarded", "for=203.0.113.9")
            .send()
            .await
            .unwrap();
        assert_eq!(proxied.status(), 403, "{path}");
        let rebound = http
            .get(format!("{base}{path}"))
            .header("host", "evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(rebound.status(), 403, "{path}");
    }
    let index = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(index.status(), 200);
    let headers = index.headers();
    assert!(headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["x-frame-options"], "DENY");
    let wide = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err = two().serve(wide).await.unwrap_err();
    assert!(matches!(err, outbox::Error::InvalidConfig { .. }), "{err}");

    // The group's credentials hold for the index and each console alike.
    let base = serve(two().basic_auth("oncall", "s3cret")).await;
    for path in ["/", "/api/outboxes", "/o/b/api/overview", "/o/b"] {
        let asked = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(asked.status(), 401, "{path}");
        let wrong = http
            .get(format!("{base}{path}"))
            .basic_auth("oncall", Some("guess"))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
        let right = http
            .get(format!("{base}{path}"))
            .basic_auth("oncall", Some("s3cret"))
            .send()
            .await
            .unwrap();
        assert_eq!(right.status(), 200, "{path}");
    }
    let base = serve(two().bearer_token("t0ken")).await;
    let bearer = |t: &'static str| {
        http.get(format!("{base}/api/outboxes"))
            .header("authorization", format!("Bearer {t}"))
            .send()
    };
    assert_eq!(bearer("nope").await.unwrap().status(), 401);
    assert_eq!(bearer("t0ken").await.unwrap().status(), 200);

    // A console added with credentials of its own keeps them in a group
    // without any.
    let base = serve(
        two()
            .add("c", Console::new(a.clone()).bearer_token("own"))
            .unwrap(),
    )
    .await;
    let own = http.get(format!("{base}/o/c/api/overview")).send().await;
    assert_eq!(own.unwrap().status(), 401);
    let own = http
        .get(format!("{base}/o/c/api/overview"))
        .header("authorization", "Bearer own")
        .send()
        .await;
    assert_eq!(own.unwrap().status(), 200);

    // Read-only for the group: no console under it takes a change.
    let base = serve(two().read_only(true)).await;
    let token = csrf(&http, &format!("{base}/o/a")).await;
    let refused = http
        .post(format!("{base}/o/a/api/blocked/unblock"))
        .header("x-csrf-token", token)
        .header("content-type", "application/json")
        .body(r#"{"key":"k"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("read-only"));
    let page = body(&http, &format!("{base}/o/a")).await;
    assert!(
        page.contains("name=\"read-only\" content=\"true\""),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_opens_one_outbox_from_the_group_index_in_a_browser() {
    let (_eu_db, eu) = outbox().await;
    for i in 0..3 {
        enqueue(&eu, "orders", &format!("order-{i}"), json!({ "n": i })).await;
    }
    let (_us_db, us) = outbox().await;
    dead_payment(&us, json!({ "amount": 1 })).await;
    let (_ok_db, quiet) = outbox().await;
    let group = ConsoleGroup::new()
        .add("eu west", Console::new(eu.clone()))
        .unwrap()
        .add("us <east>", Console::new(us))
        .unwrap()
        .add("apac", Console::new(quiet))
        .unwrap();
    let base = serve(group).await;
    let browser = Browser::start().await;
    let shots = screenshots();

    browser.goto(&format!("{base}/")).await;
    browser
        .wait_text("#outboxes tbody", "three outboxes listed", |t| {
            t.contains("eu west") && t.contains("us <east>") && t.contains("apac")
        })
        .await;
    browser
        .wait_text("#pending", "the pending of all", |t| t == "3")
        .await;
    browser
        .wait_text("#dead_letters", "the dead letter of us", |t| t == "1")
        .await;
    browser.screenshot(&shots, "8-group-index").await;

    browser.click("#outboxes tr:first-child a").await;
    browser
        .wait_text("#pending", "the eu outbox's console", |t| t == "3")
        .await;
    let name = browser.text(".outbox-name").await.unwrap();
    assert_eq!(name, "eu west");
    browser.screenshot(&shots, "9-group-member").await;
    browser.click("a.group").await;
    browser
        .wait_text("#count", "back on the index", |t| t == "3")
        .await;
}

#[tokio::test]
async fn mounted_under_a_prefix_the_index_and_its_consoles_find_their_way() {
    let (_db, a) = outbox().await;
    enqueue(&a, "orders", "k", json!({ "n": 1 })).await;
    let group = ConsoleGroup::new()
        .add("a b", Console::new(a.clone()))
        .unwrap();
    let base = super::serve_nested("/ops", group.router()).await;
    let http = reqwest::Client::new();
    let index = body(&http, &base).await;
    assert!(index.contains("<base href=\"/ops/\">"), "{index}");
    let listed = json_of(&http, &format!("{base}/api/outboxes")).await;
    assert_eq!(listed["outboxes"][0]["pending"], 1, "{listed}");
    let page = body(&http, &format!("{base}/o/a%20b")).await;
    assert!(page.contains("<base href=\"/ops/o/a%20b/\">"), "{page}");
    for asset in [
        "group.js",
        "console.css",
        "o/a%20b/console.js",
        "o/a%20b/api/overview",
    ] {
        let answer = http.get(format!("{base}/{asset}")).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{asset}");
    }
}
