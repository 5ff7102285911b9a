//! GetImages: JPEG or PNG stills sampled over a range, paged.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use base64::Engine as _;
use kinema_engine::playback::{ImageFormat, ImagesRequest, StillError};
use serde::Deserialize;
use serde_json::json;

use super::{St, selector_kind};
use crate::ApiError;
use crate::video::{StreamRef, Timestamp, epoch_seconds, ok, parse};

/// GetImages limits and defaults of the original service.
const MAX_RANGE_MS: i64 = 300_000;
const MIN_INTERVAL_MS: i64 = 200;
const DEFAULT_INTERVAL_MS: i64 = 3000;
const DEFAULT_RESULTS: i64 = 25;
const MAX_RESULTS: i64 = 100;
const JPEG_DEFAULT_QUALITY: u8 = 80;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImagesInput {
    #[serde(flatten)]
    stream: StreamRef,
    image_selector_type: Option<String>,
    start_timestamp: Option<Timestamp>,
    end_timestamp: Option<Timestamp>,
    sampling_interval: Option<i64>,
    format: Option<String>,
    format_config: Option<HashMap<String, String>>,
    width_pixels: Option<i64>,
    height_pixels: Option<i64>,
    max_results: Option<i64>,
    next_token: Option<String>,
}

pub(crate) async fn get_images(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    let input: ImagesInput = parse(&body)?;
    let kind = match input.image_selector_type.as_deref() {
        Some(t) => selector_kind(Some(t))?,
        None => return Err(ApiError::invalid("ImageSelectorType is required")),
    };
    let (Some(start), Some(end)) = (input.start_timestamp, input.end_timestamp) else {
        return Err(ApiError::invalid(
            "StartTimestamp and EndTimestamp are required",
        ));
    };
    let (start, end) = (start.0, end.0);
    if end < start {
        return Err(ApiError::invalid(
            "EndTimestamp must not be before StartTimestamp",
        ));
    }
    if end - start > MAX_RANGE_MS {
        return Err(ApiError::invalid("the range spans at most 300 seconds"));
    }
    let interval = input.sampling_interval.unwrap_or(DEFAULT_INTERVAL_MS);
    if interval < MIN_INTERVAL_MS {
        return Err(ApiError::invalid("SamplingInterval is at least 200 ms"));
    }
    let quality = match input
        .format_config
        .as_ref()
        .and_then(|c| c.get("JPEGQuality"))
    {
        None => JPEG_DEFAULT_QUALITY,
        Some(q) => q
            .parse::<u8>()
            .ok()
            .filter(|q| (1..=100).contains(q))
            .ok_or_else(|| ApiError::invalid("JPEGQuality must be an integer from 1 to 100"))?,
    };
    let format = match input.format.as_deref() {
        Some("JPEG") => ImageFormat::Jpeg { quality },
        Some("PNG") => ImageFormat::Png,
        _ => return Err(ApiError::invalid("Format must be JPEG or PNG")),
    };
    let dimension = |v: Option<i64>, max: i64, what: &str| match v {
        None => Ok(None),
        Some(n) if (1..=max).contains(&n) => Ok(Some(n as u32)),
        Some(_) => Err(ApiError::invalid(format!(
            "{what} must be between 1 and {max}"
        ))),
    };
    let width = dimension(input.width_pixels, 3840, "WidthPixels")?;
    let height = dimension(input.height_pixels, 2160, "HeightPixels")?;
    let max_results = input.max_results.unwrap_or(DEFAULT_RESULTS);
    if !(1..=MAX_RESULTS).contains(&max_results) {
        return Err(ApiError::invalid("MaxResults must be between 1 and 100"));
    }
    // A page token names the next sample of this very request, and only
    // the server can make one (an HMAC over the request and the index).
    let request = format!(
        "{:?}|{:?}|{kind:?}|{start}|{end}|{interval}|{format:?}|{width:?}|{height:?}",
        input.stream.name(),
        input.stream.arn(),
    );
    let first = match &input.next_token {
        None => 0,
        Some(t) => read_page_token(&st.token_key, &request, t)
            .ok_or_else(|| ApiError::invalid("NextToken is not valid for this request"))?,
    };
    let page = st
        .playback
        .stills(ImagesRequest {
            name: input.stream.name().map(str::to_string),
            arn: input.stream.arn().map(str::to_string),
            kind,
            start_ms: start,
            end_ms: end,
            interval_ms: interval,
            format,
            width,
            height,
            first,
            max: max_results,
        })
        .await?;
    let images: Vec<serde_json::Value> = page
        .stills
        .iter()
        .map(|s| match &s.image {
            Ok(data) => json!({
                "TimeStamp": epoch_seconds(s.time_ms),
                "ImageContent": base64::engine::general_purpose::STANDARD.encode(data),
            }),
            Err(e) => json!({
                "TimeStamp": epoch_seconds(s.time_ms),
                "Error": match e {
                    StillError::NoMedia => "NO_MEDIA",
                    StillError::MediaError => "MEDIA_ERROR",
                },
            }),
        })
        .collect();
    let mut out = json!({ "Images": images });
    if let Some(next) = page.next {
        out["NextToken"] = json!(page_token(&st.token_key, &request, next));
    }
    Ok(ok(out))
}

fn page_tag(key: &[u8; 32], request: &str, index: i64) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(request.as_bytes());
    mac.update(&index.to_be_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}

fn page_token(key: &[u8; 32], request: &str, index: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("img:{index}:{}", page_tag(key, request, index)))
}

fn read_page_token(key: &[u8; 32], request: &str, token: &str) -> Option<i64> {
    let text = String::from_utf8(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()?,
    )
    .ok()?;
    let (index, tag) = text.strip_prefix("img:")?.split_once(':')?;
    let index: i64 = index.parse().ok().filter(|n| *n >= 0)?;
    use subtle::ConstantTimeEq;
    bool::from(
        tag.as_bytes()
            .ct_eq(page_tag(key, request, index).as_bytes()),
    )
    .then_some(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_hold_only_for_their_request() {
        let key = [7; 32];
        let t = page_token(&key, "a", 25);
        assert_eq!(read_page_token(&key, "a", &t), Some(25));
        assert_eq!(read_page_token(&key, "b", &t), None, "another request");
        assert_eq!(read_page_token(&[8; 32], "a", &t), None, "another server");
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
            "img:{}:{}",
            i64::MAX,
            page_tag(&key, "a", 25)
        ));
        assert_eq!(read_page_token(&key, "a", &forged), None);
        assert_eq!(read_page_token(&key, "a", "img:3"), None);
    }
}
