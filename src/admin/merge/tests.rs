use super::*;

const ED: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKbk4EHF3X5miABPFC3UVX+U9igZJxLC2U169zVW+L4W alice@laptop";
const ED2: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILkTKxZZFaJpw0ripO9XTr2w4rcVNttxqGaeRf8LpgyX bob@desk";
const KEY: &str = "Aw7pItGVKFuZ_FOR3U8VFQ==";

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap()
}

fn record(state: ReqState) -> Record {
    let then = now() - time::Duration::days(1);
    Record {
        id: 7,
        filename: "openchs.70.cdump".into(),
        state,
        key_sha256: hash_key(KEY),
        ssh_keys: ED.into(),
        expires_at: None,
        operator_expires_at: None,
        created_at: then,
        updated_at: then,
    }
}

fn put(
    body: PutRequest,
    existing: Option<&Record>,
    upgraded: bool,
) -> Result<Record, Vec<Failure>> {
    OperatorPut::parse(body).merge(7, existing, upgraded, now())
}

fn reasons(failures: &[Failure]) -> Vec<Reason> {
    failures.iter().map(|f| f.reason).collect()
}

#[test]
fn put_creates_a_draft_record() {
    let body = PutRequest {
        filename: Some("a.dump".into()),
        key: Some(KEY.into()),
        ssh_keys: Some(format!("{ED}\n")),
        ..PutRequest::default()
    };
    let r = put(body, None, false).unwrap();
    assert_eq!(r.id, 7);
    assert_eq!(r.filename, "a.dump");
    assert_eq!(r.state, ReqState::Draft);
    assert!(r.key_matches(KEY));
    assert_eq!(r.ssh_keys, format!("{ED}\n"));
    assert_eq!((r.expires_at, r.operator_expires_at), (None, None));
    assert_eq!((r.created_at, r.updated_at), (now(), now()));
}

#[test]
fn put_needs_filename_and_key_to_create() {
    let e = put(PutRequest::default(), None, false).unwrap_err();
    assert_eq!(reasons(&e), [Reason::FilenameRequired, Reason::KeyRequired]);
}

#[test]
fn put_keeps_what_an_update_leaves_out() {
    let old = Record {
        expires_at: Some(now() + time::Duration::hours(3)),
        ..record(ReqState::Draft)
    };
    let body = PutRequest {
        filename: Some("b.dump".into()),
        ..PutRequest::default()
    };
    let r = put(body, Some(&old), false).unwrap();
    assert_eq!(r.filename, "b.dump");
    assert_eq!(r.key_sha256, old.key_sha256);
    assert_eq!(r.ssh_keys, old.ssh_keys);
    assert_eq!(r.expires_at, old.expires_at);
    assert_eq!(r.created_at, old.created_at);
    assert_eq!(r.updated_at, now());
}

#[test]
fn put_replaces_keys_and_sets_the_ceiling() {
    let old = record(ReqState::Draft);
    let body = PutRequest {
        ssh_keys: Some(ED2.into()),
        expires_at: Some(Some("2026-12-01T00:00:00Z".into())),
        ..PutRequest::default()
    };
    let r = put(body, Some(&old), false).unwrap();
    assert_eq!(r.ssh_keys, ED2);
    let t = OffsetDateTime::parse("2026-12-01T00:00:00Z", &Rfc3339).unwrap();
    assert_eq!((r.expires_at, r.operator_expires_at), (Some(t), Some(t)));
    // `null` lifts both.
    let lifted = PutRequest {
        expires_at: Some(None),
        ..PutRequest::default()
    };
    let r = put(lifted, Some(&r), false).unwrap();
    assert_eq!((r.expires_at, r.operator_expires_at), (None, None));
}

#[test]
fn put_replaces_the_request_key() {
    let old = record(ReqState::Draft);
    let body = PutRequest {
        key: Some("new-secret".into()),
        ..PutRequest::default()
    };
    let r = put(body, Some(&old), false).unwrap();
    assert!(r.key_matches("new-secret"));
    assert!(!r.key_matches(KEY));
    assert_eq!(r.ssh_keys, old.ssh_keys);
}

#[test]
fn put_reports_every_bad_field_in_order() {
    let body = PutRequest {
        filename: Some("../x".into()),
        key: Some("a b".into()),
        state: Some("finished".into()),
        ssh_keys: Some(format!("{ED}\nnot a key\n")),
        expires_at: Some(Some("tomorrow".into())),
    };
    let e = put(body, Some(&record(ReqState::Draft)), false).unwrap_err();
    assert_eq!(
        reasons(&e),
        [
            Reason::FilenameInvalid,
            Reason::KeyInvalid,
            Reason::StateInvalid,
            Reason::SshKeysInvalid,
            Reason::ExpiresAtInvalid
        ]
    );
    assert_eq!(e[3].line, Some(2));
    assert_eq!(e[2].value, Some("finished".into()));
}

#[test]
fn put_done_needs_the_upgraded_file() {
    let to_done = || PutRequest {
        state: Some("done".into()),
        ..PutRequest::default()
    };
    let old = record(ReqState::Progress);
    let e = put(to_done(), Some(&old), false).unwrap_err();
    assert_eq!(reasons(&e), [Reason::UpgradedMissing]);
    assert_eq!(
        put(to_done(), Some(&old), true).unwrap().state,
        ReqState::Done
    );
    // Already done: not a transition, so a later update needs no file.
    let done = record(ReqState::Done);
    assert_eq!(
        put(to_done(), Some(&done), false).unwrap().state,
        ReqState::Done
    );
}

fn access(existing: Option<&Record>, key: &str, keys: &str) -> AccessDecision {
    customer_access(
        existing,
        key,
        keys.as_bytes().to_vec(),
        now(),
        time::Duration::DAY,
    )
}

fn refused(d: AccessDecision) -> Vec<Reason> {
    match d {
        AccessDecision::Refused(f) => reasons(&f),
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn access_replaces_the_keys_for_a_day() {
    let old = record(ReqState::Draft);
    let AccessDecision::Granted(r, g) = access(Some(&old), KEY, &format!("restrict,pty {ED2}\n"))
    else {
        panic!("not granted");
    };
    assert_eq!(r.ssh_keys, format!("restrict,pty {ED2}\n"));
    assert_eq!(r.expires_at, Some(now() + time::Duration::DAY));
    assert_eq!(r.operator_expires_at, None);
    assert_eq!((r.updated_at, r.created_at), (now(), old.created_at));
    assert_eq!(g.shared_file, "openchs.70.cdump");
    assert_eq!(g.keys, 1);
    assert_eq!(g.warnings.len(), 1);
    assert_eq!(
        (g.warnings[0].line, g.warnings[0].option.as_str()),
        (1, "pty")
    );
    // Done: the upgraded file is the one shared.
    let AccessDecision::Granted(_, g) = access(Some(&record(ReqState::Done)), KEY, ED) else {
        panic!("not granted");
    };
    assert_eq!(g.shared_file, "upgraded_openchs.70.cdump");
}

#[test]
fn access_wrong_key_and_unknown_request_look_alike() {
    let old = record(ReqState::Draft);
    assert!(matches!(
        access(Some(&old), "wrong", ED),
        AccessDecision::WrongKey
    ));
    assert!(matches!(access(None, KEY, ED), AccessDecision::WrongKey));
    // The reference's curl sample leaves `+` unencoded: it arrives as a space.
    let plus = Record {
        key_sha256: hash_key("a+b=="),
        ..old
    };
    assert!(matches!(
        access(Some(&plus), "a b==", ED),
        AccessDecision::Granted(..)
    ));
}

#[test]
fn access_needs_draft_or_done() {
    for state in [
        ReqState::Pending,
        ReqState::Progress,
        ReqState::Failed,
        ReqState::Cancelled,
    ] {
        assert_eq!(
            refused(access(Some(&record(state)), KEY, ED)),
            [Reason::StateInvalid]
        );
    }
    // The state is checked before the keys file.
    assert_eq!(
        refused(access(Some(&record(ReqState::Cancelled)), KEY, "junk")),
        [Reason::StateInvalid]
    );
}

#[test]
fn access_refuses_bad_keys_files() {
    let old = record(ReqState::Draft);
    assert_eq!(
        refused(access(
            Some(&old),
            KEY,
            &format!("{ED}\nnot a key\nssh-ed25519 AAAA!!\n")
        )),
        [Reason::SshKeysInvalid, Reason::SshKeysInvalid]
    );
    assert_eq!(
        refused(access(Some(&old), KEY, "# nothing\n\n")),
        [Reason::SshKeysEmpty]
    );
    let huge = format!("{ED}\n").repeat(MAX_BYTES / ED.len() + 1);
    assert_eq!(
        refused(access(Some(&old), KEY, &huge)),
        [Reason::SshKeysTooLarge]
    );
    let not_utf8 = customer_access(
        Some(&old),
        KEY,
        vec![0xff, 0xfe],
        now(),
        time::Duration::DAY,
    );
    assert_eq!(refused(not_utf8), [Reason::SshKeysInvalid]);
}

#[test]
fn access_stays_under_the_operators_ceiling() {
    let soon = now() + time::Duration::hours(2);
    let capped = Record {
        expires_at: Some(soon),
        operator_expires_at: Some(soon),
        ..record(ReqState::Draft)
    };
    let AccessDecision::Granted(r, g) = access(Some(&capped), KEY, ED) else {
        panic!("not granted");
    };
    assert_eq!((r.expires_at, g.expires_at), (Some(soon), soon));
    assert_eq!(r.operator_expires_at, Some(soon));
    // Once it passed, only the operator can reopen access.
    let past = Record {
        operator_expires_at: Some(now() - time::Duration::minutes(1)),
        ..capped
    };
    let AccessDecision::Refused(f) = access(Some(&past), KEY, ED) else {
        panic!("not refused");
    };
    assert_eq!(reasons(&f), [Reason::AccessExpired]);
    assert!(f[0].value.as_ref().is_some_and(|v| v.is_string()));
}
