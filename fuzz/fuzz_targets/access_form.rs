//! The `request_sftp_access` parameters: query string, content type and body (multipart as
//! curl sends it, URL-encoded, anything else) through the pure parser the handler uses.
//! Input: the query string, a newline, the Content-Type, a newline, then the body (an
//! empty first line is no query string). Checked: no panic, and the future never waits
//! (the body is whole in memory, so a pending parser would hang a request).

#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sftpgate::fuzzing::parse_access_form;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let (Some(query), Some(ctype), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let (Ok(query), Ok(ctype)) = (std::str::from_utf8(query), std::str::from_utf8(ctype)) else {
        return;
    };
    let query = (!query.is_empty()).then_some(query);
    let body = Bytes::copy_from_slice(body);
    let mut fut = pin!(parse_access_form(query, ctype, body));
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    assert!(
        matches!(fut.as_mut().poll(&mut cx), Poll::Ready(_)),
        "the parser waited on a body that is whole"
    );
});
