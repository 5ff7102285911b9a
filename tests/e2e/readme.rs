//! The README as a newcomer follows it: the code blocks of its "Try it"
//! section, extracted from README.md at test time (so the two cannot
//! drift) and run in order as one script against a real server, and the
//! sample configuration started as it is.
//!
//! Only two things are replaced, both places rather than steps: the
//! server's address (`http://127.0.0.1:4566`, where `make run` listens) by
//! the test server's, and the release binary's folder by this build's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::*;

/// The fenced code blocks (language, text) of the README section `title`,
/// up to the next heading of any level.
fn section_blocks(readme: &str, title: &str) -> Vec<(String, String)> {
    let start = readme
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("README has no section {title:?}"));
    let rest = &readme[start + title.len() + 5..];
    let end = rest.find("\n#").unwrap_or(rest.len());
    let mut blocks = Vec::new();
    let mut lines = rest[..end].lines();
    while let Some(line) = lines.next() {
        if let Some(lang) = line.strip_prefix("```") {
            let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            blocks.push((lang.to_string(), body.join("\n") + "\n"));
        }
    }
    blocks
}

/// One bash script from the blocks: `sh` as they are, `python` fed to
/// the Python that has boto3.
fn script(blocks: &[(String, String)], server_url: &str, bin_dir: &Path) -> String {
    let mut out = String::from("set -euo pipefail\n");
    for (lang, body) in blocks {
        let body = body.replace("http://127.0.0.1:4566", server_url).replace(
            "$HOME/.cache/kinema/target/release",
            &bin_dir.display().to_string(),
        );
        match lang.as_str() {
            "sh" => out.push_str(&body),
            "python" => out.push_str(&format!("\"$KINEMA_PYTHON\" - <<'PYTHON'\n{body}PYTHON\n")),
            other => panic!("a {other:?} block in \"Try it\": the test cannot run it"),
        }
        out.push_str("echo '--- block done'\n");
    }
    out
}

#[test]
fn the_readme_try_it_section_works_as_written() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let blocks = section_blocks(&readme, "Try it");
    assert!(blocks.len() >= 4, "{blocks:?}");
    let film = PathBuf::from(std::env::var("HOME").unwrap())
        .join(".cache/kinema/assets/market_street_1906.mp4");
    assert!(
        film.exists(),
        "{}: scripts/setup.sh fetches it",
        film.display()
    );

    let dir = tempfile::tempdir().unwrap();
    // The demo key of `make run`, which the README's commands use.
    let server = Server::start_with_config(
        &dir.path().join("data"),
        "[[access_keys]]\nid = \"kinema-demo\"\nsecret = \"kinema-demo-secret\"\n",
    );
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_kinema"));
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let text = script(&blocks, &server.url(), bin.parent().unwrap());
    // aws and python from the setup's venv, as a user with it on PATH.
    let venv_bin = PathBuf::from(python()).parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        venv_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&text)
        .current_dir(&work)
        .env("PATH", path)
        .env("KINEMA_PYTHON", python())
        // Nothing of the machine's own: only what the README exports.
        .env_remove("KINEMA_ACCESS_KEY_ID")
        .env_remove("KINEMA_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
        .env("AWS_CONFIG_FILE", dir.path().join("none"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the README's commands failed\nscript:\n{text}\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver:\n{}",
        server.log()
    );
    let context = || format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(
        stdout.matches("--- block done").count(),
        blocks.len(),
        "{}",
        context()
    );
    // What the prose says each step shows.
    let ack_lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("{\"EventType\""))
        .collect();
    let acks = parse_acks(ack_lines.join("\n").as_bytes());
    assert!(
        acks_of(&acks, "PERSISTED").len() >= 9,
        "curl printed PERSISTED acks for the 10 s test pattern\n{}",
        context()
    );
    assert!(
        stderr.contains("persisted, 0 errors"),
        "put-media reports its fragments\n{}",
        context()
    );
    // list-fragments prints their number: the test pattern's and the film's.
    let count: u64 = stdout
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no fragment count\n{}", context()));
    assert!(count >= 10, "{count}\n{}", context());
    // get-media wrote one playable file per track header, both read whole.
    for f in ["cam1.mkv", "cam1-2.mkv"] {
        assert!(work.join(f).exists(), "{f}\n{}", context());
        assert!(ffprobe_frames(&work.join(f)) > 0, "{f}");
    }
    assert!(!work.join("cam1-3.mkv").exists());
    assert_eq!(ffprobe_frames(&work.join("cam1.mkv")), 300);
    assert_eq!(
        stdout.matches("640,360").count(),
        2,
        "ffprobe printed both files' size\n{}",
        context()
    );
}

#[test]
fn the_sample_configuration_starts_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let sample = repo_root().join("samples/config.toml");
    // Its own network namespace: the sample's TURN port (3478) is then
    // free whatever else runs.
    let config = std::fs::read_to_string(&sample).unwrap();
    let server = Server::start_in_netns(&dir.path().join("data"), &config);
    let health = server
        .command("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{}/health", server.url()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&health.stdout), "200");
    // Whatever start-up work runs late (detection, sources, TURN) has had
    // its time to complain.
    std::thread::sleep(Duration::from_secs(3));
    let log = server.log();
    let complaints: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(complaints.is_empty(), "{complaints:#?}\n{log}");
    // Nothing of the example camera is tried.
    let (_, sources) = api(&server, "GET", "/v1/sources", None);
    assert_eq!(sources["sources"], serde_json::json!([]), "{sources}");
}

#[test]
fn code_blocks_are_taken_from_their_section_only() {
    let readme = "x\n## Try it\nintro\n```sh\necho a\n```\n```python\nprint(1)\n```\n### Next\n```sh\necho b\n```\n";
    let blocks = section_blocks(readme, "Try it");
    assert_eq!(
        blocks,
        vec![
            ("sh".to_string(), "echo a\n".to_string()),
            ("python".to_string(), "print(1)\n".to_string())
        ]
    );
}

/// The README's push-subscription example, run with the machine's curl
/// (Debian 12's 7.88 signs a query string as written, unsorted).
#[test]
fn the_readme_push_subscription_example_signs_with_debian_curl() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let line = |prefix: &str, needle: &str| -> String {
        readme
            .lines()
            .find(|l| l.starts_with(prefix) && l.contains(needle))
            .unwrap_or_else(|| panic!("README has no {prefix:?} line with {needle:?}"))
            .to_string()
    };
    let sign = line("SIGN=(", "--aws-sigv4");
    let example = line("curl ", "/subscribe?");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_config(
        &dir.path().join("data"),
        "[[access_keys]]\nid = \"kinema-demo\"\nsecret = \"kinema-demo-secret\"\n",
    );
    // The stream of the example before it, with a record on each shard.
    let aws = |args: &[&str]| {
        let (ok, out, err) = run_aws_as(&server, ("kinema-demo", "kinema-demo-secret"), args);
        assert!(ok, "{args:?}: {out}{err}");
    };
    aws(&[
        "kinesis",
        "create-stream",
        "--stream-name",
        "orders",
        "--shard-count",
        "2",
    ]);
    for key in ["store-1", "store-2", "store-3", "store-4"] {
        aws(&[
            "kinesis",
            "put-record",
            "--stream-name",
            "orders",
            "--partition-key",
            key,
            "--data",
            "hello",
        ]);
    }
    let run = |command: &str| -> String {
        let command = command.replace("http://127.0.0.1:4566", &server.url());
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("{sign}\n{command} --max-time 3"))
            .output()
            .unwrap();
        // The stream stays open: curl ends at its time limit (28).
        assert!(
            matches!(out.status.code(), Some(0) | Some(28)),
            "{command}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let events = run(&example);
    assert!(events.contains("event: records"), "{events}");
    assert!(
        events.contains("\"shardId\":\"shardId-000000000000\""),
        "{events}"
    );
    // The same query in the other order is what this curl cannot sign,
    // which is why the README sorts it.
    let unsorted = example.replace(
        "from=TRIM_HORIZON&shard=shardId-000000000000",
        "shard=shardId-000000000000&from=TRIM_HORIZON",
    );
    assert_ne!(unsorted, example);
    let refused = run(&unsorted);
    assert!(refused.contains("signature"), "{refused}");
}
