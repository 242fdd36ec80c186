//! The memex v12 endpoints (seeds/memex-sync.md §Wire protocol), served
//! beside the native ones with the same tokens. Rows a memex client pushes
//! are captured like local writes: they become records in this node's own
//! log, keeping their `origin` (null stays null), and relay on to native
//! peers. `since` is the local arrival number, so rows that arrive later by
//! any path, and edits that win here, show up past a memex client's cursor.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use selves_store::CaptureOptions;
use selves_wire::memex::{
    self, DEFAULT_PULL_LIMIT, Health, MAX_BODY_BYTES, MAX_PULL_LIMIT, MAX_PUSH_ROWS, PullResponse,
    PushResponse, RawPush, Refused, SCHEMA_VERSION,
};

use crate::api::{App, authorize_memex, blocking, limit, now_ms, read_body};
use crate::error::ApiError;

/// A pull answer is cut short past about this many bytes of rows (the
/// spec bounds rows, not bytes; a row may carry up to 1 MiB of text).
const PULL_MAX_BYTES: usize = 8 << 20;

pub(crate) fn router() -> axum::Router<Arc<App>> {
    axum::Router::new()
        .route(memex::path::HEALTH, get(health))
        .route(memex::path::PUSH, post(push))
        .route(memex::path::PULL, get(pull))
}

/// Query parameters, parsed by hand so every bad value gets the spec's 400.
fn query_param<'a>(query: &'a Option<String>, name: &str) -> Option<&'a str> {
    query
        .as_deref()?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The schema handshake: a client that states its schema version (query
/// `schema_version`, or the push body's field) must match ours.
fn check_schema(stated: Option<&str>) -> Result<(), ApiError> {
    let Some(stated) = stated else { return Ok(()) };
    let theirs: u32 = stated
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("schema_version {stated:?} is not a number")))?;
    if theirs == SCHEMA_VERSION {
        return Ok(());
    }
    let side = if theirs < SCHEMA_VERSION {
        "upgrade memex on the client side"
    } else {
        "upgrade selves on this side"
    };
    Err(ApiError::Conflict {
        code: "schema_mismatch",
        detail: format!("client schema {theirs}, server schema {SCHEMA_VERSION}: {side}"),
    })
}

/// `GET /sync/health`. The token is optional; it gates the counts.
async fn health(
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Health>, ApiError> {
    check_schema(query_param(&query, "schema_version"))?;
    let detailed = match headers.get(header::AUTHORIZATION) {
        None => false,
        Some(_) => {
            authorize_memex(&app, &headers, None).await?;
            true
        }
    };
    let (row_count, last_id) = if detailed {
        let store = app.store.clone();
        let (counts, last) = blocking(move || Ok((store.counts()?, store.last_arrival()?))).await?;
        (Some(counts.rows), Some(last))
    } else {
        (None, None)
    };
    Ok(Json(Health {
        version: app.software.clone(),
        schema_version: SCHEMA_VERSION,
        row_count,
        last_id,
    }))
}

/// `POST /sync/push`: up to 1000 rows, at most 2 MiB (decompressed). Each
/// row is taken or refused on its own; the answer comes once the rows are
/// durable.
async fn push(
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<PushResponse>, ApiError> {
    let peer = authorize_memex(&app, &headers, None).await?;
    limit(&app.memex_pushes, &peer)?;
    check_schema(query_param(&query, "schema_version"))?;
    let bytes = read_body(&headers, body, MAX_BODY_BYTES).await?;
    let store = app.store.clone();
    let via = peer.to_string();
    let response = blocking(move || {
        let req: RawPush = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON, or rows[] missing: {e}")))?;
        check_schema(req.schema_version.map(|v| v.to_string()).as_deref())?;
        if req.rows.len() > MAX_PUSH_ROWS {
            return Err(ApiError::BadRequest(format!(
                "rows[] max {MAX_PUSH_ROWS}, got {}",
                req.rows.len()
            )));
        }
        if req.rows.is_empty() {
            return Ok(PushResponse {
                accepted: 0,
                deduplicated: 0,
                last_id: 0,
                skipped: 0,
                refused: Vec::new(),
            });
        }
        let mut refused = Vec::new();
        let mut rows = Vec::with_capacity(req.rows.len());
        // Where each kept row was in the request, to report refusals there.
        let mut positions = Vec::with_capacity(req.rows.len());
        for (index, raw) in req.rows.iter().enumerate() {
            match memex::parse_row(raw.get()) {
                Ok(row) => {
                    rows.push(row);
                    positions.push(index);
                }
                Err(reason) => refused.push(Refused { index, reason }),
            }
        }
        let summary = store.capture(
            rows,
            &CaptureOptions {
                stamp_origin: None,
                via: Some(via),
                pulled_to: None,
            },
        )?;
        refused.extend(summary.refused.iter().map(|(i, reason)| Refused {
            index: positions[*i],
            reason: reason.clone(),
        }));
        refused.sort_by_key(|r| r.index);
        Ok(PushResponse {
            accepted: summary.inserted + summary.updated,
            deduplicated: summary.unchanged + summary.stale,
            last_id: store.last_arrival()?,
            skipped: refused.len() as u64,
            refused,
        })
    })
    .await?;
    app.changes.poke();
    if response.accepted > 0 {
        app.index_kick.notify_one();
    }
    tracing::info!(
        %peer,
        accepted = response.accepted,
        deduplicated = response.deduplicated,
        skipped = response.skipped,
        "memex push applied"
    );
    Ok(Json(response))
}

/// `GET /sync/pull?since=&limit=`: synced rows that arrived after `since`.
async fn pull(
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let peer = authorize_memex(&app, &headers, None).await?;
    limit(&app.memex_pulls, &peer)?;
    check_schema(query_param(&query, "schema_version"))?;
    let since =
        match query_param(&query, "since") {
            None | Some("") => 0,
            Some(v) => v.parse::<i64>().ok().filter(|s| *s >= 0).ok_or_else(|| {
                ApiError::BadRequest("since must be a non-negative integer".into())
            })?,
        };
    let limit = match query_param(&query, "limit") {
        None | Some("") => DEFAULT_PULL_LIMIT,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|l| *l > 0)
            .ok_or_else(|| ApiError::BadRequest("limit must be a positive integer".into()))?
            .min(i64::from(MAX_PULL_LIMIT)) as u32,
    };
    let store = app.store.clone();
    let json = blocking(move || {
        let page = store.rows_since(since, limit as usize, PULL_MAX_BYTES, None)?;
        let resp = PullResponse {
            rows: page.rows,
            next_cursor: page.next_cursor,
            has_more: page.has_more,
            server_now: now_ms(),
        };
        let json = serde_json::to_vec(&resp).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(ascii_json(json))
    })
    .await?;
    Ok((
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        json,
    )
        .into_response())
}

/// Rewrites every non-ASCII character of serialised JSON as a `\uXXXX`
/// escape. Still the same JSON, but immune to clients that decode a body
/// chunk by chunk and so mangle a character split across two reads (the
/// memex client does).
fn ascii_json(json: Vec<u8>) -> Vec<u8> {
    if json.is_ascii() {
        return json;
    }
    let text = String::from_utf8(json).expect("serde_json writes UTF-8");
    let mut out = Vec::with_capacity(text.len() + text.len() / 4);
    let mut units = [0u16; 2];
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c as u8);
        } else {
            for unit in c.encode_utf16(&mut units) {
                out.extend_from_slice(format!("\\u{unit:04x}").as_bytes());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_json_is_the_same_json() {
        let value = serde_json::json!({"text": "привет 東京 🙂 naïve \u{0} \"q\""});
        let escaped = ascii_json(serde_json::to_vec(&value).unwrap());
        assert!(escaped.is_ascii());
        let back: serde_json::Value = serde_json::from_slice(&escaped).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn query_params() {
        let q = Some("since=5&limit=&flag".to_owned());
        assert_eq!(query_param(&q, "since"), Some("5"));
        assert_eq!(query_param(&q, "limit"), Some(""));
        assert_eq!(query_param(&q, "flag"), Some(""));
        assert_eq!(query_param(&q, "nope"), None);
        assert_eq!(query_param(&None, "since"), None);
    }

    #[test]
    fn schema_check() {
        assert!(check_schema(None).is_ok());
        assert!(check_schema(Some("12")).is_ok());
        assert!(matches!(
            check_schema(Some("13")),
            Err(ApiError::Conflict {
                code: "schema_mismatch",
                ..
            })
        ));
        assert!(matches!(
            check_schema(Some("x")),
            Err(ApiError::BadRequest(_))
        ));
    }
}
