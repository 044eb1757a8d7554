//! Headless Debian `chromium`, driven over the DevTools protocol: a page
//! is opened with or without a cookie, a script runs in it, its text is
//! read and a screenshot is taken. Only the handful of commands the
//! tests use are sent (`Target.*`, `Network.setCookie`, `Page.navigate`,
//! `Page.captureScreenshot`, `Runtime.evaluate`), as JSON over the
//! browser's WebSocket (tokio-tungstenite): a CDP client crate would add a
//! generated binding of the whole protocol, minutes of build on a CI core,
//! for these five.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::sync::{Mutex, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::process::{Process, without_proxy};

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;
type Sink = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    Message,
>;

/// The Debian package's binary, or how to get it.
pub fn chromium_binary() -> anyhow::Result<PathBuf> {
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(candidate).exists() {
            return Ok(PathBuf::from(candidate));
        }
    }
    bail!(
        "chromium is not installed: ./test installs it (apt-get install chromium); \
         the browser tests need a real browser"
    )
}

/// A running headless chromium, killed on drop.
pub struct Browser {
    process: Process,
    sink: Mutex<Sink>,
    pending: Pending,
    next: AtomicU64,
    _profile: tempfile::TempDir,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.reader.abort();
        self.process.kill();
    }
}

/// One tab, attached in flattened mode (commands carry its session).
pub struct Tab<'a> {
    browser: &'a Browser,
    session: String,
}

impl Browser {
    /// Starts chromium headless with a fresh profile; it trusts any
    /// certificate (the proxy's is signed by a test CA), and its log goes
    /// to `dir/chromium.log`.
    pub async fn start(dir: &Path) -> anyhow::Result<Browser> {
        let profile = tempfile::Builder::new()
            .prefix("tollgate-chromium-")
            .tempdir()?;
        let log = dir.join("chromium.log");
        let mut cmd = Command::new(chromium_binary()?);
        cmd.args([
            "--headless",
            "--no-sandbox", // root in CI; the test pages are ours
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--ignore-certificate-errors",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1024,700",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null());
        without_proxy(&mut cmd);
        let mut process = Process::spawn("chromium", cmd, &log)?;
        // Chromium writes the port it chose to the profile.
        let port_file = profile.path().join("DevToolsActivePort");
        let start = Instant::now();
        let ws_url = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break format!("ws://127.0.0.1:{port}{path}");
                }
            }
            process.ensure_running()?;
            ensure!(
                start.elapsed() < Duration::from_secs(30),
                "chromium did not open its DevTools port in 30 s:\n{}",
                process.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let addr = ws_url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let tcp = tokio::net::TcpStream::connect(&addr).await?;
        let (ws, _) = tokio_tungstenite::client_async(ws_url.as_str(), tcp)
            .await
            .with_context(|| format!("connecting to chromium's DevTools at {ws_url}"))?;
        let (sink, mut stream) = ws.split();
        let pending: Pending = Arc::default();
        let waiting = pending.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Ok(text) = message.to_text() else {
                    continue;
                };
                let Ok(value) = serde_json::from_str::<Value>(text) else {
                    continue;
                };
                // Replies carry their command's id; events are not needed.
                if let Some(id) = value.get("id").and_then(Value::as_u64)
                    && let Some(tx) = waiting.lock().await.remove(&id)
                {
                    let _ = tx.send(value);
                }
            }
        });
        Ok(Browser {
            process,
            sink: Mutex::new(sink),
            pending,
            next: AtomicU64::new(1),
            _profile: profile,
            reader,
        })
    }

    /// Sends a command (to `session`, if any) and waits for its result.
    async fn send(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> anyhow::Result<Value> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            command["sessionId"] = s.into();
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().await.insert(id, tx);
        self.sink
            .lock()
            .await
            .send(Message::text(command.to_string()))
            .await?;
        let reply = tokio::time::timeout(Duration::from_secs(90), rx)
            .await
            .with_context(|| format!("chromium did not answer {method} in 90 s"))?
            .context("chromium's DevTools connection closed")?;
        if let Some(error) = reply.get("error") {
            bail!("{method}: {error}");
        }
        Ok(reply["result"].clone())
    }

    /// A new tab with an empty page, in a context of its own (its own
    /// cookies, as a separate person's browser).
    pub async fn tab(&self) -> anyhow::Result<Tab<'_>> {
        let context = self
            .send(None, "Target.createBrowserContext", json!({}))
            .await?;
        let target = self
            .send(
                None,
                "Target.createTarget",
                json!({"url": "about:blank", "browserContextId": context["browserContextId"]}),
            )
            .await?;
        let attached = self
            .send(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await?;
        let session = attached["sessionId"]
            .as_str()
            .context("no session id")?
            .to_owned();
        let tab = Tab {
            browser: self,
            session,
        };
        tab.send("Network.enable", json!({})).await?;
        tab.send("Page.enable", json!({})).await?;
        Ok(tab)
    }
}

impl Tab<'_> {
    async fn send(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.browser.send(Some(&self.session), method, params).await
    }

    /// Sets a cookie for `url`'s origin, as a login would have.
    pub async fn set_cookie(&self, url: &str, name: &str, value: &str) -> anyhow::Result<()> {
        let r = self
            .send(
                "Network.setCookie",
                json!({"url": url, "name": name, "value": value, "secure": true, "httpOnly": true}),
            )
            .await?;
        ensure!(r["success"] != false, "chromium refused the cookie");
        Ok(())
    }

    /// Navigates and waits until the document (after any redirects) has
    /// loaded.
    pub async fn open(&self, url: &str) -> anyhow::Result<()> {
        let r = self.send("Page.navigate", json!({"url": url})).await?;
        if let Some(e) = r.get("errorText").and_then(Value::as_str) {
            bail!("opening {url}: {e}");
        }
        let start = Instant::now();
        loop {
            let state = self.eval("document.readyState").await.unwrap_or_default();
            if state == "complete" {
                return Ok(());
            }
            ensure!(
                start.elapsed() < Duration::from_secs(30),
                "{url} did not load in 30 s (readyState {state})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Evaluates `expression` in the page, awaiting a promise; its value.
    pub async fn eval(&self, expression: &str) -> anyhow::Result<Value> {
        let r = self
            .send(
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!(
                "the page's script failed: {}",
                e["exception"]["description"]
                    .as_str()
                    .unwrap_or(&e.to_string())
            );
        }
        Ok(r["result"]["value"].clone())
    }

    /// The page's URL and its visible text.
    pub async fn text(&self) -> anyhow::Result<(String, String)> {
        let url = self.eval("location.href").await?;
        let text = self
            .eval("document.body ? document.body.innerText : ''")
            .await?;
        Ok((
            url.as_str().unwrap_or_default().to_owned(),
            text.as_str().unwrap_or_default().to_owned(),
        ))
    }

    /// A PNG screenshot of the page, written to `path`; its size in bytes.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<usize> {
        let r = self
            .send("Page.captureScreenshot", json!({"format": "png"}))
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().context("no screenshot data")?)?;
        ensure!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "the screenshot is not a PNG"
        );
        std::fs::write(path, &png)?;
        Ok(png.len())
    }
}
