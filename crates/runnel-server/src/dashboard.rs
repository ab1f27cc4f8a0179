//! The web dashboard at `GET /dashboard`: a single page (hash routing) that reads the
//! admin and event API in the browser with the user's key, so it holds no data itself.
//!
//! Its three files live in `crates/runnel-server/dashboard/`, hand-written (no framework,
//! no build step: `cargo build` never runs npm) and compiled into the binary with
//! `include_str!`, so nothing is fetched at run time. The routes are public (the page is
//! the same for everyone; every request it makes for data carries the key), and every
//! answer carries a Content-Security-Policy that allows only this origin: no inline
//! script, no other host.

use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::extract::PathParams;
use crate::problem::Problem;

/// Where the dashboard is served.
pub const DASHBOARD_PATH: &str = "/dashboard";

/// Only this origin: scripts, styles, images, fetches and frames alike. The page's script
/// builds its SVG charts through the DOM (no inline script or style attribute is needed).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'self'; \
     object-src 'self'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'";

/// The browser revalidates every load (a new binary may bring new files under the same
/// names) and gets a 304 while the `ETag` still matches.
pub const CACHE_CONTROL: &str = "no-cache";

/// One embedded file of the dashboard.
pub struct Asset {
    /// Its name under `/dashboard/`.
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// Every file of the dashboard; the first is the page itself.
pub static ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../dashboard/index.html"),
    },
    Asset {
        name: "dashboard.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../dashboard/dashboard.css"),
    },
    Asset {
        name: "dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../dashboard/dashboard.js"),
    },
];

/// Hex digits of an asset's SHA-256 kept in its `ETag` (64 bits: enough to tell
/// versions of three files apart).
const ETAG_HEX_DIGITS: usize = 16;

/// The `ETag` of each asset (in [`ASSETS`] order), computed once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let hex: String = Sha256::digest(a.body.as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!("\"{}\"", &hex[..ETAG_HEX_DIGITS])
            })
            .collect()
    })
}

/// The headers every dashboard answer carries.
fn security_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
}

fn serve(index: usize, request: &HeaderMap) -> Response {
    let (asset, etag) = (&ASSETS[index], &etags()[index]);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    security_headers(headers);
    if let Ok(v) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, v);
    }
    response
}

/// `GET /dashboard`: the page.
#[utoipa::path(get, path = "/dashboard", responses(
    (status = 200, description = "The dashboard's page (it asks for an API key and reads the API with it)", content_type = "text/html", body = String),
    (status = 304, description = "Not modified (`If-None-Match` matched the `ETag`)"),
))]
pub async fn index(headers: HeaderMap) -> Response {
    serve(0, &headers)
}

/// `GET /dashboard/`: the page (the same as `/dashboard`).
#[utoipa::path(get, path = "/dashboard/", responses(
    (status = 200, description = "The dashboard's page", content_type = "text/html", body = String),
    (status = 304, description = "Not modified (`If-None-Match` matched the `ETag`)"),
))]
pub async fn index_slash(headers: HeaderMap) -> Response {
    serve(0, &headers)
}

/// `GET /dashboard/{asset}`: one file of the dashboard (`index.html`, `dashboard.css`,
/// `dashboard.js`); 404 `no-such-asset` otherwise.
#[utoipa::path(get, path = "/dashboard/{asset}",
    params(("asset" = String, Path, description = "`index.html`, `dashboard.css` or `dashboard.js`")),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/html"),
            (String = "text/css"),
            (String = "text/javascript"),
        )),
        (status = 304, description = "Not modified (`If-None-Match` matched the `ETag`)"),
    )
)]
pub async fn asset(
    PathParams(name): PathParams<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let index = ASSETS.iter().position(|a| a.name == name).ok_or_else(|| {
        Problem::not_found(
            "no-such-asset",
            format!("the dashboard has no file {name:?}; open {DASHBOARD_PATH}"),
        )
    })?;
    Ok(serve(index, &headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_refers_only_to_embedded_assets_and_has_no_inline_script_or_style() {
        let page = ASSETS[0].body;
        for asset in &ASSETS[1..] {
            assert!(
                page.contains(&format!("{DASHBOARD_PATH}/{}", asset.name)),
                "index.html loads {}",
                asset.name
            );
        }
        // The CSP forbids inline code: the page would silently break.
        assert!(!page.contains("<script>"), "no inline script");
        assert!(!page.contains("style="), "no style attribute");
        assert!(!page.contains("<style"), "no inline style sheet");
        assert!(!page.contains("http://") && !page.contains("https://"));
    }

    #[test]
    fn etags_differ_per_asset() {
        let tags = etags();
        assert_eq!(tags.len(), ASSETS.len());
        assert!(tags[0] != tags[1] && tags[1] != tags[2]);
    }
}
