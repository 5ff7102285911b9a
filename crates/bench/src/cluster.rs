//! `kinema-bench-cluster`: what cluster mode costs on this machine.
//!
//! The same ingest as `kinema-bench` (N concurrent PutMedia uploads, each
//! replaying a 2 Mbit/s H.264 clip in real time) into three set-ups, one
//! after the other in one run:
//! - one node on local disk (the default);
//! - one node in cluster mode: three clustered `nats-server` processes
//!   (JetStream, R3) and moto's S3 server on loopback;
//! - three nodes in cluster mode, the uploads spread over them.
//!
//! It reports Kinema's CPU per stream (all nodes), the CPU of NATS and of
//! the S3 server beside it, and the PERSISTED latency p50/p99. Everything
//! shares this machine's cores, so the cluster rows include the cost of
//! running its infrastructure here; on real hardware NATS and S3 run
//! elsewhere.
//!
//! Usage: `kinema-bench-cluster [--streams N] [--seconds S]` (needs the
//! release `kinema` next to it, `nats-server`, and moto in the venv).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

mod common;
use common::{
    HttpClient, ServerProc, call, cpu_seconds, make_clip, percentile, split_clusters,
    start_server_with, upload,
};

/// A helper process, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing listens on {port}")
}

/// Three clustered NATS servers with JetStream and an S3 server.
struct Infra {
    nats: Vec<Proc>,
    nats_ports: Vec<u16>,
    s3: Proc,
    s3_port: u16,
}

impl Infra {
    fn start(work: &Path) -> anyhow::Result<Infra> {
        let nats_ports: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
        let route_list: Vec<String> = routes
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect();
        let mut nats = Vec::new();
        for i in 0..3 {
            let conf = work.join(format!("nats{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{ name: bench, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                    nats_ports[i],
                    work.join(format!("nats{i}")).display(),
                    routes[i],
                    route_list.join(", ")
                ),
            )?;
            nats.push(Proc(
                Command::new("nats-server")
                    .arg("-c")
                    .arg(&conf)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("start nats-server (apt install nats-server)")?,
            ));
        }
        let s3_port = free_port()?;
        let python = std::env::var("KINEMA_PYTHON").unwrap_or_else(|_| {
            format!(
                "{}/.cache/kinema/venv/bin/python",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        let s3 = Proc(
            Command::new(python)
                .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
                .arg(s3_port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("start moto's S3 server (make setup)")?,
        );
        for &p in nats_ports.iter().chain([&s3_port]) {
            wait_port(p)?;
        }
        let made = Command::new("curl")
            .args(["-sS", "-f", "-X", "PUT"])
            .arg(format!("http://127.0.0.1:{s3_port}/bench"))
            .status()?;
        if !made.success() {
            bail!("cannot create the bucket");
        }
        Ok(Infra {
            nats,
            nats_ports,
            s3,
            s3_port,
        })
    }

    fn node_config(&self, work: &Path, node: usize) -> anyhow::Result<PathBuf> {
        let urls: Vec<String> = self
            .nats_ports
            .iter()
            .map(|p| format!("\"nats://127.0.0.1:{p}\""))
            .collect();
        let path = work.join(format!("node{node}.toml"));
        std::fs::write(
            &path,
            format!(
                "[webrtc]\nturn_listen = \"off\"\n[cluster]\nnode = \"bench{node}\"\n\
                 nats_urls = [{}]\nreplicas = 3\ns3_bucket = \"bench\"\n\
                 s3_endpoint = \"http://127.0.0.1:{}\"\ns3_access_key_id = \"moto\"\n\
                 s3_secret_access_key = \"moto\"\n",
                urls.join(", "),
                self.s3_port
            ),
        )?;
        Ok(path)
    }

    fn cpu(&self) -> anyhow::Result<(f64, f64)> {
        let mut nats = 0.0;
        for p in &self.nats {
            nats += cpu_seconds(p.0.id())?;
        }
        Ok((nats, cpu_seconds(self.s3.0.id())?))
    }
}

struct Row {
    kinema: f64,
    nats: f64,
    s3: f64,
    latencies: Vec<f64>,
}

async fn run(
    nodes: &[ServerProc],
    infra: Option<&Infra>,
    prefix: &str,
    streams: usize,
    seconds: usize,
    header: &Bytes,
    clusters: &Arc<Vec<Bytes>>,
) -> anyhow::Result<Row> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    for i in 0..streams {
        call(
            &client,
            &nodes[0].url,
            "/createStream",
            serde_json::json!({"StreamName": format!("{prefix}{i}"), "DataRetentionInHours": 1}),
        )
        .await?;
    }
    // Other nodes learn of the streams from the metadata bucket.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kinema_cpu = |nodes: &[ServerProc]| -> anyhow::Result<f64> {
        nodes.iter().map(|n| cpu_seconds(n.child.id())).sum()
    };
    let cpu0 = kinema_cpu(nodes)?;
    let infra0 = match infra {
        Some(i) => i.cpu()?,
        None => (0.0, 0.0),
    };
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..streams {
        tasks.push(tokio::spawn(upload(
            client.clone(),
            nodes[i % nodes.len()].url.clone(),
            format!("{prefix}{i}"),
            header.clone(),
            clusters.clone(),
            seconds,
            Duration::from_millis((i * 1000 / streams) as u64),
        )));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let wall = t0.elapsed().as_secs_f64();
    let kinema = (kinema_cpu(nodes)? - cpu0) / wall;
    let (nats, s3) = match infra {
        Some(i) => {
            let (n, s) = i.cpu()?;
            ((n - infra0.0) / wall, (s - infra0.1) / wall)
        }
        None => (0.0, 0.0),
    };
    latencies.sort_by(f64::total_cmp);
    Ok(Row {
        kinema,
        nats,
        s3,
        latencies,
    })
}

fn parse_args() -> (usize, usize) {
    let (mut streams, mut seconds) = (10, 20);
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i + 1 < args.len() {
        match args[i].as_str() {
            "--streams" => streams = args[i + 1].parse().unwrap_or(streams),
            "--seconds" => seconds = args[i + 1].parse().unwrap_or(seconds),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    (streams.max(1), seconds.max(2))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (streams, seconds) = parse_args();
    let work = std::env::temp_dir().join(format!("kinema-bench-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let clip = work.join("clip.mkv");
    make_clip(&clip, 30, 2000, seconds as u32 + 2)?;
    let (header, clusters) = split_clusters(&std::fs::read(&clip)?);
    let clusters = Arc::new(clusters);
    println!("ingest: {streams} streams x 2 Mbit/s (640x360 30 fps, 1 s fragments), {seconds} s");

    let infra = Infra::start(&work)?;
    let mut rows = Vec::new();
    for (label, nodes_n, clustered) in [
        ("embedded, 1 node (local disk)", 1, false),
        ("cluster, 1 node", 1, true),
        ("cluster, 3 nodes", 3, true),
    ] {
        let mut nodes = Vec::new();
        for n in 0..nodes_n {
            let data = work.join(format!(
                "{}-{nodes_n}-{n}",
                if clustered { "c" } else { "e" }
            ));
            let mut args = vec![];
            if clustered {
                args = vec![
                    "--config".to_string(),
                    infra.node_config(&work, n)?.display().to_string(),
                ];
            }
            nodes.push(start_server_with(&data, &args)?);
        }
        let prefix = format!("{}{nodes_n}-", if clustered { "c" } else { "e" });
        let row = run(
            &nodes,
            clustered.then_some(&infra),
            &prefix,
            streams,
            seconds,
            &header,
            &clusters,
        )
        .await?;
        println!(
            "{label:<32} Kinema CPU {:>6.2}% per stream ({:>6.1}% in all); NATS {:>6.1}%, S3 {:>6.1}%; \
             PERSISTED p50 {:>6.1} ms p99 {:>6.1} ms ({} fragments)",
            row.kinema * 100.0 / streams as f64,
            row.kinema * 100.0,
            row.nats * 100.0,
            row.s3 * 100.0,
            percentile(&row.latencies, 0.5),
            percentile(&row.latencies, 0.99),
            row.latencies.len()
        );
        rows.push(row);
        drop(nodes);
    }
    let (e, c1, c3) = (&rows[0], &rows[1], &rows[2]);
    println!(
        "ratios to embedded: Kinema CPU per stream x{:.2} (1 node) x{:.2} (3 nodes); \
         PERSISTED p50 x{:.2} / x{:.2}, p99 x{:.2} / x{:.2}",
        c1.kinema / e.kinema.max(1e-9),
        c3.kinema / e.kinema.max(1e-9),
        percentile(&c1.latencies, 0.5) / percentile(&e.latencies, 0.5),
        percentile(&c3.latencies, 0.5) / percentile(&e.latencies, 0.5),
        percentile(&c1.latencies, 0.99) / percentile(&e.latencies, 0.99),
        percentile(&c3.latencies, 0.99) / percentile(&e.latencies, 0.99),
    );
    drop(infra);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
