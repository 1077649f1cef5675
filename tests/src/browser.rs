//! A headless Chromium driven through Debian's chromedriver over WebDriver.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::{append_log, free_tcp_port, log_tail, TEST_COMMAND};

/// How long an element query waits for the element to appear.
const ELEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long chromedriver may take to answer `/status`.
const DRIVER_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Chromium's flags: headless, as root in a container, one fixed desktop size.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--lang=en-US",
];

/// A WebDriver session on a headless Chromium, started through its own chromedriver on
/// a free port. Paths given to [`Browser::goto`] are relative to the base URL.
///
/// The session and chromedriver end when this is dropped; chromedriver's log is in
/// [`Browser::dir`], printed when a test panics.
#[derive(Debug)]
pub struct Browser {
    client: Client,
    base_url: String,
    driver: Option<Child>,
    driver_port: u16,
    session_id: Option<String>,
    root: Option<TempDir>,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium for pages under `base_url`.
    ///
    /// Fails (panics) naming the README's test command when chromedriver or Chromium is
    /// not installed: browser tests never skip silently.
    pub async fn start(base_url: &str) -> Browser {
        let driver_binary = find_chromedriver();
        let chromium_binary = find_chromium();
        let root = tempfile::Builder::new()
            .prefix("dynserv-browser-")
            .tempdir()
            .expect("creating the browser's temp dir");
        let driver_log = root.path().join("chromedriver.log");
        let driver_port = free_tcp_port();
        let driver = Command::new(&driver_binary)
            .arg(format!("--port={driver_port}"))
            .arg(format!("--log-path={}", driver_log.display()))
            .stdin(Stdio::null())
            .stdout(append_log(&root.path().join("chromedriver.stdout.log")))
            .stderr(append_log(&root.path().join("chromedriver.stderr.log")))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "spawning {}: {e}. Run the README's test command `{TEST_COMMAND}`, which \
                     installs chromium and chromium-driver",
                    driver_binary.display()
                )
            });
        let mut browser_root = Some(root);
        let mut driver = Some(driver);
        wait_for_driver(
            driver_port,
            driver.as_mut().expect("just spawned"),
            &driver_log,
        )
        .await;

        let profile = browser_root
            .as_ref()
            .expect("temp dir present")
            .path()
            .join("profile");
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|arg| arg.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium_binary,
                "args": args,
            },
            // Keeps the console (CSP violations, script errors) for console_messages.
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("json! of an object is an object")
        };
        let connected =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(capabilities)
                .connect(&format!("http://127.0.0.1:{driver_port}"))
                .await;
        let client = match connected {
            Ok(client) => client,
            Err(e) => {
                if let Some(mut child) = driver.take() {
                    crate::kill_now(&mut child);
                }
                let root = browser_root.take().expect("temp dir present");
                panic!(
                    "chromedriver could not start Chromium ({}): {e}\n--- chromedriver log ---\n{}\n\
                     Install chromium and chromium-driver with the README's test command \
                     `{TEST_COMMAND}`",
                    chromium_binary,
                    log_tail(&root.path().join("chromedriver.log"), 80)
                );
            }
        };
        let session_id = client.session_id().await.ok().flatten();
        Browser {
            client,
            base_url: base_url.trim_end_matches('/').to_string(),
            driver,
            driver_port,
            session_id,
            root: browser_root,
        }
    }

    /// The fantoccini client, for anything the helpers do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The browser's temp dir (profile, chromedriver log).
    pub fn dir(&self) -> &Path {
        self.root
            .as_ref()
            .expect("the temp dir lives as long as the browser")
            .path()
    }

    /// An absolute URL for `path` under the base URL.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else if path.starts_with('/') {
            format!("{}{path}", self.base_url)
        } else {
            format!("{}/{path}", self.base_url)
        }
    }

    /// Navigates to `path` (relative to the base URL) and waits for the page load.
    pub async fn goto(&self, path: &str) {
        let url = self.url(path);
        self.client
            .goto(&url)
            .await
            .unwrap_or_else(|e| panic!("navigating to {url}: {e}"));
    }

    /// Logs in through the `/login` form (`username`, `password`, submit) and waits to
    /// leave the login page; panics with the page's text when login fails.
    pub async fn login(&self, username: &str, password: &str) {
        let landed = self.try_login(username, password).await;
        if landed == "/login" {
            panic!(
                "login as {username} did not leave /login; the page says:\n{}",
                self.page_text().await
            );
        }
    }

    /// Submits the login form and returns the path the browser is on afterwards
    /// (`/login` when the login was refused).
    pub async fn try_login(&self, username: &str, password: &str) -> String {
        self.goto("/login").await;
        self.fill("input[name=username]", username).await;
        self.fill("input[name=password]", password).await;
        self.submit_and_wait_for_next_page("form button[type=submit]")
            .await;
        self.path().await
    }

    /// Clicks the element matching `css` (a submit button or a link) and waits until the
    /// browser shows a new, fully loaded document: the answer to that click, whether it
    /// moved to another path or re-rendered the same one with an error.
    pub async fn submit_and_wait_for_next_page(&self, css: &str) {
        self.mark_page().await;
        self.click(css).await;
        self.wait_for_next_page(&format!("clicking `{css}`")).await;
    }

    /// Logs out through the shell's `/logout` form (inside the closed user menu, so
    /// submitted by script) and waits for the next page.
    pub async fn logout(&self) {
        self.mark_page().await;
        self.eval("document.querySelector('form[action=\"/logout\"]').submit();")
            .await;
        self.wait_for_next_page("logging out").await;
    }

    /// Puts a marker on the current document; the next document does not have it.
    async fn mark_page(&self) {
        self.eval("window.__dynservOldPage = true;").await;
    }

    /// Waits until the marked document is replaced by a fully loaded new one.
    async fn wait_for_next_page(&self, what: &str) {
        let deadline = Instant::now() + ELEMENT_TIMEOUT;
        loop {
            // The script may run while the old document unloads; an error then means
            // "not yet", like a false.
            let settled = self
                .client
                .execute(
                    "return !window.__dynservOldPage && document.readyState === 'complete';",
                    Vec::new(),
                )
                .await;
            if matches!(settled, Ok(Value::Bool(true))) {
                return;
            }
            if Instant::now() >= deadline {
                panic!("{what} did not lead to a new page within {ELEMENT_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes a PNG screenshot of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("taking a screenshot: {e}"));
        std::fs::write(path, png)
            .unwrap_or_else(|e| panic!("writing screenshot {}: {e}", path.display()));
    }

    /// The document's title.
    pub async fn title(&self) -> String {
        self.client
            .title()
            .await
            .unwrap_or_else(|e| panic!("reading the page title: {e}"))
    }

    /// The current URL's path (`/servers`).
    pub async fn path(&self) -> String {
        self.client
            .current_url()
            .await
            .unwrap_or_else(|e| panic!("reading the current URL: {e}"))
            .path()
            .to_string()
    }

    /// Waits up to 10 s for the first element matching `css` and returns it.
    ///
    /// Every error until then is taken as "not yet", not only "no such element": a
    /// find that races the navigation a form's submit started is answered by Chromium
    /// with "aborted by navigation", and fantoccini's own wait gave up on that.
    pub async fn wait_for(&self, css: &str) -> Element {
        let deadline = Instant::now() + ELEMENT_TIMEOUT;
        loop {
            let error = match self.client.find(Locator::Css(css)).await {
                Ok(element) => return element,
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!("no element matches `{css}` within {ELEMENT_TIMEOUT:?}: {error}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether an element matches `css` right now (no waiting).
    pub async fn exists(&self, css: &str) -> bool {
        !self.all(css).await.is_empty()
    }

    /// All elements matching `css` right now.
    pub async fn all(&self, css: &str) -> Vec<Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("querying `{css}`: {e}"))
    }

    /// The visible text of the first element matching `css` (waits for it).
    pub async fn text(&self, css: &str) -> String {
        self.wait_for(css)
            .await
            .text()
            .await
            .unwrap_or_else(|e| panic!("reading the text of `{css}`: {e}"))
    }

    /// The visible texts of all elements matching `css` right now.
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let mut texts = Vec::new();
        for element in self.all(css).await {
            texts.push(
                element
                    .text()
                    .await
                    .unwrap_or_else(|e| panic!("reading the text of `{css}`: {e}")),
            );
        }
        texts
    }

    /// The visible text of the whole page.
    pub async fn page_text(&self) -> String {
        self.text("body").await
    }

    /// An attribute of the first element matching `css` (waits for it).
    pub async fn attr(&self, css: &str, attribute: &str) -> Option<String> {
        self.wait_for(css)
            .await
            .attr(attribute)
            .await
            .unwrap_or_else(|e| panic!("reading `{attribute}` of `{css}`: {e}"))
    }

    /// A computed CSS property of the first element matching `css` (waits for it).
    pub async fn css_value(&self, css: &str, property: &str) -> String {
        self.wait_for(css)
            .await
            .css_value(property)
            .await
            .unwrap_or_else(|e| panic!("reading CSS `{property}` of `{css}`: {e}"))
    }

    /// Clears the field matching `css` and types `value` into it.
    pub async fn fill(&self, css: &str, value: &str) {
        let element = self.wait_for(css).await;
        element
            .clear()
            .await
            .unwrap_or_else(|e| panic!("clearing `{css}`: {e}"));
        element
            .send_keys(value)
            .await
            .unwrap_or_else(|e| panic!("typing into `{css}`: {e}"));
    }

    /// Clicks the first element matching `css` (waits for it).
    pub async fn click(&self, css: &str) {
        self.wait_for(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking `{css}`: {e}"));
    }

    /// Runs JavaScript in the page (a function body: use `return` for a value).
    pub async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("running script `{script}`: {e}"))
    }

    /// The browser console's messages since the last call (chromedriver's log of the
    /// page: script errors, Content-Security-Policy violations, `console.*` output).
    pub async fn console_messages(&self) -> Vec<String> {
        let Some(session_id) = self.session_id.clone() else {
            return Vec::new();
        };
        let port = self.driver_port;
        let answer = tokio::task::spawn_blocking(move || {
            driver_request(
                port,
                "POST",
                &format!("/session/{session_id}/se/log"),
                Some(r#"{"type": "browser"}"#),
            )
        })
        .await
        .expect("the console request runs");
        let value = answer
            .and_then(|body| serde_json::from_slice::<Value>(&body).ok())
            .map(|json| json["value"].clone())
            .unwrap_or(Value::Null);
        let Some(entries) = value.as_array() else {
            panic!("chromedriver gave no browser log: {value}");
        };
        entries
            .iter()
            .map(|entry| {
                format!(
                    "{} {}",
                    entry["level"].as_str().unwrap_or("?"),
                    entry["message"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    /// Ends the WebDriver session and chromedriver.
    pub async fn close(mut self) {
        let client = self.client.clone();
        if client.close().await.is_ok() {
            self.session_id = None;
        }
        // Drop stops chromedriver.
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        if let Some(session_id) = self.session_id.take() {
            if failing {
                self.report_page(&session_id);
            }
            // The client's own close is async; ask chromedriver directly so that it
            // quits Chromium before chromedriver itself is killed.
            driver_request(
                self.driver_port,
                "DELETE",
                &format!("/session/{session_id}"),
                None,
            );
        }
        if let Some(mut child) = self.driver.take() {
            crate::kill_now(&mut child);
        }
        if crate::keep_artifacts() {
            if let Some(root) = self.root.take() {
                eprintln!(
                    "--- chromedriver log (tail) ---\n{}",
                    log_tail(&root.path().join("chromedriver.log"), 30)
                );
                eprintln!("kept the browser's temp dir: {}", root.keep().display());
            }
        }
    }
}

impl Browser {
    /// For a failing test: prints the page's URL and visible text (so CI logs show what
    /// the browser saw) and saves `failure.png` in the browser's temp dir.
    fn report_page(&self, session_id: &str) {
        let port = self.driver_port;
        let value = |answer: Option<Vec<u8>>| -> Value {
            answer
                .and_then(|body| serde_json::from_slice::<Value>(&body).ok())
                .map(|json| json["value"].clone())
                .unwrap_or(Value::Null)
        };
        let url = value(driver_request(
            port,
            "GET",
            &format!("/session/{session_id}/url"),
            None,
        ));
        let script =
            json!({"script": "return document.body ? document.body.innerText : '';", "args": []});
        let text = value(driver_request(
            port,
            "POST",
            &format!("/session/{session_id}/execute/sync"),
            Some(&script.to_string()),
        ));
        let text: String = text.as_str().unwrap_or("").chars().take(4000).collect();
        eprintln!("--- the browser was at {url} and showed ---\n{text}\n---");
        let screenshot = value(driver_request(
            port,
            "GET",
            &format!("/session/{session_id}/screenshot"),
            None,
        ));
        if let (Some(png), Some(root)) = (screenshot.as_str(), self.root.as_ref()) {
            use base64::Engine as _;
            if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(png) {
                let path = root.path().join("failure.png");
                if std::fs::write(&path, bytes).is_ok() {
                    eprintln!("screenshot of the failure: {}", path.display());
                }
            }
        }
    }
}

/// `chromedriver` from `CHROMEDRIVER`, the `PATH`, or Debian's location.
fn find_chromedriver() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMEDRIVER").map(PathBuf::from) {
        if !path.is_file() {
            panic!(
                "CHROMEDRIVER={} is not a file: the browser tests need chromedriver. Run the \
                 README's test command `{TEST_COMMAND}`, which installs chromium and \
                 chromium-driver",
                path.display()
            );
        }
        return path;
    }
    find_in_path("chromedriver")
        .or_else(|| Some(PathBuf::from("/usr/bin/chromedriver")).filter(|path| path.is_file()))
        .unwrap_or_else(|| {
            panic!(
                "chromedriver not found (Debian package chromium-driver): the browser tests \
                 need it. Run the README's test command `{TEST_COMMAND}`, which installs \
                 chromium and chromium-driver, or set CHROMEDRIVER to its path"
            )
        })
}

/// Chromium from `CHROMIUM`, or Debian's `/usr/bin/chromium`.
fn find_chromium() -> String {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/usr/bin/chromium")).filter(|path| path.is_file()))
        .or_else(|| find_in_path("chromium"))
        .unwrap_or_else(|| {
            panic!(
                "chromium not found at /usr/bin/chromium: the browser tests need it. Run the \
                 README's test command `{TEST_COMMAND}`, which installs chromium and \
                 chromium-driver, or set CHROMIUM to its path"
            )
        });
    path.display().to_string()
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Waits until chromedriver answers `/status` with `ready: true`.
async fn wait_for_driver(port: u16, driver: &mut Child, log: &Path) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("building an HTTP client");
    let url = format!("http://127.0.0.1:{port}/status");
    let deadline = Instant::now() + DRIVER_STARTUP_TIMEOUT;
    loop {
        if let Ok(Some(status)) = driver.try_wait() {
            panic!(
                "chromedriver exited with {status} at startup\n{}",
                log_tail(log, 40)
            );
        }
        if let Ok(response) = http.get(&url).send().await {
            if let Ok(body) = response.json::<Value>().await {
                if body["value"]["ready"] == Value::Bool(true) {
                    return;
                }
            }
        }
        if Instant::now() >= deadline {
            crate::kill_now(driver);
            panic!(
                "chromedriver did not become ready on port {port} within \
                 {DRIVER_STARTUP_TIMEOUT:?}\n{}",
                log_tail(log, 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One blocking HTTP/1.1 request to chromedriver, for use in `Drop`: answers the body,
/// or `None` on any failure. Returns as soon as the whole answer is read, without
/// waiting for chromedriver to close the connection (which it does not do promptly).
fn driver_request(port: u16, method: &str, path: &str, body: Option<&str>) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    let mut buffer = [0u8; 16384];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => response.extend_from_slice(&buffer[..read]),
        }
        if http_response_complete(&response) {
            break;
        }
    }
    let header_end = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")?;
    Some(response[header_end + 4..].to_vec())
}

/// Whether `response` holds a whole HTTP/1.1 answer: headers and a body as long as its
/// Content-Length.
fn http_response_complete(response: &[u8]) -> bool {
    let Some(header_end) = response.windows(4).position(|window| window == b"\r\n\r\n") else {
        return false;
    };
    let headers = String::from_utf8_lossy(&response[..header_end]).to_ascii_lowercase();
    let body_length = headers
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    response.len() >= header_end + 4 + body_length
}

#[cfg(test)]
mod tests {
    use super::http_response_complete;

    /// A response is complete once its body reaches Content-Length.
    #[test]
    fn http_response_is_complete_at_content_length() {
        assert!(!http_response_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 4"
        ));
        assert!(!http_response_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab"
        ));
        assert!(http_response_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd"
        ));
        assert!(http_response_complete(b"HTTP/1.1 200 OK\r\n\r\n"));
    }
}
