//! Receivers of what the control plane sends out, for the alert tests: a webhook
//! receiver (HTTP/1.1 on a loopback port, keeps each request's headers and body,
//! answers a fixed status and text) and an SMTP sink (speaks just enough SMTP to take
//! mail from lettre: greeting, EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT; keeps
//! each message). Both run on their own threads with plain blocking sockets, so they
//! do not depend on the code under test.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the webhook receiver got.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// A webhook receiver on `127.0.0.1`.
pub struct WebhookReceiver {
    ip: String,
    port: u16,
    requests: Arc<Mutex<Vec<ReceivedRequest>>>,
}

impl WebhookReceiver {
    /// Starts a receiver on 127.0.0.1 that answers every request with `status` and
    /// `answer`.
    pub fn start(status: u16, answer: &str) -> WebhookReceiver {
        WebhookReceiver::start_on("127.0.0.1", status, answer, None)
    }

    /// Starts a receiver on the loopback address `ip` that answers every request with
    /// `status`, `answer` and, when given, a `Location` header (a redirect).
    pub fn start_on(
        ip: &str,
        status: u16,
        answer: &str,
        location: Option<&str>,
    ) -> WebhookReceiver {
        let listener = TcpListener::bind((ip, 0)).expect("binding the webhook receiver");
        let location = location
            .map(|l| format!("location: {l}\r\n"))
            .unwrap_or_default();
        let port = listener.local_addr().expect("its address").port();
        let requests: Arc<Mutex<Vec<ReceivedRequest>>> = Arc::default();
        let kept = requests.clone();
        let answer = answer.to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = kept.clone();
                let answer = answer.clone();
                let location = location.clone();
                std::thread::spawn(move || {
                    if let Some(request) = read_request(&stream) {
                        kept.lock().expect("receiver lock").push(request);
                    }
                    let mut stream = stream;
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status} Answer\r\n{location}content-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                });
            }
        });
        WebhookReceiver {
            ip: ip.to_string(),
            port,
            requests,
        }
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.ip, self.port)
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.requests.lock().expect("receiver lock").clone()
    }
}

fn read_request(stream: &TcpStream) -> Option<ReceivedRequest> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length.min(1 << 20)];
    reader.read_exact(&mut body).ok()?;
    Some(ReceivedRequest {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// One message the SMTP sink accepted.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub from: String,
    pub to: Vec<String>,
    /// The message as sent after DATA (headers and body), dot-unstuffed.
    pub data: String,
}

/// An SMTP sink on `127.0.0.1` (plain SMTP, no TLS, no authentication).
pub struct SmtpSink {
    port: u16,
    mails: Arc<Mutex<Vec<ReceivedMail>>>,
}

impl SmtpSink {
    /// Starts the sink.
    pub fn start() -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the SMTP sink");
        let port = listener.local_addr().expect("its address").port();
        let mails: Arc<Mutex<Vec<ReceivedMail>>> = Arc::default();
        let kept = mails.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || {
                    let _ = smtp_session(stream, &kept);
                });
            }
        });
        SmtpSink { port, mails }
    }

    /// `smtp://127.0.0.1:PORT`, for `DYNSERV_SMTP_URL`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// The messages accepted so far.
    pub fn mails(&self) -> Vec<ReceivedMail> {
        self.mails.lock().expect("sink lock").clone()
    }
}

fn smtp_session(stream: TcpStream, kept: &Mutex<Vec<ReceivedMail>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    writer.write_all(b"220 sink.test ESMTP ready\r\n")?;
    let mut from = String::new();
    let mut to: Vec<String> = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_string();
        let upper = command.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            writer.write_all(b"250-sink.test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")?;
        } else if upper.starts_with("HELO") {
            writer.write_all(b"250 sink.test\r\n")?;
        } else if upper.starts_with("MAIL FROM:") {
            from = command[10..].trim().to_string();
            to.clear();
            writer.write_all(b"250 OK\r\n")?;
        } else if upper.starts_with("RCPT TO:") {
            to.push(command[8..].trim().to_string());
            writer.write_all(b"250 OK\r\n")?;
        } else if upper == "DATA" {
            writer.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
            let mut data = String::new();
            loop {
                let mut data_line = String::new();
                if reader.read_line(&mut data_line)? == 0 {
                    return Ok(());
                }
                if data_line == ".\r\n" || data_line == ".\n" {
                    break;
                }
                let unstuffed = data_line.strip_prefix('.').unwrap_or(&data_line);
                data.push_str(unstuffed);
            }
            kept.lock().expect("sink lock").push(ReceivedMail {
                from: from.clone(),
                to: to.clone(),
                data,
            });
            writer.write_all(b"250 OK: queued\r\n")?;
        } else if upper == "RSET" || upper == "NOOP" {
            writer.write_all(b"250 OK\r\n")?;
        } else if upper == "QUIT" {
            writer.write_all(b"221 Bye\r\n")?;
            return Ok(());
        } else {
            writer.write_all(b"502 Command not implemented\r\n")?;
        }
    }
}
