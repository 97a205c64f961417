//! The parameters of `request_sftp_access`, parsed from the query string and a multipart
//! or URL-encoded body already read into memory. A pure function of its input (no state,
//! no I/O), so that it can be tested and fuzzed on its own.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header;

/// The call's parameters, wherever the client put them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AccessParams {
    pub request: Option<String>,
    pub key: Option<String>,
    pub ssh_keys: Option<Vec<u8>>,
}

impl AccessParams {
    fn set(&mut self, name: &str, value: Vec<u8>) {
        match name {
            "request" => self.request = Some(String::from_utf8_lossy(&value).trim().to_string()),
            "key" => self.key = Some(String::from_utf8_lossy(&value).trim().to_string()),
            "ssh_keys" => self.ssh_keys = Some(value),
            _ => {}
        }
    }

    fn set_pairs(&mut self, pairs: Vec<(String, String)>) {
        for (k, v) in pairs {
            self.set(&k, v.into_bytes());
        }
    }
}

/// Reads `request`, `key` and `ssh_keys` from `query`, then from a multipart or
/// URL-encoded form `body` as `content_type` says (form fields win). Any other content
/// type's body is ignored. The error is the message for `REQUEST:MALFORMED`.
///
/// The body is whole in memory, so the returned future never waits.
pub async fn parse_access_form(
    query: Option<&str>,
    content_type: &str,
    body: Bytes,
) -> Result<AccessParams, String> {
    let mut p = AccessParams::default();
    if let Some(q) = query {
        p.set_pairs(serde_urlencoded::from_str(q).map_err(|e| format!("bad query string: {e}"))?);
    }
    // Matched case-insensitively, but the boundary itself is case-sensitive: multer is
    // given the header as sent.
    let lower = content_type.to_ascii_lowercase();
    if lower.starts_with("multipart/form-data") {
        let req = Request::builder()
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .map_err(|e| format!("bad content type: {e}"))?;
        let mut form = Multipart::from_request(req, &())
            .await
            .map_err(|e| e.body_text())?;
        while let Some(field) = form.next_field().await.map_err(|e| e.body_text())? {
            let name = field.name().unwrap_or_default().to_string();
            let value = field.bytes().await.map_err(|e| e.body_text())?;
            p.set(&name, value.to_vec());
        }
    } else if lower.starts_with("application/x-www-form-urlencoded") {
        p.set_pairs(
            serde_urlencoded::from_bytes(&body).map_err(|e| format!("bad form body: {e}"))?,
        );
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(
        query: Option<&str>,
        ctype: &str,
        body: &'static [u8],
    ) -> Result<AccessParams, String> {
        futures::executor::block_on(parse_access_form(query, ctype, Bytes::from_static(body)))
    }

    #[test]
    fn multipart_as_curl_sends_it() {
        let body = b"--------------------------abcDEF\r\n\
Content-Disposition: form-data; name=\"request\"\r\n\r\n\
70\r\n\
--------------------------abcDEF\r\n\
Content-Disposition: form-data; name=\"ssh_keys\"; filename=\"id.pub\"\r\n\
Content-Type: application/octet-stream\r\n\r\n\
ssh-ed25519 AAAA x\n\r\n\
--------------------------abcDEF--\r\n";
        let p = parse(
            Some("key=secret&request=1"),
            "multipart/form-data; boundary=------------------------abcDEF",
            body,
        )
        .unwrap();
        assert_eq!(
            p,
            AccessParams {
                request: Some("70".into()),
                key: Some("secret".into()),
                ssh_keys: Some(b"ssh-ed25519 AAAA x\n".to_vec()),
            }
        );
    }

    #[test]
    fn urlencoded_and_other_bodies() {
        let p = parse(
            None,
            "Application/X-WWW-Form-Urlencoded",
            b"request=+7+&key=k%20",
        )
        .unwrap();
        assert_eq!(
            (p.request.as_deref(), p.key.as_deref()),
            (Some("7"), Some("k"))
        );
        let p = parse(None, "application/json", b"{\"request\": 7}").unwrap();
        assert_eq!(p, AccessParams::default());
        assert!(parse(Some("a=%zz&b"), "", b"").is_ok());
        assert!(parse(None, "multipart/form-data", b"x").is_err());
    }
}
