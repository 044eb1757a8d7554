//! A person opening their workspace: headless Debian `chromium` (over the
//! DevTools protocol) in front of the real `tollgate-proxy`, in front of a
//! real Jupyter Server (PyPI `jupyter_server` + `ipykernel`), the proxy
//! given the environment the injector gives a workspace of `ml-user-1`.
//!
//! - With the owner's cookie the page starts a kernel, runs a cell through
//!   the kernel's WebSocket (upgraded through the proxy) and shows its
//!   output.
//! - With another user's cookie the browser gets the 403 page.
//! - With none it is redirected to the login URL, its own URL in `rd`.
//!
//! Each page is screenshotted (kept beside the test's logs) and checked by
//! its text, read from the same page.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use serde_json::json;
use tollgate_e2e::browser::Browser;
use tollgate_e2e::jwt::{JwksServer, SigningKey, jwk_set, now};
use tollgate_e2e::ports::free_port;
use tollgate_e2e::process::{Process, without_proxy};
use tollgate_e2e::proxy::{Pki, Proxy, ProxyConfig, upstream};

const ISSUER: &str = "https://issuer.tollgate.test";

fn token(key: &SigningKey, user: &str) -> String {
    key.sign(&json!({
        "iss": ISSUER, "aud": "tollgate", "sub": format!("id-{user}"),
        "preferred_username": user, "groups": ["ml"], "exp": now() + 600,
    }))
}

/// Jupyter Server on loopback, serving an empty directory, without its
/// own login (the proxy is the door) and without XSRF checks (the page's
/// script posts JSON without Jupyter's frontend).
async fn jupyter(dir: &Path) -> anyhow::Result<(Process, u16)> {
    let port = free_port()?;
    let root = dir.join("notebooks");
    std::fs::create_dir_all(&root)?;
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "jupyter_server"])
        .arg(format!("--ServerApp.port={port}"))
        .args([
            "--ServerApp.ip=127.0.0.1",
            "--ServerApp.open_browser=False",
            "--ServerApp.port_retries=0",
            "--IdentityProvider.token=",
            "--ServerApp.password=",
            "--ServerApp.disable_check_xsrf=True",
            // CI runs as root; the server only listens on loopback.
            "--ServerApp.allow_root=True",
        ])
        .arg(format!("--ServerApp.root_dir={}", root.display()))
        .env("JUPYTER_RUNTIME_DIR", dir.join("runtime"))
        .env("JUPYTER_DATA_DIR", dir.join("data"))
        .env("JUPYTER_CONFIG_DIR", dir.join("config"))
        .env("JUPYTER_PLATFORM_DIRS", "1")
        .env("IPYTHONDIR", dir.join("ipython"));
    without_proxy(&mut cmd);
    let mut process = Process::spawn("jupyter", cmd, &dir.join("jupyter.log"))?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let start = Instant::now();
    loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/api/status"))
            .send()
            .await
            && r.status() == 200
        {
            return Ok((process, port));
        }
        if let Err(e) = process.ensure_running() {
            let tail = process.log_tail(20);
            return Err(e.context(format!(
                "jupyter_server stopped (./test installs it, pinned, with pip):\n{tail}"
            )));
        }
        ensure!(
            start.elapsed() < Duration::from_secs(60),
            "Jupyter Server did not answer in 60 s:\n{}",
            process.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a kernel, runs one cell through the kernel's WebSocket and shows
/// its output on the page, as Jupyter's frontend does (message protocol
/// 5.3, JSON frames).
const RUN_A_CELL: &str = r#"(async () => {
  const r = await fetch('/api/kernels', {method: 'POST',
    headers: {'Content-Type': 'application/json'}, body: JSON.stringify({name: 'python3'})});
  if (!r.ok) throw new Error('starting a kernel: ' + r.status);
  const kernel = await r.json();
  const ws = new WebSocket(`wss://${location.host}/api/kernels/${kernel.id}/channels`);
  const id = 'cell-' + Date.now();
  const output = await new Promise((resolve, reject) => {
    ws.onopen = () => ws.send(JSON.stringify({
      header: {msg_id: id, username: 'ml-user-1', session: 'browser-e2e',
               msg_type: 'execute_request', version: '5.3', date: new Date().toISOString()},
      parent_header: {}, metadata: {}, channel: 'shell', buffers: [],
      content: {code: 'print(6 * 7, "from the kernel")', silent: false, store_history: false,
                user_expressions: {}, allow_stdin: false, stop_on_error: true}}));
    ws.onmessage = (event) => {
      const m = JSON.parse(event.data);
      if (m.parent_header.msg_id === id && m.msg_type === 'stream') resolve(m.content.text);
    };
    ws.onerror = () => reject(new Error('the kernel WebSocket failed'));
    setTimeout(() => reject(new Error('no output in 60 s')), 60000);
  });
  ws.close();
  document.title = 'Cell output';
  document.body.innerHTML = '<h1>Cell output</h1><pre id="out"></pre>';
  document.getElementById('out').textContent = output;
  return output;
})()"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_opens_a_jupyter_workspace_through_the_proxy() {
    if let Err(e) = run().await {
        panic!("{e:#}");
    }
}

async fn run() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("tollgate-browser-e2e-")
        .tempdir()?;
    // Kept for a person to look at; the test reads the pages' text.
    let shots = tollgate_e2e::binaries::target_dir().join("browser-screenshots");
    std::fs::create_dir_all(&shots)?;

    let pki = Pki::new()?;
    let server_id = pki.workload("spiffe://cluster.local/ns/app-ml-team/sa/workspace")?;
    let key = SigningKey::rsa("corp-1")?;
    let jwks = JwksServer::start(&server_id, jwk_set(&[&key])).await?;
    let ca_file = pki.write_jwks_ca(dir.path())?;
    let login = upstream::http_app().await?;
    let (mut jupyter, jupyter_port) = jupyter(dir.path()).await?;

    let mut config = ProxyConfig::new(jupyter_port);
    config.client_auth = "off";
    config.env = vec![
        ("TOLLGATE_WORKSPACE_OWNER".into(), "ml-user-1".into()),
        ("TOLLGATE_TEAM".into(), "ml".into()),
    ];
    let login_url = format!("http://127.0.0.1:{}/echo", login.port());
    config.extra = format!(
        "jwt:\n  providers:\n    corp:\n      issuer: {ISSUER}\n      audiences: [tollgate]\n      algorithms: [RS256]\n      \
         jwks: {{url: {url}, caFile: {ca}}}\n  tokenSources: [{{cookie: tollgate_token}}]\n  \
         browserLogin: {{url: '{login_url}'}}\n\
         routes:\n- name: workspace\n  pathPrefix: /\n  jwt: {{mode: required}}\n  \
           authorization: {{workspace: {{adminGroups: [platform-admins]}}}}\n",
        url = jwks.url(),
        ca = ca_file.display(),
    );
    let proxy = Proxy::start(&config, &server_id).await?;
    let origin = format!("https://localhost:{}", proxy.inbound);
    let browser = Browser::start(dir.path()).await?;

    let result = async {
        // The owner: a cell runs and its output is on the page.
        let tab = browser.tab().await?;
        tab.set_cookie(&origin, "tollgate_token", &token(&key, "ml-user-1"))
            .await?;
        tab.open(&format!("{origin}/")).await?;
        let output = tab.eval(RUN_A_CELL).await.context("running a cell")?;
        let (url, text) = tab.text().await?;
        let size = tab.screenshot(&shots.join("owner.png")).await?;
        ensure!(
            output == "42 from the kernel\n"
                && text.contains("Cell output\n")
                && text.contains("42 from the kernel"),
            "the owner's page at {url} shows {text:?} (cell output {output})"
        );
        ensure!(size > 1000, "the owner's screenshot is {size} bytes");

        // Another user of the same team: the 403 page, naming no one.
        let tab = browser.tab().await?;
        tab.set_cookie(&origin, "tollgate_token", &token(&key, "ml-user-2"))
            .await?;
        tab.open(&format!("{origin}/")).await?;
        let (url, text) = tab.text().await?;
        tab.screenshot(&shots.join("other-user.png")).await?;
        let status = tab
            .eval("performance.getEntriesByType('navigation')[0].responseStatus")
            .await?;
        ensure!(
            status == 403
                && text.trim() == "forbidden: no allow rule of route workspace matched"
                && !text.contains("ml-user-2"),
            "another user at {url} got {status}: {text:?}"
        );

        // No cookie: the login page (here an echo server), with the way back.
        let tab = browser.tab().await?;
        tab.open(&format!("{origin}/lab?reset")).await?;
        let (url, text) = tab.text().await?;
        tab.screenshot(&shots.join("no-token.png")).await?;
        let back = format!(
            "rd=https%3A%2F%2Flocalhost%3A{}%2Flab%3Freset",
            proxy.inbound
        );
        ensure!(
            url == format!("{login_url}?{back}") && text.contains("\"path\":\"/echo\""),
            "without a token the browser is at {url}: {text:?}"
        );
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!(
            "proxy log:\n{}\njupyter log:\n{}",
            proxy.log_text(),
            jupyter.log_tail(30)
        );
    }
    jupyter.kill();
    result
}
