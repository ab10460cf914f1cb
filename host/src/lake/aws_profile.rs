//! The AWS shared files that `aws configure` writes (`~/.aws/credentials`, `~/.aws/config`). `object_store`
//! takes S3 credentials from the environment, a web identity token or the instance metadata endpoint, not
//! from these files: without them a laptop with a configured profile would fall through to the metadata
//! endpoint and wait there. Read only when `AWS_ACCESS_KEY_ID` is not set, so the environment still wins.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What a profile of the shared files holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Profile {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
    /// A way to get keys that Weir does not follow (SSO, an assumed role, a credential process), when the
    /// profile names one.
    pub other_source: Option<&'static str>,
}

/// The profile `AWS_PROFILE` names (`default` without it), from `AWS_SHARED_CREDENTIALS_FILE` and
/// `AWS_CONFIG_FILE` or their places under `~/.aws`.
pub fn from_env() -> Profile {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let file = |variable: &str, name: &str| {
        std::env::var_os(variable)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(name)))
    };
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    load(
        file("AWS_SHARED_CREDENTIALS_FILE", "credentials").as_deref(),
        file("AWS_CONFIG_FILE", "config").as_deref(),
        &profile,
    )
}

/// Profile `name` from the two files (either may be missing): the credentials file's `[name]` first, then
/// the config file's `[profile name]` (`[default]` for the default profile).
pub fn load(credentials: Option<&Path>, config: Option<&Path>, name: &str) -> Profile {
    let read = |path: Option<&Path>, section: &str| {
        path.and_then(|p| std::fs::read_to_string(p).ok())
            .map(|text| section_of(&text, section))
            .unwrap_or_default()
    };
    let in_credentials = read(credentials, name);
    // The config file names profiles `[profile name]`; the default one `[default]`, or `[profile default]`.
    let mut in_config = read(config, &format!("profile {name}"));
    if name == "default" {
        in_config.extend(read(config, "default"));
    }
    let get = |key: &str| {
        in_credentials
            .get(key)
            .or_else(|| in_config.get(key))
            .cloned()
    };
    Profile {
        access_key_id: get("aws_access_key_id"),
        secret_access_key: get("aws_secret_access_key"),
        session_token: get("aws_session_token"),
        region: in_config.get("region").cloned(),
        other_source: [
            "sso_session",
            "sso_start_url",
            "role_arn",
            "credential_process",
        ]
        .into_iter()
        .find(|key| in_config.contains_key(*key) || in_credentials.contains_key(*key)),
    }
}

/// The `key = value` lines of INI section `[name]`.
fn section_of(text: &str, name: &str) -> HashMap<String, String> {
    let mut inside = false;
    let mut values = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = header.trim() == name;
            continue;
        }
        if inside && let Some((key, value)) = line.split_once('=') {
            values.insert(key.trim().to_string(), value.trim().to_string());
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_come_from_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = dir.path().join("credentials");
        let config = dir.path().join("config");
        std::fs::write(
            &credentials,
            "# aws configure\n[default]\naws_access_key_id = AKDEFAULT\naws_secret_access_key = s1\n\n\
             [work]\naws_access_key_id=AKWORK\naws_secret_access_key=s2\naws_session_token = t2\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "[default]\nregion = eu-west-1\n[profile work]\nregion = us-west-2\n\
             [profile keys-here]\naws_access_key_id = AKCONFIG\naws_secret_access_key = s3\n",
        )
        .unwrap();
        let (c, f) = (Some(credentials.as_path()), Some(config.as_path()));
        assert_eq!(
            load(c, f, "default"),
            Profile {
                access_key_id: Some("AKDEFAULT".into()),
                secret_access_key: Some("s1".into()),
                session_token: None,
                region: Some("eu-west-1".into()),
                other_source: None,
            }
        );
        let work = load(c, f, "work");
        assert_eq!(work.access_key_id.as_deref(), Some("AKWORK"));
        assert_eq!(work.session_token.as_deref(), Some("t2"));
        assert_eq!(work.region.as_deref(), Some("us-west-2"));
        assert_eq!(
            load(c, f, "keys-here").access_key_id.as_deref(),
            Some("AKCONFIG")
        );
        assert_eq!(load(None, None, "default"), Profile::default());
        std::fs::write(
            &config,
            "[profile default]\nregion = ap-south-1\n[profile sso]\nsso_session = corp\n",
        )
        .unwrap();
        assert_eq!(
            load(None, f, "default").region.as_deref(),
            Some("ap-south-1")
        );
        assert_eq!(load(None, f, "sso").other_source, Some("sso_session"));
    }
}
