//! The server's side of the live log's WebSocket, frame by frame (RFC 6455), over
//! the upgraded HTTP connection: tungstenite's frame headers, our own buffering.
//!
//! Why not a WebSocket library's stream: fifty viewers of a fast job get the same
//! chunk fifty times, and a library's sink copies each frame's payload into its write
//! buffer before it writes. Here a frame is its encoded header and the chunk's shared
//! bytes ([`bytes::Bytes`], built once in the hub), and a batch of frames goes out in
//! one vectored write: no copy of the output in user space on its way to a viewer.
//!
//! What the server side must do and does: its frames are unmasked; the client's must
//! be masked, carry no reserved bits (no extension is negotiated) and no reserved
//! opcode, and control frames are final and at most 125 bytes; a frame over
//! [`MAX_CLIENT_FRAME`] is refused. A ping is answered with a pong holding its
//! payload; what a viewer sends otherwise only shows it is alive.

use std::io::{Cursor, IoSlice};

use anyhow::{bail, Context};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;
use warp::http::HeaderMap;

/// The largest frame a viewer may send (it has nothing to send but pings, pongs and
/// a close; this is what the stream allowed as a message before).
pub const MAX_CLIENT_FRAME: u64 = 64 * 1024;

/// Slices given to one `writev` (Linux refuses more than 1024).
const MAX_SLICES: usize = 1024;

/// Queued bytes that are written without waiting for more (what tungstenite's write
/// buffer held before it wrote).
const WRITE_AT_BYTES: usize = 128 * 1024;

/// Queued frames that are written without waiting for more, however small.
const WRITE_AT_FRAMES: usize = 64;

/// The `Sec-WebSocket-Key` of a WebSocket upgrade request (`GET` with `Connection:
/// upgrade`, `Upgrade: websocket` and version 13), or `None` for any other request.
pub fn upgrade_key(headers: &HeaderMap) -> Option<&str> {
    let has = |name: &str, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if !has("connection", "upgrade") || !has("upgrade", "websocket") {
        return None;
    }
    if headers
        .get("sec-websocket-version")
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return None;
    }
    headers
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// The `101 Switching Protocols` answer to an upgrade request with `key`.
pub fn switching_protocols(key: &str) -> super::Resp {
    let mut resp = super::Resp::default();
    *resp.status_mut() = warp::http::StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(
        "connection",
        warp::http::HeaderValue::from_static("upgrade"),
    );
    headers.insert("upgrade", warp::http::HeaderValue::from_static("websocket"));
    if let Ok(accept) = tungstenite::handshake::derive_accept_key(key.as_bytes()).parse() {
        headers.insert("sec-websocket-accept", accept);
    }
    resp
}

/// Frames to a viewer, queued until [`FrameWriter::flush`] writes them together.
pub struct FrameWriter<W> {
    io: W,
    /// The queued frames' headers, back to back (2 to 10 bytes each).
    headers: Vec<u8>,
    /// Each queued frame: where its header ends in `headers`, and its payload.
    frames: Vec<(usize, Bytes)>,
    /// The queued frames' size, headers and payloads.
    bytes: usize,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(io: W) -> Self {
        FrameWriter {
            io,
            headers: Vec::new(),
            frames: Vec::new(),
            bytes: 0,
        }
    }

    /// Queues a text frame holding `text` (UTF-8, as the hub builds it), and writes
    /// what is queued once that is enough ([`FrameWriter::should_write`]); the rest
    /// waits for more or for [`FrameWriter::flush`].
    pub async fn feed_text(&mut self, text: Bytes) -> std::io::Result<()> {
        self.queue_text(text);
        if self.should_write() {
            self.flush().await?;
        }
        Ok(())
    }

    fn queue_text(&mut self, text: Bytes) {
        self.queue(OpCode::Data(Data::Text), text);
    }

    /// Whether enough is queued to write it now rather than wait for more: at least
    /// [`WRITE_AT_BYTES`], or [`WRITE_AT_FRAMES`] frames. Waiting for many frames of a
    /// backlog before the first write made each batch's first lines wait for the last.
    fn should_write(&self) -> bool {
        self.bytes >= WRITE_AT_BYTES || self.frames.len() >= WRITE_AT_FRAMES
    }

    /// The number of frames queued and not yet written.
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.frames.len()
    }

    fn queue(&mut self, opcode: OpCode, payload: Bytes) {
        let header = FrameHeader {
            is_final: true,
            opcode,
            mask: None,
            ..FrameHeader::default()
        };
        let before = self.headers.len();
        header
            .format(payload.len() as u64, &mut self.headers)
            .expect("a frame header is written to memory");
        self.bytes += self.headers.len() - before + payload.len();
        self.frames.push((self.headers.len(), payload));
    }

    /// Writes every queued frame, in as few `writev` calls as the socket takes.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.frames.is_empty() {
            let mut slices = Vec::with_capacity(self.frames.len() * 2);
            let mut start = 0;
            for (end, payload) in &self.frames {
                slices.push(IoSlice::new(&self.headers[start..*end]));
                if !payload.is_empty() {
                    slices.push(IoSlice::new(payload));
                }
                start = *end;
            }
            let mut rest = &mut slices[..];
            while !rest.is_empty() {
                let take = rest.len().min(MAX_SLICES);
                let written = self.io.write_vectored(&rest[..take]).await?;
                if written == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                IoSlice::advance_slices(&mut rest, written);
            }
            self.headers.clear();
            self.frames.clear();
            self.bytes = 0;
        }
        self.io.flush().await
    }

    /// Writes a ping (and whatever was queued).
    pub async fn ping(&mut self) -> std::io::Result<()> {
        self.queue(OpCode::Control(Control::Ping), Bytes::new());
        self.flush().await
    }

    /// Answers a ping with its payload.
    pub async fn pong(&mut self, payload: Bytes) -> std::io::Result<()> {
        self.queue(OpCode::Control(Control::Pong), payload);
        self.flush().await
    }

    /// Writes a close frame with `code` (and whatever was queued), then ends the
    /// sending half of the connection.
    pub async fn close(&mut self, code: u16) -> std::io::Result<()> {
        self.queue(
            OpCode::Control(Control::Close),
            Bytes::copy_from_slice(&code.to_be_bytes()),
        );
        self.flush().await?;
        self.io.shutdown().await
    }
}

/// What a viewer sent, as far as the stream cares.
#[derive(Debug, PartialEq, Eq)]
pub enum FromViewer {
    /// A data frame, a continuation or a pong: it is alive.
    Alive,
    /// A ping, with its payload to send back.
    Ping(Bytes),
    /// A close frame, with its status code when it gave one.
    Close(Option<u16>),
}

/// Frames from a viewer.
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads from `io` (an upgraded connection gives back what the HTTP connection
    /// read past the request itself).
    pub fn new(io: R) -> Self {
        FrameReader {
            io,
            buf: BytesMut::new(),
        }
    }

    /// The next frame, or `None` when the connection ended between frames; an error
    /// for a frame the protocol forbids, or a connection that ended inside one.
    pub async fn next(&mut self) -> anyhow::Result<Option<FromViewer>> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(Some(frame));
            }
            self.buf.reserve(4096);
            let read = self
                .io
                .read_buf(&mut self.buf)
                .await
                .context("reading from the viewer")?;
            if read == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                bail!("the connection ended inside a frame");
            }
        }
    }

    /// One whole frame from the buffer, taken out of it, or `None` until more is read.
    fn parse(&mut self) -> anyhow::Result<Option<FromViewer>> {
        let mut cursor = Cursor::new(&self.buf[..]);
        let Some((header, length)) =
            FrameHeader::parse(&mut cursor).context("a malformed frame header")?
        else {
            return Ok(None);
        };
        let header_len = cursor.position() as usize;
        if header.rsv1 || header.rsv2 || header.rsv3 {
            bail!("a frame with reserved bits set (no extension was agreed)");
        }
        let Some(mask) = header.mask else {
            bail!("an unmasked frame from the client");
        };
        if length > MAX_CLIENT_FRAME {
            bail!("a frame of {length} bytes (at most {MAX_CLIENT_FRAME})");
        }
        let control = match header.opcode {
            OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                bail!("a frame with a reserved opcode")
            }
            OpCode::Data(_) => false,
            OpCode::Control(_) => true,
        };
        if control && (length > 125 || !header.is_final) {
            bail!("a control frame that is fragmented or longer than 125 bytes");
        }
        let total = header_len + length as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        self.buf.advance(header_len);
        let mut payload = self.buf.split_to(length as usize);
        Ok(Some(match header.opcode {
            OpCode::Control(Control::Ping) => {
                unmask(&mut payload, mask);
                FromViewer::Ping(payload.freeze())
            }
            OpCode::Control(Control::Close) => {
                unmask(&mut payload, mask);
                FromViewer::Close(
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
                )
            }
            _ => FromViewer::Alive,
        }))
    }
}

/// Undoes the client's masking of a payload (RFC 6455, 5.3).
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a client sends it: masked with `mask`.
    fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65536 => {
                out.push(0x80 | 126);
                out.extend((n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend((n as u64).to_be_bytes());
            }
        }
        out.extend(mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// Every frame in `bytes`, read through a pipe of 3 bytes (frames come in pieces),
    /// up to the end or the first error.
    async fn read_all(bytes: Vec<u8>) -> Vec<anyhow::Result<Option<FromViewer>>> {
        let (mut client, server) = tokio::io::duplex(3);
        tokio::spawn(async move {
            let _ = client.write_all(&bytes).await;
        });
        let mut reader = FrameReader::new(server);
        let mut out = Vec::new();
        loop {
            let next = reader.next().await;
            let done = !matches!(next, Ok(Some(_)));
            out.push(next);
            if done {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn frames_are_written_as_one_batch_a_client_reads() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut writer = FrameWriter::new(server);
        let big = Bytes::from(vec![b'x'; 70_000]);
        writer.queue_text(Bytes::from_static(b"{\"seq\":0}"));
        writer.queue_text(Bytes::from(vec![b'y'; 300]));
        writer.queue_text(big.clone());
        assert!(!writer.should_write(), "70 KB wait for more");
        writer.queue_text(big.clone());
        assert!(writer.should_write(), "140 KB are written");
        assert_eq!(writer.queued(), 4);
        writer.flush().await.unwrap();
        assert!(!writer.should_write());
        assert_eq!(writer.queued(), 0);
        writer.close(1000).await.unwrap();
        drop(writer);
        let mut socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
            client,
            tungstenite::protocol::Role::Client,
            None,
        )
        .await;
        use futures::StreamExt;
        let mut texts = Vec::new();
        while let Some(Ok(message)) = socket.next().await {
            match message {
                tungstenite::Message::Text(t) => texts.push(t.to_string()),
                tungstenite::Message::Close(frame) => {
                    assert_eq!(frame.map(|f| u16::from(f.code)), Some(1000));
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(texts.len(), 4);
        assert_eq!(texts[0], "{\"seq\":0}");
        assert_eq!(texts[1], "y".repeat(300));
        assert!(texts[2..].iter().all(|t| t.as_bytes() == &big[..]));
    }

    #[tokio::test]
    async fn a_writer_that_takes_a_little_at_a_time_still_writes_everything() {
        // A pipe of 7 bytes: every write is partial, across headers and payloads.
        let (mut client, server) = tokio::io::duplex(7);
        let reading = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        let mut writer = FrameWriter::new(server);
        for n in [0usize, 5, 125, 126, 200, 65_535, 65_536] {
            writer.queue_text(Bytes::from(vec![b'a'; n]));
        }
        writer.flush().await.unwrap();
        drop(writer);
        let all = reading.await.unwrap();
        let mut cursor = Cursor::new(&all[..]);
        for n in [0u64, 5, 125, 126, 200, 65_535, 65_536] {
            let (header, length) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert_eq!(length, n);
            assert!(header.is_final && header.mask.is_none());
            assert_eq!(header.opcode, OpCode::Data(Data::Text));
            cursor.set_position(cursor.position() + n);
        }
        assert_eq!(cursor.position() as usize, all.len());
    }

    #[tokio::test]
    async fn a_viewers_frames_are_read_and_unmasked() {
        let mask = [1, 2, 3, 4];
        let mut bytes = client_frame(0x89, b"hello", mask);
        bytes.extend(client_frame(0x81, b"some text", mask));
        bytes.extend(client_frame(0x8A, b"", mask));
        bytes.extend(client_frame(0x88, &[0x03, 0xE9, b'b', b'y', b'e'], mask));
        let frames: Vec<_> = read_all(bytes)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(
            frames,
            [
                Some(FromViewer::Ping(Bytes::from_static(b"hello"))),
                Some(FromViewer::Alive),
                Some(FromViewer::Alive),
                Some(FromViewer::Close(Some(1001))),
                None,
            ]
        );
    }

    #[tokio::test]
    async fn frames_the_protocol_forbids_are_errors() {
        let mask = [9, 9, 9, 9];
        let unmasked = vec![0x81, 0x02, b'h', b'i'];
        let reserved_bit = client_frame(0xC1, b"hi", mask);
        let reserved_opcode = client_frame(0x83, b"hi", mask);
        let long_ping = client_frame(0x89, &[0; 126], mask);
        let fragmented_ping = client_frame(0x09, b"x", mask);
        let too_large = client_frame(0x82, &vec![0; MAX_CLIENT_FRAME as usize + 1], mask);
        let cut_short = client_frame(0x81, b"hello", mask)[..6].to_vec();
        for (name, bytes) in [
            ("unmasked", unmasked),
            ("reserved bit", reserved_bit),
            ("reserved opcode", reserved_opcode),
            ("long ping", long_ping),
            ("fragmented ping", fragmented_ping),
            ("too large", too_large),
            ("cut short", cut_short),
        ] {
            let results = read_all(bytes).await;
            assert!(
                results.last().is_some_and(|r| r.is_err()),
                "{name}: {results:?}"
            );
        }
    }

    #[test]
    fn only_websocket_upgrades_have_a_key() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", "keep-alive, Upgrade".parse().unwrap());
        headers.insert("upgrade", "WebSocket".parse().unwrap());
        headers.insert("sec-websocket-version", "13".parse().unwrap());
        headers.insert(
            "sec-websocket-key",
            "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
        );
        assert_eq!(upgrade_key(&headers), Some("dGhlIHNhbXBsZSBub25jZQ=="));
        let accept = switching_protocols("dGhlIHNhbXBsZSBub25jZQ==");
        // RFC 6455's own example.
        assert_eq!(
            accept.headers()["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let mut old = headers.clone();
        old.insert("sec-websocket-version", "8".parse().unwrap());
        assert_eq!(upgrade_key(&old), None);
        let mut plain = headers.clone();
        plain.insert("connection", "keep-alive".parse().unwrap());
        assert_eq!(upgrade_key(&plain), None);
        let mut other = headers;
        other.insert("upgrade", "h2c".parse().unwrap());
        assert_eq!(upgrade_key(&other), None);
    }
}
