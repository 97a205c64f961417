//! What a request is answered with. Every operation returns one [`Reply`] and the request
//! loop alone sends it ([`Reply::send`]), so that each request gets exactly one reply is a
//! matter of types: every path through an operation ends in a value, and an operation never
//! queues a reply itself.

use std::borrow::Cow;

use crate::sftp::queue::{PendingRead, ReplyQueue};
use crate::sftp::wire::{Attrs, NameEntry, StatusCode};

/// One reply packet, owned until it is queued. A READ is its description ([`PendingRead`]):
/// the data is read only when the writer sends it.
#[must_use = "a request's reply must be sent"]
pub(super) enum Reply {
    Version {
        extensions: &'static [(&'static str, &'static str)],
    },
    Status {
        id: u32,
        code: StatusCode,
        /// Borrowed for the fixed messages, so the common replies (a WRITE's) cost nothing.
        message: Cow<'static, str>,
    },
    Handle {
        id: u32,
        handle: u32,
    },
    Data(PendingRead),
    Name {
        id: u32,
        entries: Vec<NameEntry>,
    },
    Attrs {
        id: u32,
        attrs: Attrs,
    },
    /// An EXTENDED_REPLY whose body is a list of u64, as limits@ and statvfs@ send.
    U64s {
        id: u32,
        values: Vec<u64>,
    },
}

impl Reply {
    pub(super) fn status(
        id: u32,
        code: StatusCode,
        message: impl Into<Cow<'static, str>>,
    ) -> Reply {
        Reply::Status {
            id,
            code,
            message: message.into(),
        }
    }

    pub(super) fn ok(id: u32) -> Reply {
        Reply::status(id, StatusCode::Ok, "Success")
    }

    pub(super) fn failure(id: u32, message: impl Into<Cow<'static, str>>) -> Reply {
        Reply::status(id, StatusCode::Failure, message)
    }

    pub(super) fn denied(id: u32) -> Reply {
        Reply::status(id, StatusCode::PermissionDenied, "Permission denied")
    }

    pub(super) fn no_such_file(id: u32) -> Reply {
        Reply::status(id, StatusCode::NoSuchFile, "No such file")
    }

    pub(super) fn invalid_handle(id: u32) -> Reply {
        Reply::failure(id, "invalid handle")
    }

    pub(super) fn malformed(id: u32) -> Reply {
        Reply::status(id, StatusCode::BadMessage, "malformed request")
    }

    /// A storage failure, as the client should read it.
    pub(super) fn io(id: u32, e: &std::io::Error) -> Reply {
        let code = match e.kind() {
            std::io::ErrorKind::NotFound => StatusCode::NoSuchFile,
            std::io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
            _ => StatusCode::Failure,
        };
        Reply::status(id, code, e.to_string())
    }

    /// Queues the reply, after every reply queued before it.
    pub(super) fn send(self, queue: &ReplyQueue) {
        match self {
            Reply::Data(read) => queue.push_read(read),
            Reply::Version { extensions } => queue.push(|e| e.version(extensions)),
            Reply::Status { id, code, message } => queue.push(|e| e.status(id, code, &message)),
            Reply::Handle { id, handle } => queue.push(|e| e.handle(id, &handle.to_be_bytes())),
            Reply::Name { id, entries } => queue.push(|e| e.name(id, &entries)),
            Reply::Attrs { id, attrs } => queue.push(|e| e.attrs_reply(id, &attrs)),
            Reply::U64s { id, values } => queue.push(|e| e.extended_u64s(id, &values)),
        }
    }
}
