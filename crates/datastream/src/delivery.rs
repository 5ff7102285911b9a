//! Channels without I/O: what a channel that delivers a data stream to
//! object storage decides. Output key templates (`!{yyyy}` and the other
//! variables, and the UTC calendar fields they name), the object body
//! for each record format with the records that cannot be delivered set
//! aside, file name endings, and the channel's position: per-shard
//! cursors and the one delivery in progress. (The engine compresses.)
//!
//! A delivery is planned (its records, key and cursors after it), recorded
//! as the position's `pending` before its object is written, and completed
//! by moving the cursors. After a crash the pending delivery is written
//! again with the same records and the same key, so an object is never
//! written twice under two names.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

/// The default output key template (the documented one).
pub const DEFAULT_TEMPLATE: &str = "kinesis-channel/!{channel-name}/!{channel-id}/!{yyyy}/!{MM}/!{dd}/!{HH}/!{channel-name}-!{channel-id}-!{yyyy}-!{MM}-!{dd}-!{HH}-!{mm}!{extension}";
/// Where records that cannot be delivered go when no prefix is given.
pub const DEFAULT_ERROR_PREFIX: &str = "kinesis-channel/errors/";
/// Seconds a record may wait before its object is written, by default.
pub const DEFAULT_FRESHNESS_S: u32 = 300;
/// The longest freshness allowed.
pub const MAX_FRESHNESS_S: u32 = 900;
/// An object is written once this many bytes of records wait, whatever
/// their age.
pub const MAX_OBJECT_BYTES: usize = 32 << 20;
/// Longest template.
pub const MAX_TEMPLATE: usize = 1024;

/// How records are written into objects (`RecordFormatType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordFormat {
    /// One JSON value per line (JSON Lines); a record that is not one
    /// JSON value is a dead letter.
    Json,
    /// One UTF-8 text per line; a record that is not UTF-8, or holds a
    /// line break, is a dead letter.
    String,
    /// The records' bytes as they are, one after another.
    ByteArray,
}

impl RecordFormat {
    pub fn parse(s: &str) -> Option<RecordFormat> {
        Some(match s {
            "JSON" => RecordFormat::Json,
            "STRING" => RecordFormat::String,
            "BYTE_ARRAY" => RecordFormat::ByteArray,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RecordFormat::Json => "JSON",
            RecordFormat::String => "STRING",
            RecordFormat::ByteArray => "BYTE_ARRAY",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            RecordFormat::Json => ".jsonl",
            RecordFormat::String => ".txt",
            RecordFormat::ByteArray => ".bin",
        }
    }
}

/// Compression of delivered objects (`CompressionType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn parse(s: &str) -> Option<Compression> {
        Some(match s {
            "NONE" => Compression::None,
            "GZIP" => Compression::Gzip,
            "ZSTD" => Compression::Zstd,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "NONE",
            Compression::Gzip => "GZIP",
            Compression::Zstd => "ZSTD",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
        }
    }
}

/// A UTC instant's calendar fields, for key templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl Civil {
    /// From milliseconds since 1970 (proleptic Gregorian, H. Hinnant's
    /// days-to-civil).
    fn from_ms(ms: i64) -> Civil {
        let secs = ms.div_euclid(1000);
        let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Civil {
            year,
            month,
            day,
            hour: (rest / 3600) as u32,
            minute: (rest % 3600 / 60) as u32,
            second: (rest % 60) as u32,
        }
    }
}

/// The file name ending of an object: the format's, then the compression's.
pub fn extension(format: RecordFormat, compression: Compression) -> String {
    format!("{}{}", format.extension(), compression.extension())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("OutputKeyTemplate must be 1 to {MAX_TEMPLATE} characters")]
    Length,
    #[error("OutputKeyTemplate must not start or end with '/' or contain '//', '..' or './'")]
    Path,
    #[error("OutputKeyTemplate has an unclosed '!{{'")]
    Unclosed,
    #[error("OutputKeyTemplate names an unknown variable '!{{{0}}}'")]
    Unknown(String),
    #[error("OutputKeyTemplate has the character {0:?}, outside [a-zA-Z0-9!-_'.()/=]")]
    Character(char),
    #[error("OutputKeyTemplate may name the extension once, at its end")]
    Extension,
    #[error("OutputKeyTemplate must end with !{{extension}} when objects are compressed")]
    NeedsExtension,
}

/// A template variable.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Var {
    ChannelName,
    ChannelId,
    StreamName,
    Year,
    ShortYear,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Extension,
    /// `!{extension:.csv}`: the given ending instead of the format's.
    Literal(String),
}

const VARS: [(&str, Var); 11] = [
    ("channel-name", Var::ChannelName),
    ("channel-id", Var::ChannelId),
    ("stream-name", Var::StreamName),
    ("yyyy", Var::Year),
    ("yy", Var::ShortYear),
    ("MM", Var::Month),
    ("dd", Var::Day),
    ("HH", Var::Hour),
    ("mm", Var::Minute),
    ("ss", Var::Second),
    ("extension", Var::Extension),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

/// A parsed output key template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    parts: Vec<Part>,
}

/// What a key is made from.
#[derive(Debug, Clone)]
pub struct KeyContext<'a> {
    pub channel_name: &'a str,
    pub channel_id: &'a str,
    pub stream_name: &'a str,
    /// The time parts stand for this instant (UTC): the arrival of the
    /// object's oldest record.
    pub time_ms: i64,
    pub extension: &'a str,
    /// The channel's delivery number: the unique part of every key.
    pub delivery: u64,
}

impl KeyTemplate {
    pub fn parse(s: &str) -> Result<KeyTemplate, TemplateError> {
        if s.is_empty() || s.len() > MAX_TEMPLATE {
            return Err(TemplateError::Length);
        }
        if s.starts_with('/')
            || s.ends_with('/')
            || s.contains("//")
            || s.contains("..")
            || s.contains("./")
        {
            return Err(TemplateError::Path);
        }
        let mut parts = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            match rest.find("!{") {
                Some(0) => {
                    let end = rest.find('}').ok_or(TemplateError::Unclosed)?;
                    let name = &rest[2..end];
                    let var = match name.strip_prefix("extension:") {
                        Some(lit)
                            if !lit.is_empty()
                                && lit.starts_with('.')
                                && !lit.contains("..")
                                && lit.chars().all(|c| c.is_ascii_lowercase() || c == '.') =>
                        {
                            Var::Literal(lit.to_string())
                        }
                        _ => VARS
                            .iter()
                            .find(|(n, _)| *n == name)
                            .map(|(_, v)| v.clone())
                            .ok_or_else(|| TemplateError::Unknown(name.to_string()))?,
                    };
                    parts.push(Part::Var(var));
                    rest = &rest[end + 1..];
                }
                found => {
                    let end = found.unwrap_or(rest.len());
                    let text = &rest[..end];
                    if let Some(c) = text.chars().find(|c| {
                        !(c.is_ascii_alphanumeric()
                            || matches!(c, '!' | '-' | '_' | '\'' | '.' | '(' | ')' | '/' | '='))
                    }) {
                        return Err(TemplateError::Character(c));
                    }
                    parts.push(Part::Text(text.to_string()));
                    rest = &rest[end..];
                }
            }
        }
        let extensions = parts
            .iter()
            .filter(|p| matches!(p, Part::Var(Var::Extension | Var::Literal(_))))
            .count();
        if extensions > 1 || (extensions == 1 && !ends_with_extension(&parts)) {
            return Err(TemplateError::Extension);
        }
        Ok(KeyTemplate { parts })
    }

    /// Whether the template ends with an extension variable (required
    /// when objects are compressed, so readers know how to open them).
    pub fn has_extension(&self) -> bool {
        ends_with_extension(&self.parts)
    }

    /// The object key: the template's parts, with `-`, the channel id and
    /// the delivery number (20 digits) before the extension if the template ends with it,
    /// else at the end, so that every key is unique and still ends with
    /// the file name ending readers go by.
    pub fn render(&self, ctx: &KeyContext<'_>) -> String {
        let t = Civil::from_ms(ctx.time_ms);
        let mut out = String::new();
        let ends_with_extension = ends_with_extension(&self.parts);
        let unique = format!("-{}-{:020}", ctx.channel_id, ctx.delivery);
        for (i, p) in self.parts.iter().enumerate() {
            if ends_with_extension && i + 1 == self.parts.len() {
                out.push_str(&unique);
            }
            match p {
                Part::Text(s) => out.push_str(s),
                Part::Var(v) => match v {
                    Var::ChannelName => out.push_str(ctx.channel_name),
                    Var::ChannelId => out.push_str(ctx.channel_id),
                    Var::StreamName => out.push_str(ctx.stream_name),
                    Var::Year => out.push_str(&format!("{:04}", t.year)),
                    Var::ShortYear => out.push_str(&format!("{:02}", t.year.rem_euclid(100))),
                    Var::Month => out.push_str(&format!("{:02}", t.month)),
                    Var::Day => out.push_str(&format!("{:02}", t.day)),
                    Var::Hour => out.push_str(&format!("{:02}", t.hour)),
                    Var::Minute => out.push_str(&format!("{:02}", t.minute)),
                    Var::Second => out.push_str(&format!("{:02}", t.second)),
                    Var::Extension => out.push_str(ctx.extension),
                    Var::Literal(l) => out.push_str(l),
                },
            }
        }
        if !ends_with_extension {
            out.push_str(&unique);
        }
        out
    }
}

/// The longest object key and path segment a channel may make (S3's key
/// limit; the usual file name limit).
pub const MAX_KEY: usize = 1024;
pub const MAX_SEGMENT: usize = 255;

/// Whether keys rendered for this channel can be stored: no segment
/// longer than [`MAX_SEGMENT`] bytes, empty, `.` or `..`, and no key
/// longer than [`MAX_KEY`]. `ctx` names the channel and stream (its
/// delivery number is taken at its longest).
pub fn check_keys(
    template: &KeyTemplate,
    error_prefix: &str,
    ctx: &KeyContext<'_>,
) -> Result<(), String> {
    let longest = KeyContext {
        delivery: u64::MAX,
        ..ctx.clone()
    };
    for (what, key) in [
        ("OutputKeyTemplate", template.render(&longest)),
        ("ErrorOutputPrefix", error_key(error_prefix, &longest)),
    ] {
        if key.len() > MAX_KEY {
            return Err(format!(
                "{what} makes keys of {} bytes, over {MAX_KEY}: {key}",
                key.len()
            ));
        }
        if let Some(s) = key
            .split('/')
            .find(|s| s.is_empty() || *s == "." || *s == ".." || s.len() > MAX_SEGMENT)
        {
            return Err(format!(
                "{what} makes a path segment {s:?} (empty, '.', '..' or over {MAX_SEGMENT} bytes) in {key}"
            ));
        }
    }
    Ok(())
}

fn ends_with_extension(parts: &[Part]) -> bool {
    matches!(
        parts.last(),
        Some(Part::Var(Var::Extension | Var::Literal(_)))
    )
}

/// The key of the object holding a delivery's dead letters: under the
/// error prefix, by hour of the oldest record, named like the data.
pub fn error_key(prefix: &str, ctx: &KeyContext<'_>) -> String {
    let t = Civil::from_ms(ctx.time_ms);
    let sep = if prefix.is_empty() || prefix.ends_with('/') {
        ""
    } else {
        "/"
    };
    format!(
        "{prefix}{sep}{}/{}/{:04}/{:02}/{:02}/{:02}/{}-{}-{:020}-errors{}",
        ctx.channel_name,
        ctx.channel_id,
        t.year,
        t.month,
        t.day,
        t.hour,
        ctx.channel_name,
        ctx.channel_id,
        ctx.delivery,
        ctx.extension,
    )
}

/// A record as a channel reads it.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    pub shard: u32,
    pub sequence: u64,
    pub arrival_ms: i64,
    pub partition_key: &'a str,
    pub data: &'a [u8],
}

/// An object's body (uncompressed) and the dead letters of its records.
#[derive(Debug, Default)]
pub struct Encoded {
    pub body: Vec<u8>,
    pub delivered: usize,
    /// JSON Lines: one line per record that could not be delivered.
    pub errors: Vec<u8>,
    pub failed: usize,
}

/// Writes records in `format`, setting aside the ones it cannot hold.
pub fn encode<'a>(format: RecordFormat, records: impl IntoIterator<Item = Record<'a>>) -> Encoded {
    let mut out = Encoded::default();
    for r in records {
        match check(format, r.data) {
            Ok(()) => {
                match format {
                    // A raw line break can only be whitespace between JSON
                    // tokens (inside strings they are escaped): a space
                    // keeps the value and makes it one line.
                    RecordFormat::Json => out.body.extend(
                        r.data
                            .iter()
                            .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
                    ),
                    RecordFormat::String | RecordFormat::ByteArray => {
                        out.body.extend_from_slice(r.data)
                    }
                }
                if format != RecordFormat::ByteArray {
                    out.body.push(b'\n');
                }
                out.delivered += 1;
            }
            Err((code, message)) => {
                let line = serde_json::json!({
                    "errorCode": code,
                    "errorMessage": message,
                    "shardId": crate::shard_id_string(r.shard),
                    "sequenceNumber": crate::sequence_string(r.sequence),
                    "partitionKey": r.partition_key,
                    "approximateArrivalTimestamp": r.arrival_ms,
                    "rawData": B64.encode(r.data),
                });
                out.errors.extend(line.to_string().into_bytes());
                out.errors.push(b'\n');
                out.failed += 1;
            }
        }
    }
    out
}

/// Whether `data` can be written in `format`; else the error code and
/// message of its dead letter.
fn check(format: RecordFormat, data: &[u8]) -> Result<(), (&'static str, String)> {
    match format {
        RecordFormat::ByteArray => Ok(()),
        RecordFormat::String => match std::str::from_utf8(data) {
            Err(e) => Err(("InvalidString", format!("the record is not UTF-8: {e}"))),
            Ok(s) if s.contains(['\n', '\r']) => Err((
                "InvalidString",
                "the record holds a line break, which would split it".into(),
            )),
            Ok(_) => Ok(()),
        },
        RecordFormat::Json => serde_json::from_slice::<serde::de::IgnoredAny>(data)
            .map(|_| ())
            .map_err(|e| {
                (
                    "InvalidJson",
                    format!("the record is not one JSON value: {e}"),
                )
            }),
    }
}

/// A delivery planned and recorded, not yet known to be written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub delivery: u64,
    /// Per shard, the first sequence number after the delivery's records.
    pub until: BTreeMap<u32, u64>,
    pub time_ms: i64,
    /// Records planned (0: not known, from an older position): a redo
    /// that finds fewer (retention trimmed some) keeps objects already
    /// written rather than replace them with less.
    #[serde(default)]
    pub count: u64,
}

/// A channel's durable position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Per shard, the first sequence number not yet delivered.
    pub cursors: BTreeMap<u32, u64>,
    /// Where shards without a cursor start (the channel's start).
    pub start: u64,
    /// Deliveries completed (the next one's number).
    pub deliveries: u64,
    pub pending: Option<Pending>,
    /// Records delivered and set aside, for describe and metrics.
    #[serde(default)]
    pub records: u64,
    #[serde(default)]
    pub failed: u64,
}

impl Position {
    pub fn new(start: u64) -> Position {
        Position {
            cursors: BTreeMap::new(),
            start,
            deliveries: 0,
            pending: None,
            records: 0,
            failed: 0,
        }
    }

    /// The first sequence number of `shard` not yet delivered.
    pub fn cursor(&self, shard: u32) -> u64 {
        self.cursors.get(&shard).copied().unwrap_or(self.start)
    }

    /// Records a planned delivery (to be saved before its object is
    /// written); the delivery's number.
    pub fn plan(&mut self, until: BTreeMap<u32, u64>, time_ms: i64, count: u64) -> u64 {
        let delivery = self.deliveries;
        self.pending = Some(Pending {
            delivery,
            until,
            time_ms,
            count,
        });
        delivery
    }

    /// Completes the pending delivery once its objects are written.
    pub fn complete(&mut self, delivered: usize, failed: usize) {
        if let Some(p) = self.pending.take() {
            for (shard, until) in p.until {
                let c = self.cursor(shard).max(until);
                self.cursors.insert(shard, c);
            }
            self.deliveries = p.delivery + 1;
            self.records += delivered as u64;
            self.failed += failed as u64;
        }
    }
}

/// Whether a channel writes now: when its oldest waiting record is as
/// old as the freshness allows, or enough bytes wait. Otherwise, when to
/// look again (`None`: when a record arrives).
pub fn due(
    oldest_waiting_ms: Option<i64>,
    waiting_bytes: usize,
    freshness_s: u32,
    now_ms: i64,
) -> Result<(), Option<i64>> {
    let Some(oldest) = oldest_waiting_ms else {
        return Err(None);
    };
    let at = oldest.saturating_add(i64::from(freshness_s) * 1000);
    if waiting_bytes >= MAX_OBJECT_BYTES || now_ms >= at {
        Ok(())
    } else {
        Err(Some(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(delivery: u64) -> KeyContext<'static> {
        KeyContext {
            channel_name: "events",
            channel_id: "00000000000000ab",
            stream_name: "s",
            // 2026-12-07T20:05:09Z
            time_ms: 1_796_673_909_000,
            extension: ".jsonl.gz",
            delivery,
        }
    }

    #[test]
    fn the_default_template_names_objects_by_channel_and_hour() {
        let t = KeyTemplate::parse(DEFAULT_TEMPLATE).unwrap();
        assert_eq!(
            t.render(&ctx(7)),
            "kinesis-channel/events/00000000000000ab/2026/12/07/20/events-00000000000000ab-2026-12-07-20-05-00000000000000ab-00000000000000000007.jsonl.gz"
        );
    }

    #[test]
    fn short_years_literal_extensions_and_punctuation_render() {
        let t = KeyTemplate::parse("(x)/!{yy}-it's!=!{ss}!{extension:.ndjson.gz}").unwrap();
        assert!(t.has_extension());
        assert_eq!(
            t.render(&ctx(1)),
            "(x)/26-it's!=09-00000000000000ab-00000000000000000001.ndjson.gz"
        );
        assert!(!KeyTemplate::parse("a/!{yyyy}").unwrap().has_extension());
    }

    #[test]
    fn keys_that_cannot_be_stored_are_found_before_any_delivery() {
        let ok = KeyTemplate::parse(DEFAULT_TEMPLATE).unwrap();
        assert_eq!(check_keys(&ok, DEFAULT_ERROR_PREFIX, &ctx(0)), Ok(()));
        let long = KeyTemplate::parse(&format!("a/{}/!{{yyyy}}", "x".repeat(300))).unwrap();
        assert!(
            check_keys(&long, DEFAULT_ERROR_PREFIX, &ctx(0))
                .unwrap_err()
                .contains("segment")
        );
        let many = KeyTemplate::parse("!{channel-name}/".repeat(60).trim_end_matches('/')).unwrap();
        let name = "n".repeat(20);
        let c = KeyContext {
            channel_name: &name,
            ..ctx(0)
        };
        assert!(
            check_keys(&many, DEFAULT_ERROR_PREFIX, &c)
                .unwrap_err()
                .contains("over 1024")
        );
        let dots = KeyContext {
            stream_name: "..",
            ..ctx(0)
        };
        let by_stream = KeyTemplate::parse("a/!{stream-name}/b").unwrap();
        assert!(check_keys(&by_stream, DEFAULT_ERROR_PREFIX, &dots).is_err());
        // The data and the dead letters of one delivery never share a key.
        let errors_like = KeyTemplate::parse(
            "kinesis-channel/errors/!{channel-name}/!{channel-id}/!{yyyy}/!{MM}/!{dd}/!{HH}/!{channel-name}-!{channel-id}!{extension}",
        )
        .unwrap();
        assert_ne!(
            errors_like.render(&ctx(3)),
            error_key(DEFAULT_ERROR_PREFIX, &ctx(3))
        );
    }

    #[test]
    fn a_template_without_the_extension_gets_the_unique_part_at_the_end() {
        let t = KeyTemplate::parse("year=!{yyyy}/month=!{MM}/!{stream-name}_!{ss}").unwrap();
        assert_eq!(
            t.render(&ctx(1)),
            "year=2026/month=12/s_09-00000000000000ab-00000000000000000001"
        );
    }

    #[test]
    fn bad_templates_are_refused_with_a_reason() {
        for (t, e) in [
            ("", TemplateError::Length),
            ("/a/!{yyyy}", TemplateError::Path),
            ("a/!{yyyy}/", TemplateError::Path),
            ("a/../!{yyyy}", TemplateError::Path),
            ("a/!{yyyy", TemplateError::Unclosed),
            ("a/!{week}", TemplateError::Unknown("week".into())),
            ("a b/!{yyyy}", TemplateError::Character(' ')),
            ("a/{yyyy}", TemplateError::Character('{')),
            ("a//!{yyyy}", TemplateError::Path),
            ("a/!{extension}/b", TemplateError::Extension),
            ("a/!{extension}!{extension:.gz}", TemplateError::Extension),
            (
                "a/!{extension:gz}",
                TemplateError::Unknown("extension:gz".into()),
            ),
            (
                "a/!{extension:.GZ}",
                TemplateError::Unknown("extension:.GZ".into()),
            ),
            ("a/*/!{yyyy}", TemplateError::Character('*')),
        ] {
            assert_eq!(KeyTemplate::parse(t), Err(e), "{t}");
        }
        assert!(KeyTemplate::parse(&"a".repeat(MAX_TEMPLATE + 1)).is_err());
    }

    fn rec(sequence: u64, data: &[u8]) -> Record<'_> {
        Record {
            shard: 0,
            sequence,
            arrival_ms: 5,
            partition_key: "k",
            data,
        }
    }

    #[test]
    fn json_records_become_lines_and_the_rest_dead_letters() {
        let e = encode(
            RecordFormat::Json,
            [
                rec(1, b"{\"a\": 1}"),
                rec(2, b"{\n \"b\": \"x\\ny\"\n}"),
                rec(3, b"not json"),
                rec(4, b"{\"a\":1} {\"b\":2}"),
                rec(5, b"[1,2]"),
            ],
        );
        assert_eq!(
            String::from_utf8(e.body).unwrap(),
            "{\"a\": 1}\n{  \"b\": \"x\\ny\" }\n[1,2]\n"
        );
        assert_eq!((e.delivered, e.failed), (3, 2));
        let lines: Vec<serde_json::Value> = e
            .errors
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["errorCode"], "InvalidJson");
        assert_eq!(lines[0]["sequenceNumber"], crate::sequence_string(3));
        assert_eq!(lines[0]["rawData"], B64.encode(b"not json"));
        assert_eq!(lines[1]["sequenceNumber"], crate::sequence_string(4));
    }

    #[test]
    fn strings_are_lines_and_bytes_are_kept_as_they_are() {
        let e = encode(
            RecordFormat::String,
            [rec(1, b"hello"), rec(2, &[0xff, 0xfe]), rec(3, b"a\nb")],
        );
        assert_eq!(e.body, b"hello\n");
        assert_eq!(e.failed, 2);
        let e = encode(RecordFormat::ByteArray, [rec(1, b"a\n"), rec(2, &[0xff])]);
        assert_eq!(e.body, b"a\n\xff");
        assert_eq!(e.failed, 0);
    }

    #[test]
    fn calendar_fields_match_known_instants() {
        let c = |year, month, day, hour, minute, second| Civil {
            year,
            month,
            day,
            hour,
            minute,
            second,
        };
        for (ms, want) in [
            (0, c(1970, 1, 1, 0, 0, 0)),
            (-1, c(1969, 12, 31, 23, 59, 59)),
            (951_782_400_000, c(2000, 2, 29, 0, 0, 0)),
            (1_796_673_909_000, c(2026, 12, 7, 20, 5, 9)),
            (4_107_542_399_999, c(2100, 2, 28, 23, 59, 59)),
            (4_107_542_400_000, c(2100, 3, 1, 0, 0, 0)),
        ] {
            assert_eq!(Civil::from_ms(ms), want, "{ms}");
        }
        // Every day of 1999-2001 follows the one before it.
        let mut last = Civil::from_ms(915_148_800_000);
        for d in 1..(3 * 366) {
            let next = Civil::from_ms(915_148_800_000 + d * 86_400_000);
            assert!(
                (next.year, next.month, next.day) > (last.year, last.month, last.day),
                "{last:?} {next:?}"
            );
            assert!(
                next.day == last.day + 1 || next.day == 1,
                "{last:?} {next:?}"
            );
            last = next;
        }
    }

    #[test]
    fn the_position_moves_only_when_a_delivery_completes() {
        let mut p = Position::new(10);
        assert_eq!(p.cursor(3), 10);
        let n = p.plan(BTreeMap::from([(0, 20), (1, 15)]), 1, 35);
        assert_eq!(n, 0);
        assert_eq!(p.cursor(0), 10);
        p.complete(4, 1);
        assert_eq!((p.cursor(0), p.cursor(1), p.cursor(2)), (20, 15, 10));
        assert_eq!((p.deliveries, p.records, p.failed), (1, 4, 1));
        assert!(p.pending.is_none());
        // Completing with nothing pending changes nothing.
        p.complete(9, 9);
        assert_eq!(p.records, 4);
    }

    #[test]
    fn a_channel_writes_when_its_oldest_record_is_due_or_enough_waits() {
        assert_eq!(due(None, 0, 60, 0), Err(None));
        assert_eq!(due(Some(1000), 10, 60, 2000), Err(Some(61_000)));
        assert_eq!(due(Some(1000), 10, 60, 61_000), Ok(()));
        assert_eq!(due(Some(1000), MAX_OBJECT_BYTES, 60, 2000), Ok(()));
    }
}
