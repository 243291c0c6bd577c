//! Just enough of the WebDriver protocol to drive Debian's headless
//! Chromium through `chromedriver`: open a page, find, read and click
//! elements, accept a confirmation, take a screenshot.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// The key WebDriver names an element reference by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub(crate) struct Browser {
    http: reqwest::Client,
    session: String,
    base: String,
    driver: Child,
    profile: tempdir::Dir,
}

mod tempdir {
    use std::path::PathBuf;

    /// A directory removed when dropped.
    pub(crate) struct Dir(pub(crate) PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// Starts `chromedriver` and a headless Chromium session with a fresh
    /// profile; fails loudly, naming the packages, if either is missing.
    pub(crate) async fn start() -> Browser {
        for (path, package) in [(CHROMEDRIVER, "chromium-driver"), (CHROMIUM, "chromium")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: install Debian's `chromium` and `chromium-driver` \
                 (`.ci/run` installs them; package `{package}`)"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = std::env::temp_dir().join(format!("outbox-console-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&profile).unwrap();
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            let ready = http.get(format!("{base}/status")).send().await;
            if let Ok(r) = ready {
                let status: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
                if status["value"]["ready"] == json!(true) {
                    break;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromedriver did not come up on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut browser = Browser {
            http,
            session: String::new(),
            base,
            driver,
            profile: tempdir::Dir(profile.clone()),
        };
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--window-size=1280,900".to_owned(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let created = browser
            .command(
                "POST",
                "/session",
                json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
                }}}),
            )
            .await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        browser
    }

    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self
                .http
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string()),
        };
        let answer = request.send().await.expect("reach chromedriver");
        let value: Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
        value["value"].clone()
    }

    pub(crate) async fn goto(&self, url: &str) {
        self.command("POST", "/url", json!({ "url": url })).await;
    }

    /// The element `css` selects, if there is one now.
    async fn find(&self, css: &str) -> Option<String> {
        let found = self
            .command(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found[ELEMENT].as_str().map(str::to_owned)
    }

    /// The visible text of `css`, if it exists now.
    pub(crate) async fn text(&self, css: &str) -> Option<String> {
        let id = self.find(css).await?;
        let text = self
            .command("GET", &format!("/element/{id}/text"), Value::Null)
            .await;
        text.as_str().map(str::to_owned)
    }

    /// Waits until the text of `css` satisfies `ok`; returns it.
    pub(crate) async fn wait_text(
        &self,
        css: &str,
        what: &str,
        ok: impl Fn(&str) -> bool,
    ) -> String {
        let start = Instant::now();
        loop {
            let text = self.text(css).await;
            if let Some(t) = text.as_deref().filter(|t| ok(t)) {
                return t.to_owned();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{what}: {css} shows {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks `css`, waiting for it to exist.
    pub(crate) async fn click(&self, css: &str) {
        let start = Instant::now();
        let id = loop {
            if let Some(id) = self.find(css).await {
                break id;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no {css} to click"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let clicked = self
            .command("POST", &format!("/element/{id}/click"), json!({}))
            .await;
        assert!(clicked.is_null(), "click on {css}: {clicked}");
    }

    /// Saves a PNG of the page as `dir/name.png`.
    pub(crate) async fn screenshot(&self, dir: &Path, name: &str) -> PathBuf {
        let shot = self.command("GET", "/screenshot", Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot.as_str().expect("a screenshot"))
            .unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser {
    /// Ends the session, which makes `chromedriver` close Chromium, then
    /// stops `chromedriver` and whatever Chromium process still runs on
    /// this browser's profile (killing `chromedriver` alone left Chromium
    /// and its crash handler running after every test).
    fn drop(&mut self) {
        if !self.session.is_empty() {
            self.end_session();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = Command::new("pkill")
            .arg("-KILL")
            .arg("-f")
            .arg(self.profile.0.as_os_str())
            .status();
    }
}

impl Browser {
    /// `DELETE /session/{id}`, in plain blocking HTTP: `Drop` cannot await
    /// the client. Bounded, so a hung driver cannot hold the test.
    fn end_session(&self) {
        use std::io::{Read as _, Write as _};
        let Some(addr) = self.base.strip_prefix("http://") else {
            return;
        };
        let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
            return;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.session
        );
        if stream.write_all(request.as_bytes()).is_ok() {
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
        }
    }
}
