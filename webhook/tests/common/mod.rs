//! What the integration tests share: the admission server in-process over
//! real HTTPS, and a reqwest client that trusts its CA.
#![allow(dead_code)] // each test crate uses a different part

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tollgate_certs::issue::Ca;
use tollgate_webhook::admission::Admission;
use tollgate_webhook::config::Config;
use tollgate_webhook::metrics::Metrics;
use tollgate_webhook::serve::load_policies;
use tollgate_webhook::server::{self, State};

pub struct Server {
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub async fn start(config_yaml: &str) -> Server {
        let config = Config::parse(config_yaml, "test config").unwrap();
        let ca = Ca::generate("test CA").unwrap();
        let leaf = ca
            .issue_server(&["localhost".into()], &["127.0.0.1".parse().unwrap()])
            .unwrap();
        let tls =
            tollgate_certs::tls::server_config_from_pem(&leaf.cert_pem, &leaf.key_pem, "test")
                .unwrap();
        let metrics = Arc::new(Metrics::new());
        let admission =
            Admission::new(load_policies(&config).unwrap(), &config, metrics.clone()).unwrap();
        let state = Arc::new(State::new(admission, metrics, &config.limits));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let limits = config.limits.clone();
        let task = tokio::spawn(async move {
            server::serve(listener, tls, state, &limits, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap())
            .tls_built_in_root_certs(false)
            .build()
            .unwrap();
        Server {
            addr,
            ca_pem: ca.cert_pem().to_owned(),
            client,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let response = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}
