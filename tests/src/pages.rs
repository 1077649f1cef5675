//! [`PageClient`]: the pages as a browser without JavaScript sees them. It keeps the
//! cookies (session, pre-login, flash) by hand and never follows a redirect, so every
//! answer's status and `location` are the route's own.

use std::collections::HashMap;

use crate::ControlPlane;

/// A cookie-keeping client of the control plane's pages.
pub struct PageClient {
    base: String,
    http: reqwest::Client,
    cookies: HashMap<String, String>,
}

impl PageClient {
    /// An anonymous visitor of `control_plane`.
    pub fn new(control_plane: &ControlPlane) -> PageClient {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a reqwest client builds");
        PageClient {
            base: control_plane.base_url(),
            http,
            cookies: HashMap::new(),
        }
    }

    /// An anonymous visitor whose connections come from `local` (a loopback address
    /// such as `127.0.0.2`: the whole 127.0.0.0/8 reaches a server on 127.0.0.1), to
    /// play visitors from several addresses and networks.
    pub fn from_address(control_plane: &ControlPlane, local: std::net::IpAddr) -> PageClient {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .local_address(local)
            .build()
            .expect("a reqwest client builds");
        PageClient {
            base: control_plane.base_url(),
            http,
            cookies: HashMap::new(),
        }
    }

    /// A cookie this visitor holds.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    /// A visitor signed in through the login form; panics when the login is refused.
    pub async fn signed_in(
        control_plane: &ControlPlane,
        username: &str,
        password: &str,
    ) -> PageClient {
        let mut client = PageClient::new(control_plane);
        let status = client.login(username, password).await;
        assert_eq!(status, 303, "login as {username}");
        client
    }

    /// The underlying HTTP client (no redirects), for requests with extra headers.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The `Cookie` header this visitor sends.
    pub fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, resp: &reqwest::Response) {
        for value in resp.headers().get_all("set-cookie") {
            let Ok(text) = value.to_str() else { continue };
            let pair = text.split(';').next().unwrap_or("");
            if let Some((k, v)) = pair.split_once('=') {
                if text.contains("Max-Age=0") {
                    self.cookies.remove(k);
                } else {
                    self.cookies.insert(k.to_string(), v.to_string());
                }
            }
        }
    }

    async fn finish(&mut self, resp: reqwest::Response) -> (u16, String, String) {
        self.keep_cookies(&resp);
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (status, location, resp.text().await.expect("reading a page"))
    }

    /// `GET path`: status, `location` header (empty when none), body.
    pub async fn get(&mut self, path: &str) -> (u16, String, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        self.finish(resp).await
    }

    /// `POST path` with a urlencoded form: status, `location` header, body.
    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> (u16, String, String) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .form(form)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        self.finish(resp).await
    }

    /// The CSRF token of the first form on a page (which must answer 200).
    pub async fn csrf(&mut self, path: &str) -> String {
        let (status, _, html) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}");
        csrf_of(&html)
    }

    /// Submits the login form; returns its status (303 on success).
    pub async fn login(&mut self, username: &str, password: &str) -> u16 {
        let csrf = self.csrf("/login").await;
        let form = [
            ("csrf", csrf.as_str()),
            ("username", username),
            ("password", password),
        ];
        self.post("/login", &form).await.0
    }
}

/// The value of the first `csrf` field in a page.
pub fn csrf_of(html: &str) -> String {
    let key = "name=\"csrf\" value=\"";
    let start = html.find(key).expect("the page has a csrf field") + key.len();
    html[start..].split('"').next().unwrap_or("").to_string()
}
