//! `kinema keys` and `kinema policies`: an administrator's access keys and
//! named policies on a running server (the admin JSON API), without a
//! restart. Prints the server's JSON answers.

use kinema_client::Client;
use serde_json::json;

/// Where the server is and who asks.
pub use crate::client_args::ClientArgs as Target;

#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// Make a key; its secret is printed this once.
    Create {
        /// A named policy the key has (repeatable).
        #[arg(long = "policy")]
        policies: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// List keys (never secrets).
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Give a key a new secret; the old one stops working.
    Rotate {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a key, and the temporary credentials it made.
    Delete {
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum PoliciesCommand {
    /// Make or replace a named policy from an IAM policy document (JSON file).
    Put {
        name: String,
        file: std::path::PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// List the named policies with their documents.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Remove a named policy.
    Delete {
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

fn client(t: &Target) -> anyhow::Result<Client> {
    t.client()
}

pub async fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    use http::Method;
    let out = match &cmd {
        KeysCommand::Create { policies, target } => {
            client(target)?
                .call(
                    Method::POST,
                    "/v1/keys",
                    Some(json!({ "policies": policies })),
                )
                .await?
        }
        KeysCommand::List { target } => client(target)?.get("/v1/keys").await?,
        KeysCommand::Rotate { id, target } => {
            client(target)?
                .call(
                    Method::POST,
                    &format!("/v1/keys/{id}/rotate"),
                    Some(json!({})),
                )
                .await?
        }
        KeysCommand::Delete { id, target } => {
            client(target)?
                .call(Method::DELETE, &format!("/v1/keys/{id}"), None)
                .await?
        }
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

pub async fn policies(cmd: PoliciesCommand) -> anyhow::Result<()> {
    use http::Method;
    let out = match &cmd {
        PoliciesCommand::Put { name, file, target } => {
            let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(file)?)?;
            client(target)?
                .call(Method::PUT, &format!("/v1/policies/{name}"), Some(doc))
                .await?
        }
        PoliciesCommand::List { target } => client(target)?.get("/v1/policies").await?,
        PoliciesCommand::Delete { name, target } => {
            client(target)?
                .call(Method::DELETE, &format!("/v1/policies/{name}"), None)
                .await?
        }
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
