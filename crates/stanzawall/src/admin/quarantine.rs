//! `/api/v1/quarantine`: list, show, release and delete held stanzas ([`crate::quarantine`]).
//! Reading needs any token; releasing and deleting an `admin` token, and each is audited with
//! the token's name and the result.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::{fail, reply, Operator, Reader, St};
use crate::quarantine::{valid_id, DeliverError, QuarantineError, ReleaseError, MAX_LIST};

fn store_status(e: &QuarantineError) -> StatusCode {
    match e {
        QuarantineError::NotFound(_) => StatusCode::NOT_FOUND,
        QuarantineError::NotHeld { .. } => StatusCode::CONFLICT,
        QuarantineError::FullEntries(_) | QuarantineError::FullBytes(_) => StatusCode::INSUFFICIENT_STORAGE,
        QuarantineError::Unavailable | QuarantineError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

#[allow(clippy::result_large_err)]
fn checked_id(id: &str) -> Result<(), Response> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(fail(StatusCode::NOT_FOUND, format!("no quarantine entry '{id}' (ids are 16 hex digits)")))
    }
}

/// `GET /api/v1/quarantine?limit=N`: held entries, oldest first, without their stanzas.
pub async fn list(State(st): State<St>, Reader(_): Reader, RawQuery(q): RawQuery) -> Response {
    let Some(q8) = st.shared.quarantine.clone() else {
        return fail(StatusCode::SERVICE_UNAVAILABLE, QuarantineError::Unavailable);
    };
    let limit = match super::api::query(q).get("limit").map(|l| l.parse::<usize>()) {
        None => MAX_LIST,
        Some(Ok(n)) if (1..=MAX_LIST).contains(&n) => n,
        Some(_) => return fail(StatusCode::BAD_REQUEST, format!("limit: 1 to {MAX_LIST}")),
    };
    let entries = match q8.list(limit).await {
        Ok(e) => e,
        Err(e) => return fail(store_status(&e), e),
    };
    let (count, bytes) = q8.stats().await.unwrap_or((entries.len() as u64, 0));
    let list: Vec<_> = entries.iter().map(|e| e.to_json(false)).collect();
    reply(StatusCode::OK, json!({ "entries": list, "count": count, "bytes": bytes }))
}

/// `GET /api/v1/quarantine/{id}`: one entry in any state, with its stanza.
pub async fn show(State(st): State<St>, Reader(_): Reader, Path(id): Path<String>) -> Response {
    if let Err(r) = checked_id(&id) {
        return r;
    }
    let Some(q8) = st.shared.quarantine.clone() else {
        return fail(StatusCode::SERVICE_UNAVAILABLE, QuarantineError::Unavailable);
    };
    match q8.get(&id).await {
        Ok(e) => reply(StatusCode::OK, e.to_json(true)),
        Err(e) => fail(store_status(&e), e),
    }
}

/// `POST /api/v1/quarantine/{id}/release`: deliver it once (409 if it is not held, or if no
/// session can take it now: then it stays held).
pub async fn release(State(st): State<St>, Operator(c): Operator, Path(id): Path<String>) -> Response {
    if let Err(r) = checked_id(&id) {
        return r;
    }
    let Some(q8) = st.shared.quarantine.clone() else {
        return fail(StatusCode::SERVICE_UNAVAILABLE, QuarantineError::Unavailable);
    };
    match q8.release(&id, &c.name).await {
        Ok(r) => {
            let detail = json!({ "result": "ok", "id": id, "delivered": r.via, "chain": r.entry.chain,
                "from": r.entry.from, "to": r.entry.to, "rule": r.entry.rule });
            st.audit(&c, "quarantine-release", detail).await;
            reply(StatusCode::OK, json!({ "released": r.entry.to_json(false), "delivered": r.via }))
        }
        Err(e) => {
            st.audit(&c, "quarantine-release", json!({ "result": e.to_string(), "id": id })).await;
            let status = match &e {
                ReleaseError::Store(s) => store_status(s),
                ReleaseError::Deliver(DeliverError::SessionGone(_)) => StatusCode::CONFLICT,
                ReleaseError::Deliver(DeliverError::Undeliverable(_)) => StatusCode::UNPROCESSABLE_ENTITY,
                ReleaseError::Deliver(DeliverError::Uncertain(_)) => StatusCode::GATEWAY_TIMEOUT,
                ReleaseError::File(_) => StatusCode::CONFLICT,
            };
            fail(status, e)
        }
    }
}

/// `DELETE /api/v1/quarantine/{id}`: remove it without delivering.
pub async fn delete(State(st): State<St>, Operator(c): Operator, Path(id): Path<String>) -> Response {
    if let Err(r) = checked_id(&id) {
        return r;
    }
    let Some(q8) = st.shared.quarantine.clone() else {
        return fail(StatusCode::SERVICE_UNAVAILABLE, QuarantineError::Unavailable);
    };
    match q8.delete(&id).await {
        Ok(e) => {
            let detail = json!({ "result": "ok", "id": id, "state": e.state.as_str(), "from": e.from, "to": e.to });
            st.audit(&c, "quarantine-delete", detail).await;
            reply(StatusCode::OK, json!({ "deleted": e.to_json(false) }))
        }
        Err(e) => {
            st.audit(&c, "quarantine-delete", json!({ "result": e.to_string(), "id": id })).await;
            fail(store_status(&e), e)
        }
    }
}
