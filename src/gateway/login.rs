//! A login attempt to a [`Grant`]: the request's record is read once, its keys parsed, and
//! the offered key checked against them, the client's address and the time. A client that
//! offers a key and then signs with it (OpenSSH does) is decided on the record read for
//! the offer, unless a change was noted in between: so a login reads its record once, and
//! twice only when a change may have made the first read stale.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use russh::keys::ssh_key::PublicKey;
use time::OffsetDateTime;

use super::Gateway;
use crate::keys::{parse_authorized_keys, AuthorizedKey};
use crate::metrics::Metrics;
use crate::store::{Access, Record};

/// A record with its authorized keys parsed: what a login is decided on and what live
/// sessions are checked against.
#[derive(Debug)]
pub(super) struct Known {
    pub record: Record,
    pub keys: Arc<Vec<AuthorizedKey>>,
}

impl Known {
    /// `record` with `keys` if they are its keys already parsed, else parsed now.
    pub fn new(record: Record, keys: Option<Arc<Vec<AuthorizedKey>>>) -> Known {
        // Records hold only text that was validated when stored; anything unparsable
        // authorizes nobody.
        let keys = keys.unwrap_or_else(|| {
            Arc::new(parse_authorized_keys(&record.ssh_keys).unwrap_or_default())
        });
        Known { record, keys }
    }

    /// The access `key` gets from `ip` at `now`, or `None`.
    pub fn check(
        &self,
        key: &PublicKey,
        ip: Option<IpAddr>,
        now: OffsetDateTime,
    ) -> Option<Access> {
        let access = self.record.access_at(now)?;
        // Key data only: PublicKey's own equality also compares the comment.
        self.keys
            .iter()
            .any(|k| k.key.key_data() == key.key_data() && k.allows(ip, now))
            .then_some(access)
    }
}

/// What a successful login may do.
#[derive(Debug)]
pub struct Grant {
    pub request_id: u64,
    pub access: Access,
    pub key: PublicKey,
    /// The record the grant was decided on: the login reads it once (with a shared store,
    /// each read is a query). A later change that ends the grant closes the session once
    /// it is registered, so what this copy says of the file stays true while it is used.
    pub(super) known: Arc<Known>,
    /// [`Gateway::noted`] before that read: a change noted since is looked at again.
    pub(super) noted: u64,
}

impl Grant {
    /// The record the grant was decided on.
    pub fn record(&self) -> &Record {
        &self.known.record
    }
}

impl Gateway {
    /// The grant `key` gets as `user` from `ip` right now, or `None`. Unknown user, unknown
    /// key, wrong state and expiry all look the same to the caller. `offered`: the grant
    /// this connection got when it offered a key without signing; if it is for the same
    /// request and key and no change was noted since, its record is checked again at the
    /// time now instead of being read again.
    pub async fn authorize(
        &self,
        user: &str,
        key: &PublicKey,
        ip: Option<IpAddr>,
        offered: Option<&Grant>,
    ) -> Option<Grant> {
        let id = Record::parse_user(user)?;
        if let Some(g) = offered.filter(|g| {
            g.request_id == id
                && g.key.key_data() == key.key_data()
                && g.noted == self.noted.load(Ordering::SeqCst)
        }) {
            let access = g.known.check(key, ip, OffsetDateTime::now_utc())?;
            return Some(Grant {
                request_id: id,
                access,
                key: key.clone(),
                known: g.known.clone(),
                noted: g.noted,
            });
        }
        let noted = self.noted.load(Ordering::SeqCst);
        let record = self.read_or_log(id).await?;
        let known = Known::new(record, None);
        let access = known.check(key, ip, OffsetDateTime::now_utc())?;
        Some(Grant {
            request_id: id,
            access,
            key: key.clone(),
            known: Arc::new(known),
            noted,
        })
    }

    /// The record of `id` for the SSH side, which has no one to report a store failure
    /// to: it is logged, and nothing is granted.
    async fn read_or_log(&self, id: u64) -> Option<Record> {
        Metrics::inc(&self.metrics.record_reads.login);
        self.store
            .get(id)
            .await
            .inspect_err(|e| tracing::error!(request = id, error = %e, "cannot read the record"))
            .ok()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{provisioned, ED};
    use super::*;
    use crate::store::{Decision, State};

    fn reads(g: &Gateway) -> u64 {
        g.metrics.record_reads.login.load(Ordering::Relaxed)
    }

    /// The offer's read serves the signed login; a change noted in between, another key or
    /// another request is read again; the time is checked again either way.
    #[tokio::test]
    async fn a_login_reads_its_record_once_unless_a_change_came_between() {
        let dir = tempfile::tempdir().expect("temp dir");
        let g = provisioned(dir.path(), &[1, 2]).await;
        let key = PublicKey::from_openssh(ED).expect("key");
        let ip = Some("127.0.0.1".parse().expect("address"));
        let offered = g
            .authorize("user_1", &key, ip, None)
            .await
            .expect("granted");
        let signed = g.authorize("user_1", &key, ip, Some(&offered)).await;
        assert_eq!(signed.expect("granted").access, Access::Upload);
        assert_eq!(reads(&g), 1);

        assert!(g
            .authorize("user_2", &key, ip, Some(&offered))
            .await
            .is_some());
        assert_eq!(reads(&g), 2);

        g.change(1, |r| {
            let mut r = r.cloned().expect("record");
            r.state = State::Cancelled;
            (Decision::Put(r), ())
        })
        .await
        .expect("cancelled");
        assert!(g
            .authorize("user_1", &key, ip, Some(&offered))
            .await
            .is_none());
        assert_eq!(reads(&g), 3);
    }
}
