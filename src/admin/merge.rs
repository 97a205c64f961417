//! What a change of a request record decides, as pure functions of the record as it is, the
//! parsed body and the time: the operator's `PUT /v1/requests/{id}` and the customer's
//! `request_sftp_access`. No I/O, no state: the handlers run them inside
//! `Gateway::change`, and the tests beside this file (`merge/tests.rs`) run them directly.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::api::{time_format, AccessWarning, Failure, PutRequest, Reason};
use crate::keys::{parse_authorized_keys, KeysError, MAX_BYTES};
use crate::store::{hash_key, validate_filename, validate_key, Record, State as ReqState};

/// Turns an authorized_keys problem into the reference's failures.
pub(crate) fn keys_failures(e: KeysError) -> Vec<Failure> {
    match e {
        KeysError::Invalid(lines) => lines
            .into_iter()
            .map(|l| {
                Failure::new(
                    Reason::SshKeysInvalid,
                    format!("line {}: {}", l.line, l.message),
                )
                .value(l.value)
                .line(l.line)
            })
            .collect(),
        KeysError::Empty => vec![Failure::new(
            Reason::SshKeysEmpty,
            "the SSH keys file contains no public key",
        )],
        KeysError::TooLarge(m) => vec![Failure::new(Reason::SshKeysTooLarge, m)],
    }
}

pub(crate) fn state_failure(value: &str) -> Failure {
    Failure::new(Reason::StateInvalid, format!("invalid state \"{value}\""))
        .value(value)
        .expected(
            ReqState::ALL
                .iter()
                .map(|s| s.as_str().to_string())
                .collect(),
        )
}

/// A request may be done only once its upgraded file is there.
pub(crate) fn check_transition(upgraded_exists: bool, to: ReqState) -> Result<(), Failure> {
    if to == ReqState::Done && !upgraded_exists {
        return Err(Failure::new(
            Reason::UpgradedMissing,
            "a request can only be done once its upgraded file was uploaded (PUT /v1/requests/{id}/upgraded)",
        ));
    }
    Ok(())
}

/// An operator's PUT body with what does not depend on the record already checked: its
/// keys text parsed (before the change, which holds up the record's other writers).
pub(crate) struct OperatorPut {
    body: PutRequest,
    ssh_keys: Option<Result<String, Vec<Failure>>>,
}

impl OperatorPut {
    pub(crate) fn parse(mut body: PutRequest) -> OperatorPut {
        let ssh_keys = body.ssh_keys.take().map(|text| {
            parse_authorized_keys(&text)
                .map(|_| text)
                .map_err(keys_failures)
        });
        OperatorPut { body, ssh_keys }
    }

    /// The record this PUT makes of `existing` (or creates as request `id`) at `now`, or
    /// every failure found in its body in the order the fields come. `upgraded_exists`:
    /// whether the request's upgraded file is stored (`done` needs it).
    pub(crate) fn merge(
        self,
        id: u64,
        existing: Option<&Record>,
        upgraded_exists: bool,
        now: OffsetDateTime,
    ) -> Result<Record, Vec<Failure>> {
        let OperatorPut { body, ssh_keys } = self;
        let mut failures = Vec::new();

        let filename = body
            .filename
            .or_else(|| existing.map(|r| r.filename.clone()));
        match &filename {
            None => failures.push(Failure::new(
                Reason::FilenameRequired,
                "filename is required to create a request",
            )),
            Some(f) => {
                if let Err(e) = validate_filename(f) {
                    failures.push(
                        Failure::new(Reason::FilenameInvalid, e.to_string())
                            .value(f.chars().take(40).collect::<String>()),
                    );
                }
            }
        }
        let key_sha256 = match (body.key.as_deref(), existing) {
            (Some(k), _) => match validate_key(k) {
                Ok(()) => Some(hash_key(k)),
                Err(e) => {
                    failures.push(Failure::new(Reason::KeyInvalid, e));
                    None
                }
            },
            (None, Some(r)) => Some(r.key_sha256.clone()),
            (None, None) => {
                failures.push(Failure::new(
                    Reason::KeyRequired,
                    "key is required to create a request",
                ));
                None
            }
        };
        let new_state = match body.state.as_deref() {
            None => existing.map_or(ReqState::Draft, |r| r.state),
            Some(s) => ReqState::parse(s).unwrap_or_else(|| {
                failures.push(state_failure(s));
                ReqState::Draft
            }),
        };
        let ssh_keys = match ssh_keys {
            Some(Ok(text)) => text,
            Some(Err(e)) => {
                failures.extend(e);
                String::new()
            }
            None => existing.map(|r| r.ssh_keys.clone()).unwrap_or_default(),
        };
        // An expiry the operator sets is also the ceiling for the customer's own calls; one
        // the operator leaves alone keeps both as they were (a customer's expiry included).
        let (expires_at, operator_expires_at) = match body.expires_at {
            None => existing.map_or((None, None), |r| (r.expires_at, r.operator_expires_at)),
            Some(None) => (None, None),
            Some(Some(t)) => match OffsetDateTime::parse(&t, &Rfc3339) {
                Ok(t) => (Some(t), Some(t)),
                Err(_) => {
                    failures.push(
                        Failure::new(
                            Reason::ExpiresAtInvalid,
                            "expires_at must be an RFC 3339 time or null",
                        )
                        .value(t),
                    );
                    (None, None)
                }
            },
        };
        if failures.is_empty() && existing.is_none_or(|r| r.state != new_state) {
            if let Err(f) = check_transition(upgraded_exists, new_state) {
                failures.push(f);
            }
        }
        if !failures.is_empty() {
            return Err(failures);
        }
        Ok(Record {
            id,
            filename: filename.unwrap_or_default(),
            state: new_state,
            key_sha256: key_sha256.unwrap_or_default(),
            ssh_keys,
            expires_at,
            operator_expires_at,
            created_at: existing.map_or(now, |r| r.created_at),
            updated_at: now,
        })
    }
}

/// What a customer's `request_sftp_access` decides.
#[derive(Debug)]
pub(crate) enum AccessDecision {
    /// Unknown request or wrong key: the two look the same.
    WrongKey,
    /// The right key, but no access: the failures to answer.
    Refused(Vec<Failure>),
    /// The record to put, and what the answer tells.
    Granted(Box<Record>, Granted),
}

/// What the answer to a granted call tells.
#[derive(Debug, PartialEq)]
pub(crate) struct Granted {
    pub shared_file: String,
    pub expires_at: OffsetDateTime,
    pub keys: usize,
    pub warnings: Vec<AccessWarning>,
}

/// Whether `key` is the key of `record`. An unknown request (`None`) and a wrong key look
/// the same and cost the same hash, so that neither can be probed.
pub(crate) fn key_matches(record: Option<&Record>, key: &str) -> bool {
    match record {
        Some(r) => r.key_matches(key),
        None => {
            let _ = hash_key(key);
            false
        }
    }
}

/// `ACCESS:EXPIRED`: the operator's `expires_at` on `record` has passed (for SFTP access
/// and for HTTP uploads alike).
pub(crate) fn closed_by_operator(record: &Record) -> Failure {
    Failure::new(
        Reason::AccessExpired,
        "the operator closed access to this request; only the operator can reopen it",
    )
    .value(record.operator_expires_at.and_then(time_format::format))
}

/// Opening access to `existing` with `key` and the uploaded `keys_file` at `now` for `ttl`,
/// checked in the order the reference does: the key, the state, the keys file, the
/// operator's expiry.
pub(crate) fn customer_access(
    existing: Option<&Record>,
    key: &str,
    keys_file: Vec<u8>,
    now: OffsetDateTime,
    ttl: time::Duration,
) -> AccessDecision {
    let record = match existing {
        Some(r) if key_matches(existing, key) => r,
        _ => return AccessDecision::WrongKey,
    };
    let access = match record.state.access() {
        Some(a) => a,
        None => {
            let state = record.state.as_str();
            return AccessDecision::Refused(vec![Failure::new(
                Reason::StateInvalid,
                format!("SFTP access needs the request in draft or done, it is {state}"),
            )
            .value(state)
            .expected(vec!["draft".into(), "done".into()])]);
        }
    };
    if keys_file.len() > MAX_BYTES {
        return AccessDecision::Refused(vec![Failure::new(
            Reason::SshKeysTooLarge,
            format!(
                "{} bytes, at most {MAX_BYTES} are accepted",
                keys_file.len()
            ),
        )]);
    }
    let Ok(text) = String::from_utf8(keys_file) else {
        return AccessDecision::Refused(vec![Failure::new(
            Reason::SshKeysInvalid,
            "the SSH keys file is not UTF-8 text",
        )]);
    };
    let keys = match parse_authorized_keys(&text) {
        Ok(keys) => keys,
        Err(e) => return AccessDecision::Refused(keys_failures(e)),
    };
    let warnings = keys
        .iter()
        .flat_map(|k| {
            k.options.ignored.iter().map(move |o| AccessWarning {
                line: k.line,
                option: o.clone(),
                message: format!(
                    "line {}: option {o} is not honoured by this server and was ignored",
                    k.line
                ),
            })
        })
        .collect();
    let Some(expires_at) = record.customer_expiry(now, ttl) else {
        return AccessDecision::Refused(vec![closed_by_operator(record)]);
    };
    let mut updated = record.clone();
    updated.ssh_keys = text;
    updated.expires_at = Some(expires_at);
    updated.updated_at = now;
    let granted = Granted {
        shared_file: record.visible_name(access),
        expires_at,
        keys: keys.len(),
        warnings,
    };
    AccessDecision::Granted(Box::new(updated), granted)
}

#[cfg(test)]
mod tests;
