//! Helpers shared by the benchmark programs.
// Each benchmark program compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Context;

pub const KEY: &str = "AKIDBENCH";
pub const SECRET: &str = "bench-secret";

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// CPU seconds (user + system) a process has used, from /proc.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields[11].parse()?;
    let stime: f64 = fields[12].parse()?;
    Ok((utime + stime) / 100.0)
}

pub struct ServerProc {
    pub child: std::process::Child,
    pub url: String,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_server(data_dir: &Path) -> anyhow::Result<ServerProc> {
    start_server_with(data_dir, &[])
}

/// Starts the release `kinema` next to this program with extra arguments.
pub fn start_server_with(data_dir: &Path, args: &[String]) -> anyhow::Result<ServerProc> {
    use std::io::BufRead;
    let exe = std::env::current_exe()?.with_file_name("kinema");
    let mut child = Command::new(&exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env("KINEMA_ACCESS_KEY_ID", KEY)
        .env("KINEMA_SECRET_ACCESS_KEY", SECRET)
        .env("RUST_LOG", "warn,kinema_server=info")
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "start {} (build it with `cargo build --release -p kinema-server`)",
                exe.display()
            )
        })?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = std::io::BufReader::new(stderr).lines();
    let url = loop {
        let line = lines.next().context("server exited")??;
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .context("address")?
                .to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok(ServerProc { child, url })
}
