//! Static assets (app css/js, vendored Bootstrap and Font Awesome), embedded in the
//! binary so the UI works offline, served with their content type and an ETag.

use rust_embed::RustEmbed;
use warp::http::{HeaderValue, StatusCode};

use super::{Req, Resp};

#[derive(RustEmbed)]
#[folder = "../web/static/"]
struct Static;

/// Serves `/static/<path>`.
pub fn serve(req: &Req, path: &str) -> Resp {
    let Some(file) = Static::get(path) else {
        return super::text(StatusCode::NOT_FOUND, "not found", "text/plain");
    };
    let etag = format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..12]));
    if req
        .headers
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        let mut resp = Resp::default();
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        return resp;
    }
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let mut resp = Resp::new(file.data.into_owned().into());
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(mime.as_ref()) {
        h.insert("content-type", v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert("etag", v);
    }
    h.insert(
        "cache-control",
        HeaderValue::from_static("public, max-age=3600"),
    );
    resp
}
