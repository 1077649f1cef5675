//! `multipart/form-data` bodies (file uploads from pages), read with `multer` from
//! the body already in memory (the route's body limit bounds it).

use std::convert::Infallible;

use bytes::Bytes;

use super::Req;
use crate::error::{AppError, AppResult};

/// One part of a multipart body.
pub struct Part {
    /// The form field's name.
    pub name: String,
    /// The file's name, for a file field.
    pub file_name: Option<String>,
    pub data: Bytes,
}

/// The parts of a `multipart/form-data` request; `None` when the body is not one.
pub fn parts(req: &Req) -> AppResult<Option<Vec<Part>>> {
    let Some(content_type) = req
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(None);
    };
    if !content_type
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        return Ok(None);
    }
    let boundary = multer::parse_boundary(content_type)
        .map_err(|_| AppError::bad_request("the upload could not be read (no boundary)"))?;
    let body = req.body.clone();
    let stream = futures::stream::once(async move { Ok::<Bytes, Infallible>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    // The body is in memory already: reading it never waits on anything.
    futures::executor::block_on(async {
        let mut out = Vec::new();
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| AppError::bad_request(format!("the upload could not be read: {e}")))?
        {
            let name = field.name().unwrap_or_default().to_string();
            let file_name = field.file_name().map(String::from);
            let data = field
                .bytes()
                .await
                .map_err(|e| AppError::bad_request(format!("the upload could not be read: {e}")))?;
            out.push(Part {
                name,
                file_name,
                data,
            });
        }
        Ok(Some(out))
    })
}

/// The text fields of a multipart body as form pairs (for the CSRF check and the
/// handler's other fields).
pub fn text_fields(parts: &[Part]) -> Vec<(String, String)> {
    parts
        .iter()
        .filter(|p| p.file_name.is_none())
        .map(|p| {
            (
                p.name.clone(),
                String::from_utf8_lossy(&p.data).into_owned(),
            )
        })
        .collect()
}
