//! The S3 multipart uploads a request's files are being written into (issue 16): for each
//! of its two files ([`Object`]), the current upload's id, its object key, and every part
//! committed so far with its number, ETag and size. The storage layer records a part here
//! in the same store transaction that makes it count, so the committed size of an upload
//! is what the store says, on any node, and never rebuilt from S3's ListParts (which lists
//! parts S3 received even when the node that sent them died before it counted them).
//!
//! [`MultipartStore`] is a supertrait of [`super::Store`], so every store has it and a
//! `dyn Store` answers it. Its implementations live beside the stores' own
//! (`file/multipart.rs`, `postgres/multipart.rs`); what they share, the rules of what a
//! part may be, is here as pure functions.

use time::OffsetDateTime;

/// S3's largest part number: an upload has at most this many parts.
pub const MAX_PARTS: u32 = 10_000;
/// S3's largest part: 5 GiB.
pub const MAX_PART_SIZE: u64 = 5 << 30;

/// Which of a request's two files a multipart upload writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Object {
    /// The customer's upload.
    Upload,
    /// The upgraded dump the operator puts back.
    Upgraded,
    /// The upload's temporary `.filepart` (WinSCP's), renamed onto the upload.
    Partial,
}

impl Object {
    pub const ALL: [Object; 3] = [Object::Upload, Object::Upgraded, Object::Partial];

    /// Its name in the stores (a column value, a file name), as its file is named.
    pub fn as_str(self) -> &'static str {
        match self {
            Object::Upload => "upload",
            Object::Upgraded => "upgraded",
            Object::Partial => "filepart",
        }
    }

    pub fn parse(s: &str) -> Option<Object> {
        Object::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// A committed part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// From 1, contiguous.
    pub number: u32,
    /// As S3 answered UploadPart (or UploadPartCopy), quotes included: CompleteMultipartUpload
    /// wants it back as it was given.
    pub etag: String,
    pub size: u64,
}

/// A request's current multipart upload of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Multipart {
    pub upload_id: String,
    /// The object key it completes into.
    pub key: String,
    /// When it was begun (the database's clock for the PostgreSQL store).
    pub started: OffsetDateTime,
    /// Numbered 1, 2, ... in order.
    pub parts: Vec<Part>,
}

impl Multipart {
    /// The bytes its parts hold: the prefix of the object that is durable on S3.
    pub fn committed(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum()
    }

    /// The number the next part must have.
    pub fn next_number(&self) -> u32 {
        u32::try_from(self.parts.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }

    /// Whether `part` may be added to this upload, found current under `upload_id`: it is
    /// the next one (parts are contiguous, so committed bytes are a prefix).
    pub fn accepts(&self, upload_id: &str, part: &Part) -> bool {
        self.upload_id == upload_id && part.number == self.next_number()
    }

    /// Checks what a store read back: parts numbered 1, 2, ... and not past [`MAX_PARTS`].
    /// A store that records them as [`MultipartStore::add_part`] says never fails this;
    /// the message names what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.parts.len() > MAX_PARTS as usize {
            return Err(format!(
                "{} parts, more than S3's {MAX_PARTS}",
                self.parts.len()
            ));
        }
        match self.parts.iter().zip(1u32..).find(|(p, n)| p.number != *n) {
            Some((p, n)) => Err(format!("part {n} is numbered {}", p.number)),
            None => Ok(()),
        }
    }
}

/// Why a multipart call was refused (as opposed to answered `false`, which means the
/// upload is no longer current or the part is not the next one: a race another writer won).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MultipartError {
    /// The caller's bug or an object too big for its part size: never a race.
    #[error("part number {number} is past S3's limit of {MAX_PARTS} parts per upload (the object needs a larger part size)")]
    TooManyParts { number: u32 },
    #[error("a part of {size} bytes is larger than S3's largest part ({MAX_PART_SIZE} bytes)")]
    PartTooLarge { size: u64 },
    /// A multipart upload is recorded only for a request that exists, so that deleting the
    /// request forgets it too.
    #[error("request {0} does not exist (deleted?): no multipart upload is recorded for it")]
    NoRequest(u64),
    /// PostgreSQL text cannot hold NUL; refused in every store alike.
    #[error("the multipart upload's {0} holds a NUL character")]
    Nul(&'static str),
}

/// What every store checks before it records `part`: a number and a size S3 accepts (0 is
/// never the next number, and is answered `false` as any other wrong number) and no NUL in
/// its ETag.
pub fn check_part(part: &Part) -> Result<(), MultipartError> {
    if part.number > MAX_PARTS {
        return Err(MultipartError::TooManyParts {
            number: part.number,
        });
    }
    if part.size > MAX_PART_SIZE {
        return Err(MultipartError::PartTooLarge { size: part.size });
    }
    no_nul("ETag", &part.etag)
}

/// What every store checks before it begins an upload.
pub fn check_begin(key: &str, upload_id: &str) -> Result<(), MultipartError> {
    no_nul("key", key)?;
    no_nul("upload id", upload_id)
}

fn no_nul(what: &'static str, s: &str) -> Result<(), MultipartError> {
    if s.contains('\0') {
        Err(MultipartError::Nul(what))
    } else {
        Ok(())
    }
}

/// The multipart uploads of a store's requests. Every write is durable before it returns,
/// and is serialised with the other writes of that request (its record's included), so a
/// delete of the request and a part recorded at the same time never leave a part of a
/// deleted request behind.
#[async_trait::async_trait]
pub trait MultipartStore: Send + Sync {
    /// The current multipart upload of `object` of request `id`, if any.
    async fn multipart(
        &self,
        id: u64,
        object: Object,
    ) -> Result<Option<Multipart>, super::StoreError>;
    /// Makes `upload_id` the request's current multipart upload of `object` (no parts yet,
    /// started now); returns the one it replaced (the caller aborts it on S3). Refused with
    /// [`MultipartError::NoRequest`] when the request has no record.
    async fn begin_multipart(
        &self,
        id: u64,
        object: Object,
        key: &str,
        upload_id: &str,
    ) -> Result<Option<Multipart>, super::StoreError>;
    /// Records a committed part, in one transaction: only if `upload_id` is still current
    /// and `part.number == parts.len() + 1` (parts are contiguous); `Ok(false)` otherwise,
    /// nothing changed. A number past [`MAX_PARTS`] is an error,
    /// [`MultipartError::TooManyParts`], whatever the upload's state.
    async fn add_part(
        &self,
        id: u64,
        object: Object,
        upload_id: &str,
        part: &Part,
    ) -> Result<bool, super::StoreError>;
    /// Forgets the multipart upload (completed or aborted) if `upload_id` is still current;
    /// `Ok(false)` otherwise.
    async fn end_multipart(
        &self,
        id: u64,
        object: Object,
        upload_id: &str,
    ) -> Result<bool, super::StoreError>;
    /// Every multipart upload recorded, for the sweeper: (request id, object, upload),
    /// ordered by request id, then object.
    async fn multiparts(&self) -> Result<Vec<(u64, Object, Multipart)>, super::StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(number: u32, size: u64) -> Part {
        Part {
            number,
            etag: format!("\"etag-{number}\""),
            size,
        }
    }

    fn upload(parts: Vec<Part>) -> Multipart {
        Multipart {
            upload_id: "u1".into(),
            key: "requests/1/upload".into(),
            started: OffsetDateTime::UNIX_EPOCH,
            parts,
        }
    }

    #[test]
    fn committed_is_the_sum_of_the_parts() {
        assert_eq!(upload(vec![]).committed(), 0);
        let big = 16 << 20;
        let m = upload(vec![part(1, big), part(2, big), part(3, 5)]);
        assert_eq!(m.committed(), 2 * big + 5);
        assert_eq!(m.next_number(), 4);
    }

    #[test]
    fn only_the_next_part_of_the_current_upload_is_accepted() {
        let m = upload(vec![part(1, 10), part(2, 10)]);
        assert!(m.accepts("u1", &part(3, 10)));
        for n in [0, 1, 2, 4, MAX_PARTS] {
            assert!(!m.accepts("u1", &part(n, 10)), "{n}");
        }
        assert!(!m.accepts("u2", &part(3, 10)));
        assert!(upload(vec![]).accepts("u1", &part(1, 0)));
    }

    #[test]
    fn part_numbers_stop_at_s3s_limit() {
        assert_eq!(check_part(&part(MAX_PARTS, 1)), Ok(()));
        assert_eq!(check_part(&part(0, 1)), Ok(()));
        assert_eq!(
            check_part(&part(MAX_PARTS + 1, 1)),
            Err(MultipartError::TooManyParts { number: 10_001 })
        );
        assert_eq!(
            MultipartError::TooManyParts { number: 10_001 }.to_string(),
            "part number 10001 is past S3's limit of 10000 parts per upload \
             (the object needs a larger part size)"
        );
        assert_eq!(check_part(&part(1, MAX_PART_SIZE)), Ok(()));
        assert_eq!(
            check_part(&part(1, MAX_PART_SIZE + 1)),
            Err(MultipartError::PartTooLarge {
                size: MAX_PART_SIZE + 1
            })
        );
        let mut nul = part(1, 1);
        nul.etag.push('\0');
        assert_eq!(check_part(&nul), Err(MultipartError::Nul("ETag")));
        assert_eq!(check_begin("k", "u"), Ok(()));
        assert_eq!(check_begin("k\0", "u"), Err(MultipartError::Nul("key")));
        assert_eq!(
            check_begin("k", "\0"),
            Err(MultipartError::Nul("upload id"))
        );
    }

    #[test]
    fn a_read_back_upload_is_checked() {
        assert_eq!(upload(vec![part(1, 1), part(2, 1)]).check(), Ok(()));
        assert_eq!(
            upload(vec![part(1, 1), part(3, 1)]).check(),
            Err("part 2 is numbered 3".into())
        );
        let too_many = upload((1..=MAX_PARTS + 1).map(|n| part(n, 1)).collect());
        assert_eq!(
            too_many.check(),
            Err("10001 parts, more than S3's 10000".into())
        );
    }

    #[test]
    fn objects_by_name() {
        for o in Object::ALL {
            assert_eq!(Object::parse(o.as_str()), Some(o));
        }
        assert_eq!(Object::parse("original"), None);
    }
}
