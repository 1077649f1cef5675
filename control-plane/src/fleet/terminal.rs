//! Terminals on agents (fleet protocol 3): opening a terminal stream on an agent's
//! connection and routing its frames between that stream and the web side
//! (`web::terminal`, the WebSocket).
//!
//! Both directions go through bounded channels ([`TO_AGENT_QUEUE`],
//! [`FROM_AGENT_QUEUE`] messages). Nothing here buffers past them: when the browser
//! reads slower than the shell writes, the channel to the web side fills, the router
//! stops reading the agent's stream, QUIC flow control stops the agent, and the agent
//! stops reading the PTY, so the shell blocks instead of memory growing. Input the
//! other way waits the same way for the agent.
//!
//! What lives elsewhere: who may open a terminal and whether its project allows it
//! (`policy`, `projects`, decided by `web::terminal`), the audit entries (there too),
//! the PTY (`dynserv_agent::terminal`).
//!
//! **Invariant:** a terminal stream is opened only to an agent whose hello said
//! protocol [`TERMINAL_MIN_PROTOCOL`] or later.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use dynserv_shared::frame::{read_frame, write_frame};
use dynserv_shared::proto::{
    FromAgent, TerminalSize, ToAgent, MAX_TERMINAL_FRAME, TERMINAL_MIN_PROTOCOL,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::{lock, Fleet};

/// Messages waiting for the agent (keystrokes, resizes) per terminal; a sender past it
/// waits.
pub const TO_AGENT_QUEUE: usize = 64;

/// Output frames waiting for the web side per terminal (each at most
/// [`MAX_TERMINAL_FRAME`] bytes); past it the agent's stream is not read.
pub const FROM_AGENT_QUEUE: usize = 32;

/// How long an agent may take to start the shell.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// What the web side sends a terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Bytes typed (any length: split into frames on the way).
    Bytes(Vec<u8>),
    /// The window's new size.
    Resize(TerminalSize),
    /// Close the terminal.
    Close,
}

/// What a terminal sends the web side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Bytes the shell wrote.
    Bytes(Vec<u8>),
    /// The terminal ended; the last message.
    Closed {
        /// Why, for people.
        reason: String,
    },
}

/// Why a terminal could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The agent is not connected (to any replica).
    #[error("this server's agent is not connected: a terminal needs it online")]
    NotConnected,
    /// The agent is connected to another replica of the control plane; terminals are
    /// served only by the replica that holds the agent's connection.
    #[error(
        "this server's agent is connected to another replica of the control plane, and \
         terminals are only opened by the replica the agent is connected to: open this \
         page on that replica, or try again after the agent reconnects"
    )]
    OtherReplica,
    /// The agent's protocol predates terminals.
    #[error(
        "this server's agent speaks fleet protocol {protocol}, and terminals need protocol \
         {TERMINAL_MIN_PROTOCOL}: upgrade the agent (Agents page, Upgrade) to open a terminal"
    )]
    AgentTooOld {
        /// The protocol of the agent's hello.
        protocol: u32,
    },
    /// The agent refused (its limit of terminals, no shell).
    #[error("the agent refused the terminal: {0}")]
    Refused(String),
    /// The stream failed or the agent did not answer.
    #[error("opening the terminal failed: {0:#}")]
    Failed(anyhow::Error),
}

/// An open terminal: send [`Input`], receive [`Output`]. Dropping `input` closes the
/// terminal on the agent.
pub struct Terminal {
    /// The shell the agent runs.
    pub shell: String,
    /// To the agent.
    pub input: mpsc::Sender<Input>,
    /// From the agent; ends with [`Output::Closed`].
    pub output: mpsc::Receiver<Output>,
}

impl Fleet {
    /// Whether a terminal could be opened on `agent_id` now (connected here, new
    /// enough), without opening one. `r` is the caller's transaction (the agent's
    /// presence on another replica is read through it).
    pub fn terminal_check(
        &self,
        r: &impl crate::store::Read,
        agent_id: &str,
    ) -> std::result::Result<(), OpenError> {
        let protocol = lock(&self.inner.conns).get(agent_id).map(|c| c.protocol);
        match protocol {
            Some(protocol) if protocol < TERMINAL_MIN_PROTOCOL => {
                Err(OpenError::AgentTooOld { protocol })
            }
            Some(_) => Ok(()),
            None => {
                let elsewhere = self
                    .inner
                    .cluster
                    .get()
                    .and_then(|c| c.connected_elsewhere(r, agent_id))
                    .is_some();
                Err(if elsewhere {
                    OpenError::OtherReplica
                } else {
                    OpenError::NotConnected
                })
            }
        }
    }

    /// Opens a terminal of `size` on an agent connected to this replica and starts
    /// routing its frames. Never opens a stream to an agent older than
    /// [`TERMINAL_MIN_PROTOCOL`].
    pub async fn open_terminal(
        &self,
        agent_id: &str,
        size: TerminalSize,
    ) -> std::result::Result<Terminal, OpenError> {
        let conn = lock(&self.inner.conns).get(agent_id).cloned();
        let Some(conn) = conn else {
            return Err(OpenError::NotConnected);
        };
        if conn.protocol < TERMINAL_MIN_PROTOCOL {
            return Err(OpenError::AgentTooOld {
                protocol: conn.protocol,
            });
        }
        let (mut send, mut recv) = conn
            .connection
            .open_bi()
            .await
            .context("opening a terminal stream")
            .map_err(OpenError::Failed)?;
        write_frame(&mut send, &ToAgent::TerminalOpen(size.clamped()))
            .await
            .context("asking for a terminal")
            .map_err(OpenError::Failed)?;
        let answer = tokio::time::timeout(OPEN_TIMEOUT, read_frame::<FromAgent, _>(&mut recv))
            .await
            .map_err(|_| {
                OpenError::Failed(anyhow::anyhow!(
                    "the agent did not answer within {} s",
                    OPEN_TIMEOUT.as_secs()
                ))
            })?
            .context("reading the agent's answer")
            .map_err(OpenError::Failed)?;
        let shell = match answer {
            Some(FromAgent::TerminalOpened { shell }) => shell,
            Some(FromAgent::Rejected { reason, .. }) => return Err(OpenError::Refused(reason)),
            Some(other) => {
                return Err(OpenError::Failed(anyhow::anyhow!(
                    "the agent answered a terminal with {other:?}"
                )))
            }
            None => {
                return Err(OpenError::Failed(anyhow::anyhow!(
                    "the agent closed the terminal stream"
                )))
            }
        };
        Ok(route(shell, send, recv))
    }
}

/// Starts the two routing tasks of a terminal whose stream is `send`/`recv` (after the
/// open) and hands back the web side's ends.
pub fn route<W, R>(shell: String, send: W, recv: R) -> Terminal
where
    W: AsyncWrite + Unpin + Send + 'static,
    R: AsyncRead + Unpin + Send + 'static,
{
    let (input_tx, input_rx) = mpsc::channel(TO_AGENT_QUEUE);
    let (output_tx, output_rx) = mpsc::channel(FROM_AGENT_QUEUE);
    tokio::spawn(async move {
        if let Err(e) = to_agent(input_rx, send).await {
            tracing::debug!("terminal input ended: {e:#}");
        }
    });
    tokio::spawn(from_agent(recv, output_tx));
    Terminal {
        shell,
        input: input_tx,
        output: output_rx,
    }
}

/// The frames that carry `input` to the agent: bytes split into pieces of at most
/// [`MAX_TERMINAL_FRAME`].
pub fn frames_for(input: Input) -> Vec<ToAgent> {
    match input {
        Input::Bytes(bytes) => bytes
            .chunks(MAX_TERMINAL_FRAME)
            .map(|piece| ToAgent::TerminalInput {
                data: base64::engine::general_purpose::STANDARD.encode(piece),
            })
            .collect(),
        Input::Resize(size) => vec![ToAgent::TerminalResize(size.clamped())],
        Input::Close => vec![ToAgent::TerminalClose],
    }
}

/// Writes the web side's input to the agent's stream until [`Input::Close`] or until
/// the web side drops its sender; then asks the agent to close and ends the stream.
async fn to_agent<W: AsyncWrite + Unpin>(
    mut input: mpsc::Receiver<Input>,
    mut send: W,
) -> Result<()> {
    loop {
        let Some(message) = input.recv().await else {
            // The web side is gone (the page closed): the agent hangs the shell up.
            write_frame(&mut send, &ToAgent::TerminalClose).await?;
            break;
        };
        let closing = message == Input::Close;
        for frame in frames_for(message) {
            write_frame(&mut send, &frame).await?;
        }
        if closing {
            break;
        }
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut send).await;
    Ok(())
}

/// Reads the agent's frames and hands their output to the web side, waiting while its
/// channel is full (backpressure); always ends with one [`Output::Closed`] (unless the
/// web side is gone).
async fn from_agent<R: AsyncRead + Unpin>(mut recv: R, output: mpsc::Sender<Output>) {
    let reason = loop {
        let frame = tokio::select! {
            frame = read_frame::<FromAgent, _>(&mut recv) => frame,
            // The web side is gone: nothing more to read for.
            _ = output.closed() => return,
        };
        match frame {
            Ok(Some(FromAgent::TerminalOutput { data })) => {
                let bytes = match decode_output(&data) {
                    Ok(bytes) => bytes,
                    Err(e) => break format!("{e:#}"),
                };
                if output.send(Output::Bytes(bytes)).await.is_err() {
                    return;
                }
            }
            Ok(Some(FromAgent::TerminalClosed { reason, .. })) => break reason,
            Ok(Some(other)) => break format!("the agent sent {other:?} on a terminal"),
            Ok(None) => break "the agent's connection ended".to_string(),
            Err(e) => break format!("the terminal stream failed: {e}"),
        }
    };
    let _ = output.send(Output::Closed { reason }).await;
}

/// The bytes of a [`FromAgent::TerminalOutput`], refused past [`MAX_TERMINAL_FRAME`].
fn decode_output(data: &str) -> Result<Vec<u8>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .context("the agent sent terminal output that is not base64")?;
    if bytes.len() > MAX_TERMINAL_FRAME {
        bail!(
            "the agent sent a terminal frame of {} bytes, over the {MAX_TERMINAL_FRAME}-byte limit",
            bytes.len()
        );
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynserv_shared::frame::encode;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// Typed bytes are split into frames of at most the frame limit, in order, and a
    /// resize is clamped; nothing is lost or reordered.
    #[test]
    fn input_is_split_into_bounded_frames() {
        let typed: Vec<u8> = (0..(MAX_TERMINAL_FRAME * 2 + 10))
            .map(|i| (i % 251) as u8)
            .collect();
        let frames = frames_for(Input::Bytes(typed.clone()));
        assert_eq!(frames.len(), 3);
        let mut joined = Vec::new();
        for frame in frames {
            let ToAgent::TerminalInput { data } = frame else {
                panic!("not input: {frame:?}");
            };
            let piece = base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap();
            assert!(piece.len() <= MAX_TERMINAL_FRAME);
            joined.extend(piece);
        }
        assert_eq!(joined, typed);
        assert!(frames_for(Input::Bytes(Vec::new())).is_empty());
        assert_eq!(
            frames_for(Input::Resize(TerminalSize { cols: 0, rows: 50 })),
            vec![ToAgent::TerminalResize(TerminalSize { cols: 1, rows: 50 })]
        );
    }

    /// Input goes out as frames in order and a close ends the stream with
    /// `TerminalClose`; the agent's output comes back as bytes, then its end.
    #[tokio::test]
    async fn frames_are_routed_both_ways() {
        let (web_to_agent, mut agent_reads) = tokio::io::duplex(64 * 1024);
        let (mut agent_writes, agent_to_web) = tokio::io::duplex(64 * 1024);
        let mut terminal = route("/bin/sh".into(), web_to_agent, agent_to_web);

        terminal
            .input
            .send(Input::Bytes(b"echo hi\r".to_vec()))
            .await
            .unwrap();
        terminal
            .input
            .send(Input::Resize(TerminalSize { cols: 90, rows: 30 }))
            .await
            .unwrap();
        terminal.input.send(Input::Close).await.unwrap();
        let mut seen = Vec::new();
        while let Some(frame) = read_frame::<ToAgent, _>(&mut agent_reads).await.unwrap() {
            seen.push(frame);
        }
        assert_eq!(
            seen,
            vec![
                ToAgent::TerminalInput {
                    data: b64(b"echo hi\r")
                },
                ToAgent::TerminalResize(TerminalSize { cols: 90, rows: 30 }),
                ToAgent::TerminalClose,
            ]
        );

        for message in [
            FromAgent::TerminalOutput {
                data: b64(b"hi\r\n"),
            },
            FromAgent::TerminalOutput {
                data: b64(&[0xe2, 0x82]),
            },
            FromAgent::TerminalClosed {
                reason: "the shell exited with code 0".into(),
                exit_code: Some(0),
            },
        ] {
            write_frame(&mut agent_writes, &message).await.unwrap();
        }
        assert_eq!(
            terminal.output.recv().await,
            Some(Output::Bytes(b"hi\r\n".to_vec()))
        );
        // Bytes travel as they are, even a character cut in two.
        assert_eq!(
            terminal.output.recv().await,
            Some(Output::Bytes(vec![0xe2, 0x82]))
        );
        assert_eq!(
            terminal.output.recv().await,
            Some(Output::Closed {
                reason: "the shell exited with code 0".into()
            })
        );
        assert_eq!(terminal.output.recv().await, None);
    }

    /// When the web side goes away without a word (the page closed), the agent is
    /// still told to close the terminal.
    #[tokio::test]
    async fn dropping_the_web_side_closes_the_terminal() {
        let (web_to_agent, mut agent_reads) = tokio::io::duplex(4096);
        let (_agent_writes, agent_to_web) = tokio::io::duplex(4096);
        let terminal = route("/bin/sh".into(), web_to_agent, agent_to_web);
        drop(terminal);
        let frame = read_frame::<ToAgent, _>(&mut agent_reads).await.unwrap();
        assert_eq!(frame, Some(ToAgent::TerminalClose));
        assert_eq!(
            read_frame::<ToAgent, _>(&mut agent_reads).await.unwrap(),
            None
        );
    }

    /// A web side that does not read holds the agent back: once the output queue is
    /// full the router stops reading the agent's stream, so the stream's own buffer
    /// fills and the agent's writes wait, instead of memory growing.
    /// (Time is paused: a write "times out" only once every task waits, so the check
    /// does not depend on the machine's speed.)
    #[tokio::test(start_paused = true)]
    async fn a_slow_web_side_holds_the_agent_back() {
        let (web_to_agent, _agent_reads) = tokio::io::duplex(4096);
        // A small stream buffer stands for QUIC flow control.
        let (mut agent_writes, agent_to_web) = tokio::io::duplex(8 * 1024);
        let mut terminal = route("/bin/sh".into(), web_to_agent, agent_to_web);
        let frame = encode(&FromAgent::TerminalOutput {
            data: b64(&[b'x'; 1024]),
        })
        .unwrap();
        let mut written = 0usize;
        let blocked = loop {
            let write = tokio::io::AsyncWriteExt::write_all(&mut agent_writes, &frame);
            match tokio::time::timeout(Duration::from_millis(500), write).await {
                Ok(result) => {
                    result.unwrap();
                    written += 1;
                }
                Err(_) => break true,
            }
            if written > FROM_AGENT_QUEUE * 10 {
                break false;
            }
        };
        assert!(
            blocked,
            "the agent wrote {written} frames with nobody reading"
        );
        // The queue plus the stream buffer, not everything written.
        assert!(
            written <= FROM_AGENT_QUEUE + 2 + 8,
            "{written} frames taken"
        );
        // Reading again lets the agent go on.
        let mut received = 0;
        while received < written {
            match terminal.output.recv().await {
                Some(Output::Bytes(bytes)) => {
                    assert_eq!(bytes.len(), 1024);
                    received += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncWriteExt::write_all(&mut agent_writes, &frame),
        )
        .await
        .expect("the agent can write again")
        .unwrap();
    }
}
