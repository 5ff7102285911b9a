//! `kinema`: the server and its command-line tools.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use kinema_server::config::Config;
use kinema_server::put_media;

#[derive(Parser)]
#[command(
    name = "kinema",
    version,
    about = "Self-hosted camera video and event server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Configuration file (TOML); see samples/config.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on, e.g. 127.0.0.1:4566 (port 0 picks a free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Directory for fragments, indexes and metadata.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// A camera source NAME=URL (rtsp://... or file:///path to loop a
        /// file), stored in the stream NAME; repeatable. Adds to the
        /// configuration file's [[sources]].
        #[arg(long = "source", value_name = "NAME=URL")]
        sources: Vec<String>,
    },
    /// Upload a video file (Matroska, MP4, raw H.264) to a stream with PutMedia.
    PutMedia(put_media::Args),
    /// Read a stream with GetMedia into Matroska files, one per segment.
    GetMedia(kinema_server::get_media::Args),
    /// Detection events on the data stream.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Access keys of a running server (an administrator's).
    #[command(subcommand)]
    Keys(kinema_server::admin::KeysCommand),
    /// Named IAM policies of a running server (an administrator's).
    #[command(subcommand)]
    Policies(kinema_server::admin::PoliciesCommand),
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Print events as JSON lines as they arrive.
    Tail(kinema_server::events::TailArgs),
}

fn env_key() -> Option<(String, String)> {
    let id = std::env::var("KINEMA_ACCESS_KEY_ID")
        .ok()
        .filter(|s| !s.is_empty())?;
    let secret = std::env::var("KINEMA_SECRET_ACCESS_KEY")
        .ok()
        .filter(|s| !s.is_empty())?;
    Some((id, secret))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(kinema_server::logging::filter(
            std::env::var("RUST_LOG").ok().as_deref(),
        ))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
            sources,
        } => {
            let mut cfg = match &config {
                Some(p) => Config::load(p)?,
                None => Config::default(),
            };
            for s in sources {
                let Some((name, url)) = s.split_once('=') else {
                    anyhow::bail!("--source {s:?}: expected NAME=URL");
                };
                cfg.sources.push(kinema_engine::sources::SourceConfig {
                    name: name.into(),
                    url: url.into(),
                    stream: name.into(),
                    transport: Default::default(),
                    username: None,
                    password: None,
                    fragment_ms: None,
                    retention_hours: None,
                });
            }
            let resolved = cfg.resolve(listen, data_dir, env_key())?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(resolved.listen).await?;
                kinema_server::run(listener, resolved, shutdown_signal()).await
            })
        }
        Command::PutMedia(args) => rt.block_on(put_media::run(args)),
        Command::GetMedia(args) => rt.block_on(kinema_server::get_media::run(args)),
        Command::Events(EventsCommand::Tail(args)) => {
            rt.block_on(kinema_server::events::tail(args))
        }
        Command::Keys(cmd) => rt.block_on(kinema_server::admin::keys(cmd)),
        Command::Policies(cmd) => rt.block_on(kinema_server::admin::policies(cmd)),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
