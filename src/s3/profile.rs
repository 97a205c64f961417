//! The AWS shared profile files, read the way the AWS CLI reads them, for the part that
//! object_store does not read: static keys (`aws_access_key_id`, `aws_secret_access_key`,
//! `aws_session_token`) and `region` of the profile `AWS_PROFILE` (else `default`), from
//! `AWS_SHARED_CREDENTIALS_FILE` (else `~/.aws/credentials`) and `AWS_CONFIG_FILE` (else
//! `~/.aws/config`, where a profile's section is `[profile NAME]`). The credentials file
//! wins over the config file for keys.
//!
//! A tiny reader rather than aws-config: aws-config brings the AWS SDK's runtime
//! (aws-smithy-*, the SSO and STS clients, its own HTTP/TLS stack) for what is here an INI
//! file. The price: profiles that get their keys from elsewhere (SSO, `credential_process`,
//! `role_arn` chains) are refused with a message saying so, not followed.

use std::collections::HashMap;
use std::path::PathBuf;

/// What a profile gives.
#[derive(Default, PartialEq, Eq)]
pub struct Profile {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "***"),
            )
            .field("session_token", &self.session_token.as_ref().map(|_| "***"))
            .field("region", &self.region)
            .finish()
    }
}

/// Keys that mean the profile's credentials come from something this reader does not run.
const UNSUPPORTED: &[&str] = &[
    "sso_start_url",
    "sso_session",
    "credential_process",
    "role_arn",
    "web_identity_token_file",
    "credential_source",
];

/// Reads the profile named by `env` (a lookup of environment variables, so that tests need
/// not change the process's). `Ok(None)`: no file has the profile, and none was asked for
/// by name (`AWS_PROFILE` unset), so other credential sources apply.
pub fn load(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Profile>, String> {
    let named = env("AWS_PROFILE").filter(|p| !p.is_empty());
    let name = named.clone().unwrap_or_else(|| "default".to_string());
    let home = env("HOME").map(PathBuf::from);
    let file = |var: &str, rel: &str| {
        env(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(rel)))
    };
    let credentials = read(file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"))?;
    let config = read(file("AWS_CONFIG_FILE", ".aws/config"))?;
    let config_section = if name == "default" {
        "default".to_string()
    } else {
        format!("profile {name}")
    };
    let from_credentials = credentials.as_deref().and_then(|t| section(t, &name));
    let from_config = config.as_deref().and_then(|t| section(t, &config_section));
    if from_credentials.is_none() && from_config.is_none() {
        return match named {
            Some(n) => Err(format!(
                "AWS_PROFILE={n}: no such profile in the AWS credentials or config file"
            )),
            None => Ok(None),
        };
    }
    let creds = from_credentials.unwrap_or_default();
    let conf = from_config.unwrap_or_default();
    let get = |k: &str| creds.get(k).or_else(|| conf.get(k)).cloned();
    let profile = Profile {
        access_key_id: get("aws_access_key_id"),
        secret_access_key: get("aws_secret_access_key"),
        session_token: get("aws_session_token"),
        region: conf.get("region").cloned(),
    };
    if profile.access_key_id.is_none() {
        if let Some(k) = UNSUPPORTED.iter().find(|k| get(k).is_some()) {
            return Err(format!(
                "AWS profile {name} gets its credentials through {k}, which sftpgate does not \
                 run: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (e.g. from `aws configure \
                 export-credentials`), or use a profile with static keys"
            ));
        }
    }
    Ok(Some(profile))
}

/// A file's text; `None` when there is no such file.
fn read(path: Option<PathBuf>) -> Result<Option<String>, String> {
    let Some(path) = path else { return Ok(None) };
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The `key = value` pairs of section `[name]` of an INI text; `None` if it has no such
/// section. Comments (`#`, `;`) and the indented sub-settings of nested keys (`s3 =`
/// followed by indented lines) are skipped; keys are compared in lower case.
fn section(text: &str, name: &str) -> Option<HashMap<String, String>> {
    let mut found = None;
    let mut current = false;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = header.split_whitespace().collect::<Vec<_>>().join(" ") == name;
            if current {
                found.get_or_insert_with(HashMap::new);
            }
            continue;
        }
        if !current {
            continue;
        }
        if let (Some(map), Some((k, v))) = (found.as_mut(), line.split_once('=')) {
            let v = v.trim();
            if !v.is_empty() {
                map.insert(k.trim().to_ascii_lowercase(), v.to_string());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn a_named_profile_from_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        let config = dir.path().join("config");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = DEF\naws_secret_access_key = defsecret\n\n\
             # a comment\n[ci]\naws_access_key_id=AKIACI\naws_secret_access_key = s/cr+t=\n\
             aws_session_token = tok\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "[default]\nregion = us-east-1\n[profile ci]\nregion = eu-west-3\ns3 =\n  addressing_style = path\n",
        )
        .unwrap();
        let env = env_of(&[
            ("AWS_PROFILE", "ci".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", creds.display().to_string()),
            ("AWS_CONFIG_FILE", config.display().to_string()),
        ]);
        let p = load(&env).unwrap().unwrap();
        assert_eq!(
            p,
            Profile {
                access_key_id: Some("AKIACI".into()),
                secret_access_key: Some("s/cr+t=".into()),
                session_token: Some("tok".into()),
                region: Some("eu-west-3".into()),
            }
        );
        assert!(!format!("{p:?}").contains("s/cr+t="));
    }

    #[test]
    fn the_default_profile_from_home() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".aws")).unwrap();
        std::fs::write(
            home.path().join(".aws/credentials"),
            "[default]\naws_access_key_id = DEF\naws_secret_access_key = defsecret\n",
        )
        .unwrap();
        let env = env_of(&[("HOME", home.path().display().to_string())]);
        let p = load(&env).unwrap().unwrap();
        assert_eq!(p.access_key_id.as_deref(), Some("DEF"));
        assert_eq!(p.region, None);
    }

    #[test]
    fn missing_and_unsupported_profiles() {
        let home = tempfile::tempdir().unwrap();
        let env = env_of(&[("HOME", home.path().display().to_string())]);
        assert_eq!(load(&env).unwrap(), None);
        let env = env_of(&[
            ("HOME", home.path().display().to_string()),
            ("AWS_PROFILE", "nope".into()),
        ]);
        assert_eq!(
            load(&env).unwrap_err(),
            "AWS_PROFILE=nope: no such profile in the AWS credentials or config file"
        );
        let config = home.path().join("config");
        std::fs::write(
            &config,
            "[profile sso]\nsso_session = corp\nregion = eu-west-1\n",
        )
        .unwrap();
        let env = env_of(&[
            ("AWS_PROFILE", "sso".into()),
            ("AWS_CONFIG_FILE", config.display().to_string()),
        ]);
        assert!(load(&env)
            .unwrap_err()
            .starts_with("AWS profile sso gets its credentials through sso_session"));
    }
}
