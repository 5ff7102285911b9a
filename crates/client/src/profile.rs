//! Where a command-line client finds its credentials, region and endpoint,
//! the way the AWS CLI and SDKs do: flags first, then the environment, then
//! the shared files `~/.aws/credentials` and `~/.aws/config` (profile
//! `AWS_PROFILE`, else `default`). Kinema's own `KINEMA_*` variables come
//! before the `AWS_*` ones, since they name this server only.
//!
//! The lookup takes the environment and the file reader as functions, so
//! that it is tested without touching the process's environment or home.

use std::path::{Path, PathBuf};

/// Where a client connects when nothing names an endpoint.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4566";

/// What the command line said (each `None` when not given).
#[derive(Debug, Default, Clone)]
pub struct Explicit {
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub profile: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
}

/// Where the credentials came from (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flags,
    KinemaEnvironment,
    AwsEnvironment,
    Profile { name: String, file: PathBuf },
}

/// Everything a client needs to sign and send a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
    pub region: String,
    pub endpoint: String,
    pub source: Source,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileError {
    #[error(
        "no credentials: pass --access-key and --secret-key, set AWS_ACCESS_KEY_ID and \
         AWS_SECRET_ACCESS_KEY (or KINEMA_ACCESS_KEY_ID and KINEMA_SECRET_ACCESS_KEY), or \
         add a profile to {credentials} (profile {profile:?})"
    )]
    NoCredentials {
        profile: String,
        credentials: String,
    },
    #[error("profile {name:?} is in neither {credentials} nor {config}")]
    UnknownProfile {
        name: String,
        credentials: String,
        config: String,
    },
    #[error("profile {name:?} has no aws_access_key_id and aws_secret_access_key")]
    IncompleteProfile { name: String },
    #[error("--access-key and --secret-key go together")]
    HalfAKey,
}

/// Resolves flags, environment (`env`) and shared files (read by `read`).
pub fn resolve(
    explicit: &Explicit,
    env: impl Fn(&str) -> Option<String>,
    read: impl Fn(&Path) -> Option<String>,
) -> Result<Settings, ProfileError> {
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let home = env("HOME").map(PathBuf::from).unwrap_or_default();
    let credentials_file = env("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".aws/credentials"));
    let config_file = env("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".aws/config"));
    let profile_name = explicit
        .profile
        .clone()
        .or_else(|| env("AWS_PROFILE"))
        .or_else(|| env("AWS_DEFAULT_PROFILE"))
        .unwrap_or_else(|| "default".to_string());
    let credentials_text = read(&credentials_file).unwrap_or_default();
    let config_text = read(&config_file).unwrap_or_default();
    // The credentials file names a profile `[name]`; the config file
    // `[profile name]`, except `[default]`.
    let from_credentials = section(&credentials_text, &profile_name);
    let config_header = if profile_name == "default" {
        "default".to_string()
    } else {
        format!("profile {profile_name}")
    };
    let from_config = section(&config_text, &config_header);
    if explicit.profile.is_some() && from_credentials.is_none() && from_config.is_none() {
        return Err(ProfileError::UnknownProfile {
            name: profile_name,
            credentials: credentials_file.display().to_string(),
            config: config_file.display().to_string(),
        });
    }
    let lookup = |key: &str| {
        from_credentials
            .as_ref()
            .and_then(|s| value(s, key))
            .or_else(|| from_config.as_ref().and_then(|s| value(s, key)))
    };

    let from_profile = || match (lookup("aws_access_key_id"), lookup("aws_secret_access_key")) {
        (Some(k), Some(s)) => Ok(Some((k, s, lookup("aws_session_token")))),
        (None, None) => Ok(None),
        _ => Err(ProfileError::IncompleteProfile {
            name: profile_name.clone(),
        }),
    };
    let from_env = |id: &str, secret: &str, token: &str| match (env(id), env(secret)) {
        (Some(k), Some(s)) => Some((k, s, env(token))),
        _ => None,
    };
    let profile_source = || Source::Profile {
        name: profile_name.clone(),
        file: if from_credentials.is_some() {
            credentials_file.clone()
        } else {
            config_file.clone()
        },
    };

    let (key, secret, token, source) = match (&explicit.access_key, &explicit.secret_key) {
        (Some(k), Some(s)) => (k.clone(), s.clone(), None, Source::Flags),
        (Some(_), None) | (None, Some(_)) => return Err(ProfileError::HalfAKey),
        (None, None) => {
            // A profile named on the command line wins over the environment.
            let named = match explicit.profile {
                Some(_) => from_profile()?.map(|(k, s, t)| (k, s, t, profile_source())),
                None => None,
            };
            match named {
                Some(found) => found,
                None => {
                    if let Some((k, s, t)) = from_env(
                        "KINEMA_ACCESS_KEY_ID",
                        "KINEMA_SECRET_ACCESS_KEY",
                        "KINEMA_SESSION_TOKEN",
                    ) {
                        (k, s, t, Source::KinemaEnvironment)
                    } else if let Some((k, s, t)) = from_env(
                        "AWS_ACCESS_KEY_ID",
                        "AWS_SECRET_ACCESS_KEY",
                        "AWS_SESSION_TOKEN",
                    ) {
                        (k, s, t, Source::AwsEnvironment)
                    } else if let Some((k, s, t)) = from_profile()? {
                        (k, s, t, profile_source())
                    } else if explicit.profile.is_some() {
                        return Err(ProfileError::IncompleteProfile { name: profile_name });
                    } else {
                        return Err(ProfileError::NoCredentials {
                            profile: profile_name,
                            credentials: credentials_file.display().to_string(),
                        });
                    }
                }
            }
        }
    };
    let region = explicit
        .region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .or_else(|| from_config.as_ref().and_then(|s| value(s, "region")))
        .unwrap_or_else(|| kinema_core::aws::DEFAULT_REGION.to_string());
    let endpoint = explicit
        .endpoint
        .clone()
        .or_else(|| env("KINEMA_ENDPOINT"))
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .or_else(|| from_config.as_ref().and_then(|s| value(s, "endpoint_url")))
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
    Ok(Settings {
        access_key: key,
        secret_key: secret,
        session_token: token,
        region,
        endpoint: endpoint.trim_end_matches('/').to_string(),
        source,
    })
}

/// [`resolve`] against this process's environment and files.
pub fn resolve_from_system(explicit: &Explicit) -> Result<Settings, ProfileError> {
    resolve(
        explicit,
        |name| std::env::var(name).ok(),
        |path| std::fs::read_to_string(path).ok(),
    )
}

/// The `key = value` lines of section `[name]` of an INI-style AWS file,
/// or `None` when there is no such section. Indented lines (the nested
/// settings of a service, `s3 =` and below) are not the profile's own.
fn section(text: &str, name: &str) -> Option<Vec<(String, String)>> {
    let mut found: Option<Vec<(String, String)>> = None;
    let mut inside = false;
    for line in text.lines() {
        let indented = line.starts_with([' ', '\t']);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let header = header.split_whitespace().collect::<Vec<_>>().join(" ");
            inside = header == name;
            if inside {
                found.get_or_insert_with(Vec::new);
            }
            continue;
        }
        if !inside || indented {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim();
            if let Some(entries) = found.as_mut() {
                entries.push((k.trim().to_ascii_lowercase(), v.to_string()));
            }
        }
    }
    found
}

fn value(entries: &[(String, String)], key: &str) -> Option<String> {
    entries
        .iter()
        .rev()
        .find(|(k, v)| k == key && !v.is_empty())
        .map(|(_, v)| v.clone())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn run(
        explicit: &Explicit,
        env: &[(&str, &str)],
        files: &[(&str, &str)],
    ) -> Result<Settings, ProfileError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let files: HashMap<PathBuf, String> = files
            .iter()
            .map(|(k, v)| (PathBuf::from(k), v.to_string()))
            .collect();
        resolve(explicit, |n| env.get(n).cloned(), |p| files.get(p).cloned())
    }

    const CREDENTIALS: &str = "\
# comment
[default]
aws_access_key_id = AKIDDEFAULT
aws_secret_access_key = default-secret

[cam]
aws_access_key_id=AKIDCAM
aws_secret_access_key=cam-secret
aws_session_token = cam-token
";
    const CONFIG: &str = "\
[default]
region = eu-west-1
endpoint_url = http://127.0.0.1:9999/
s3 =
  region = nowhere-1
[profile cam]
region = ap-south-1
[profile lab]
aws_access_key_id = AKIDLAB
aws_secret_access_key = lab-secret
";

    fn files() -> Vec<(&'static str, &'static str)> {
        vec![
            ("/home/u/.aws/credentials", CREDENTIALS),
            ("/home/u/.aws/config", CONFIG),
        ]
    }

    #[test]
    fn flags_win_over_everything() {
        let e = Explicit {
            access_key: Some("AKIDFLAG".into()),
            secret_key: Some("flag-secret".into()),
            region: Some("us-west-2".into()),
            endpoint: Some("http://10.0.0.1:4566".into()),
            ..Default::default()
        };
        let s = run(
            &e,
            &[("HOME", "/home/u"), ("AWS_ACCESS_KEY_ID", "AKIDENV")],
            &files(),
        )
        .unwrap();
        assert_eq!(
            (s.access_key.as_str(), s.secret_key.as_str()),
            ("AKIDFLAG", "flag-secret")
        );
        assert_eq!(s.source, Source::Flags);
        assert_eq!(s.region, "us-west-2");
        assert_eq!(s.endpoint, "http://10.0.0.1:4566");
    }

    #[test]
    fn aws_variables_are_used_when_kinema_ones_are_absent() {
        let s = run(
            &Explicit::default(),
            &[
                ("AWS_ACCESS_KEY_ID", "AKIDENV"),
                ("AWS_SECRET_ACCESS_KEY", "env-secret"),
                ("AWS_SESSION_TOKEN", "env-token"),
                ("AWS_DEFAULT_REGION", "us-east-2"),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(s.access_key, "AKIDENV");
        assert_eq!(s.session_token.as_deref(), Some("env-token"));
        assert_eq!(s.source, Source::AwsEnvironment);
        assert_eq!(s.region, "us-east-2");
        assert_eq!(s.endpoint, "http://127.0.0.1:5000");
    }

    #[test]
    fn kinema_variables_come_before_aws_ones() {
        let s = run(
            &Explicit::default(),
            &[
                ("AWS_ACCESS_KEY_ID", "AKIDENV"),
                ("AWS_SECRET_ACCESS_KEY", "env-secret"),
                ("KINEMA_ACCESS_KEY_ID", "AKIDKINEMA"),
                ("KINEMA_SECRET_ACCESS_KEY", "kinema-secret"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(s.access_key, "AKIDKINEMA");
        assert_eq!(s.source, Source::KinemaEnvironment);
        assert_eq!(s.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(s.region, "us-east-1");
    }

    #[test]
    fn the_default_profile_is_read_from_the_shared_files() {
        let s = run(&Explicit::default(), &[("HOME", "/home/u")], &files()).unwrap();
        assert_eq!(s.access_key, "AKIDDEFAULT");
        assert_eq!(s.secret_key, "default-secret");
        assert_eq!(s.session_token, None);
        // The config file's [default]; the nested `s3` region is not it.
        assert_eq!(s.region, "eu-west-1");
        assert_eq!(s.endpoint, "http://127.0.0.1:9999");
        assert_eq!(
            s.source,
            Source::Profile {
                name: "default".into(),
                file: "/home/u/.aws/credentials".into()
            }
        );
    }

    #[test]
    fn aws_profile_picks_a_named_profile() {
        let s = run(
            &Explicit::default(),
            &[("HOME", "/home/u"), ("AWS_PROFILE", "cam")],
            &files(),
        )
        .unwrap();
        assert_eq!(s.access_key, "AKIDCAM");
        assert_eq!(s.session_token.as_deref(), Some("cam-token"));
        assert_eq!(s.region, "ap-south-1");
        assert_eq!(s.endpoint, DEFAULT_ENDPOINT);
    }

    #[test]
    fn a_profile_flag_wins_over_the_environment() {
        let e = Explicit {
            profile: Some("lab".into()),
            ..Default::default()
        };
        let s = run(
            &e,
            &[
                ("HOME", "/home/u"),
                ("AWS_ACCESS_KEY_ID", "AKIDENV"),
                ("AWS_SECRET_ACCESS_KEY", "env-secret"),
            ],
            &files(),
        )
        .unwrap();
        // Credentials may live in the config file too.
        assert_eq!(s.access_key, "AKIDLAB");
        assert_eq!(
            s.source,
            Source::Profile {
                name: "lab".into(),
                file: "/home/u/.aws/config".into()
            }
        );
    }

    #[test]
    fn files_can_be_moved_with_their_variables() {
        let s = run(
            &Explicit::default(),
            &[
                ("AWS_SHARED_CREDENTIALS_FILE", "/etc/creds"),
                ("AWS_CONFIG_FILE", "/etc/conf"),
            ],
            &[("/etc/creds", CREDENTIALS), ("/etc/conf", CONFIG)],
        )
        .unwrap();
        assert_eq!(s.access_key, "AKIDDEFAULT");
        assert_eq!(s.region, "eu-west-1");
    }

    #[test]
    fn missing_credentials_say_where_they_were_looked_for() {
        let err = run(&Explicit::default(), &[("HOME", "/home/u")], &[]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("AWS_ACCESS_KEY_ID"), "{text}");
        assert!(text.contains("/home/u/.aws/credentials"), "{text}");
        let e = Explicit {
            profile: Some("nope".into()),
            ..Default::default()
        };
        assert!(matches!(
            run(&e, &[("HOME", "/home/u")], &files()),
            Err(ProfileError::UnknownProfile { .. })
        ));
        let e = Explicit {
            access_key: Some("AKID".into()),
            ..Default::default()
        };
        assert_eq!(run(&e, &[], &[]), Err(ProfileError::HalfAKey));
        // A profile with a key but no secret is an error, not a fallback.
        let half = "[default]\naws_access_key_id = AKID\n";
        assert!(matches!(
            run(
                &Explicit::default(),
                &[("HOME", "/h")],
                &[("/h/.aws/credentials", half)]
            ),
            Err(ProfileError::IncompleteProfile { .. })
        ));
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let s = run(
            &Explicit::default(),
            &[
                ("KINEMA_ACCESS_KEY_ID", ""),
                ("KINEMA_SECRET_ACCESS_KEY", ""),
                ("AWS_ACCESS_KEY_ID", "AKIDENV"),
                ("AWS_SECRET_ACCESS_KEY", "env-secret"),
                ("AWS_REGION", ""),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(s.access_key, "AKIDENV");
        assert_eq!(s.region, "us-east-1");
    }
}
