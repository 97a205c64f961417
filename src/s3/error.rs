//! [`S3Error`]: what an S3 call can fail with, in the terms the storage layer acts on.
//! S3 names its errors with a `<Code>` in the XML body (EntityTooSmall, NoSuchUpload,
//! NoSuchKey, ...); object_store keeps that body in its error's text, so the code is read
//! from there, and from the body directly for the signed calls. Messages name the
//! operation, the key and the server's code and message; no credential is in them (the
//! requests are signed in headers, and object_store's error texts carry the URL, not the
//! headers).

/// A failed S3 call.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// No object at the key (NoSuchKey; or a 404 without a body, as for HEAD).
    #[error("S3: no object {0}")]
    NotFound(String),
    /// CompleteMultipartUpload refused a part other than the last one for being under the
    /// 5 MiB minimum. The text names the key.
    #[error(
        "S3: the multipart upload of {0} has a part other than the last under the 5 MiB minimum (EntityTooSmall)"
    )]
    EntityTooSmall(String),
    /// The upload id is unknown: never created, aborted, or already completed. The text is
    /// "UPLOAD_ID of KEY".
    #[error("S3: no multipart upload {0} (NoSuchUpload: aborted, completed or never created)")]
    NoSuchUpload(String),
    /// A range that starts at or after the object's end (InvalidRange, 416); the text
    /// names the key.
    #[error("S3: the range asked of {0} starts at or after its end (InvalidRange)")]
    InvalidRange(String),
    /// Anything else: transport failures, timeouts, refusals, bad configuration. The text
    /// says which operation on which key, and why.
    #[error("S3: {0}")]
    Other(String),
}

/// The `<Code>` of an S3 error body, if the text holds one.
pub fn code_in(text: &str) -> Option<&str> {
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    Some(&text[start..start + len])
}

/// The `<Message>` of an S3 error body, if the text holds one.
fn message_in(text: &str) -> Option<&str> {
    let start = text.find("<Message>")? + "<Message>".len();
    let len = text[start..].find("</Message>")?;
    Some(&text[start..start + len])
}

/// Maps an error of object_store's for operation `op` on `key` (and `upload`, for the calls
/// on a multipart upload).
pub fn from_store(op: &str, key: &str, upload: Option<&str>, e: object_store::Error) -> S3Error {
    // object_store's texts already include their sources' (and S3's error body).
    let text = e.to_string();
    if let Some(code) = code_in(&text) {
        return from_code(op, key, upload, code, message_in(&text).unwrap_or(""));
    }
    match e {
        object_store::Error::NotFound { .. } => S3Error::NotFound(key.to_string()),
        _ => S3Error::Other(format!("{op} {key}: {text}")),
    }
}

/// Maps an S3 error code (and its message) for operation `op` on `key` (and `upload`).
pub fn from_code(op: &str, key: &str, upload: Option<&str>, code: &str, message: &str) -> S3Error {
    match code {
        "NoSuchKey" => S3Error::NotFound(key.to_string()),
        "EntityTooSmall" => S3Error::EntityTooSmall(key.to_string()),
        "NoSuchUpload" => S3Error::NoSuchUpload(match upload {
            Some(u) => format!("{u} of {key}"),
            None => key.to_string(),
        }),
        "InvalidRange" => S3Error::InvalidRange(key.to_string()),
        _ => S3Error::Other(format!("{op} {key}: {code}: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_read_from_error_bodies() {
        let body = "Server returned non-2xx status code: 400 Bad Request: <?xml version=\"1.0\"?>\
            <Error><Code>EntityTooSmall</Code><Message>Your proposed upload is smaller than the \
            minimum allowed object size.</Message></Error>";
        assert_eq!(code_in(body), Some("EntityTooSmall"));
        assert!(matches!(
            from_code("complete", "a/b", Some("u1"), "EntityTooSmall", ""),
            S3Error::EntityTooSmall(k) if k == "a/b"
        ));
        assert_eq!(code_in("no xml here"), None);
        assert_eq!(
            from_code("abort", "a/b", Some("u1"), "NoSuchUpload", "").to_string(),
            "S3: no multipart upload u1 of a/b (NoSuchUpload: aborted, completed or never created)"
        );
        assert_eq!(
            from_code("copy", "k", None, "AccessDenied", "Access Denied").to_string(),
            "S3: copy k: AccessDenied: Access Denied"
        );
    }
}
