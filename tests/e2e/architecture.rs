//! Architecture invariants that cargo can check: the sans-IO crates never
//! depend (even transitively) on a runtime, a network stack, a media
//! framework or a storage backend.

use std::collections::BTreeSet;
use std::process::Command;

const SANS_IO: &[&str] = &[
    "kinema-core",
    "kinema-detect",
    "kinema-mkv",
    "kinema-archive",
    "kinema-datastream",
    "kinema-iam",
    "kinema-hls",
    "kinema-remux",
    "kinema-signaling",
];
const FORBIDDEN: &[&str] = &[
    "tokio",
    "hyper",
    "axum",
    "object_store",
    "gstreamer",
    "webrtc",
    "ort",
    "reqwest",
    "async-nats",
];

#[test]
fn sans_io_crates_depend_on_no_runtime_network_media_or_storage_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for krate in SANS_IO {
        let out = Command::new(&cargo)
            .args([
                "tree",
                "--offline",
                "-e",
                "normal",
                "--prefix",
                "none",
                "-p",
                krate,
            ])
            .current_dir(crate::support::repo_root())
            .output()
            .expect("cargo tree");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let closure: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        assert!(closure.contains(*krate), "{closure:?}");
        for f in FORBIDDEN {
            assert!(!closure.contains(*f), "{krate} depends on {f}: {closure:?}");
        }
        assert!(closure.len() < 30, "{krate} stays small: {closure:?}");
    }
}

/// Each outside world has one adapter crate: only these may name it as a
/// direct (normal) dependency.
#[test]
fn gstreamer_is_named_only_by_its_adapter_crates() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args([
            "metadata",
            "--offline",
            "--no-deps",
            "--format-version",
            "1",
        ])
        .current_dir(crate::support::repo_root())
        .output()
        .expect("cargo metadata");
    assert!(out.status.success());
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let owners: &[(&str, &[&str])] = &[
        ("gstreamer", &["kinema-media", "gst-plugin-kinema"]),
        ("object_store", &["kinema-store"]),
        // The cluster's JetStream state; the bench also runs JetStream as
        // the data streams' reference.
        ("async-nats", &["kinema-store", "kinema-bench"]),
        ("axum", &["kinema-api"]),
        ("ort", &["kinema-infer"]),
        ("webrtc", &["kinema-rtc"]),
        ("rustls", &["kinema-api"]),
        ("tokio-rustls", &["kinema-api"]),
        // The HTTP edge reaches decoding and remuxing through the engine;
        // the CLI's put-media demuxes files as a producer, like kinemasink.
        (
            "kinema-media",
            &[
                "kinema-engine",
                "gst-plugin-kinema",
                "kinema-bench",
                "kinema-server",
            ],
        ),
    ];
    let mut checked = 0;
    for pkg in meta["packages"].as_array().unwrap() {
        let name = pkg["name"].as_str().unwrap();
        for dep in pkg["dependencies"].as_array().unwrap() {
            if !dep["kind"].is_null() {
                continue; // dev- and build-dependencies
            }
            let dep = dep["name"].as_str().unwrap();
            for (prefix, allowed) in owners {
                // `ort` and `ort-sys`, not every crate whose name starts so.
                let named = dep == *prefix || dep.starts_with(&format!("{prefix}-"));
                if named {
                    checked += 1;
                    assert!(allowed.contains(&name), "{name} depends on {dep} directly");
                }
            }
        }
    }
    assert!(checked >= 7, "the owners themselves were seen: {checked}");
}
