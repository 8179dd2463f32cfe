//! `swe-env view --serve`: the generated pages served over HTTP from memory. Only the paths of the generated set
//! answer (`/` is the index); every other path, `..` and encoded forms included, is a 404 — nothing is read from
//! the file system per request.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;

use super::html::Pages;

/// The pages by request path (without the leading `/`).
type Served = Arc<BTreeMap<String, Bytes>>;

/// Serves `pages` on `listener` until `shutdown` completes (in-flight requests are then finished).
pub async fn serve_pages(
    pages: &Pages,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let served: Served = Arc::new(
        pages
            .iter()
            .map(|(path, html)| (path.clone(), Bytes::from(html.clone())))
            .collect(),
    );
    let app = Router::new().fallback(page).with_state(served);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn page(State(served): State<Served>, method: Method, uri: Uri) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
            "only GET and HEAD are served\n",
        )
            .into_response();
    }
    let path = uri.path().trim_start_matches('/');
    let key = if path.is_empty() { "index.html" } else { path };
    match served.get(key) {
        Some(body) => {
            tracing::debug!(path = key, "served a page");
            let mut response = (
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                body.clone(),
            )
                .into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'",
                ),
            );
            headers.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            response
        }
        None => (
            StatusCode::NOT_FOUND,
            "not found: only the pages of this report are served (start at /)\n",
        )
            .into_response(),
    }
}
