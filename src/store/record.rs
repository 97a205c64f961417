//! A request record: what the operator provisioned, and the rules that derive from it
//! (which file is visible, whether a login is allowed).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

/// Where an upgrade request stands; only `draft` and `done` grant SFTP access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Draft,
    Pending,
    Progress,
    Done,
    Failed,
    Cancelled,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Draft,
        State::Pending,
        State::Progress,
        State::Done,
        State::Failed,
        State::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Draft => "draft",
            State::Pending => "pending",
            State::Progress => "progress",
            State::Done => "done",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// The SFTP access this state grants, if any.
    pub fn access(self) -> Option<Access> {
        match self {
            State::Draft => Some(Access::Upload),
            State::Done => Some(Access::Download),
            _ => None,
        }
    }
}

/// What an SFTP session of a request may do with its one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `draft`: read and write `<filename>`.
    Upload,
    /// `done`: read `upgraded_<filename>` only.
    Download,
}

/// One upgrade request as persisted in `DATA_DIR/requests/<id>/request.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: u64,
    pub filename: String,
    pub state: State,
    /// Hex SHA-256 of the request's secret key; the key itself is never stored.
    pub key_sha256: String,
    /// The authorized_keys text as the operator or customer supplied it.
    #[serde(default)]
    pub ssh_keys: String,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// The expiry the operator set, if any: a ceiling that the customer's
    /// `request_sftp_access` never opens access past (see [`Record::customer_expiry`]).
    /// Records written before this field existed have none.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub operator_expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Record {
    /// The SFTP user name of request `id`.
    pub fn user_name(id: u64) -> String {
        format!("user_{id}")
    }

    /// Parses `user_<id>` back into the id; anything else is not a gateway user.
    pub fn parse_user(user: &str) -> Option<u64> {
        parse_id(user.strip_prefix("user_")?)
    }

    /// The access a login would get right now, or `None` when logins are refused.
    pub fn access_at(&self, now: OffsetDateTime) -> Option<Access> {
        if self.expires_at.is_some_and(|t| now >= t) {
            return None;
        }
        self.state.access()
    }

    /// Until when a customer's `request_sftp_access` at `now` opens access: `ttl` from now,
    /// but never past the operator's expiry. `None` once the operator's expiry has passed:
    /// the operator closed access and only the operator can reopen it.
    pub fn customer_expiry(
        &self,
        now: OffsetDateTime,
        ttl: time::Duration,
    ) -> Option<OffsetDateTime> {
        let wanted = now + ttl;
        match self.operator_expires_at {
            Some(ceiling) if now >= ceiling => None,
            Some(ceiling) => Some(wanted.min(ceiling)),
            None => Some(wanted),
        }
    }

    /// The one file name an SFTP user sees in the given access mode.
    pub fn visible_name(&self, access: Access) -> String {
        match access {
            Access::Upload => self.filename.clone(),
            Access::Download => format!("upgraded_{}", self.filename),
        }
    }

    /// Whether `key` is this request's key. A key pasted unencoded into a query string
    /// (as the reference's curl sample does) arrives with its `+` decoded as spaces;
    /// request keys hold no spaces (see [`validate_key`]), so that reading is tried too.
    pub fn key_matches(&self, key: &str) -> bool {
        // subtle's comparison has no early exit, so timing tells nothing about where the
        // hashes differ (their lengths are public: both are 64 hex digits).
        let matches =
            |k: &str| bool::from(hash_key(k).as_bytes().ct_eq(self.key_sha256.as_bytes()));
        matches(key) || (key.contains(' ') && matches(&key.replace(' ', "+")))
    }
}

/// A request id as written anywhere (a path, a form, a user name, a command line): a
/// positive decimal integer that fits in 64 bits, without sign, spaces or leading zeros, so
/// that each id has exactly one spelling.
pub fn parse_id(text: &str) -> Option<u64> {
    if text.is_empty() || text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A request key must be non-empty and hold no whitespace or control characters, so
/// that it survives being pasted into a URL or a shell variable.
pub fn validate_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        Err("the request key must not be empty")
    } else if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("the request key must not contain spaces or control characters")
    } else {
        Ok(())
    }
}

/// Hex SHA-256 of a request key.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Why a file name cannot be a request's shared file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilenameError {
    #[error("the file name is empty")]
    Empty,
    #[error("the file name is longer than 255 bytes")]
    TooLong,
    #[error("the file name must not be \".\" or \"..\"")]
    Dots,
    #[error("the file name must not contain '/'")]
    Slash,
    #[error("the file name must not contain NUL or control characters")]
    Control,
}

/// A shared file name is one plain path component the client can type.
pub fn validate_filename(name: &str) -> Result<(), FilenameError> {
    if name.is_empty() {
        return Err(FilenameError::Empty);
    }
    if name.len() > 255 {
        return Err(FilenameError::TooLong);
    }
    if name == "." || name == ".." {
        return Err(FilenameError::Dots);
    }
    if name.contains('/') {
        return Err(FilenameError::Slash);
    }
    if name.chars().any(char::is_control) {
        return Err(FilenameError::Control);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: State, expires_at: Option<OffsetDateTime>) -> Record {
        let now = OffsetDateTime::now_utc();
        Record {
            id: 10534,
            filename: "openchs.70.cdump".into(),
            state,
            key_sha256: hash_key("Aw7pItGVKFuZ_FOR3U8VFQ=="),
            ssh_keys: String::new(),
            expires_at,
            operator_expires_at: expires_at,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn the_operators_expiry_is_a_ceiling_for_the_customer() {
        let now = OffsetDateTime::now_utc();
        let day = time::Duration::DAY;
        let hour = time::Duration::hours(1);
        assert_eq!(
            record(State::Draft, None).customer_expiry(now, day),
            Some(now + day)
        );
        let soon = record(State::Draft, Some(now + hour));
        assert_eq!(soon.customer_expiry(now, day), Some(now + hour));
        let late = record(State::Draft, Some(now + 2 * day));
        assert_eq!(late.customer_expiry(now, day), Some(now + day));
        let past = record(State::Draft, Some(now - hour));
        assert_eq!(past.customer_expiry(now, day), None);
        assert_eq!(
            record(State::Draft, Some(now)).customer_expiry(now, day),
            None
        );
    }

    #[test]
    fn records_without_a_ceiling_still_load() {
        let old = r#"{"id": 3, "filename": "f", "state": "draft", "key_sha256": "00",
            "expires_at": "2026-01-01T00:00:00Z",
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}"#;
        let r: Record = serde_json::from_str(old).expect("an old record");
        assert_eq!(r.operator_expires_at, None);
        assert!(r.expires_at.is_some());
    }

    #[test]
    fn only_draft_and_done_grant_access() {
        let now = OffsetDateTime::now_utc();
        for state in State::ALL {
            let got = record(state, None).access_at(now);
            let want = match state {
                State::Draft => Some(Access::Upload),
                State::Done => Some(Access::Download),
                _ => None,
            };
            assert_eq!(got, want, "{state:?}");
        }
    }

    #[test]
    fn expiry_refuses_access() {
        let now = OffsetDateTime::now_utc();
        let past = now - time::Duration::seconds(1);
        let future = now + time::Duration::hours(1);
        assert_eq!(record(State::Draft, Some(past)).access_at(now), None);
        assert_eq!(record(State::Draft, Some(now)).access_at(now), None);
        assert_eq!(
            record(State::Done, Some(future)).access_at(now),
            Some(Access::Download)
        );
    }

    #[test]
    fn visible_name_follows_access() {
        let r = record(State::Draft, None);
        assert_eq!(r.visible_name(Access::Upload), "openchs.70.cdump");
        assert_eq!(
            r.visible_name(Access::Download),
            "upgraded_openchs.70.cdump"
        );
    }

    #[test]
    fn user_names_round_trip() {
        assert_eq!(Record::user_name(10534), "user_10534");
        assert_eq!(Record::parse_user("user_10534"), Some(10534));
        for bad in [
            "user_",
            "user_0",
            "user_007",
            "user_-1",
            "user_1a",
            "root",
            "user_99999999999999999999999",
            "USER_1",
        ] {
            assert_eq!(Record::parse_user(bad), None, "{bad}");
        }
    }

    #[test]
    fn ids_have_one_spelling() {
        assert_eq!(parse_id("10534"), Some(10534));
        assert_eq!(parse_id("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            "0",
            "00",
            "05",
            "+5",
            "-5",
            " 5",
            "5 ",
            "5a",
            "0x5",
            "1e3",
            "5.0",
            "18446744073709551616",
            "٣",
        ] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn key_hash_comparison() {
        let r = record(State::Draft, None);
        assert!(r.key_matches("Aw7pItGVKFuZ_FOR3U8VFQ=="));
        assert!(!r.key_matches("Aw7pItGVKFuZ_FOR3U8VFQ="));
        assert!(!r.key_matches(""));
        // A `+` that a query string decoded as a space still matches; nothing else does.
        let plus = Record {
            key_sha256: hash_key("a+b/c+=="),
            ..r
        };
        assert!(plus.key_matches("a+b/c+=="));
        assert!(plus.key_matches("a b/c =="));
        assert!(plus.key_matches("a+b/c =="));
        assert!(!plus.key_matches("a  b/c =="));
        assert!(!plus.key_matches("a-b/c-=="));
    }

    #[test]
    fn request_keys() {
        assert_eq!(validate_key("Aw7pItGVKFuZ_FOR3U8VFQ=="), Ok(()));
        assert_eq!(validate_key("a+b/c=="), Ok(()));
        for bad in ["", "a b", " a", "a\n", "a\tb", "a\u{7f}", "a\u{a0}b"] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn filenames() {
        assert_eq!(validate_filename("openchs.70.cdump"), Ok(()));
        assert_eq!(validate_filename("dump with spaces.sql.gz"), Ok(()));
        assert_eq!(validate_filename("données.dump"), Ok(()));
        assert_eq!(validate_filename(""), Err(FilenameError::Empty));
        assert_eq!(validate_filename("."), Err(FilenameError::Dots));
        assert_eq!(validate_filename(".."), Err(FilenameError::Dots));
        assert_eq!(validate_filename("a/b"), Err(FilenameError::Slash));
        assert_eq!(validate_filename("/etc"), Err(FilenameError::Slash));
        assert_eq!(validate_filename("a\0b"), Err(FilenameError::Control));
        assert_eq!(validate_filename("a\nb"), Err(FilenameError::Control));
        assert_eq!(validate_filename("a\u{7f}"), Err(FilenameError::Control));
        assert_eq!(validate_filename(&"x".repeat(255)), Ok(()));
        assert_eq!(
            validate_filename(&"x".repeat(256)),
            Err(FilenameError::TooLong)
        );
    }
}
