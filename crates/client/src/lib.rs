//! A small client for Kinema: SigV4 request signing, calls to the Kinesis
//! Data Streams API, and [`ConsumerLoop`], an at-least-once consumer on top
//! of Kinema's server-side consumer groups.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kinema_client::ClientError> {
//! let client = kinema_client::Client::new("http://127.0.0.1:4566", "KEY", "SECRET");
//! let consumer = kinema_client::ConsumerLoop::new(client, "events", "analytics", "worker-1");
//! consumer
//!     .run(|shard, records| {
//!         for r in records {
//!             println!("{shard} {} {:?}", r.sequence_number, r.data);
//!         }
//!         Ok(())
//!     }, std::future::pending())
//!     .await
//! # }
//! ```

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

pub mod profile;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("request failed: {0}")]
    Transport(String),
    #[error("{status} {kind}: {message}")]
    Service {
        status: u16,
        kind: String,
        message: String,
    },
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("unexpected response: {0}")]
    Protocol(String),
    #[error("handler failed: {0}")]
    Handler(String),
}

/// Signs `request` in place with SigV4 for `service`: over `payload` (the
/// body bytes) when given, else as `UNSIGNED-PAYLOAD` (streaming bodies).
/// The request needs an absolute URI and a `host` header.
pub fn sign_request<B>(
    request: &mut http::Request<B>,
    key: &str,
    secret: &str,
    region: &str,
    service: &str,
    payload: Option<&[u8]>,
) -> Result<(), ClientError> {
    sign_request_with_token(request, (key, secret, None), region, service, payload)
}

/// [`sign_request`] with temporary credentials: their session token is
/// sent (and signed) as `X-Amz-Security-Token`.
pub fn sign_request_with_token<B>(
    request: &mut http::Request<B>,
    (key, secret, token): (&str, &str, Option<&str>),
    region: &str,
    service: &str,
    payload: Option<&[u8]>,
) -> Result<(), ClientError> {
    let err = |e: &dyn std::fmt::Display| ClientError::Signing(e.to_string());
    let identity = Credentials::new(
        key,
        secret,
        token.map(str::to_string),
        None,
        "kinema-client",
    )
    .into();
    let mut settings = SigningSettings::default();
    if payload.is_none() {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .map_err(|e| err(&e))?
        .into();
    let uri = request.uri().to_string();
    let headers: Vec<(&str, &str)> = request
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .collect();
    let body = match payload {
        Some(bytes) => SignableBody::Bytes(bytes),
        None => SignableBody::UnsignedPayload,
    };
    let signable = SignableRequest::new(request.method().as_str(), uri, headers.into_iter(), body)
        .map_err(|e| err(&e))?;
    let (instructions, _signature) = sign(signable, &params).map_err(|e| err(&e))?.into_parts();
    instructions.apply_to_request_http1x(request);
    Ok(())
}

/// A SigV4-presigned `GET` URL (query-string authentication), as the
/// signaling WebSocket takes it: signed at `time`, valid for `expires`,
/// over an empty payload, with only `host` signed.
pub fn presign_url(
    url: &str,
    key: &str,
    secret: &str,
    region: &str,
    service: &str,
    expires: std::time::Duration,
    time: SystemTime,
) -> Result<String, ClientError> {
    let err = |e: &dyn std::fmt::Display| ClientError::Signing(e.to_string());
    let identity = Credentials::new(key, secret, None, None, "kinema-client").into();
    let mut settings = SigningSettings::default();
    settings.signature_location = aws_sigv4::http_request::SignatureLocation::QueryParams;
    settings.expires_in = Some(expires);
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| err(&e))?
        .into();
    let uri: http::Uri = url.parse().map_err(|e| err(&e))?;
    let host = uri
        .authority()
        .ok_or_else(|| ClientError::Signing("the URL has no host".into()))?
        .to_string();
    let mut request = http::Request::get(uri)
        .header("host", host)
        .body(())
        .map_err(|e| err(&e))?;
    let headers: Vec<(&str, &str)> = request
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .collect();
    let signable = SignableRequest::new("GET", url, headers.into_iter(), SignableBody::Bytes(&[]))
        .map_err(|e| err(&e))?;
    let (instructions, _signature) = sign(signable, &params).map_err(|e| err(&e))?.into_parts();
    instructions.apply_to_request_http1x(&mut request);
    Ok(request.uri().to_string())
}

/// RFC 3986 percent-encoding of a query value (unreserved bytes kept), as
/// SigV4 canonicalises it.
pub fn uri_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The presigned signaling WebSocket URL of a channel at `endpoint`
/// (`ws://` or `wss://`), as the Kinesis Video WebRTC SDKs make it: the
/// master without a client id, a viewer with one; valid for 299 s from
/// `time`.
pub fn signaling_url(
    endpoint: &str,
    channel_arn: &str,
    client_id: Option<&str>,
    key: &str,
    secret: &str,
    region: &str,
    time: SystemTime,
) -> Result<String, ClientError> {
    let mut url = format!(
        "{}/?X-Amz-ChannelARN={}",
        endpoint.trim_end_matches('/'),
        uri_encode(channel_arn)
    );
    if let Some(c) = client_id {
        url.push_str(&format!("&X-Amz-ClientId={}", uri_encode(c)));
    }
    presign_url(
        &url,
        key,
        secret,
        region,
        "kinesisvideo",
        std::time::Duration::from_secs(299),
        time,
    )
}

/// How a PutMedia upload's Cluster timecodes relate to wall time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timecodes {
    /// Unix time in milliseconds (`ABSOLUTE`).
    Absolute,
    /// Milliseconds since the producer start timestamp (`RELATIVE`).
    Relative,
}

/// The identity and place of one PutMedia upload.
pub struct PutMediaTarget<'a> {
    pub endpoint: &'a str,
    pub stream: &'a str,
    pub region: &'a str,
    pub key: &'a str,
    pub secret: &'a str,
    /// The session token of temporary credentials.
    pub session_token: Option<&'a str>,
}

/// A PutMedia request streaming `body`, signed as `UNSIGNED-PAYLOAD`.
/// `start_ms` is the producer start timestamp (Unix milliseconds).
pub fn put_media_request<B>(
    target: &PutMediaTarget<'_>,
    timecodes: Timecodes,
    start_ms: u64,
    body: B,
) -> Result<http::Request<B>, ClientError> {
    let bad = |e: &dyn std::fmt::Display| ClientError::Transport(e.to_string());
    let uri: http::Uri = format!("{}/putMedia", target.endpoint.trim_end_matches('/'))
        .parse()
        .map_err(|e| bad(&e))?;
    let host = uri
        .authority()
        .map(|a| a.to_string())
        .ok_or_else(|| ClientError::Transport(format!("{:?} has no host", target.endpoint)))?;
    let mut request = http::Request::builder()
        .method("POST")
        .uri(uri)
        .header("host", host)
        .header("x-amzn-stream-name", target.stream)
        .header(
            "x-amzn-fragment-timecode-type",
            match timecodes {
                Timecodes::Absolute => "ABSOLUTE",
                Timecodes::Relative => "RELATIVE",
            },
        )
        .header(
            "x-amzn-producer-start-timestamp",
            format!("{}.{:03}", start_ms / 1000, start_ms % 1000),
        )
        .header("x-amzn-fragment-acknowledgment-required", "1")
        .body(body)
        .map_err(|e| bad(&e))?;
    sign_request_with_token(
        &mut request,
        (target.key, target.secret, target.session_token),
        target.region,
        "kinesisvideo",
        None,
    )?;
    Ok(request)
}

/// The body of a refused request, for the error message: the service's
/// error type and message when it sent the AWS error shape.
pub async fn refusal_text<B: http_body::Body>(status: http::StatusCode, body: B) -> String {
    let text = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    service_error(status.as_u16(), &text).to_string()
}

/// An AWS error answer (`__type` or `x-amzn-ErrorType`, and `message` or
/// `Message`) as a [`ClientError::Service`]; a body of another shape is
/// kept as the message.
pub fn service_error(status: u16, body: &[u8]) -> ClientError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let kind = v["__type"].as_str().or_else(|| v["code"].as_str());
    let message = v["message"].as_str().or_else(|| v["Message"].as_str());
    ClientError::Service {
        status,
        // `__type` may carry a namespace: `ns#ResourceNotFoundException`.
        kind: kind
            .map(|k| k.rsplit('#').next().unwrap_or(k).to_string())
            .unwrap_or_else(|| "Unknown".to_string()),
        message: match (kind, message) {
            (_, Some(m)) => m.to_string(),
            (None, None) => String::from_utf8_lossy(body).trim().to_string(),
            (Some(_), None) => String::new(),
        },
    }
}

/// A signed JSON client for one Kinema server.
#[derive(Clone)]
pub struct Client {
    http: HttpClient<HttpConnector, Full<Bytes>>,
    endpoint: String,
    key: String,
    secret: String,
    session_token: Option<String>,
    region: String,
}

impl Client {
    pub fn new(endpoint: &str, key: &str, secret: &str) -> Client {
        Client {
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            key: key.into(),
            secret: secret.into(),
            session_token: None,
            region: kinema_core::aws::DEFAULT_REGION.into(),
        }
    }

    /// Signs with temporary credentials' session token.
    pub fn with_session_token(mut self, token: Option<&str>) -> Client {
        self.session_token = token.map(str::to_string);
        self
    }

    /// Signs for `region` (default: us-east-1).
    pub fn with_region(mut self, region: &str) -> Client {
        self.region = region.to_string();
        self
    }

    /// A signed JSON request for `service` whose answer is read as it
    /// arrives (GetMedia): the response once its status is a success, else
    /// the service's error.
    pub async fn open(
        &self,
        method: http::Method,
        path: &str,
        service: &str,
        body: Value,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        self.open_with(method, path, service, &[], Some(body)).await
    }

    async fn open_with(
        &self,
        method: http::Method,
        path: &str,
        service: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        let resp = self
            .send_signed(method, path, service, headers, body)
            .await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        Err(service_error(status, &body_bytes(resp).await?))
    }

    async fn send(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: Value,
    ) -> Result<Value, ClientError> {
        self.request(http::Method::POST, path, headers, Some(body))
            .await
    }

    /// A Kinema JSON API read (`GET path`).
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.request(http::Method::GET, path, &[], None).await
    }

    /// A Kinema JSON API call with any method (`PUT`, `DELETE`, ...).
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        self.request(method, path, &[], body).await
    }

    async fn request(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let resp = self
            .open_with(method, path, "kinesis", headers, body)
            .await?;
        Ok(serde_json::from_slice(&body_bytes(resp).await?).unwrap_or(Value::Null))
    }

    async fn send_signed(
        &self,
        method: http::Method,
        path: &str,
        service: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let uri: http::Uri = format!("{}{path}", self.endpoint)
            .parse()
            .map_err(|e: http::uri::InvalidUri| ClientError::Transport(e.to_string()))?;
        let host = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let mut b = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", host);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut req = b
            .body(Full::new(bytes.clone()))
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        sign_request_with_token(
            &mut req,
            (&self.key, &self.secret, self.session_token.as_deref()),
            &self.region,
            service,
            Some(&bytes),
        )?;
        self.http
            .request(req)
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))
    }

    /// A Kinesis Data Streams operation (`Kinesis_20131202.<op>`).
    pub async fn kinesis(&self, op: &str, body: Value) -> Result<Value, ClientError> {
        let target = format!("Kinesis_20131202.{op}");
        self.send(
            "/",
            &[
                ("x-amz-target", &target),
                ("content-type", "application/x-amz-json-1.1"),
            ],
            body,
        )
        .await
    }

    /// A Kinema JSON API call (`POST path`).
    pub async fn post(&self, path: &str, body: Value) -> Result<Value, ClientError> {
        self.send(path, &[("content-type", "application/json")], body)
            .await
    }
}

/// The whole body of a response.
async fn body_bytes(resp: http::Response<hyper::body::Incoming>) -> Result<Bytes, ClientError> {
    Ok(resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Transport(e.to_string()))?
        .to_bytes())
}

/// One record handed to a consumer.
#[derive(Debug, Clone)]
pub struct Record {
    pub sequence_number: String,
    pub partition_key: String,
    pub data: Vec<u8>,
}

/// An at-least-once consumer in a server-side consumer group: it leases
/// shards (parents before children), reads each from the group's checkpoint,
/// hands records to the handler, and checkpoints after the handler returns.
/// A consumer that dies loses its leases when they expire; another member
/// then resumes after the last checkpoint, so records after it may be
/// delivered twice, never skipped.
pub struct ConsumerLoop {
    client: Client,
    stream: String,
    group: String,
    consumer: String,
    /// Lease duration asked for; the loop renews well within it.
    pub lease: Duration,
    /// Pause between rounds that found no records.
    pub idle_wait: Duration,
    pub max_shards: usize,
}

impl ConsumerLoop {
    pub fn new(client: Client, stream: &str, group: &str, consumer: &str) -> ConsumerLoop {
        ConsumerLoop {
            client,
            stream: stream.into(),
            group: group.into(),
            consumer: consumer.into(),
            lease: Duration::from_secs(10),
            idle_wait: Duration::from_millis(200),
            max_shards: usize::MAX,
        }
    }

    fn group_path(&self, action: &str) -> String {
        format!(
            "/v1/datastreams/{}/groups/{}/{action}",
            self.stream, self.group
        )
    }

    /// Runs until `stop` resolves (then releases its leases) or an error.
    pub async fn run<F>(
        &self,
        mut handler: F,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), ClientError>
    where
        F: FnMut(&str, &[Record]) -> Result<(), String>,
    {
        tokio::pin!(stop);
        let mut iterators: HashMap<String, String> = HashMap::new();
        loop {
            let leases = self
                .client
                .post(
                    &self.group_path("leases"),
                    json!({"consumer": self.consumer, "maxShards": self.max_shards, "leaseMs": self.lease.as_millis() as u64}),
                )
                .await?;
            let leases = leases["leases"].as_array().cloned().unwrap_or_default();
            iterators.retain(|s, _| leases.iter().any(|l| l["shardId"] == s.as_str()));
            let mut got_any = false;
            for lease in &leases {
                let shard = lease["shardId"].as_str().unwrap_or_default().to_string();
                if !iterators.contains_key(&shard) {
                    let start = match lease["checkpoint"].as_str() {
                        Some(seq) => {
                            json!({"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": seq})
                        }
                        None => json!({"ShardIteratorType": "TRIM_HORIZON"}),
                    };
                    let mut body = json!({"StreamName": self.stream, "ShardId": shard});
                    body.as_object_mut()
                        .expect("an object")
                        .extend(start.as_object().cloned().unwrap_or_default());
                    let it = self.client.kinesis("GetShardIterator", body).await?;
                    let it = it["ShardIterator"]
                        .as_str()
                        .ok_or_else(|| ClientError::Protocol("no ShardIterator".into()))?;
                    iterators.insert(shard.clone(), it.to_string());
                }
                let page = self
                    .client
                    .kinesis(
                        "GetRecords",
                        json!({"ShardIterator": iterators[&shard], "Limit": 1000}),
                    )
                    .await?;
                let records: Vec<Record> = page["Records"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|r| Record {
                                sequence_number: r["SequenceNumber"]
                                    .as_str()
                                    .unwrap_or_default()
                                    .into(),
                                partition_key: r["PartitionKey"]
                                    .as_str()
                                    .unwrap_or_default()
                                    .into(),
                                data: base64::engine::general_purpose::STANDARD
                                    .decode(r["Data"].as_str().unwrap_or_default())
                                    .unwrap_or_default(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if let Some(last) = records.last() {
                    got_any = true;
                    handler(&shard, &records).map_err(ClientError::Handler)?;
                    self.client
                        .post(
                            &self.group_path("checkpoint"),
                            json!({"consumer": self.consumer, "shardId": shard, "sequenceNumber": last.sequence_number}),
                        )
                        .await?;
                }
                match page["NextShardIterator"].as_str() {
                    Some(next) => {
                        iterators.insert(shard, next.to_string());
                    }
                    None => {
                        // A closed shard is drained: its children may now be leased.
                        self.client
                            .post(
                                &self.group_path("checkpoint"),
                                json!({"consumer": self.consumer, "shardId": shard, "sequenceNumber": "SHARD_END"}),
                            )
                            .await?;
                        iterators.remove(&shard);
                        got_any = true;
                    }
                }
            }
            let wait = if got_any {
                Duration::ZERO
            } else {
                self.idle_wait
            };
            tokio::select! {
                _ = &mut stop => {
                    self.client.post(&self.group_path("release"), json!({"consumer": self.consumer})).await?;
                    return Ok(());
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
