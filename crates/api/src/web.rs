//! The browser pages in `web/`, built into the binary and served unsigned
//! under `/web/` (they sign their own requests with the credentials the
//! user types in).

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

const FILES: &[(&str, &str, &str)] = &[
    (
        "viewer.html",
        "text/html; charset=utf-8",
        include_str!("../../../web/viewer.html"),
    ),
    (
        "camera.html",
        "text/html; charset=utf-8",
        include_str!("../../../web/camera.html"),
    ),
    (
        "kinema.css",
        "text/css; charset=utf-8",
        include_str!("../../../web/kinema.css"),
    ),
    (
        "kinema.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/kinema.js"),
    ),
];

pub(crate) async fn file(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, ct, body)) => (
            [
                (header::CONTENT_TYPE, *ct),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such page").into_response(),
    }
}

pub(crate) async fn index() -> Response {
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, "/web/viewer.html")],
    )
        .into_response()
}
