//! A small JSON client for the control plane's `/api/v1`.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A WebSocket connected to the control plane.
pub type WebSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// JSON client for the control plane, optionally carrying a bearer token.
///
/// Every call answers `(status, body)`: the body parsed as JSON, `Value::Null` when
/// empty, or `Value::String` with the raw text when it is not JSON (so a test can see
/// an HTML error page where JSON was due). Transport errors panic: the harness only
/// talks to a server it started.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base_url: String,
    token: Option<String>,
}

impl Api {
    /// A client for `base_url` (`http://127.0.0.1:PORT`) without credentials.
    pub fn new(base_url: &str) -> Api {
        // No keep-alive pool: a server that answers early (413 to an oversized body)
        // and closes the connection would otherwise leave a dead connection in the
        // pool, and the test's next request would fail with "error sending request".
        // A fresh loopback connection per request costs nothing here.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("building an HTTP client");
        Api {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            token: None,
        }
    }

    /// The same client sending `Authorization: Bearer TOKEN`.
    pub fn with_token(&self, token: &str) -> Api {
        Api {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    /// The same client without credentials.
    pub fn without_token(&self) -> Api {
        Api {
            token: None,
            ..self.clone()
        }
    }

    /// The bearer token, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The underlying reqwest client (redirects are not followed), for requests the
    /// helpers do not cover.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// An absolute URL: `path` (`/api/v1/...`) joined to the base URL; absolute URLs
    /// pass through.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else if path.starts_with('/') {
            format!("{}{path}", self.base_url)
        } else {
            format!("{}/{path}", self.base_url)
        }
    }

    /// Waits up to 30 s until the agent named `name` is connected, and returns its
    /// view from `GET /api/v1/agents` (`id`, `server_id`, facts…).
    pub async fn connected_agent(&self, name: &str) -> Value {
        crate::eventually(
            Duration::from_secs(30),
            &format!("agent {name} connected"),
            || async {
                let (_, agents) = self.get("/api/v1/agents").await;
                agents
                    .as_array()?
                    .iter()
                    .find(|a| a["name"] == name && a["connected"] == true)
                    .cloned()
            },
        )
        .await
    }

    /// Waits up to `timeout` until execution `id` has ended (any status but queued
    /// and running) and returns its view.
    pub async fn execution_end(&self, id: &str, timeout: Duration) -> Value {
        crate::eventually(timeout, &format!("execution {id} ends"), || async {
            let (_, e) = self.get(&format!("/api/v1/executions/{id}")).await;
            (!matches!(e["status"].as_str(), Some("queued" | "running"))).then_some(e)
        })
        .await
    }

    /// Saves a stored script (`POST /api/v1/scripts`, answered 201) of `kind` (`shell`,
    /// `playbook`, …): its id.
    pub async fn create_script(&self, name: &str, kind: &str, body: &str) -> String {
        let script = serde_json::json!({"name": name, "kind": kind, "body": body});
        let (status, created) = self.post("/api/v1/scripts", &script).await;
        assert_eq!(status, 201, "{created}");
        created["id"].as_str().expect("script id").to_string()
    }

    /// Runs `script` on `agent` (`POST /api/v1/executions`, answered 201) and waits up
    /// to 60 s for it to end; returns the ended execution's view.
    pub async fn run_script(&self, agent: &str, script: &str) -> Value {
        let body = serde_json::json!({"agent": agent, "kind": "script", "script": script});
        let (status, created) = self.post("/api/v1/executions", &body).await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().expect("execution id").to_string();
        self.execution_end(&id, Duration::from_secs(60)).await
    }

    /// The stored output of execution `id` as one text (its log chunks' data joined);
    /// panics unless the log answers 200.
    pub async fn log_text(&self, id: &str) -> String {
        let (status, chunks) = self
            .get_json_lines(&format!("/api/v1/executions/{id}/log"))
            .await;
        assert_eq!(status, 200, "the log of {id}");
        chunks
            .iter()
            .map(|c| c["data"].as_str().unwrap_or_default())
            .collect()
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(Method::POST, path, Some(body)).await
    }

    /// `POST path` without a body.
    pub async fn post_empty(&self, path: &str) -> (u16, Value) {
        self.send(Method::POST, path, None).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(Method::PUT, path, Some(body)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(Method::DELETE, path, None).await
    }

    /// Any method with an optional JSON body.
    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut request = self.request(method.clone(), path);
        if let Some(body) = body {
            request = request.json(body);
        }
        Self::finish(&method, path, request).await
    }

    /// A request with a raw body and content type, for malformed-input tests.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> (u16, Value) {
        let request = self
            .request(method.clone(), path)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body.to_string());
        Self::finish(&method, path, request).await
    }

    /// `GET path` answering the raw text, for endpoints that are not JSON
    /// (`/metrics`, `/healthz`, JSON-lines logs).
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let response = self
            .request(Method::GET, path)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("reading GET {path}: {e}"));
        (status, text)
    }

    /// `GET path` of a list (CONTRACT.md "Lists"): the status, the JSON body and the
    /// target of `Link: <…>; rel="next"` when the answer has one.
    pub async fn get_page(&self, path: &str) -> (u16, Value, Option<String>) {
        let response = self
            .request(Method::GET, path)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        let next = response
            .headers()
            .get("link")
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.ends_with("rel=\"next\""))
            .and_then(|v| Some(v[v.find('<')? + 1..v.find('>')?].to_string()));
        let body: Value = response.json().await.unwrap_or(Value::Null);
        (status, body, next)
    }

    /// Every item of a list from `path` on, following `Link: rel="next"` page after
    /// page (each must answer 200 and an array), in the order the pages give them.
    pub async fn walk(&self, path: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut next = Some(path.to_string());
        let mut pages = 0;
        while let Some(path) = next {
            pages += 1;
            assert!(pages <= 10_000, "the pages of {path} never end");
            let (status, body, link) = self.get_page(&path).await;
            assert_eq!(status, 200, "{path}: {body}");
            items.extend(
                body.as_array()
                    .unwrap_or_else(|| panic!("{path} answers an array: {body}"))
                    .iter()
                    .cloned(),
            );
            next = link;
        }
        items
    }

    /// `GET path` of a JSON-lines endpoint (an execution's log), one value per line.
    pub async fn get_json_lines(&self, path: &str) -> (u16, Vec<Value>) {
        let (status, text) = self.get_text(path).await;
        let values = text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("GET {path}: line is not JSON ({e}): {line}"))
            })
            .collect();
        (status, values)
    }

    /// Opens a WebSocket to `path` (`/api/v1/executions/ID/stream?from_seq=N`) with this
    /// client's bearer token.
    pub async fn websocket(&self, path: &str) -> WebSocket {
        let url = self
            .url(path)
            .replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1);
        let mut request = url
            .as_str()
            .into_client_request()
            .unwrap_or_else(|e| panic!("WebSocket URL {url}: {e}"));
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}")
                .parse()
                .expect("a bearer token is a valid header value");
            request.headers_mut().insert("Authorization", value);
        }
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .unwrap_or_else(|e| panic!("connecting WebSocket {url}: {e}"));
        socket
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request
    }

    async fn finish(method: &Method, path: &str, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("reading {method} {path}: {e}"));
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body)
    }
}
