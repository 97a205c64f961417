//! The SSH algorithm sets: `compatible` (the default, which every client in the README's
//! table connects with, JSch 0.1.55 included) and `hardened` (which ssh-audit passes with no
//! fail: no NIST-curve key exchange or host key, ETM MACs only, no SHA-1). Either set's
//! lists can be replaced one by one from the config file; every name is checked against
//! what russh implements, so a typo stops the start instead of silently narrowing what
//! clients are offered.

use std::borrow::Cow;

use russh::keys::ssh_key::{Algorithm, EcdsaCurve, HashAlg};
use russh::{cipher, kex, mac};
use serde::Deserialize;

/// A named set of algorithms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AlgorithmSet {
    /// Every client in the README's table, at the price of the fails the README lists.
    #[default]
    Compatible,
    /// What ssh-audit passes with no fail.
    Hardened,
}

impl AlgorithmSet {
    pub fn name(self) -> &'static str {
        match self {
            AlgorithmSet::Compatible => "compatible",
            AlgorithmSet::Hardened => "hardened",
        }
    }

    fn kex(self) -> &'static [&'static str] {
        match self {
            // The NIST curves are here for JSch 0.1.55 (whose only modern exchange is
            // ecdh-sha2-nistp256) and FIPS-mode clients; they are ssh-audit's three fails.
            AlgorithmSet::Compatible => &[
                "mlkem768x25519-sha256",
                "curve25519-sha256",
                "curve25519-sha256@libssh.org",
                "ecdh-sha2-nistp256",
                "ecdh-sha2-nistp384",
                "ecdh-sha2-nistp521",
                "diffie-hellman-group16-sha512",
                "diffie-hellman-group18-sha512",
            ],
            AlgorithmSet::Hardened => &[
                "mlkem768x25519-sha256",
                "curve25519-sha256",
                "curve25519-sha256@libssh.org",
                "diffie-hellman-group16-sha512",
                "diffie-hellman-group18-sha512",
            ],
        }
    }

    /// Host-key algorithms; russh offers only those it holds a key for. The same list is
    /// sent as `server-sig-algs`, the signatures customers' keys may use.
    fn host_key(self) -> &'static [&'static str] {
        match self {
            AlgorithmSet::Compatible => &[
                "ssh-ed25519",
                "ecdsa-sha2-nistp256",
                "ecdsa-sha2-nistp384",
                "ecdsa-sha2-nistp521",
                "rsa-sha2-512",
                "rsa-sha2-256",
            ],
            AlgorithmSet::Hardened => &["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"],
        }
    }

    fn cipher(self) -> &'static [&'static str] {
        // The same in both: ssh-audit fails none of these (chacha20-poly1305 is safe from
        // Terrapin because russh does strict key exchange).
        &[
            "chacha20-poly1305@openssh.com",
            "aes256-gcm@openssh.com",
            "aes128-gcm@openssh.com",
            "aes256-ctr",
            "aes192-ctr",
            "aes128-ctr",
        ]
    }

    fn mac(self) -> &'static [&'static str] {
        match self {
            // Encrypt-and-MAC hmac-sha2-* for JSch 0.1.55, which has no ETM MACs.
            AlgorithmSet::Compatible => &[
                "hmac-sha2-512-etm@openssh.com",
                "hmac-sha2-256-etm@openssh.com",
                "hmac-sha2-512",
                "hmac-sha2-256",
            ],
            AlgorithmSet::Hardened => &[
                "hmac-sha2-512-etm@openssh.com",
                "hmac-sha2-256-etm@openssh.com",
            ],
        }
    }
}

/// Lists from the config file that replace the set's, each `None` where the set's stays.
#[derive(Clone, Debug, Default)]
pub struct AlgorithmOverrides {
    pub kex: Option<Vec<String>>,
    pub host_key: Option<Vec<String>>,
    pub cipher: Option<Vec<String>>,
    pub mac: Option<Vec<String>>,
}

/// The algorithms offered, in preference order.
#[derive(Clone, Debug)]
pub struct Algorithms {
    pub set: AlgorithmSet,
    /// Whether any list was replaced from the config file.
    pub overridden: bool,
    pub kex: Vec<kex::Name>,
    pub host_key: Vec<Algorithm>,
    pub cipher: Vec<cipher::Name>,
    pub mac: Vec<mac::Name>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AlgorithmError {
    #[error("{list}: unknown or unsupported algorithm \"{name}\" (supported: {supported})")]
    Unknown {
        list: &'static str,
        name: String,
        supported: String,
    },
    #[error("{list} is empty")]
    Empty { list: &'static str },
}

/// Host-key (and signature) algorithms russh can serve, by name. `ssh-rsa` (SHA-1
/// signatures) is known but in no set: naming it is the opt-in for legacy clients.
const HOST_KEY_NAMES: &[(&str, Algorithm)] = &[
    ("ssh-ed25519", Algorithm::Ed25519),
    (
        "ecdsa-sha2-nistp256",
        Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP256,
        },
    ),
    (
        "ecdsa-sha2-nistp384",
        Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP384,
        },
    ),
    (
        "ecdsa-sha2-nistp521",
        Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP521,
        },
    ),
    (
        "rsa-sha2-512",
        Algorithm::Rsa {
            hash: Some(HashAlg::Sha512),
        },
    ),
    (
        "rsa-sha2-256",
        Algorithm::Rsa {
            hash: Some(HashAlg::Sha256),
        },
    ),
    ("ssh-rsa", Algorithm::Rsa { hash: None }),
];

/// Names that exist in russh but are never offered: they switch encryption or integrity
/// off.
const NEVER: &[&str] = &["none", "clear"];

fn parse_list<T>(
    list: &'static str,
    names: &[&str],
    known: &[&str],
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, AlgorithmError> {
    if names.is_empty() {
        return Err(AlgorithmError::Empty { list });
    }
    names
        .iter()
        .map(|name| {
            let name = name.trim();
            parse(name)
                .filter(|_| !NEVER.contains(&name))
                .ok_or_else(|| AlgorithmError::Unknown {
                    list,
                    name: name.to_string(),
                    supported: known.join(", "),
                })
        })
        .collect()
}

impl Algorithms {
    /// The set's lists, with `overrides` in place of those given.
    pub fn resolve(
        set: AlgorithmSet,
        overrides: &AlgorithmOverrides,
    ) -> Result<Algorithms, AlgorithmError> {
        fn pick<'a>(
            over: &'a Option<Vec<String>>,
            base: &'static [&'static str],
        ) -> Cow<'a, [&'a str]> {
            match over {
                Some(v) => Cow::Owned(v.iter().map(String::as_str).collect()),
                None => Cow::Borrowed(base),
            }
        }
        let kex_known: Vec<&str> = kex::ALL_KEX_ALGORITHMS
            .iter()
            .map(|n| n.as_ref())
            .filter(|n| !NEVER.contains(n))
            .collect();
        let cipher_known: Vec<&str> = cipher::ALL_CIPHERS
            .iter()
            .map(|n| n.as_ref())
            .filter(|n| !NEVER.contains(n))
            .collect();
        let mac_known: Vec<&str> = mac::ALL_MAC_ALGORITHMS
            .iter()
            .map(|n| n.as_ref())
            .filter(|n| !NEVER.contains(n))
            .collect();
        let key_known: Vec<&str> = HOST_KEY_NAMES.iter().map(|(n, _)| *n).collect();
        Ok(Algorithms {
            set,
            overridden: overrides.kex.is_some()
                || overrides.host_key.is_some()
                || overrides.cipher.is_some()
                || overrides.mac.is_some(),
            kex: parse_list(
                "kex-algorithms",
                &pick(&overrides.kex, set.kex()),
                &kex_known,
                |s| kex::Name::try_from(s).ok(),
            )?,
            host_key: parse_list(
                "host-key-algorithms",
                &pick(&overrides.host_key, set.host_key()),
                &key_known,
                |s| {
                    HOST_KEY_NAMES
                        .iter()
                        .find(|(n, _)| *n == s)
                        .map(|(_, a)| a.clone())
                },
            )?,
            cipher: parse_list(
                "ciphers",
                &pick(&overrides.cipher, set.cipher()),
                &cipher_known,
                |s| cipher::Name::try_from(s).ok(),
            )?,
            mac: parse_list("macs", &pick(&overrides.mac, set.mac()), &mac_known, |s| {
                mac::Name::try_from(s).ok()
            })?,
        })
    }

    /// The key-exchange list as sent: the algorithms, then the two pseudo-algorithms that
    /// announce extension negotiation (RFC 8308, for `server-sig-algs`) and strict key
    /// exchange (the Terrapin fix), which no list may drop.
    pub fn kex_with_extensions(&self) -> Vec<kex::Name> {
        let mut all = self.kex.clone();
        all.push(kex::EXTENSION_SUPPORT_AS_SERVER);
        all.push(kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER);
        all
    }

    /// One line for the start-up log.
    pub fn describe(&self) -> String {
        format!(
            "kex={} host-key={} ciphers={} macs={}",
            join(self.kex.iter().map(|n| n.as_ref().to_string())),
            join(self.host_key.iter().map(|a| a.to_string())),
            join(self.cipher.iter().map(|n| n.as_ref().to_string())),
            join(self.mac.iter().map(|n| n.as_ref().to_string())),
        )
    }
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(a: &Algorithms) -> (Vec<String>, Vec<String>, Vec<String>, Vec<String>) {
        (
            a.kex.iter().map(|n| n.as_ref().to_string()).collect(),
            a.host_key.iter().map(|n| n.to_string()).collect(),
            a.cipher.iter().map(|n| n.as_ref().to_string()).collect(),
            a.mac.iter().map(|n| n.as_ref().to_string()).collect(),
        )
    }

    /// Every name in both sets is one russh implements, in the order documented.
    #[test]
    fn both_sets_resolve_as_documented() {
        for set in [AlgorithmSet::Compatible, AlgorithmSet::Hardened] {
            let a = Algorithms::resolve(set, &AlgorithmOverrides::default()).unwrap();
            let (kex, keys, ciphers, macs) = names(&a);
            assert_eq!(kex, set.kex());
            assert_eq!(keys, set.host_key());
            assert_eq!(ciphers, set.cipher());
            assert_eq!(macs, set.mac());
            assert_eq!(kex[0], "mlkem768x25519-sha256");
            assert!(!a.overridden);
        }
    }

    #[test]
    fn hardened_has_no_nist_curve_no_sha1_and_etm_only() {
        let a =
            Algorithms::resolve(AlgorithmSet::Hardened, &AlgorithmOverrides::default()).unwrap();
        let (kex, keys, _, macs) = names(&a);
        assert!(kex
            .iter()
            .all(|k| !k.contains("nistp") && !k.contains("sha1")));
        assert!(keys.iter().all(|k| !k.contains("nistp") && k != "ssh-rsa"));
        assert!(macs.iter().all(|m| m.ends_with("-etm@openssh.com")));
    }

    #[test]
    fn overrides_replace_one_list_and_unknown_names_are_named() {
        let over = AlgorithmOverrides {
            host_key: Some(vec!["ssh-ed25519".into(), "ssh-rsa".into()]),
            ..Default::default()
        };
        let a = Algorithms::resolve(AlgorithmSet::Hardened, &over).unwrap();
        assert!(a.overridden);
        assert_eq!(
            a.host_key,
            [Algorithm::Ed25519, Algorithm::Rsa { hash: None }]
        );
        assert_eq!(a.mac.len(), 2);
        for (over, list, name) in [
            (
                AlgorithmOverrides {
                    kex: Some(vec!["curve25519-sha256".into(), "curve9999".into()]),
                    ..Default::default()
                },
                "kex-algorithms",
                "curve9999",
            ),
            (
                AlgorithmOverrides {
                    cipher: Some(vec!["none".into()]),
                    ..Default::default()
                },
                "ciphers",
                "none",
            ),
            (
                AlgorithmOverrides {
                    mac: Some(vec!["hmac-md5".into()]),
                    ..Default::default()
                },
                "macs",
                "hmac-md5",
            ),
            (
                AlgorithmOverrides {
                    host_key: Some(vec!["ssh-dss".into()]),
                    ..Default::default()
                },
                "host-key-algorithms",
                "ssh-dss",
            ),
        ] {
            let err = Algorithms::resolve(AlgorithmSet::Compatible, &over).unwrap_err();
            assert!(
                matches!(&err, AlgorithmError::Unknown { list: l, name: n, .. } if *l == list && n == name),
                "{err}"
            );
            assert!(err.to_string().contains(name), "{err}");
        }
        let empty = AlgorithmOverrides {
            mac: Some(vec![]),
            ..Default::default()
        };
        assert_eq!(
            Algorithms::resolve(AlgorithmSet::Compatible, &empty).unwrap_err(),
            AlgorithmError::Empty { list: "macs" }
        );
    }
}
