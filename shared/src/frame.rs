//! Length-prefixed framing: a 4-byte big-endian body length, then a JSON body of at
//! most [`MAX_FRAME_LEN`] bytes. A frame that is too long, truncated or not a valid
//! message is a [`FrameError`]; the caller closes that stream. Nothing here panics on
//! peer input.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame body accepted or sent, in bytes (1 MiB). Output chunks are far
/// smaller ([`crate::proto::MAX_CHUNK_LEN`]); the limit only bounds what a broken or
/// hostile peer can make us buffer.
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than [`MAX_FRAME_LEN`] bytes.
    #[error("frame of {0} bytes is over the {MAX_FRAME_LEN}-byte limit")]
    TooLong(usize),
    /// The body is not a valid message of the expected type.
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// Reading or writing the stream failed.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes one message as a frame (prefix and body).
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; 4];
    serde_json::to_writer(&mut out, message)?;
    let len = out.len() - 4;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLong(len));
    }
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Decodes the first frame of `buf`. `Ok(None)` when `buf` does not yet hold a whole
/// frame; otherwise the message and the number of bytes it used.
pub fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLong(len));
    }
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    let message = serde_json::from_slice(body)?;
    Ok(Some((message, 4 + len)))
}

/// Reads one frame. `Ok(None)` when the stream ends cleanly before a frame starts.
pub async fn read_frame<T: DeserializeOwned, R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<T>, FrameError> {
    let mut prefix = [0u8; 4];
    let mut filled = 0;
    while filled < 4 {
        let n = reader.read(&mut prefix[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        filled += n;
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLong(len));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(Some(serde_json::from_slice(&body)?))
}

/// Writes one frame.
pub async fn write_frame<T: Serialize, W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &T,
) -> Result<(), FrameError> {
    let bytes = encode(message)?;
    writer.write_all(&bytes).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{FromAgent, OutputChunk, OutputStream, ToAgent};

    fn chunk(seq: u64, data: &str) -> FromAgent {
        FromAgent::Output(OutputChunk {
            seq,
            stream: OutputStream::Stdout,
            data: data.into(),
        })
    }

    /// Frames round-trip, one after another in one buffer.
    #[test]
    fn round_trip_in_one_buffer() {
        let mut buf = encode(&chunk(0, "a\n")).unwrap();
        buf.extend(encode(&chunk(1, "b\n")).unwrap());
        let (first, used): (FromAgent, usize) = decode(&buf).unwrap().unwrap();
        assert_eq!(first, chunk(0, "a\n"));
        let (second, used2): (FromAgent, usize) = decode(&buf[used..]).unwrap().unwrap();
        assert_eq!(second, chunk(1, "b\n"));
        assert_eq!(used + used2, buf.len());
    }

    /// A partial frame asks for more bytes instead of failing.
    #[test]
    fn partial_frame_waits() {
        let buf = encode(&ToAgent::Cancel).unwrap();
        for cut in 0..buf.len() {
            assert!(
                decode::<ToAgent>(&buf[..cut]).unwrap().is_none(),
                "cut at {cut}"
            );
        }
    }

    /// An oversized length prefix is refused before anything is buffered.
    #[test]
    fn oversized_is_refused() {
        let mut buf = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
        buf.extend([b'{'; 16]);
        assert!(matches!(
            decode::<ToAgent>(&buf),
            Err(FrameError::TooLong(_))
        ));
        let big = chunk(0, &"x".repeat(MAX_FRAME_LEN));
        assert!(matches!(encode(&big), Err(FrameError::TooLong(_))));
    }

    /// Garbage and unknown message types are errors, not panics.
    #[test]
    fn malformed_is_an_error() {
        for body in [
            &b"not json"[..],
            b"{\"type\":\"nope\"}",
            b"{}",
            b"\xff\xfe",
            b"[1,2]",
        ] {
            let mut buf = (body.len() as u32).to_be_bytes().to_vec();
            buf.extend_from_slice(body);
            assert!(
                matches!(decode::<ToAgent>(&buf), Err(FrameError::Malformed(_))),
                "{body:?}"
            );
        }
    }

    /// The async reader sees clean ends, truncation and oversize.
    #[tokio::test]
    async fn async_reader_edges() {
        let empty: &[u8] = &[];
        assert!(read_frame::<ToAgent, _>(&mut &*empty)
            .await
            .unwrap()
            .is_none());
        let buf = encode(&ToAgent::Ack { up_to_seq: 7 }).unwrap();
        let mut reader = &buf[..];
        let got: ToAgent = read_frame(&mut reader).await.unwrap().unwrap();
        assert_eq!(got, ToAgent::Ack { up_to_seq: 7 });
        let mut truncated = &buf[..buf.len() - 1];
        assert!(matches!(
            read_frame::<ToAgent, _>(&mut truncated).await,
            Err(FrameError::Truncated)
        ));
        let mut two = &buf[..2];
        assert!(matches!(
            read_frame::<ToAgent, _>(&mut two).await,
            Err(FrameError::Truncated)
        ));
        let huge = u32::MAX.to_be_bytes();
        assert!(matches!(
            read_frame::<ToAgent, _>(&mut &huge[..]).await,
            Err(FrameError::TooLong(_))
        ));
        let mut out = Vec::new();
        write_frame(&mut out, &ToAgent::Cancel).await.unwrap();
        assert_eq!(out, encode(&ToAgent::Cancel).unwrap());
    }

    /// Random bytes (valid prefixes with garbage bodies, garbage prefixes) never panic
    /// the decoder: the fuzz target's property, run on every test run.
    #[test]
    fn random_input_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..64);
            let mut body: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if rng.gen_bool(0.5) {
                let mut framed = (body.len() as u32).to_be_bytes().to_vec();
                framed.append(&mut body);
                body = framed;
            }
            let _ = decode::<ToAgent>(&body);
            let _ = decode::<FromAgent>(&body);
        }
    }
}
