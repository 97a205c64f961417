use super::parse::redact_password;
use super::resolve::machine_hostname;
use super::*;

#[test]
fn flags_win_over_file_over_defaults() {
    let file: Settings = toml::from_str("listen = \"127.0.0.1:1\"\npublic-host = \"f\"\n").unwrap();
    let flags = Settings {
        public_host: Some("flag".into()),
        ..Settings::default()
    };
    let cfg = flags.over(file).resolve();
    assert_eq!(cfg.listen, "127.0.0.1:1".parse().unwrap());
    assert_eq!(cfg.public_host, "flag");
    assert_eq!(cfg.admin_listen, "127.0.0.1:2280".parse().unwrap());
    assert_eq!(cfg.admin_token_file, PathBuf::from("data/admin.token"));
}

#[test]
fn durations() {
    assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
    assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
    assert!(parse_duration("0s").is_err());
    assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
    assert!(parse_duration("1x").is_err());
    assert!(parse_duration("h").is_err());
    assert!(parse_duration("").is_err());
    // Absurd values are refused with a reason, never wrapped or left to panic later
    // when added to the clock (the hand-written parser's `n * 86400` could overflow).
    for absurd in [
        "99999999999999999999d",
        "213503982334601d",
        "18446744073709551615",
        "101y",
    ] {
        assert_eq!(
            parse_duration(absurd),
            Err(format!("\"{absurd}\" is too long (at most 100 years)")),
            "{absurd}"
        );
    }
    assert_eq!(parse_duration("100y").map(|d| d <= MAX_DURATION), Ok(true));
    let s: Settings = toml::from_str("access-ttl = \"2h\"").unwrap();
    assert_eq!(s.access_ttl, Some(Duration::from_secs(7200)));
}

#[test]
fn lease_durations() {
    let cfg = Settings::default().resolve();
    assert_eq!(
        (cfg.lease_ttl, cfg.lease_wait),
        (Duration::from_secs(15), Duration::from_secs(20))
    );
    let s: Settings = toml::from_str("lease-ttl = \"30s\"\nlease-wait = \"1m\"").unwrap();
    let cfg = s.resolve();
    assert_eq!(
        (cfg.lease_ttl, cfg.lease_wait),
        (Duration::from_secs(30), Duration::from_secs(60))
    );
}

#[test]
fn log_formats() {
    let s: Settings = toml::from_str("log-format = \"json\"").unwrap();
    assert!(s.resolve().log_json);
    let err = toml::from_str::<Settings>("log-format = \"xml\"").unwrap_err();
    assert!(err.message().contains("xml"), "{}", err.message());
}

#[test]
fn storages() {
    assert_eq!(Settings::default().resolve().storage, StorageSpec::File);
    assert_eq!(Settings::default().resolve().s3_part_size, 16 << 20);
    let s: Settings =
        toml::from_str("storage = \"s3://dumps/gw\"\ns3-part-size = 8388608").unwrap();
    let cfg = s.resolve();
    assert_eq!(cfg.storage, StorageSpec::S3("s3://dumps/gw".into()));
    assert_eq!(cfg.s3_part_size, 8 << 20);
    assert_eq!(parse_storage("file"), Ok(StorageSpec::File));
    for bad in ["s3://", "s3:///x", "gs://b", "/data"] {
        let err = parse_storage(bad).unwrap_err();
        assert!(err.contains("is not a storage"), "{err}");
    }
    let err = toml::from_str::<Settings>("s3-part-size = 1000").unwrap_err();
    assert!(
        err.message().contains("outside S3's bounds"),
        "{}",
        err.message()
    );
    assert!(parse_part_size(&(6u64 << 30).to_string()).is_err());
}

#[test]
fn stores() {
    assert_eq!(Settings::default().resolve().store, StoreSpec::File);
    let s: Settings = toml::from_str("store = \"postgresql://gw@db:5432/sftpgate\"").unwrap();
    assert_eq!(
        s.resolve().store,
        StoreSpec::Postgres("postgresql://gw@db:5432/sftpgate".into())
    );
    assert_eq!(parse_store("file"), Ok(StoreSpec::File));
    let err = toml::from_str::<Settings>("store = \"mysql://u:pw@h/db\"").unwrap_err();
    assert!(err.message().contains("not a store"), "{}", err.message());
    assert!(!err.message().contains("pw"), "{}", err.message());
    let spec = parse_store("postgres://gw:s3cret@db:5432/x?sslmode=require").unwrap();
    assert_eq!(
        format!("{spec:?}"),
        "postgres://gw:***@db:5432/x?sslmode=require"
    );
    assert_eq!(redact_password("postgres://gw@db/x"), "postgres://gw@db/x");
    assert_eq!(
        redact_password("postgres://db/x?u=a@b"),
        "postgres://db/x?u=a@b"
    );
}

#[test]
fn proxy_settings() {
    let s: Settings =
        toml::from_str("proxy-protocol = true\nproxy-from = \"10.0.0.0/8, 192.0.2.5\"\n").unwrap();
    let cfg = s.resolve();
    assert_eq!(
        cfg.proxy_from,
        vec![
            "10.0.0.0/8".parse::<IpNet>().unwrap(),
            "192.0.2.5/32".parse().unwrap()
        ]
    );
    assert!(cfg.validate().is_ok());
    let s: Settings =
        toml::from_str("proxy-protocol = true\nproxy-from = [\"::1\", \"10.1.0.0/16\"]").unwrap();
    assert_eq!(s.resolve().proxy_from.len(), 2);
    let err = toml::from_str::<Settings>("proxy-from = \"10.0.0.0/33\"").unwrap_err();
    assert!(err.message().contains("10.0.0.0/33"), "{}", err.message());
    // Each without the other is refused with a message naming the missing flag.
    let on: Settings = toml::from_str("proxy-protocol = true").unwrap();
    let err = on.resolve().validate().unwrap_err().to_string();
    assert!(err.contains("--proxy-from"), "{err}");
    let from: Settings = toml::from_str("proxy-from = \"10.0.0.1\"").unwrap();
    let err = from.resolve().validate().unwrap_err().to_string();
    assert!(err.contains("--proxy-protocol"), "{err}");
    assert!(Settings::default().resolve().validate().is_ok());
}

#[test]
fn node_name_defaults_to_the_host_name() {
    assert_eq!(Settings::default().resolve().node_name, machine_hostname());
    let s: Settings = toml::from_str("node-name = \"gw-2\"").unwrap();
    assert_eq!(s.resolve().node_name, "gw-2");
}

#[test]
fn host_key_types_and_algorithm_sets() {
    let cfg = Settings::default().resolve();
    assert_eq!(cfg.host_key_types, HostKeyType::ALL);
    assert_eq!(cfg.algorithm_set, AlgorithmSet::Compatible);
    assert!(cfg.validate().is_ok());
    let s: Settings = toml::from_str(
        "host-key-types = \"rsa, ed25519,rsa\"\nalgorithms = \"hardened\"\nmacs = [\"hmac-sha2-256-etm@openssh.com\"]\n",
    )
    .unwrap();
    let cfg = s.resolve();
    assert_eq!(cfg.host_key_types, [HostKeyType::Rsa, HostKeyType::Ed25519]);
    let a = cfg.algorithms().unwrap();
    assert_eq!(a.set, AlgorithmSet::Hardened);
    assert_eq!(a.mac.len(), 1);
    assert!(a.overridden);
    for (toml, name) in [
        ("host-key-types = [\"dsa\"]", "dsa"),
        ("algorithms = \"paranoid\"", "paranoid"),
    ] {
        let err = toml::from_str::<Settings>(toml).unwrap_err();
        assert!(err.message().contains(name), "{}", err.message());
    }
    let s: Settings = toml::from_str("kex-algorithms = \"curve25519-sha256,bogus-kex\"").unwrap();
    let err = s.resolve().validate().unwrap_err().to_string();
    assert!(err.contains("\"bogus-kex\""), "{err}");
    // Under `hardened` an ECDSA-only gateway would offer no host key at all.
    let s: Settings =
        toml::from_str("algorithms = \"hardened\"\nhost-key-types = [\"ecdsa\"]").unwrap();
    let err = s.resolve().validate().unwrap_err().to_string();
    assert!(err.contains("no host key can be offered"), "{err}");
}

#[test]
fn tls_files_come_in_pairs() {
    let s: Settings =
        toml::from_str("tls-cert = \"/etc/gw/cert.pem\"\ntls-key = \"/etc/gw/key.pem\"\nhook-ca = \"/etc/gw/ca.pem\"")
            .unwrap();
    let cfg = s.resolve();
    assert!(cfg.validate().is_ok());
    assert_eq!(cfg.tls_key, Some(PathBuf::from("/etc/gw/key.pem")));
    assert_eq!(cfg.hook_ca, Some(PathBuf::from("/etc/gw/ca.pem")));
    let s: Settings = toml::from_str("tls-cert = \"c.pem\"").unwrap();
    let err = s.resolve().validate().unwrap_err().to_string();
    assert!(err.contains("--tls-cert needs --tls-key"), "{err}");
    let s: Settings = toml::from_str("tls-key = \"k.pem\"").unwrap();
    let err = s.resolve().validate().unwrap_err().to_string();
    assert!(err.contains("--tls-key needs --tls-cert"), "{err}");
    let s: Settings = toml::from_str("on-upload-closed = \"ftp://h/x\"").unwrap();
    let err = s.resolve().validate().unwrap_err().to_string();
    assert!(err.contains("only http:// and https://"), "{err}");
}

#[test]
fn hook_settings_and_a_secret_never_printed() {
    let cfg = Settings::default().resolve();
    assert_eq!(
        (cfg.hook_timeout, cfg.hook_backoff_max, cfg.hook_concurrency),
        (Duration::from_secs(10), Duration::from_secs(300), 16)
    );
    assert_eq!(cfg.outbox_max_events, 100_000);
    let s: Settings = toml::from_str(
        "on-upload-closed = \"http://h/e\"\nhook-secret = \"s3cret\"\nhook-backoff-max = \"2s\"",
    )
    .unwrap();
    let cfg = s.resolve();
    assert!(cfg.validate().is_ok());
    assert_eq!(cfg.hook_key().unwrap(), Some(Secret("s3cret".into())));
    assert!(!format!("{cfg:?}").contains("s3cret"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "from-file\n").unwrap();
    let s = Settings {
        on_upload_closed: Some("http://h/e".into()),
        hook_secret_file: Some(file.clone()),
        ..Settings::default()
    };
    assert_eq!(
        s.resolve().hook_key().unwrap(),
        Some(Secret("from-file".into()))
    );
    let both = Settings {
        on_upload_closed: Some("http://h/e".into()),
        hook_secret: Some(Secret("a".into())),
        hook_secret_file: Some(file),
        ..Settings::default()
    };
    let err = both.resolve().validate().unwrap_err().to_string();
    assert!(err.contains("both"), "{err}");
    assert!(toml::from_str::<Settings>("hook-secret = \" \"").is_err());
}

#[test]
fn unknown_keys_are_named() {
    let err = toml::from_str::<Settings>("lisen = \"x\"").unwrap_err();
    assert!(err.message().contains("lisen"), "{}", err.message());
}
