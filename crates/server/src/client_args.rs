//! The options every client-side command shares (`put-media`, `get-media`,
//! `events tail`, `keys`, `policies`): where the server is and who asks,
//! found the way the AWS CLI finds them (see `kinema_client::profile`).

use kinema_client::profile::{self, Explicit, Settings};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClientArgs {
    /// Kinema's base URL (default: KINEMA_ENDPOINT, AWS_ENDPOINT_URL, the
    /// profile's endpoint_url, then http://127.0.0.1:4566).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Region to sign for (default: AWS_REGION, AWS_DEFAULT_REGION, the
    /// profile's region, then us-east-1).
    #[arg(long)]
    pub region: Option<String>,
    /// A profile of ~/.aws/credentials and ~/.aws/config (default:
    /// AWS_PROFILE, then `default`).
    #[arg(long)]
    pub profile: Option<String>,
    /// Access key id (default: KINEMA_ACCESS_KEY_ID, AWS_ACCESS_KEY_ID, then
    /// the profile).
    #[arg(long)]
    pub access_key: Option<String>,
    /// Secret access key (default: as for the key id).
    #[arg(long)]
    pub secret_key: Option<String>,
}

impl ClientArgs {
    /// The endpoint, region and credentials to use.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        Ok(profile::resolve_from_system(&Explicit {
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
            profile: self.profile.clone(),
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
        })?)
    }

    /// A signed JSON client for the server these options name.
    pub fn client(&self) -> anyhow::Result<kinema_client::Client> {
        let s = self.settings()?;
        Ok(
            kinema_client::Client::new(&s.endpoint, &s.access_key, &s.secret_key)
                .with_session_token(s.session_token.as_deref())
                .with_region(&s.region),
        )
    }
}
